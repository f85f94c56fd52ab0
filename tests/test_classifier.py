"""The LightningModule in Lightning's own loop: each Trainer feature does what Lightning's
documentation says, a user's callback sees every batch, metrics and schedules as expected."""

import functools

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, StochasticWeightAveraging
from pytorch_lightning.loggers import Logger

from mnist_pipeline.data.datamodule import MNISTDataModule
from mnist_pipeline.networks.mlp import MLP
from mnist_pipeline.training.classifier import Classifier
from mnist_pipeline.training.divergence import DivergedError, StopOnDivergence

ADAM = functools.partial(torch.optim.Adam, lr=1e-3)
SGD = functools.partial(torch.optim.SGD, lr=1.0)
COSINE = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=2)
# 600 tiny training images, 88 for validation: 512 = 16 batches of 32, each epoch.
VAL_SIZE, BATCH = 88, 32


class RecordingLogger(Logger):
    """Keeps every (metrics, step) a Trainer logs."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[dict[str, float], int]] = []

    name = "recording"
    version = 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((dict(metrics), step))

    def steps(self, key: str) -> list[int]:
        return [step for metrics, step in self.logged if key in metrics]


class Counter(pl.Callback):
    """A user's callback: counts the training batches and the validation runs it is told of."""

    def __init__(self) -> None:
        self.batches = self.validations = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        assert len(batch[1]) <= trainer.datamodule.batch_size  # one batch, not a bundle

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validations += not trainer.sanity_checking


@pytest.fixture
def fit(tmp_path, tiny_mnist, monkeypatch):
    """Factory: `fit(batch_size=32, optimizer=ADAM, scheduler=None, callbacks=(), **trainer)`
    -> (model, trainer, logger, counter): 2 epochs (unless told) on the tiny data set, from the
    same seed, an MLP without dropout."""
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))

    def run(batch_size=BATCH, optimizer=ADAM, scheduler=None, callbacks=(), **options):
        pl.seed_everything(0, verbose=False)
        model = Classifier(MLP(hidden=16, dropout=0.0), optimizer, scheduler)
        datamodule = MNISTDataModule(
            tmp_path / "mnist", sha256s, val_size=VAL_SIZE, batch_size=batch_size
        )
        logger, counter = RecordingLogger(), Counter()
        trainer = pl.Trainer(
            **{
                "max_epochs": 2,
                "accelerator": "cpu",
                "logger": logger,
                "callbacks": [counter, *callbacks],
                "enable_checkpointing": False,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "num_sanity_val_steps": 0,
                **options,
            }
        )
        trainer.fit(model, datamodule=datamodule)
        return model, trainer, logger, counter

    return run


def _parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_one_step_per_batch_and_metrics_per_epoch(fit):
    model, trainer, logger, counter = fit(log_every_n_steps=5)
    assert trainer.global_step == counter.batches == 32 and counter.validations == 2
    # The step loss every 5th optimizer step (Lightning counts from 1), the epoch metrics at
    # each epoch's last step, with the epoch.
    assert logger.steps("train/loss_step") == [4, 9, 14, 19, 24, 29]
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert logger.steps(key) == [15, 31], key
    epochs = [m["epoch"] for m, _ in logger.logged if "train/acc" in m]
    assert epochs == [0, 1]
    (first, second) = [m for m, _ in logger.logged if "val/acc" in m]
    assert second["val/acc_best"] == max(first["val/acc"], second["val/acc"])
    (first, second) = [m for m, _ in logger.logged if "train/acc" in m]
    assert 0.5 < second["train/acc"] <= 1 and second["train/loss"] < first["train/loss"]


def test_epoch_metrics_weigh_every_sample_alike(fit):
    """A last, smaller batch counts by its samples, not as a whole batch (torchmetrics'
    MeanMetric drops `weight` with nan_strategy="disable": Lightning-AI/torchmetrics#3434)."""
    # lr=0: the weights stay put, so the epoch's metrics are those of one network over the set.
    model, trainer, logger, _ = fit(
        batch_size=100, optimizer=functools.partial(torch.optim.SGD, lr=0.0), max_epochs=1
    )
    data = trainer.datamodule
    data.eval_batch_size = 50  # 88 validation images: batches of 50 and 38
    (val,) = trainer.validate(model, datamodule=data, verbose=False)
    (logged,) = [m for m, _ in logger.logged if "train/loss" in m]  # 512 = 5 x 100 + 12
    for (images, labels), loss, accuracy in (
        (data.train, logged["train/loss"], logged["train/acc"]),
        (data.val, val["val/loss"], val["val/acc"]),
    ):
        with torch.no_grad():
            logits = model.net.eval()(images.float() / 255)
        expected = torch.nn.functional.cross_entropy(logits, labels).item()
        assert loss == pytest.approx(expected, rel=1e-5)
        assert accuracy == pytest.approx((logits.argmax(-1) == labels).float().mean().item())


