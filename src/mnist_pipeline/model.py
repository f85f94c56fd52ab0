"""The lecture's network and the LightningModule that trains it.

`MLP` is the plain torch network: Flatten(28x28) -> [Linear -> activation -> Dropout] * k ->
Linear(10). It takes raw pixels in [0, 1] of shape (N, 28, 28) and normalises them itself, so a
caller (a notebook, `predict.py`, an MLflow pyfunc) never has to know the data set statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

# Mean and standard deviation of the MNIST training pixels in [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
NUM_CLASSES = 10
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


class MLP(nn.Module):
    """Flatten -> (Linear -> activation -> Dropout) per hidden layer -> Linear(10) logits."""

    def __init__(
        self, hidden: int | Sequence[int] = 128, activation: str = "relu", dropout: float = 0.2
    ) -> None:
        super().__init__()
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = 28 * 28
        for width in widths:
            layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            fan_in = width
        layers.append(nn.Linear(fan_in, NUM_CLASSES))
        self.layers = nn.Sequential(*layers)
        # Buffers, not parameters: they travel with the state dict but are never trained.
        self.register_buffer("mean", torch.tensor(MNIST_MEAN))
        self.register_buffer("std", torch.tensor(MNIST_STD))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for pixels (N, 28, 28) in [0, 1]."""
        return self.layers((pixels - self.mean) / self.std)


class Probabilities(nn.Module):
    """A network's softmax output: the probability that the picture is each digit."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(pixels).softmax(dim=-1)


class Classifier(pl.LightningModule):
    """Trains an `MLP` with cross-entropy; accuracy and loss for train/val/test via torchmetrics.

    A training "batch" is a chunk: a list of batches (see `data.Chunks`), one optimizer step
    each, so optimization is manual. Metrics are accumulated on the device and logged once per
    epoch, plus the train loss every `log_every_n_steps` optimizer steps: a `self.log` call
    costs more than a whole step of this model.
    """

    def __init__(
        self,
        hidden: int | Sequence[int] = 128,
        activation: str = "relu",
        dropout: float = 0.2,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float | None = None,
        scheduler: str = "none",
        log_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        hidden = hidden if isinstance(hidden, int) else list(hidden)
        self.save_hyperparameters(logger=False)  # the full config is logged instead
        self.automatic_optimization = False
        self.net = MLP(hidden, activation, dropout)
        self.loss = nn.CrossEntropyLoss()
        # Training sums correct answers and losses itself and updates once per chunk.
        metrics: dict[str, nn.Module] = {"train_acc": MeanMetric(), "train_loss": MeanMetric()}
        for stage in ("val", "test"):
            metrics[f"{stage}_acc"] = MulticlassAccuracy(
                NUM_CLASSES, average="micro", validate_args=False
            )
            metrics[f"{stage}_loss"] = MeanMetric()
        self.metrics = nn.ModuleDict(metrics)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)

    @torch.no_grad()
    def predict_proba(self, pixels: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, 10): the network's 'educated guess among 10 classes'."""
        was_training = self.training
        self.eval()
        probabilities = self(pixels.to(self.device, torch.float32)).softmax(dim=-1)
        self.train(was_training)
        return probabilities

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        pixels, labels = batch
        logits = self(pixels)
        self.metrics[f"{stage}_acc"].update(logits, labels)
        self.metrics[f"{stage}_loss"].update(self.loss(logits, labels), weight=labels.numel())

    def training_step(self, chunk: list[tuple[torch.Tensor, torch.Tensor]], chunk_idx: int) -> None:
        optimizer = self.optimizers()
        # Read once per chunk: each walks Lightning's loop objects, and a step here is ~1 ms.
        step, max_steps = self.global_step, self.trainer.max_steps
        every = self.hparams.log_every_n_steps  # 0: never, as in Lightning
        losses, predictions, targets = [], [], []
        for pixels, labels in chunk:
            if 0 <= max_steps <= step:
                break  # Lightning checks max_steps between chunks only
            logits = self(pixels)
            loss = self.loss(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            step += 1
            losses.append(loss.detach())
            predictions.append(logits.argmax(dim=-1))
            targets.append(labels)
            if every and step % every == 0:
                self._log_step_loss(losses[-1], step, len(labels))
        if losses:
            # Once per chunk, not per step: a torchmetrics update costs ~80 us, 7% of a step.
            sizes = [len(labels) for labels in targets]
            samples = sum(sizes)
            correct = (torch.cat(predictions) == torch.cat(targets)).sum()
            self.metrics["train_acc"].update(correct / samples, weight=samples)
            loss_sum = (torch.stack(losses) * torch.tensor(sizes, device=self.device)).sum()
            self.metrics["train_loss"].update(loss_sum / samples, weight=samples)

    def _log_step_loss(self, loss: torch.Tensor, step: int, batch_size: int) -> None:
        # Straight to the loggers: Lightning would log at its own count of (chunk) batches.
        value = loss.item()
        for logger in self.loggers:
            logger.log_metrics({"train/loss_step": value}, step=step)
        self.log("train/loss_step", loss, prog_bar=True, logger=False, batch_size=batch_size)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self(batch[0]).softmax(dim=-1)

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
            scheduler.step()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        extra = {} if hp.momentum is None else {"momentum": hp.momentum}
        optimizer = OPTIMIZERS[hp.optimizer](
            self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, **extra
        )
        if hp.scheduler == "none":
            return optimizer
        # Cosine decay to 0 over the run, stepped per epoch.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": schedule}
