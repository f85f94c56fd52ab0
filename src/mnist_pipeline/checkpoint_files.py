"""Checkpoint files without Lightning: the checksum, the safe read, the network inside.

Lightning's part of checkpoints (atomic saving, the run id, saving on an interrupt) is in
`training/checkpoints.py`; this part is also what `predict.py` and `serve.py` need, which must
start without importing Lightning.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_pipeline.errors import UserError, first_line
from mnist_pipeline.networks import UntrustedNetworkError, build_from_file

RUN_ID_KEY = "mlflow_run_id"
CHECKSUM_KEY = "content_sha256"


class CheckpointError(UserError):
    """A checkpoint file that cannot be trusted: unreadable, or not what was saved."""


def content_sha256(checkpoint: Any) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other
    value's repr, in key order. A flipped byte anywhere in the weights or the optimizer state
    changes it."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor{value.dtype}{tuple(value.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                if key != CHECKSUM_KEY:
                    digest.update(repr(key).encode())
                    feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed(checkpoint)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded without unpickling arbitrary objects and verified against
    the checksum saved in it; a `CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line(error)})") from None
    if not isinstance(checkpoint, dict) or CHECKSUM_KEY not in checkpoint:
        raise CheckpointError(f"checkpoint {path} has no checksum: not saved by this pipeline")
    if content_sha256(checkpoint) != checkpoint[CHECKSUM_KEY]:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its content does not match the checksum saved in it"
        )
    return checkpoint


def load_network(path: str | Path) -> tuple[nn.Module, str | None]:
    """The network saved in `path` (in eval mode) and the MLflow run that trained it, if any.

    The network is rebuilt from the model config saved with it, so any network of the `model`
    group loads, as long as its class is importable; a config naming anything but a network
    class is refused before anything is built (`build_from_file`).
    """
    checkpoint = read_checkpoint(path)
    try:
        config = checkpoint["hyper_parameters"]["parts"]["model"]
    except (KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path} has no model config") from None
    try:
        net = build_from_file(config, f"checkpoint {path}")
    except UntrustedNetworkError as error:
        raise CheckpointError(str(error)) from None
    prefix = "net."
    net.load_state_dict(
        {
            k.removeprefix(prefix): v
            for k, v in checkpoint["state_dict"].items()
            if k.startswith(prefix)
        }
    )
    return net.eval(), checkpoint.get(RUN_ID_KEY)
