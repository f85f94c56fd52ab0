"""Each training holds its output directory; parallel trainings never share one."""

import subprocess
import sys
import time

import pytest
import warm
from conftest import REPO, mlflow_runs

from mnist_pipeline.checkpoint_files import load_network
from mnist_pipeline.config import ConfigError
from mnist_pipeline.stages.outputs import held


@pytest.mark.slow
def test_a_held_directory_is_refused_to_another_live_process(tmp_path):
    ready = tmp_path / "ready"
    code = (
        "import sys, time; from pathlib import Path\n"
        "from mnist_pipeline.stages.outputs import held\n"
        "with held(Path(sys.argv[1])):\n"
        "    Path(sys.argv[2]).write_text('held'); time.sleep(60)\n"
    )
    (tmp_path / "holder.py").write_text(code)
    other = warm.Popen([sys.executable, str(tmp_path / "holder.py"), str(tmp_path / "run"), ready])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert other.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(ConfigError, match="is in use by another training"):
            with held(tmp_path / "run"):
                pass
    finally:
        other.kill()  # as kill -9: no clean-up of its own
        other.wait()
    # Its process is gone now: the directory is taken over, and released at the end.
    with held(tmp_path / "run") as directory:
        assert directory == tmp_path / "run"
        with pytest.raises(ConfigError, match="is in use by another training"):
            with held(tmp_path / "run"):
                pass
    with held(tmp_path / "run"):
        pass


@pytest.mark.slow
def test_trainings_started_together_on_a_fresh_store_keep_apart(tiny_run, tmp_path):
    # As a user would: run directories named as by default (to the microsecond; here under
    # tmp_path, not the repository's outputs/), a new sqlite store, three trainings started in
    # the same second.
    (tmp_path / "mlflow.db").unlink()  # not the fixture's ready-made store: a new one
    default = "outputs/runs/${launch_time:%Y-%m-%d}/${launch_time:%H-%M-%S-%f}"
    assert f"dir: ${{project_root:}}/{default}" in (REPO / "conf" / "config.yaml").read_text()
    processes = {}
    for hidden in (16, 24, 40):
        command = [
            *(
                arg
                for arg in tiny_run.command(f"model.hidden={hidden}", "report=false")
                if not arg.startswith("hydra.run.dir=")
            ),
            f"hydra.run.dir={tmp_path}/{default}",
        ]
        processes[hidden] = warm.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    for hidden, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"hidden={hidden}:\n{stderr[-3000:]}"

    directories = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(directories) == 3
    trained = {}
    for directory in directories:
        net, run_id = load_network(directory / "checkpoints" / "best.ckpt")
        trained[net.layers[2].out_features] = (directory, run_id)
    assert sorted(trained) == [16, 24, 40]  # each directory holds its own training
    _, runs = mlflow_runs(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    by_id = {r.info.run_id: r for r in runs}
    for hidden, (directory, run_id) in trained.items():
        run = by_id[run_id]
        assert run.data.params["model.hidden"] == str(hidden)
        assert run.data.tags["hydra.output_dir"] == str(directory)


def test_a_published_training_replaces_the_outputs_only_when_it_succeeds(
    cli, tiny_cli_overrides, tmp_path, recwarn
):
    """What the DVC train stage does: train in a staging directory, publish into the
    repository at the end; a training that fails mid-way leaves the last good outputs."""
    target, staging = tmp_path / "repo", tmp_path / "staging"
    (target / "checkpoints").mkdir(parents=True)
    (target / "checkpoints" / "best.ckpt").write_bytes(b"the last good one")
    (target / "reports").mkdir()
    (target / "reports" / "training_curve.csv").write_text("epoch\n0\n1\n")
    (target / "reports" / "metrics.json").write_text("{}")  # the evaluate stage's
    paths = [f"paths.output_dir={staging}", f"paths.publish_dir={target}", "logger=none"]

    failed = cli(
        "train", *tiny_cli_overrides, *paths,
        "+callbacks.oom._target_=conftest.AllocateTooMuch",
    )  # fmt: skip
    assert failed.returncode == 1
    assert f"{target}/checkpoints and reports are as they were" in failed.stdout
    assert (target / "checkpoints" / "best.ckpt").read_bytes() == b"the last good one"
    assert (target / "reports" / "training_curve.csv").read_text() == "epoch\n0\n1\n"

    assert (staging / "checkpoints" / "last.ckpt").is_file()  # saved on the way out
    (staging / "reports").mkdir(exist_ok=True)
    (staging / "reports" / "stale.png").write_bytes(b"of the failed training")

    assert cli("train", *tiny_cli_overrides, *paths).returncode == 0
    assert sorted(p.name for p in (target / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (target / "reports" / "stale.png").exists()  # the failed run's leftovers went
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]
    curve = (target / "reports" / "training_curve.csv").read_text().splitlines()
    assert len(curve) == 3  # a header and the 2 epochs of this training
    assert (target / "reports" / "metrics.json").read_text() == "{}"
    assert not (staging / "checkpoints").exists()
