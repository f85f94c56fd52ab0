"""The config check: every bad value is refused before any work, naming its key."""

import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.config import ConfigError, validate

CONF = PROJECT_ROOT / "conf"


def options(group: str) -> str:
    """The options of a config group, as Hydra lists them: a user's own YAML file counts too."""
    return ", ".join(sorted(path.stem for path in (CONF / group).glob("*.yaml")))


def keys(config: str) -> str:
    """The top-level keys of a YAML file of conf/, in order (but `defaults`)."""
    config = yaml.safe_load((CONF / config).read_text())
    return ", ".join(key for key in config if key != "defaults")


def composed(*overrides: str):
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_config_is_the_lecture_network():
    cfg = validate(composed())
    assert cfg.model._target_ == "mnist_pipeline.networks.mlp.MLP"
    assert (cfg.model.hidden, cfg.model.activation, cfg.model.dropout) == (128, "relu", 0.2)
    assert (cfg.optimizer._target_, cfg.optimizer.lr) == ("torch.optim.Adam", 1e-3)
    assert not cfg.scheduler and list(cfg.logger) == ["mlflow"]
    assert cfg.data.val_size == 5000 and len(cfg.data.files) == 4


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.hidden=256"],
        ["model.hidden=[256,64]"],
        ["model.activation=sigmoid"],
        ["model=cnn"],
        ["model=cnn", "model.channels=[8,16]"],
        ["optimizer=sgd"],
        ["optimizer=adamw", "scheduler=cosine"],
        ["logger=[mlflow,csv,tensorboard]"],
        ["logger=none"],
        ["callbacks=[default,lr_monitor,early_stopping]"],
        ["callbacks.last_checkpoint=null"],
        ["debug=fdr"],
        ["debug=overfit"],
        ["debug=limit"],
        ["debug=profiler"],
        ["trainer.log_every_n_steps=0"],
        ["data.batch_size=1"],
        ["+trainer.gradient_clip_val=1.0", "+trainer.accumulate_grad_batches=4"],
    ],
)
def test_good_overrides_validate(overrides):
    built: dict = {}
    checked = validate(composed(*overrides), built)
    # The parts are built from it, and each key set on the command line has its value.
    assert isinstance(built["model"], torch.nn.Module)
    assert isinstance(built["data"], pl.LightningDataModule)
    for override in overrides:
        key, value = override.lstrip("+").split("=", 1)
        if "." in key:
            expected = None if value == "null" else value
            got = OmegaConf.select(checked, key)
            assert (got if got is None else str(got).replace(" ", "")) == expected, key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.hidden=0"], "model.hidden=0: expected a positive integer"),
        (["model.hidden=abc"], "model.hidden='abc': expected a positive integer"),
        (["model.hidden=[64,-1]"], "model.hidden=[64, -1]"),
        (["model.dropout=1.5"], "model.dropout=1.5: expected 0 <= dropout < 1"),
        (["model.activation=softsign"], "model.activation='softsign': expected one of"),
        (["model.dropout=lots"], "model.dropout='lots'"),
        (["+model.hiden=3"], "model.hiden: not an argument of mnist_pipeline.networks.mlp.MLP"),
        (["model=cnn", "model.channels=[8]"], "model.channels=[8]: expected two"),
        (["model._target_=nowhere.Net"], "model._target_=nowhere.Net: cannot import it"),
        (
            ["model._target_=torch.optim.Adam"],
            "model._target_=torch.optim.Adam: expected a torch.nn.Module",
        ),
        (["optimizer.lr=0"], "optimizer.lr=0: expected a positive learning rate"),
        (["optimizer.lr=-1"], "optimizer.lr=-1: expected a positive learning rate"),
        (["+optimizer.momentum=0.9"], "optimizer.momentum: not an argument of torch.optim.Adam"),
        (["optimizer.weight_decay=-1"], "optimizer: Invalid weight_decay value: -1"),
        (["scheduler=cosine", "+scheduler.warmup=3"], "scheduler.warmup: not an argument"),
        (["+logger.mlflow.color=red"], "logger.mlflow.color: not an argument"),
        (["callbacks.best_checkpoint.mode=best"], "callbacks.best_checkpoint: `mode` can be"),
        (["+callbacks.x._target_=no.Such"], "callbacks.x._target_=no.Such: cannot import it"),
        (["data.batch_size=0"], "data.batch_size=0: expected a positive integer"),
        (["data.batch_size=abc"], "data.batch_size='abc': expected a positive integer"),
        (["+data.chunk_size=4096"], "data.chunk_size: not an argument of mnist_pipeline.data"),
        (
            ["data._target_=torch.nn.Linear"],
            "data._target_=torch.nn.Linear: expected a pytorch_lightning.LightningDataModule",
        ),
        (["data.eval_batch_size=-1"], "data.eval_batch_size=-1: expected a positive integer"),
        (
            ["data.val_size=70000"],
            "data.val_size=70000: expected 1 to 59999 (validation images, taken from the 60000 "
            "training images)",
        ),
        (["data.val_size=60000"], "data.val_size=60000: expected 1 to 59999"),
        (["data.val_size=-5"], "data.val_size=-5: expected 1 to 59999"),
        (["trainer.log_every_n_steps=-1"], "trainer.log_every_n_steps=-1: expected a whole number"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0: expected a whole number of epochs"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs='abc': expected a whole number"),
        (["+trainer.max_epoch=3"], "trainer.max_epoch: not a pytorch_lightning.Trainer argument"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(composed(*overrides))
    (line,) = str(error.value).splitlines()  # one bad key, one line, starting with the key
    assert line.startswith(message), line


def test_every_problem_is_one_line():
    with pytest.raises(ConfigError) as error:
        validate(composed("model.hidden=0", "optimizer.lr=-1", "data.batch_size=0"))
    lines = str(error.value).splitlines()
    assert [line.split("=")[0] for line in lines] == [
        "data.batch_size",
        "model.hidden",
        "optimizer.lr",
    ]


def test_options_override_the_top_level_keys():
    # debug=fdr turns the report off: the options come after config.yaml's own keys.
    assert composed().report is True and composed("debug=fdr").report is False


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train", ["model.hiden=3"], "model.hiden=3: no such key; did you mean model.hidden?"),
        (
            "train",
            ["optimizer=rmsprop"],
            f"optimizer=rmsprop: no such option; choose one of {options('optimizer')}",
        ),
        (
            "train",
            ["trainer.precision=16"],
            f"trainer.precision=16: no such key (trainer has {keys('trainer/default.yaml')}); "
            "+trainer.precision=16 adds it",
        ),
        ("train", ["model.hidden=["], "model.hidden=[: no viable alternative at input '['"),
        (
            "train",
            ["--cfg", "job", "model=mpl"],
            f"model=mpl: no such option; choose one of {options('model')}",
        ),
        # Every entry point: they share `stages.entry_point`.
        ("evaluate", ["model.hiden=3"], "model.hiden=3: no such key; did you mean model.hidden?"),
        (
            "download",
            ["optimizer=rmsprop"],
            f"optimizer=rmsprop: no such option; choose one of {options('optimizer')}",
        ),
    ],
)
def test_what_hydra_cannot_compose_is_one_line_and_exit_2(cli, script, args, message):
    result = cli(script, *args)
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")
    assert "HYDRA_FULL_ERROR" not in os.environ  # set for Hydra's call only


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train", "evaluate"])
def test_what_hydra_cannot_compose_fails_before_lightning_is_imported(script):
    # A fresh process, as a user runs it: a typo is refused before the 4 s of Lightning.
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['src/{script}.py', 'model.hiden=3']\n"
        "try:\n"
        f"    runpy.run_path('src/{script}.py', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    heavy = {'pytorch_lightning', 'lightning', 'torch', 'mlflow'}\n"
        "    print(stop.code, sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.stderr == "error: model.hiden=3: no such key; did you mean model.hidden?\n"
    assert result.stdout == "2 []\n"


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("train", "ckpt_path=nowhere.ckpt: no such checkpoint"),
        ("evaluate", "does not exist"),
    ],
)
def test_a_missing_checkpoint_is_one_line_and_exit_2(cli, script, message):
    result = cli(script, "ckpt_path=nowhere.ckpt")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_a_sweep_job_that_cannot_compose_is_one_line_and_exit_2(cli, tmp_path):
    result = cli("train", "-m", f"hydra.sweep.dir={tmp_path}", "logger=none", "model.hiden=1,2")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "error: model.hiden=1,2: no such key; did you mean model.hidden?"
    )


def test_predict_names_its_own_keys(cli):
    result = cli("predict", "image=digit.png", "ckpt=best.ckpt")
    assert (result.returncode, result.stderr) == (
        2,
        "error: ckpt=best.ckpt: no such key; did you mean ckpt_path?\n",
    )


def test_hydra_full_error_shows_hydras_trace(cli, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(HydraException, match="Could not override 'model.hiden'"):
        cli("train", "model.hiden=3")


def test_help_and_cfg_still_work(cli):
    assert "== Configuration groups ==" in cli("train", "--help").stdout
    result = cli("train", "--cfg", "job", "model.hidden=7")
    assert result.returncode == 0 and "hidden: 7" in result.stdout
