"""Checkpoints: written atomically, checksummed, loaded safely, carrying their MLflow run."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from mnist_pipeline.atomic import atomic_write_bytes
from mnist_pipeline.checkpoint_files import (
    CHECKSUM_KEY,
    CheckpointError,
    content_sha256,
    read_checkpoint,
)
from mnist_pipeline.training.divergence import DivergedError

log = logging.getLogger(__name__)


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


class LastCheckpoint(ModelCheckpoint):
    """`<dirpath>/<filename>.ckpt` after every epoch, as a stock `ModelCheckpoint` saves it, and
    again on Ctrl-C, SIGTERM or a crash during fit: where a resume starts.

    Not Lightning's `save_on_exception` or `OnExceptionCheckpoint`: the first would save the
    network being tested (the best weights, loaded for the test) or a diverged one, the second
    silently turns `fit(ckpt_path=None)` into `fit(ckpt_path="last")`, which would resume from a
    `last.ckpt` that another run left in the directory, and deletes its file at teardown.
    """

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not trainer.training or isinstance(exception, DivergedError):
            return  # a diverged network is not worth resuming: the last good one stays
        path = Path(self.dirpath or ".") / f"{self.filename}{self.FILE_EXTENSION}"
        try:
            # A full checkpoint (optimizer, loops): what a resume needs.
            trainer.save_checkpoint(path, weights_only=False)
        except Exception as error:
            # Out of memory or disk, saving fails in turn: the first cause is the one to tell.
            log.warning("could not save %s on the way out: %s", path, error)


def find_last(outputs: Path) -> Path:
    """The newest `last.ckpt` under `outputs` (what `ckpt_path=last` resumes)."""
    candidates = sorted(outputs.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(
            f"ckpt_path=last: no run to resume yet (no checkpoints/last.ckpt under {outputs}); "
            "start one with `python src/train.py`"
        )
    return candidates[-1]
