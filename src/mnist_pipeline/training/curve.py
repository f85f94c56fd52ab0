"""`reports/training_curve.csv`: per-epoch train/val loss and accuracy of a training.

A DVC plot, an MLflow artifact, the source of the curves figure and of the activation
comparison. Always written, whichever loggers are on: Lightning's `CSVLogger` records every
logged value (`<output dir>/lightning_logs/version_<n>/metrics.csv`, a new version for each
resume), and `TrainingCurve` keeps the epoch columns of it, one row per epoch.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from mnist_pipeline.atomic import atomic_write_text
from mnist_pipeline.reporting.figures import CURVE_KEYS


def read_curve(path: Path) -> list[dict[str, Any]]:
    """Rows of a training_curve.csv, or [] when there is none."""
    if not path.is_file():
        return []
    with path.open() as file:
        return [
            {key: float(value) if value else "" for key, value in row.items()}
            for row in csv.DictReader(file)
        ]


def curve_rows(metrics_files: list[Path], epochs: int) -> list[dict[str, Any]]:
    """One row per epoch 1..`epochs` from CSVLogger `metrics.csv` files, oldest first: a value
    logged again (by a resumed training) replaces the earlier one."""
    rows: dict[int, dict[str, Any]] = {}
    for path in metrics_files:
        with path.open() as file:
            for logged in csv.DictReader(file):
                if not logged.get("epoch"):
                    continue
                epoch = int(float(logged["epoch"])) + 1
                values = {
                    column: round(float(value), 6)
                    for column in CURVE_KEYS[1:]
                    if (value := logged.get(column.replace("_", "/", 1)))
                }
                if values and epoch <= epochs:
                    rows.setdefault(epoch, {"epoch": epoch}).update(values)
    return [rows[epoch] for epoch in sorted(rows)]


class TrainingCurve(pl.Callback):
    """Writes `path` from `logger`'s files when an epoch's values are all logged: when the next
    epoch starts and when training ends (Lightning logs an epoch's train metrics after every
    `on_train_epoch_end` hook)."""

    def __init__(self, logger: CSVLogger, path: Path) -> None:
        self.logger, self.path = logger, path

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not trainer.current_epoch:
            return
        self.logger.save()
        versions = Path(self.logger.root_dir).glob("version_*/metrics.csv")
        files = sorted(versions, key=lambda path: int(path.parent.name.split("_")[1]))
        if not files:  # nothing logged (fast_dev_run swaps the loggers out)
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CURVE_KEYS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(curve_rows(files, trainer.current_epoch))
        atomic_write_text(self.path, buffer.getvalue())
