"""The one LightningModule: trains any network of the `model` group as a 10-class classifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_pipeline.networks import NUM_CLASSES

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
Batch = tuple[torch.Tensor, torch.Tensor]
RNG_KEY = "rng_states"


class Classifier(pl.LightningModule):
    """Cross-entropy training of `net`; accuracy and loss of train/val/test via torchmetrics.

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`) completed with the
    parameters and the optimizer; the scheduler steps once per epoch. `parts` is the config
    they were built from (model, optimizer, scheduler): saved as the hyperparameters, so a
    checkpoint can be rebuilt and a resume checked against it.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        parts: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters({"parts": dict(parts or {})}, logger=False)
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        # validate_args=False: the labels are checked once, when the data is read.
        self.val_acc, self.test_acc = (
            MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False) for _ in range(2)
        )
        # nan_strategy="disable": no NaN check, which reads the value back to the host every step
        # (a NaN loss shows as a NaN mean all the same). It also drops `update`'s `weight`
        # (Lightning-AI/torchmetrics#3434), so they are given one loss per sample.
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        # The same micro accuracy, as the mean of each sample's correctness: updated every
        # training step, a MeanMetric costs half a MulticlassAccuracy (~4% of a step at batch 128).
        self.train_acc = MeanMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints: a training resumed mid-epoch reports the whole epoch.
        for metric in (self.train_acc, self.train_loss, self.val_acc_best):
            metric.persistent(True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)

    def model_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cross-entropy of each sample, predicted classes, labels) of a batch."""
        pixels, labels = batch
        logits = self.forward(pixels)
        losses = F.cross_entropy(logits, labels, reduction="none")
        return losses, logits.argmax(dim=-1), labels

    def on_train_epoch_start(self) -> None:
        # Lightning resets them after the epoch's end, but a checkpoint saved at the end holds
        # them whole; not called when a training resumes mid-epoch, which keeps them.
        self.train_loss.reset()
        self.train_acc.reset()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        losses, preds, labels = self.model_step(batch)
        loss = losses.mean()
        # update(), not forward(): nothing per step is computed that the epoch does not need.
        self.train_loss.update(losses.detach())
        self.train_acc.update((preds == labels).float())
        # A `self.log` call costs about as much as a whole step of the MLP on a CPU (~1 ms), so
        # the step loss is logged on the steps Lightning sends to the loggers
        # (`trainer.log_every_n_steps`) only; the progress bar shows the latest.
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log("train/loss_step", loss.detach(), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # Once an epoch, for the same reason: Lightning computes and resets them.
        self.log("train/loss", self.train_loss)
        self.log("train/acc", self.train_acc)

    def _evaluate(self, batch: Batch, stage: str) -> None:
        losses, preds, labels = self.model_step(batch)
        accuracy, mean_loss = getattr(self, f"{stage}_acc"), getattr(self, f"{stage}_loss")
        mean_loss.update(losses)
        accuracy.update(preds, labels)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the sanity check's few batches are no result
            return
        self.val_acc_best.update(self.val_acc.compute())
        # compute() all-reduces across DDP ranks: each has the same value, the sync is a no-op.
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The random state (dropout) too: a resumed training continues the same sequence.
        checkpoint[RNG_KEY] = {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(RNG_KEY)
        if states is not None:
            torch.set_rng_state(states["cpu"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
