"""Failures a user meets are one `error:` line naming the first cause, and leave nothing behind.

The machine's limits are met for real: a disk filled by a tiny tmpfs mount (root only, else
skipped) and an allocation the kernel refuses.
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO, mlflow_runs, no_runs

from mnist_pipeline.atomic import atomic_write_json
from mnist_pipeline.checkpoint_files import CheckpointError
from mnist_pipeline.training.checkpoints import find_last


def _run_dirs() -> set[Path]:
    return set((REPO / "outputs").glob("**/*"))


def test_outputs_go_to_the_repository_whatever_the_working_directory(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--cfg", "hydra", "--resolve")
    assert result.returncode == 0
    assert f"dir: {REPO}/outputs/runs/" in result.stdout
    assert f"dir: {REPO}/outputs/multirun/" in result.stdout


def test_a_refused_command_leaves_nothing_behind(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    before = _run_dirs()
    result = cli("train", "model.hidden=0")
    assert result.returncode == 2
    assert result.stderr.startswith("error: model.hidden=0: expected a positive integer")
    assert _run_dirs() == before and list(tmp_path.iterdir()) == []


def test_resuming_the_last_run_before_any_run_says_how_to_start_one(tmp_path):
    with pytest.raises(CheckpointError) as error:
        find_last(tmp_path / "outputs")
    assert str(error.value) == (
        f"ckpt_path=last: no run to resume yet (no checkpoints/last.ckpt under "
        f"{tmp_path / 'outputs'}); start one with `python src/train.py`"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_where_there_is_none_is_one_line(cli, tmp_path):
    result = cli("train", "trainer=gpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert (result.returncode, result.stderr) == (
        2,
        "error: trainer.accelerator=gpu: this machine has no CUDA GPU that torch can use "
        "(torch.cuda.is_available() is False); train on the CPU with trainer=default\n",
    )


def test_a_learning_rate_that_is_not_a_number_in_params_yaml_is_one_line(cli, tmp_path):
    params = (REPO / "params.yaml").read_text()
    assert "  lr: 0.001\n" in params
    (tmp_path / "params.yaml").write_text(params.replace("  lr: 0.001\n", "  lr: abc\n"))
    result = cli(
        "train", "--config-dir", str(tmp_path), "--config-name", "params",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (
        2,
        "error: optimizer.lr='abc': expected a positive learning rate\n",
    )


def test_running_out_of_memory_mid_run_is_one_line_and_fails_the_mlflow_run(
    cli, tiny_cli_overrides, tmp_path
):
    result = cli(
        "train",
        *tiny_cli_overrides,
        "+callbacks.oom._target_=conftest.AllocateTooMuch",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: out of memory: an allocation of 10,000,000,000,000 bytes (9313.2 GiB) failed"
    )
    assert "Traceback" not in result.stderr + result.stdout
    (run,) = mlflow_runs(tmp_path)[1]
    assert run.info.status == "FAILED"


@pytest.fixture
def small_fs(tmp_path):
    """`small_fs(size)`: a tmpfs of `size` mounted in tmp_path (root only, else skipped)."""
    mounts = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"fs{len(mounts)}"
        folder.mkdir()
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
        )
        if made.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:  # lazily: a store the test opened may still hold a file there
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def full_disk(small_fs) -> Path:
    """A 64 KiB file system: room for small files, not for a checkpoint."""
    return small_fs("64k")


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_naming_the_path(
    cli, tiny_cli_overrides, full_disk
):
    result = cli(
        "train", *tiny_cli_overrides, f"paths.output_dir={full_disk}", "logger=none",
        "model.hidden=64",
    )  # fmt: skip
    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"error: no space left on the disk to write {full_disk}/checkpoints/")
    assert error.endswith(".ckpt")
    assert "Traceback" not in result.stderr + result.stdout


def test_reports_are_valid_json_even_when_a_training_diverged(tmp_path):
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    atomic_write_json(tmp_path / "m.json", {"loss": float("nan"), "acc": [float("inf"), 0.5]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {"loss": None, "acc": [None, 0.5]}


def test_a_diverged_training_stops_at_that_step_as_a_failure(cli, tiny_cli_overrides, tmp_path):
    result = cli("train", *tiny_cli_overrides, "optimizer=sgd", "optimizer.lr=1e12")
    assert result.returncode == 2
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: the training diverged: its loss became ")
    assert error.endswith(
        "; lower optimizer.lr (it is 1000000000000.0); the checkpoints saved before are kept"
    )
    step = int(error.split(", step ")[1].split(";")[0])
    assert step < 10  # where it happened, not at an epoch's end (10 steps an epoch here)
    assert "Traceback" not in result.stderr + result.stdout
    (run,) = mlflow_runs(tmp_path)[1]
    assert run.info.status == "FAILED"
    # Nothing of the broken network was written: no checkpoint, no report.
    assert list((tmp_path / "run").glob("**/*.ckpt")) == []
    assert not (tmp_path / "run" / "reports" / "train_metrics.json").exists()


def test_tampered_data_and_no_mirror_is_one_line_and_opens_no_mlflow_run(
    cli, tiny_cli_overrides, tiny_mnist, tmp_path, monkeypatch
):
    from mnist_pipeline.data.download import fetch

    source, sha256s = tiny_mnist
    data = tmp_path / "data" / "mnist"
    fetch(data, sha256s, [str(source)])
    with (data / "train-labels-idx1-ubyte").open("r+b") as file:  # one label changed
        file.seek(20)
        file.write(b"\x09")
    monkeypatch.delenv("MNIST_MIRROR")
    result = cli("train", *tiny_cli_overrides)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "error: could not fetch train-labels-idx1-ubyte (expected sha256 "
        f"{sha256s['train-labels-idx1-ubyte']}) (no mirror); set $MNIST_MIRROR to a directory "
        "or URL holding the MNIST files"
    )
    assert "Traceback" not in result.stderr + result.stdout
    assert no_runs(tmp_path)  # found before any run was opened


@pytest.mark.slow
def test_a_tracking_store_that_cannot_be_written_is_one_line(
    cli, tiny_cli_overrides, small_fs, empty_store
):
    """A store on a read-only file system (here a tmpfs remounted read-only)."""
    folder = small_fs("8m")
    uri = empty_store(folder / "mlflow.db")  # a copy, closed: the remount finds nothing open
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    result = cli("train", *tiny_cli_overrides, f"logger.mlflow.tracking_uri={uri}")
    assert result.returncode == 2
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"error: MLflow store {uri}: ") and "Read-only file system" in error
    assert error.endswith("or train with logger=none")
    assert "Traceback" not in result.stderr + result.stdout
