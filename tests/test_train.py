"""The train stage end to end, in this process, with each kind of part from conf/."""

import csv
import json
import os
import sys

import pytest
import warm
from conftest import REPO, mlflow_runs, no_runs

from mnist_pipeline.checkpoint_files import load_network, read_checkpoint
from mnist_pipeline.config import ConfigError
from mnist_pipeline.stages import silence_known_noise
from mnist_pipeline.training.curve import read_curve

FIGURES = ("confusion_matrix", "misclassified", "first_layer_weights", "digit_walkthrough")


def test_train_end_to_end_without_tracking(train_tiny, tmp_path, caplog):
    caplog.set_level("INFO")
    best_val_acc = train_tiny("logger=none", "model.hidden=32")
    # The test result is said once (the report used to say it again).
    assert sum(r.getMessage().startswith("test accuracy") for r in caplog.records) == 1
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((run_dir / "reports" / "train_metrics.json").read_text())
    assert summary["epochs"] == 2 and summary["best_val_acc"] == best_val_acc
    assert summary["test_acc"] > 0.8  # the synthetic digits are easy; chance is 0.1
    curve = (run_dir / "reports" / "training_curve.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,train_acc,val_loss,val_acc" and len(curve) == 3
    metrics = json.loads((run_dir / "reports" / "metrics.json").read_text())
    assert list(metrics) == ["accuracy", "loss", "macro_f1", "worst_f1", "worst_digit"]
    assert metrics["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-6)
    # Both the training's cross-entropy of the logits, from one checkpoint: one test loss.
    assert metrics["loss"] == pytest.approx(summary["test_loss"], rel=1e-4)
    per_class = json.loads((run_dir / "reports" / "per_class.json").read_text())
    assert [row["digit"] for row in per_class] == list(range(10))
    f1 = [row["f1"] for row in per_class]
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / 10, abs=1e-5)
    assert (metrics["worst_f1"], metrics["worst_digit"]) == (min(f1), f1.index(min(f1)))
    for name in (*FIGURES, "training_curves"):
        assert (run_dir / "reports" / "figures" / f"{name}.png").stat().st_size > 1000
    net, run_id = load_network(run_dir / "checkpoints" / "best.ckpt")
    assert run_id is None and type(net).__name__ == "MLP" and net.layers[2].out_features == 32
    assert no_runs(tmp_path)


def test_cnn_trains_and_skips_the_figures_it_has_no_layer_for(train_tiny, tmp_path, caplog):
    caplog.set_level("INFO")
    train_tiny(
        "logger=none",
        "model=cnn",
        "model.channels=[8,8]",
        "optimizer.lr=0.005",
        "trainer.max_epochs=3",
    )
    reports = tmp_path / "run" / "reports"
    summary = json.loads((reports / "train_metrics.json").read_text())
    assert summary["test_acc"] > 0.8
    figures = {p.stem for p in (reports / "figures").glob("*.png")}
    assert figures == {"confusion_matrix", "misclassified", "training_curves"}
    assert "CNN has no dense layer over the 784 pixels" in caplog.text
    net, _ = load_network(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert type(net).__name__ == "CNN"


def test_csv_and_tensorboard_loggers_with_a_callback_from_yaml(train_tiny, tmp_path):
    pytest.importorskip("tensorboard")
    train_tiny(
        "logger=[csv,tensorboard]",
        "callbacks=[default,lr_monitor]",
        "scheduler=cosine",
        "report=false",
    )
    run_dir = tmp_path / "run"
    with (run_dir / "csv" / "version_0" / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {"val/acc", "train/loss", "lr-Adam", "test/acc"} <= set(rows[0])
    lrs = [float(r["lr-Adam"]) for r in rows if r["lr-Adam"]]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0]  # cosine, logged per epoch
    assert "model.hidden: 128" in (run_dir / "csv" / "version_0" / "hparams.yaml").read_text()
    assert list((run_dir / "tensorboard").glob("version_0/events.out.tfevents.*"))


def test_missing_logger_package_is_one_line_before_any_run(train_tiny, tmp_path, monkeypatch):
    # tensorboard is installed here, so its absence is simulated where Lightning checks for it.
    import lightning_fabric.loggers.tensorboard as fabric_tensorboard

    monkeypatch.setattr(fabric_tensorboard, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(fabric_tensorboard, "_TENSORBOARDX_AVAILABLE", False)
    with pytest.raises(ConfigError) as error:
        train_tiny("logger=[mlflow,tensorboard]")
    message = str(error.value)
    assert message.startswith("logger.tensorboard: Neither `tensorboard` nor `tensorboardX`")
    assert "pip install -e '.[tensorboard]'" in message and "\n" not in message
    assert no_runs(tmp_path)  # MLflow's run was not even started


def test_debug_fast_dev_run(train_tiny, tmp_path):
    best = train_tiny("debug=fdr")
    assert not (tmp_path / "run" / "checkpoints").exists()  # fast_dev_run saves none
    assert no_runs(tmp_path)  # and logs nothing
    # One training batch, then one validation batch (all 100 images): the same accuracy as
    # a training limited to that, and far from what two epochs reach (> 0.8).
    one_batch = train_tiny(
        "debug=default",
        "logger=none",
        "report=false",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1",
    )
    assert best == one_batch and round(best * 100) == pytest.approx(best * 100) and best < 0.5


def test_debug_overfit_learns_one_batch_by_heart(train_tiny, tmp_path):
    # The base overrides set max_epochs=2, and the command line wins over debug=: set it back.
    train_tiny("debug=overfit", "trainer.max_epochs=20", "logger=none", "report=false")
    curve = read_curve(tmp_path / "run" / "reports" / "training_curve.csv")
    # One batch of 50 samples an epoch (Lightning's overfit_batches=1), the same one each time.
    assert len(curve) == 20 and curve[-1]["train_acc"] == 1.0
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 20


@pytest.mark.parametrize("option", ["limit", "profiler"])
def test_debug_options_run(train_tiny, tmp_path, option):
    train_tiny(f"debug={option}", "logger=none", "report=false")
    assert (tmp_path / "run" / "reports" / "train_metrics.json").is_file()


def test_bad_override_is_one_line_and_exit_2_before_any_work(cli, tiny_cli_overrides, tmp_path):
    result = cli("train", *tiny_cli_overrides, "model.hidden=0", "optimizer.lr=-1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: model.hidden=0: expected a positive integer or a non-empty list of them "
        "(e.g. 128 or [256,128])",
        "error: optimizer.lr=-1: expected a positive learning rate",
    ]
    assert not (tmp_path / "data").exists() and no_runs(tmp_path)


USER_NETWORK = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """A user's own network: pixels (N, 28, 28) in [0, 1] -> logits (N, 10)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(784, width), nn.Tanh(), nn.Linear(width, 10)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels - 0.13)
'''


@pytest.mark.slow
def test_a_users_network_is_one_python_and_one_yaml_file(tiny_run, tmp_path):
    code, conf = tmp_path / "code", tmp_path / "conf" / "model"
    code.mkdir()
    conf.mkdir(parents=True)
    (code / "user_net.py").write_text(USER_NETWORK)
    (conf / "tiny.yaml").write_text("_target_: user_net.Tiny\nwidth: 24\n")
    command = tiny_run.command(
        "model=tiny", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "trainer.max_epochs=1"
    )
    result = warm.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(code)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Another process, without the user's code on its path: the MLflow model brought it along.
    score = f'''
import mlflow, numpy as np, sys
from mlflow import MlflowClient
from mnist_pipeline.data.idx import load_images_and_labels
uri = "sqlite:///{tmp_path / "mlflow.db"}"
(run,) = MlflowClient(uri).search_runs(["1"])
assert run.info.run_name == "tiny", run.info.run_name
mlflow.set_tracking_uri(uri)
model = mlflow.pyfunc.load_model(f"runs:/{{run.info.run_id}}/model")
images, labels = load_images_and_labels("{tmp_path}/data/mnist/t10k-images-idx3-ubyte",
                                        "{tmp_path}/data/mnist/t10k-labels-idx1-ubyte")
p = np.asarray(model.predict(images.float().numpy() / 255.0))
print((p.argmax(1) == labels.numpy()).mean(), run.data.metrics["test/acc"])
'''
    (tmp_path / "score.py").write_text(score)
    scored = warm.run(
        [sys.executable, "score.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    served, logged = map(float, scored.stdout.split())
    assert served == pytest.approx(logged, abs=1e-6) and served > 0.5


# What a run printed and no user can act on (Lightning's lines, torch's and Lightning's warnings).
NOISE = (
    "Restoring states from the checkpoint",
    "Loaded model weights",
    "TPU available: False",
    "weights_only",
    "litlogger",
    "LeafSpec",
)


def test_the_console_counts_batches_and_holds_nothing_to_learn_to_ignore(train_tiny, capfd, caplog):
    silence_known_noise()  # as every entry point does
    caplog.set_level("INFO")
    # 500 training images in batches of 50: 10 batches an epoch, the bar redrawn every 4.
    train_tiny(
        "logger=none",
        "report=false",
        "trainer.max_epochs=1",
        "callbacks.progress_bar.refresh_rate=4",
        "trainer.enable_progress_bar=true",
        "trainer.enable_model_summary=true",
    )
    console = "".join(capfd.readouterr()).replace("\r", "\n") + caplog.text
    assert [line for line in console.splitlines() if any(n in line for n in NOISE)] == [], console
    epoch = [line for line in console.splitlines() if line.startswith("Epoch 0:")]
    counts = [line.split("|")[2].split()[0] for line in epoch if "%|" in line]
    assert list(dict.fromkeys(counts)) == ["0/10", "4/10", "8/10", "10/10"]
    assert "v_num" not in console


def test_ctrl_c_saves_its_checkpoint_marks_the_run_killed_quietly(
    train_tiny, tmp_path, capfd, caplog, monkeypatch
):
    """Ctrl-C is Python's KeyboardInterrupt in the main thread, here raised in a step."""
    from mnist_pipeline.training.classifier import Classifier

    steps = []
    training_step = Classifier.training_step

    def interrupted(self, batch, batch_idx):
        steps.append(batch_idx)
        if len(steps) == 15:  # the 5th batch of the second epoch (10 batches an epoch)
            raise KeyboardInterrupt
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(Classifier, "training_step", interrupted)
    silence_known_noise()
    caplog.set_level("INFO")
    with pytest.raises(SystemExit) as stop:
        train_tiny("logger.mlflow.log_model=false")
    assert stop.value.code == 130
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 14
    assert [r.info.status for r in mlflow_runs(tmp_path)[1]] == ["KILLED"]
    console = "".join(capfd.readouterr()) + caplog.text
    assert [noise for noise in NOISE if noise in console] == []
