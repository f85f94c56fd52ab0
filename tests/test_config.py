import pytest
from hydra import compose, initialize_config_dir

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.config import ConfigError, validate


def composed(*overrides: str):
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_config_is_the_lecture_network():
    cfg = validate(composed())
    assert (cfg.model.hidden, cfg.model.activation.value, cfg.model.dropout) == (128, "relu", 0.2)
    assert (cfg.optimizer.name.value, cfg.optimizer.lr) == ("adam", 1e-3)
    assert cfg.data.val_size == 5000 and len(cfg.data.files) == 4


@pytest.mark.parametrize(
    "override",
    [
        "model.hidden=256",
        "model.hidden=[256,64]",
        "model.activation=sigmoid",
        "optimizer=sgd",
        "trainer.log_every_n_steps=0",
        "data.chunk_size=1",
    ],
)
def test_good_overrides_validate(override):
    validate(composed(override))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.hidden=0", "model.hidden=0: expected a positive integer"),
        ("model.hidden=abc", "model.hidden='abc': expected a positive integer"),
        ("model.hidden=[64,-1]", "model.hidden=[64, -1]"),
        ("model.dropout=1.5", "model.dropout=1.5: expected 0 <= dropout < 1"),
        ("model.activation=softsign", "model.activation"),
        ("model.dropout=lots", "model.dropout"),
        ("optimizer.lr=0", "optimizer.lr=0.0: expected a positive learning rate"),
        ("+model.hiden=3", "hiden"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("data.chunk_size=0", "data.chunk_size=0"),
        ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps=-1: expected a whole number"),
        ("+trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val: not supported"),
        ("+trainer.accumulate_grad_batches=4", "trainer.accumulate_grad_batches: not supported"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        validate(composed(override))
    assert message in str(error.value)


def test_unknown_activation_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as error:
        validate(composed("model.activation=softsign"))
    assert all(name in str(error.value) for name in ("relu", "sigmoid", "tanh", "gelu"))


def test_unknown_trainer_argument_is_rejected():
    with pytest.raises(ConfigError, match="trainer.max_epoch: not a pytorch_lightning.Trainer"):
        validate(composed("+trainer.max_epoch=3"))
