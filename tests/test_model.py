import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from mnist_pipeline.data import MNISTDataModule
from mnist_pipeline.model import MLP, Classifier, Probabilities


def test_lecture_network_has_101770_parameters():
    # 784*128 + 128 (hidden) + 128*10 + 10 (output), the count the lecture's Keras summary shows.
    assert sum(p.numel() for p in MLP(hidden=128).parameters()) == 101_770
    assert sum(p.numel() for p in Classifier().parameters()) == 101_770


def test_deeper_network_from_a_list_of_widths():
    net = MLP(hidden=[256, 64], activation="tanh")
    assert (
        sum(p.numel() for p in net.parameters()) == 784 * 256 + 256 + 256 * 64 + 64 + 64 * 10 + 10
    )
    assert [type(m).__name__ for m in net.layers] == [
        "Flatten",
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
    ]


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "gelu"])
def test_probabilities_sum_to_one(activation):
    model = Classifier(hidden=32, activation=activation)
    pixels = torch.rand(7, 28, 28)
    probabilities = model.predict_proba(pixels)
    assert probabilities.shape == (7, 10)
    assert torch.all(probabilities >= 0)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(7))
    torch.testing.assert_close(Probabilities(model.net).eval()(pixels), probabilities)


def test_predict_proba_is_deterministic_and_keeps_training_mode():
    model = Classifier(hidden=32, dropout=0.5).train()
    pixels = torch.rand(4, 28, 28)
    torch.testing.assert_close(model.predict_proba(pixels), model.predict_proba(pixels))
    assert model.training


def test_normalisation_is_inside_the_model():
    # A blank picture maps to (0 - mean) / std before the first layer, not to 0.
    net = MLP(hidden=8, dropout=0.0)
    with torch.no_grad():
        net.layers[1].weight.fill_(1.0)
        net.layers[1].bias.zero_()
        hidden = net.layers[1](net.layers[0]((torch.zeros(1, 28, 28) - net.mean) / net.std))
    torch.testing.assert_close(hidden, torch.full((1, 8), -784 * 0.1307 / 0.3081))
    assert "mean" in net.state_dict() and "mean" not in dict(net.named_parameters())


def test_optimizer_choice():
    adam = Classifier(optimizer="adam", scheduler="none").configure_optimizers()
    assert isinstance(adam, torch.optim.Adam)
    sgd = Classifier(optimizer="sgd", lr=0.1, momentum=0.9, scheduler="none").configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9


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
    tmp_path, sha256s, chunk_size: int, max_steps: int = -1, **hparams
) -> tuple[Classifier, pl.Trainer, list]:
    """Two epochs on 500 tiny training samples in batches of 32: 16 optimizer steps each."""
    pl.seed_everything(0, verbose=False)
    model = Classifier(**{"hidden": 16, "log_every_n_steps": 3, **hparams})
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


def test_chunks_train_exactly_like_one_batch_per_step(tmp_path, tiny_mnist, monkeypatch):
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))
    # One batch per chunk, 3 per chunk, the whole epoch in one chunk.
    fits = [_fit(tmp_path, sha256s, chunk_size) for chunk_size in (32, 100, 10**6)]
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


def test_epoch_scheduler_steps_once_per_epoch(tmp_path, tiny_mnist, monkeypatch):
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))
    model, trainer, _ = _fit(tmp_path, sha256s, 100, scheduler="cosine")
    # Cosine from 1e-3 to 0 over max_epochs=2: two scheduler steps, not 32 or 6.
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_no_step_loss_with_log_every_n_steps_0(tmp_path, tiny_mnist, monkeypatch):
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))
    _, _, logged = _fit(tmp_path, sha256s, 100, log_every_n_steps=0)
    assert not any("train/loss_step" in metrics for metrics, _ in logged)
    assert sum("val/acc" in metrics for metrics, _ in logged) == 2


def test_max_steps_is_exact_within_a_chunk(tmp_path, tiny_mnist, monkeypatch):
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))
    # Chunks of 3 batches: Lightning alone would stop at the chunk boundary, after 12 steps.
    model, trainer, _ = _fit(tmp_path, sha256s, 100, max_steps=10)
    assert trainer.global_step == 10
    reference, _, _ = _fit(tmp_path, sha256s, 32, max_steps=10)
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