def test_gradient_clip_val_clips_the_gradient_norm(fit):
    # One SGD step of learning rate 1: the weights move by exactly the clipped gradient.
    pl.seed_everything(0, verbose=False)
    before = _parameters(MLP(hidden=16, dropout=0.0))  # the weights `fit` starts from
    options = {"max_epochs": 1, "limit_train_batches": 1, "optimizer": SGD}
    clipped, *_ = fit(gradient_clip_val=0.01, **options)
    assert (_parameters(clipped) - before).norm() == pytest.approx(0.01, rel=1e-4)
    free, *_ = fit(**options)
    assert (_parameters(free) - before).norm() > 0.1  # the gradient was larger: it was clipped


def test_accumulate_grad_batches_steps_once_per_k_batches(fit):
    # 4 batches of 32 accumulated = one batch of 128 (Lightning scales each loss by 1/4).
    accumulated, trainer, _, counter = fit(accumulate_grad_batches=4, optimizer=SGD)
    assert counter.batches == 32 and trainer.global_step == 8
    whole, trainer, *_ = fit(batch_size=4 * BATCH, optimizer=SGD)
    assert trainer.global_step == 8
    assert torch.allclose(_parameters(accumulated), _parameters(whole), atol=1e-6)


def test_limit_train_batches_counts_batches(fit):
    _, trainer, _, counter = fit(limit_train_batches=3)
    assert trainer.global_step == counter.batches == 6


def test_val_check_interval_counts_batches(fit):
    _, trainer, logger, counter = fit(val_check_interval=4)
    assert counter.validations == 8  # after batches 4, 8, 12 and 16 of each epoch
    assert logger.steps("val/acc") == [3, 7, 11, 15, 19, 23, 27, 31]


def test_learning_rate_monitor_logs_every_optimizer_step(fit):
    monitor = LearningRateMonitor(logging_interval="step")
    _, trainer, logger, _ = fit(callbacks=[monitor], log_every_n_steps=1, scheduler=COSINE)
    lrs = [(step, m["lr-Adam"]) for m, step in logger.logged if "lr-Adam" in m]
    assert [step for step, _ in lrs] == list(range(32))
    # The cosine schedule steps per epoch: 1e-3 for epoch 0, half of it for epoch 1.
    assert [lr for _, lr in lrs] == pytest.approx([1e-3] * 16 + [5e-4] * 16)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2


def test_stochastic_weight_averaging_averages_the_last_epochs(fit):
    swa = StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=2)  # 1-based, per the docs
    model, *_ = fit(callbacks=[swa], max_epochs=3)
    assert int(swa.n_averaged) == 2  # epochs 2 and 3
    assert torch.equal(_parameters(model), _parameters(swa._average_model))


def test_max_steps_stops_at_that_step(fit):
    _, trainer, _, counter = fit(max_steps=10)
    assert trainer.global_step == counter.batches == 10


def test_optimizer_partial_is_completed_with_the_parameters():
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    optimizer = Classifier(MLP(hidden=4), sgd).configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 3190


@pytest.mark.parametrize("every", [None, 5])
def test_stop_on_divergence_checks_the_loss_every_n_batches(fit, every):
    stop = StopOnDivergence(check_every_n_batches=every)
    with pytest.raises(DivergedError, match="the training diverged") as error:
        fit(optimizer=functools.partial(torch.optim.SGD, lr=1e12), callbacks=[stop])
    step = int(str(error.value).split(", step ")[1].split(";")[0])
    # None: every batch in one CPU process; batch i is checked after optimizer step i + 1.
    assert stop.every == (every or 1) and step % stop.every == 1 % stop.every


def test_stop_on_divergence_checks_sparsely_where_a_check_waits():
    stop = StopOnDivergence()
    ddp = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False)
    stop.setup(ddp, Classifier(MLP(hidden=4), ADAM), "fit")
    assert stop.every == StopOnDivergence.SPARSE_EVERY
    with pytest.raises(ValueError, match="check_every_n_batches=0: expected >= 1"):
        StopOnDivergence(check_every_n_batches=0)
