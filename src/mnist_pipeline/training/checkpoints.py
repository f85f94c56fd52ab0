"""Checkpoints: written atomically, checksummed, loaded safely, carrying their MLflow run."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

from mnist_pipeline.atomic import atomic_write_bytes
from mnist_pipeline.config import UserError
from mnist_pipeline.networks import UntrustedNetworkError, build_from_file
from mnist_pipeline.training.divergence import DivergedError

log = logging.getLogger(__name__)
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves via a temp file in the checkpoint's own directory and a rename.

    Lightning's default stages the file in the system temp directory and moves it, which is a
    copy (not atomic) when that is another file system. Each checkpoint carries the SHA-256 of
    its content, which loading verifies (`read_checkpoint`).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        checkpoint = {**checkpoint, CHECKSUM_KEY: content_sha256(checkpoint)}
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return read_checkpoint(path)


class RunIdInCheckpoint(pl.Callback):
    """Stores the MLflow run id in every checkpoint, so evaluation and resumes log into that run."""

    def __init__(self, get_run_id: Callable[[], str | None]) -> None:
        self.get_run_id = get_run_id  # asked at each save: the run may still be being created

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RUN_ID_KEY] = self.get_run_id()


class CheckpointOnInterrupt(pl.Callback):
    """Ctrl-C, SIGTERM or a crash during fit: save `<dirpath>/<filename>.ckpt` first, to resume.

    Not Lightning's `OnExceptionCheckpoint`: with one in the callbacks, `fit(ckpt_path=None)`
    silently becomes `fit(ckpt_path="last")`, which would resume from a `last.ckpt` that another
    run left in the directory; it also deletes its file at teardown, and would overwrite it when
    a test (which loads the best weights) fails.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not trainer.training or isinstance(exception, DivergedError):
            return  # a diverged network is not worth resuming: the last good one stays
        try:
            # A full checkpoint (optimizer, loops): what a resume needs.
            trainer.save_checkpoint(self.path, weights_only=False)
        except Exception as error:
            # Out of memory or disk, saving fails in turn: the first cause is the one to tell.
            log.warning("could not save %s on the way out: %s", self.path, error)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded without unpickling arbitrary objects and verified against
    the checksum saved in it; a `CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason})") from None
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


def find_last(outputs: Path) -> Path:
    """The newest `last.ckpt` under `outputs` (what `ckpt_path=last` resumes)."""
    candidates = sorted(outputs.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(
            f"ckpt_path=last: no run to resume yet (no checkpoints/last.ckpt under {outputs}); "
            "start one with `python src/train.py`"
        )
    return candidates[-1]
