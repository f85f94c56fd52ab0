"""Lightning's tqdm progress bar, counting the batches users know rather than Lightning's chunks."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from mnist_pipeline.training.chunks import Chunks


class BatchProgressBar(TQDMProgressBar):
    """Training progress in batches of `data.batch_size` (430 an epoch of 55,000 images at 128),
    not in the chunks of batches Lightning is handed (`training.chunks`: 14 an epoch), so the
    rate is batches per second too; the bar moves at the end of each chunk. Without Lightning's
    `v_num` (a logger's version: nothing a user reads)."""

    def _chunks(self) -> Chunks | None:
        loader = self.trainer.train_dataloader
        return loader if isinstance(loader, Chunks) else None

    @property
    def total_train_batches(self) -> int | float:
        chunks, loader = super().total_train_batches, self._chunks()
        # Every chunk is full but the last: limit_train_batches (in chunks) counts whole ones.
        return chunks if loader is None else min(chunks * loader.size, len(loader.batches))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        loader = self._chunks()
        if loader is not None:  # Lightning's bar shows `i + 1`: the batches done after chunk i
            i = min((i + 1) * loader.size, len(loader.batches)) - 1
        super().on_train_batch_end(trainer, pl_module, outputs, batch, i)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
