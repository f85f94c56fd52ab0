"""The LightningModule with any network: chunked optimization, logged steps, schedules."""

import functools

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from mnist_pipeline.data.datamodule import MNISTDataModule
from mnist_pipeline.networks.cnn import CNN
from mnist_pipeline.networks.mlp import MLP
from mnist_pipeline.training.classifier import Classifier

ADAM = functools.partial(torch.optim.Adam, lr=1e-3)
COSINE = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=2)


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


def _fit(
    tmp_path, sha256s, chunk_size: int, max_steps: int = -1, net=None, **options
) -> tuple[Classifier, pl.Trainer, list]:
    """Two epochs on 500 tiny training samples in batches of 32: 16 optimizer steps each."""
    pl.seed_everything(0, verbose=False)
    model = Classifier(net or MLP(hidden=16), ADAM, **{"log_every_n_steps": 3, **options})
    datamodule = MNISTDataModule(
        tmp_path / "mnist", sha256s, val_size=100, batch_size=32, chunk_size=chunk_size
    )
    logger = RecordingLogger()
    trainer = pl.Trainer(
        max_epochs=2,
        max_steps=max_steps,
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return model, trainer, logger.logged


@pytest.fixture
def mirrored(tiny_mnist, monkeypatch):
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))
    return sha256s


@pytest.mark.parametrize("network", [MLP, CNN], ids=["mlp", "cnn"])
def test_chunks_train_exactly_like_one_batch_per_step(tmp_path, mirrored, network):
    def net():
        torch.manual_seed(0)
        return network(hidden=16) if network is MLP else network(channels=(4, 8), hidden=16)

    # One batch per chunk, 3 per chunk, the whole epoch in one chunk.
    fits = [_fit(tmp_path, mirrored, chunk_size, net=net()) for chunk_size in (32, 100, 10**6)]
    reference = fits[0][0].state_dict()
    for model, trainer, _ in fits:
        assert trainer.global_step == 32
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, reference[key]), key
    for _, _, logged in fits[1:]:
        assert [(sorted(m), s) for m, s in logged] == [(sorted(m), s) for m, s in fits[0][2]]
    # Steps are optimizer steps: the loss every 3rd, the epoch metrics at the epochs' last steps.
    logged = fits[1][2]
    assert [s for m, s in logged if "train/loss_step" in m] == list(range(3, 33, 3))
    epoch_ends = {s for m, s in logged if "val/acc" in m or "train/acc" in m}
    assert epoch_ends == {16, 32}
    assert all("epoch" in m for m, _ in logged if "val/acc" in m)


def test_epoch_scheduler_steps_once_per_epoch(tmp_path, mirrored):
    model, trainer, _ = _fit(tmp_path, mirrored, 100, scheduler=COSINE)
    # Cosine from 1e-3 to 0 over max_epochs=2: two scheduler steps, not 32 or 6.
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_no_step_loss_with_log_every_n_steps_0(tmp_path, mirrored):
    _, _, logged = _fit(tmp_path, mirrored, 100, log_every_n_steps=0)
    assert not any("train/loss_step" in metrics for metrics, _ in logged)
    assert sum("val/acc" in metrics for metrics, _ in logged) == 2


def test_max_steps_is_exact_within_a_chunk(tmp_path, mirrored):
    # Chunks of 3 batches: Lightning alone would stop at the chunk boundary, after 12 steps.
    model, trainer, _ = _fit(tmp_path, mirrored, 100, max_steps=10)
    assert trainer.global_step == 10
    reference, _, _ = _fit(tmp_path, mirrored, 32, max_steps=10)
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_optimizer_partial_is_completed_with_the_parameters():
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    optimizer = Classifier(MLP(hidden=4), sgd).configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 3190
