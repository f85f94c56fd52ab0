"""Killed trainings resume where they were, in the same output directory and MLflow run."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import mlflow_runs, train_once

from mnist_pipeline.checkpoint_files import read_checkpoint
from mnist_pipeline.config import ConfigError
from mnist_pipeline.training.checkpoints import find_last

# 100 steps per epoch: Lightning handles a signal after the current step, so mid-epoch.
SLOW = (
    "trainer.max_epochs=4",
    "data.batch_size=5",
    "report=false",
    "logger.mlflow.log_model=false",
)


def _same_training(run: Path, reference: Path) -> None:
    """The two runs ended with bit-identical weights and optimizer state and the same curve."""
    ours, theirs = (read_checkpoint(d / "checkpoints" / "last.ckpt") for d in (run, reference))
    for key, tensor in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], tensor), key
    for ours_state, their_state in zip(
        ours["optimizer_states"][0]["state"].values(),
        theirs["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert all(torch.equal(ours_state[k], their_state[k]) for k in their_state)
    curve = "reports/training_curve.csv"
    assert (run / curve).read_text() == (reference / curve).read_text()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, empty_store) -> Path:
    """The outputs of the training of `SLOW`, not interrupted: run once in this process (its own
    store, the same tiny data), the reference of both interrupted ones."""
    return train_once(tmp_path_factory.mktemp("uninterrupted"), empty_store, *SLOW)


def _start_and_wait_for_epochs(tiny_run, tmp_path, epochs: int) -> subprocess.Popen:
    # Started warm, SIGINT on as in a user's shell (a non-interactive one ignores it).
    process = tiny_run.popen(*SLOW, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    curve = tmp_path / "run" / "reports" / "training_curve.csv"

    def complete_epochs() -> int:  # rows with train metrics: logged after the epoch's checkpoint
        rows = curve.read_text().splitlines()[1:] if curve.exists() else []
        return sum(all(rows_field for rows_field in row.split(",")) for row in rows)

    deadline = time.monotonic() + 120
    while complete_epochs() < epochs:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.1)
    return process


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_same_run(tiny_run, train_tiny, uninterrupted, tmp_path):
    process = _start_and_wait_for_epochs(tiny_run, tmp_path, epochs=2)
    process.kill()  # SIGKILL: no handler runs, the process just vanishes
    process.wait()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    epoch_at_kill = read_checkpoint(last)["epoch"]
    assert epoch_at_kill >= 1
    _, (killed,) = mlflow_runs(tmp_path)  # nothing ran to end it
    assert killed.info.status == "RUNNING" and killed.data.tags["mnist.pid"] == str(process.pid)

    # The next training on this store finds the run of a process that is gone: KILLED.
    train_tiny(*SLOW, "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'next'}")
    _, runs = mlflow_runs(tmp_path)
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert statuses.pop(killed.info.run_id) == "KILLED"
    assert list(statuses.values()) == ["FINISHED"]

    tiny_run(*SLOW, f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'resumed'}")
    assert find_last(tmp_path) == last  # the newest last.ckpt: what ckpt_path=last resumes
    # Bit-identical: the RNG state (dropout) was restored too.
    _same_training(tmp_path / "run", uninterrupted)

    client, runs = mlflow_runs(tmp_path)
    # The same run, FINISHED now, and no new one (beside the other training's).
    assert {r.info.run_id: r.info.status for r in runs} == {
        killed.info.run_id: "FINISHED",
        **statuses,
    }
    # Per-epoch metrics for epochs 1-4, each once (epoch 3+ after the resume), steps increasing.
    for key in ("train/acc", "val/acc"):
        steps = [m.step for m in client.get_metric_history(killed.info.run_id, key)]
        assert len(steps) == len(set(steps)) == 4 and steps == sorted(steps), key
    # Same output directory as before the kill; the curve has each of the 4 epochs once.
    curve = (tmp_path / "run" / "reports" / "training_curve.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in curve[1:]] == ["1", "2", "3", "4"]
    summary = json.loads((tmp_path / "run" / "reports" / "train_metrics.json").read_text())
    assert summary["epochs"] == 4 and summary["test_acc"] > 0.8


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_and_marks_the_run_killed(
    tiny_run, train_tiny, uninterrupted, tmp_path, caplog, recwarn
):
    process = _start_and_wait_for_epochs(tiny_run, tmp_path, epochs=1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # Saved at the signal, mid-epoch: more steps than the completed epochs account for.
    assert checkpoint["global_step"] > 100 * (checkpoint["epoch"])
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"]

    # Resumed mid-epoch (in this process): the rest of that epoch's batches, none twice, the
    # same result.
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    train_tiny(*SLOW, f"ckpt_path={last}")
    _same_training(tmp_path / "run", uninterrupted)
    assert not [w for w in recwarn if "is not empty" in str(w.message)]  # its own checkpoints

    # Resuming the finished run again: nothing to do, nothing logged twice.
    _, (before,) = mlflow_runs(tmp_path)
    caplog.set_level("INFO")
    train_tiny(*SLOW, f"ckpt_path={last}")
    assert "is complete" in caplog.text
    _, (after,) = mlflow_runs(tmp_path)
    assert after.info.status == "FINISHED" and after.data.metrics == before.data.metrics
    assert (
        len(
            client_history := mlflow_runs(tmp_path)[0].get_metric_history(
                after.info.run_id, "test/acc"
            )
        )
        == 1
    ), client_history


def test_resuming_into_a_different_model_is_refused(train_tiny, tmp_path):
    train_tiny("trainer.max_epochs=1", "report=false", "logger=none", "model.hidden=16")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as error:
        train_tiny(f"ckpt_path={last}", "logger=none", "model.hidden=32", "scheduler=cosine")
    assert "model.hidden: checkpoint 16, config 32" in str(error.value)
    assert "scheduler._target_: checkpoint None, config torch.optim" in str(error.value)
    assert "resume with the settings it was trained with" in str(error.value)


@pytest.mark.slow
def test_sigterm_while_drawing_the_report_ends_the_run_killed(tiny_run, tmp_path):
    # After the test the report is drawn (matplotlib, five figures): seconds without Lightning.
    process = tiny_run.popen(
        "trainer.max_epochs=1",
        "logger.mlflow.log_model=false",
        stdout=subprocess.PIPE,  # where Hydra's log goes
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in process.stdout:
        if "test accuracy" in line:
            process.send_signal(signal.SIGTERM)
            break
    process.stdout.read()
    # 143, not 0: the signal came before the end (the report takes seconds), and was handled.
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"]
