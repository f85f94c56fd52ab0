"""Lightning's tqdm progress bar without the logger's version (`v_num`): nothing a user reads."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """`TQDMProgressBar` minus `v_num`, as Lightning's docs show (`ProgressBar.get_metrics`)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
