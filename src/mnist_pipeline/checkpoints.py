"""Checkpoints: written atomically, loaded safely, carrying the MLflow run that made them."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnist_pipeline.atomic import atomic_write_bytes
from mnist_pipeline.model import Classifier

RUN_ID_KEY = "mlflow_run_id"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves via a temp file in the checkpoint's own directory and a rename.

    Lightning's default stages the file in the system temp directory and moves it, which is a
    copy (not atomic) when that is another file system. Loads with `weights_only=True`.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class RunIdInCheckpoint(pl.Callback):
    """Stores the MLflow run id in every checkpoint, so evaluation and resumes log into that run."""

    def __init__(self, get_run_id: Callable[[], str]) -> None:
        self.get_run_id = get_run_id  # asked at each save: the run may still be being created

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RUN_ID_KEY] = self.get_run_id()


class CheckpointOnInterrupt(pl.Callback):
    """Ctrl-C or SIGTERM during fit: save `last.ckpt` first, so the work so far can resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.training:
            trainer.save_checkpoint(self.path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | Path) -> tuple[Classifier, str | None]:
    """The model saved in `path` (in eval mode) and the MLflow run that trained it, if any."""
    checkpoint = read_checkpoint(path)
    model = Classifier(**checkpoint["hyper_parameters"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint.get(RUN_ID_KEY)


def find_last(outputs: Path) -> Path:
    """The newest `last.ckpt` under `outputs` (what `ckpt_path=last` resumes)."""
    candidates = sorted(outputs.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"ckpt_path=last: no checkpoints/last.ckpt under {outputs}")
    return candidates[-1]
