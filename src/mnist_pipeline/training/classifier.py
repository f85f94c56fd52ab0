"""The one LightningModule: trains any network of the `model` group as a 10-class classifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_pipeline.networks import NUM_CLASSES
from mnist_pipeline.training.chunks import train_on_chunk

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
RNG_KEY = "rng_states"


class Classifier(pl.LightningModule):
    """Cross-entropy training of `net`; accuracy and loss for train/val/test via torchmetrics.

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`) completed with the
    parameters and the optimizer. `parts` is the config they were built from (model, optimizer,
    scheduler): saved as the hyperparameters, so a checkpoint can be rebuilt and a resume
    checked against it. A training "batch" is a chunk of batches (`training.chunks`); metrics
    are accumulated on the device and logged once per epoch, plus the train loss every
    `log_every_n_steps` optimizer steps: a `self.log` call costs more than a step of the MLP.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        parts: Mapping[str, Any] | None = None,
        log_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"parts": dict(parts or {}), "log_every_n_steps": log_every_n_steps}, logger=False
        )
        self.automatic_optimization = False
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.loss = nn.CrossEntropyLoss()
        # Training counts correct answers and sums losses itself and updates once per chunk.
        metrics: dict[str, nn.Module] = {"train_acc": MeanMetric(), "train_loss": MeanMetric()}
        for stage in ("val", "test"):
            metrics[f"{stage}_acc"] = MulticlassAccuracy(
                NUM_CLASSES, average="micro", validate_args=False
            )
            metrics[f"{stage}_loss"] = MeanMetric()
        self.metrics = nn.ModuleDict(metrics)
        for name in ("train_acc", "train_loss"):
            # Saved with the checkpoint: a training resumed mid-epoch reports the whole epoch.
            self.metrics[name].persistent(True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)

    def training_step(self, chunk: list[tuple[torch.Tensor, torch.Tensor]], chunk_idx: int) -> None:
        done = train_on_chunk(self, chunk, self.loss, self._on_step)
        if done is not None:
            samples, correct, loss_sum = done
            self.metrics["train_acc"].update(correct / samples, weight=samples)
            self.metrics["train_loss"].update(loss_sum / samples, weight=samples)

    def _on_step(self, step: int, loss: torch.Tensor, batch_size: int) -> None:
        every = self.hparams.log_every_n_steps  # 0: never, as in Lightning
        if not every or step % every:
            return
        # Straight to the loggers: Lightning would log at its own count of (chunk) batches.
        value = loss.item()
        for logger in self.loggers:
            logger.log_metrics({"train/loss_step": value}, step=step)
        self.log("train/loss_step", loss, prog_bar=True, logger=False, batch_size=batch_size)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        pixels, labels = batch
        logits = self(pixels)
        self.metrics[f"{stage}_acc"].update(logits, labels)
        self.metrics[f"{stage}_loss"].update(self.loss(logits, labels), weight=labels.numel())

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        # compute() all-reduces across DDP ranks, so every rank logs the same global value.
        values = {}
        for name in ("acc", "loss"):
            metric = self.metrics[f"{stage}_{name}"]
            values[f"{stage}/{name}"] = metric.compute()
            metric.reset()
        self.log_dict(values, prog_bar=stage == "val")
        # Steps on the x-axis are optimizer steps, as for the step loss; Lightning would count
        # chunks. With "step" given, Lightning no longer adds "epoch" itself.
        self.log_dict({"step": float(self.global_step), "epoch": float(self.current_epoch)})

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # per epoch: schedules are configured in epochs

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

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
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}
