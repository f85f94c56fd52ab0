"""The real `dvc repro` on a copy of the project, fed a tiny data set from a loopback mirror."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

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
        if source.is_file() and not name.startswith(
            ("data/", "checkpoints/", "reports/", "dvc.lock")
        ):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _dvc(project: Path, *args: str) -> str:
    dvc = Path(sys.executable).with_name("dvc")
    result = subprocess.run(
        [str(dvc), *args], cwd=project, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path, tiny_mnist, http_mirror, monkeypatch):
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
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
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
    assert metrics["samples"] == 200 and metrics["accuracy"] > 0.8
    assert set(metrics["per_class"]["3"]) == {"precision", "recall", "f1"}
    confusion = json.loads((project / "reports" / "confusion.json").read_text())
    assert len(confusion) == 200 and set(confusion[0]) == {"actual", "predicted"}
    assert (project / "reports" / "figures" / "confusion_matrix.png").is_file()
    assert (project / "dvc.lock").is_file()
    shown = _dvc(project, "metrics", "show", "--json")
    assert '"accuracy"' in shown

    assert "Data and pipelines are up to date" in _dvc(project, "repro")

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["hidden"] = 16
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _dvc(project, "repro")
    assert "Running stage 'download'" not in third
    assert "Running stage 'train'" in third and "Running stage 'evaluate'" in third
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["model"]["hidden"] == 16
    assert os.path.getsize(project / "reports" / "metrics.json") > 0
