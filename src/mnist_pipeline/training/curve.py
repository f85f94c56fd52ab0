"""`reports/training_curve.csv`: per-epoch train/val loss and accuracy of a training.

A DVC plot, an MLflow artifact, the source of the curves figure and of the activation
comparison. Always written, whichever loggers are on.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from mnist_pipeline.atomic import atomic_write_text

CURVE_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def read_curve(path: Path) -> list[dict[str, Any]]:
    """Rows of a training_curve.csv, or [] when there is none."""
    if not path.is_file():
        return []
    with path.open() as file:
        return [
            {key: float(value) if value else "" for key, value in row.items()}
            for row in csv.DictReader(file)
        ]


class TrainingCurve(Logger):
    """Writes the curve CSV as the epochs' metrics arrive; a resumed training continues it.

    A logger rather than a callback: loggers get the epoch's metrics after every hook has
    logged them.
    """

    def __init__(self, path: Path, resumed: bool = False) -> None:
        super().__init__()
        self.path = path
        rows = read_curve(path) if resumed else []
        self.rows = {int(row["epoch"]): {**row, "epoch": int(row["epoch"])} for row in rows}

    @property
    def name(self) -> str:
        return "training_curve"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        values = {
            column: round(float(metrics[key]), 6)
            for column in CURVE_COLUMNS[1:]
            if (key := column.replace("_", "/", 1)) in metrics
        }
        if not values or "epoch" not in metrics:
            return
        epoch = int(metrics["epoch"]) + 1
        self.rows.setdefault(epoch, {"epoch": epoch}).update(values)
        rows = [self.rows[e] for e in sorted(self.rows) if e <= epoch]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())
