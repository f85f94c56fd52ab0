"""Stop a training whose loss stopped being a number (`optimizer.lr=1000`).

A NaN or infinite loss does not come back: every later step, epoch, checkpoint and report would
be of a broken network, and the run would end "FINISHED" at chance accuracy. Lightning stops
on a non-finite *monitored metric* at validation only (`EarlyStopping(check_finite=True)`), an
epoch late and as a success; this stops at the step, as a failure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator

from mnist_pipeline.config import UserError


class DivergedError(UserError):
    """The training loss became NaN or infinite: one line, and the run FAILED."""


class StopOnDivergence(pl.Callback):
    """Raise `DivergedError` when the training loss is not finite, checked every
    `check_every_n_batches` batches. The checkpoints saved so far are kept; none of the broken
    network is written (`LastCheckpoint` stands back).

    Each check reads the loss back to the host and, under DDP, all-reduces the verdict: free in
    one CPU process, a wait for the device or the other ranks elsewhere. So the default (None)
    checks every batch in one CPU process and every `SPARSE_EVERY` batches otherwise.
    """

    SPARSE_EVERY = 50

    def __init__(self, check_every_n_batches: int | None = None) -> None:
        if check_every_n_batches is not None and check_every_n_batches < 1:
            raise ValueError(f"check_every_n_batches={check_every_n_batches}: expected >= 1")
        self.check_every_n_batches = check_every_n_batches

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        one_cpu = trainer.world_size == 1 and isinstance(trainer.accelerator, CPUAccelerator)
        self.every = self.check_every_n_batches or (1 if one_cpu else self.SPARSE_EVERY)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor) or i % self.every:
            return
        # The scalar read once (~0.2 us on a CPU; torch.isfinite(...).all() is two ops, ~10 us).
        # Decided together, so that no DDP rank goes on alone into the next all-reduce.
        if not trainer.strategy.reduce_boolean_decision(math.isfinite(loss.item()), all=True):
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else "?"
            raise DivergedError(
                f"the training diverged: its loss became {loss.item()} at epoch "
                f"{trainer.current_epoch}, step {trainer.global_step}; lower optimizer.lr (it "
                f"is {lr}); the checkpoints saved before are kept"
            )
