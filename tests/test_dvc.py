"""The real `dvc repro` on a copy of the project, fed a tiny data set from a loopback mirror."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, mlflow_runs

from mnist_pipeline.stages.params import params_drift, warn_if_params_stale

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _copy_project(destination: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file() and not name.startswith(("data/", "checkpoints/", "reports/")):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _dvc(project: Path, *args: str, check: bool = True) -> str:
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run(
        [str(dvc), *args], cwd=project, capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    else:
        assert result.returncode != 0, f"dvc {' '.join(args)} should have failed"
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path, tiny_mnist, http_mirror, monkeypatch, empty_store):
    source, sha256s = tiny_mnist
    project = tmp_path / "project"
    _copy_project(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(
        files=sha256s,
        mirrors=[str(http_mirror(source))],
        local_mirror=None,
        val_size=100,
        batch_size=50,
    )
    params["trainer"]["max_epochs"] = 2
    params["model"]["hidden"] = 32
    params["logger"]["mlflow"]["log_model"] = False  # not DVC's: test_tracking.py's
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    # As a user's shell: the stages write Python's bytecode caches into src/ as they import.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_store(tmp_path / "mlflow.db"))
    git = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for key, value in git.items():
        monkeypatch.setenv(key, value)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=project, check=True)
    return project


@pytest.mark.slow
def test_dvc_repro_runs_the_pipeline_and_is_a_noop_when_nothing_changed(project):
    first = _dvc(project, "repro")
    for stage in ("download", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8 and 0 <= metrics["worst_digit"] <= 9
    per_class = json.loads((project / "reports" / "per_class.json").read_text())
    assert set(per_class[3]) == {"digit", "precision", "recall", "f1"}
    confusion = json.loads((project / "reports" / "confusion.json").read_text())
    assert len(confusion) == 200 and set(confusion[0]) == {"actual", "predicted"}
    assert (project / "reports" / "figures" / "confusion_matrix.png").is_file()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["model"]["hidden"] == 32
    # params.yaml edited by hand, not composed from conf/: the stage says so.
    assert "params.yaml differs from conf/ at data.local_mirror, data.mirrors" in first
    # A repro of a clean checkout is tracked as clean: the committed dvc.lock (the project's,
    # stale for this data), which DVC rewrites between stages, does not count.
    _, runs = mlflow_runs(project.parent)
    assert [run.data.tags["git.dirty"] for run in runs] == ["False"]
    # `dvc exp show` has a column per metric: a handful, not 10 digits x 3 scores.
    shown = json.loads(_dvc(project, "metrics", "show", "--json"))
    files = shown[""]["data"]
    assert {name: len(files[name]["data"]) for name in files} == {
        "reports/metrics.json": 5,
        "reports/train_metrics.json": 4,
    }

    assert "Data and pipelines are up to date" in _dvc(project, "repro")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "results")
    tracked = {
        name: (project / name).read_bytes() for name in _git(project, "ls-files", "reports").split()
    }
    assert "reports/train_metrics.json" in tracked and "reports/training_curve.csv" in tracked

    # A stage that fails (a value the config check refuses) leaves the tracked outputs alone,
    # and the checkpoints (DVC's persist: it would delete them before running the stage).
    best = (project / "checkpoints" / "best.ckpt").read_bytes()
    _set_param(project, "model", "hidden", 0)
    failed = _dvc(project, "repro", check=False)
    assert "model.hidden=0: expected a positive integer" in failed
    # A change of model.hidden runs train, not download.
    assert "Running stage 'download'" not in failed and "Running stage 'train'" in failed
    assert {name: (project / name).read_bytes() for name in tracked} == tracked
    assert (project / "checkpoints" / "best.ckpt").read_bytes() == best
    assert _git(project, "status", "--porcelain").splitlines() == [" M params.yaml"]

    # An edit of conf/ alone is not "up to date": the train stage depends on conf/.
    mlp = project / "conf" / "model" / "mlp.yaml"
    mlp.write_text(mlp.read_text().replace("hidden: 128", "hidden: 64"))
    status = _dvc(project, "status", "train")
    assert "changed deps" in status and "conf" in status


def _set_param(project: Path, group: str, key: str, value: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[group][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _git(project: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=project, capture_output=True, text=True, check=True
    ).stdout


def test_params_yaml_is_conf_composed():
    # What `dvc repro` runs on is what conf/ says (re-compose after editing conf/).
    assert params_drift(REPO / "params.yaml", REPO / "conf") == []


def test_a_stage_under_dvc_repro_warns_when_params_yaml_is_not_conf_composed(
    tmp_path, monkeypatch, caplog
):
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["hidden"] = 64  # conf/ edited, params.yaml not re-composed (or vice versa)
    params["optimizer"]["lr"] = 0.01
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert params_drift(tmp_path / "params.yaml", tmp_path / "conf") == [
        "model.hidden",
        "optimizer.lr",
    ]
    monkeypatch.setenv("DVC_STAGE", "train")
    started = time.monotonic()
    warn_if_params_stale(tmp_path)
    assert time.monotonic() - started < 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "params.yaml differs from conf/ at model.hidden, optimizer.lr: this stage runs on "
        "params.yaml; after editing conf/, run `dvc exp run` (it composes conf/ into "
        "params.yaml), not `dvc repro`"
    ]
    caplog.clear()
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")  # `dvc exp run` composed it, -S overrides too
    warn_if_params_stale(tmp_path)
    (tmp_path / "params.yaml").write_text("model: [")  # the check never fails the stage
    monkeypatch.delenv("DVC_EXP_NAME")
    warn_if_params_stale(tmp_path)
    assert [r.getMessage()[:41] for r in caplog.records] == [
        "could not compare params.yaml with conf/:"
    ]
