"""From one machine to a cluster, on the real engines started on loopback: a tracking server
on PostgreSQL with proxied artifacts, a study shared by two "hosts" through PostgreSQL, and
sweeps and searches run as Ray tasks on a two-node cluster. One PostgreSQL server, one
tracking server and one Ray cluster serve the whole module."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import warm
from cluster_engines import Postgres, RayCluster, TrackingServer, missing
from conftest import REPO, make_tiny_mnist, mlflow_runs
from optuna.trial import TrialState

from mnist_pipeline.search.study import open_storage

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
# The sweeps' jobs: neither their reports nor MLflow models are asserted (the first training's are).
QUICK = (
    "report=false", "logger.mlflow.log_model=false", "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=1",
)  # fmt: skip


@pytest.fixture(scope="module")
def postgres():
    if reason := missing("postgresql"):
        pytest.skip(reason)
    server = Postgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracking(postgres, tmp_path_factory):
    """`mlflow server --backend-store-uri postgresql://... --artifacts-destination DIR`."""
    server = TrackingServer(tmp_path_factory.mktemp("server"), postgres.database("mlflow"))
    server.start()
    yield server
    server.kill()  # throwaway: its database goes with the PostgreSQL server


@pytest.fixture(scope="module")
def ray_cluster():
    if reason := missing("ray", "postgresql"):
        pytest.skip(reason)
    cluster = RayCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Factory: `elsewhere(name)`: the argv of `python src/train.py` (of this checkout) for a
    "host" working in its own folder `tmp_path/name` (its cwd, data and outputs: nothing
    shared with another host but the servers), on the tiny data set, with overrides."""
    source = tmp_path / "tiny_mnist"
    sha256s = make_tiny_mnist(source)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MNIST_MIRROR", raising=False)

    def home(name: str) -> Path:
        (tmp_path / name).mkdir(exist_ok=True)
        return tmp_path / name

    def command(name: str, *overrides: str, script: str = "src/train.py") -> list[str]:
        home = command.home(name)
        flags = [arg for arg in overrides if arg.startswith("-")]
        return [
            sys.executable, str(REPO / script), *flags,
            f"data.dir={home / 'data'}", f"data.local_mirror={source}", "data.mirrors=[]",
            "data.val_size=100", "data.batch_size=50", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            *(f"data.files.{file}={digest}" for file, digest in sha256s.items()),
            f"hydra.run.dir={home / 'run'}", f"hydra.sweep.dir={home / 'multirun'}",
            *(arg for arg in overrides if not arg.startswith("-")),
        ]  # fmt: skip

    command.home = home
    return command


def run(argv: list[str], cwd, **popen) -> subprocess.CompletedProcess:
    """`argv` (`python src/<script>.py ...`) run warm (tests/warm.py) to its end, successfully."""
    result = warm.run(argv, cwd=cwd, capture_output=True, text=True, timeout=400, **popen)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_a_team_tracking_server_on_postgresql(tracking, elsewhere, tmp_path):
    """A training of another checkout logs everything through the server; its model and
    checkpoint come back through it; a sweep nests there. Artifacts go through the server."""
    uri = f"logger.mlflow.tracking_uri={tracking}"
    home = elsewhere.home("host-a")
    run(elsewhere("host-a", uri, "+trainer.limit_train_batches=4"), cwd=home)
    client, runs = mlflow_runs(str(tracking))
    (training,) = runs
    run_id = training.info.run_id
    assert training.info.status == "FINISHED"
    assert training.data.params["model.hidden"] and "val/acc" in training.data.metrics
    assert training.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "checkpoints", "reports"} <= artifacts
    figures = [a.path for a in client.list_artifacts(run_id, "reports/figures")]
    assert figures and all(path.endswith(".png") for path in figures)
    (model,) = client.search_logged_models([training.info.experiment_id])
    assert model.source_run_id == run_id
    # What the server stores is in its artifact folder: the client wrote none of it.
    stored = {p.name for p in tracking.artifacts.rglob("*") if p.is_file()}
    assert {"best.ckpt", "config.yaml", "MLmodel"} <= stored
    assert not list(home.rglob("mlruns")) and not list(home.rglob("mlflow.db"))

    # predict.py loads the model through the server, from a third folder.
    other = elsewhere.home("host-b")
    digit = other / "digit.png"
    from PIL import Image

    one = Image.new("L", (28, 28))
    one.paste(255, (12, 4, 16, 24))  # a stroke: a one
    one.save(digit)
    predicted = run(
        [sys.executable, str(REPO / "src/predict.py"), f"model_uri=runs:/{run_id}/model",
         f"image={digit}", "json=true"],
        cwd=other, env={**os.environ, "MLFLOW_TRACKING_URI": str(tracking)},
    )  # fmt: skip
    assert '"guess"' in predicted.stdout

    # evaluate.py scores the checkpoint downloaded from the server and logs into its run.
    downloaded = client.download_artifacts(run_id, "checkpoints/best.ckpt", str(other))
    before = len(client.get_metric_history(run_id, "test/macro_f1"))
    run(elsewhere("host-b", uri, f"ckpt_path={downloaded}", script="src/evaluate.py"), cwd=other)
    assert len(client.get_metric_history(run_id, "test/macro_f1")) == before + 1

    # A grid sweep's parent and children nest on the server as they do locally.
    run(elsewhere("host-b", uri, "-m", "model.hidden=16,32", *QUICK), cwd=other)
    _, runs = mlflow_runs(str(tracking))
    sweep = [r for r in runs if r.info.run_id != run_id]
    (parent,) = [r for r in sweep if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in sweep if r is not parent]
    assert sorted(r.data.params["model.hidden"] for r in children) == ["16", "32"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in sweep)


def study(url: str, name: str = "mnist-mlp") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def test_hosts_started_together_on_a_new_database_all_open_the_study(postgres):
    """Each creates Optuna's tables if missing; on PostgreSQL all but one of those racing
    CREATEs fail (a duplicate key, or "type ... already exists"): `open_storage` opens it
    again. Four races on four new databases: how a CREATE loses varies from race to race."""
    failures = []

    def host(url: str, start: threading.Barrier) -> None:
        start.wait()
        try:
            open_storage(url, heartbeat_interval=1)
        except Exception as error:  # noqa: BLE001 (reported below)
            failures.append(repr(error))

    for race in range(4):
        url, start = postgres.database(f"together_{race}"), threading.Barrier(4)
        hosts = [threading.Thread(target=host, args=(url, start)) for _ in range(4)]
        for thread in hosts:
            thread.start()
        for thread in hosts:
            thread.join()
    assert failures == []


def search(url: str, *overrides: str) -> tuple[str, ...]:
    """A search whose study is in the database `url`, beating every second."""
    return (
        "hparams_search=optuna", f"hydra.sweeper.storage={url}",
        "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3",
        "report=false", *overrides,
    )  # fmt: skip


def as_host(name: str, argv: list[str]) -> list[str]:
    """`argv` run under hostname `name` (a UTS namespace of its own: root only)."""
    return ["unshare", "--uts", "sh", "-c", f'hostname {name} && exec "$@"', "sh", *argv]


def test_two_hosts_share_a_study_on_postgresql_and_a_dead_trial_is_redone(postgres, elsewhere):
    """Host A dies (kill -9) mid-trial; host B, under another hostname, finds the trial dead by
    its heartbeat, retries it, and the study ends with exactly n trials, none twice."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to run a second host")
    url = postgres.database("shared_study")
    settings = search(url, "hydra.sweeper.n_trials=4", "trainer.max_epochs=4", "logger=none",
                      "hydra.sweeper.pruner=none")  # fmt: skip
    # Host A's trials are long: it is killed mid-trial, never between a trial's last epoch
    # and its tell (4 epochs of the tiny data could all fit between two polls below).
    a = warm.Popen(
        elsewhere("host-a", *settings, "trainer.max_epochs=100"), cwd=elsewhere.home("host-a"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    # Cold: `unshare` gives it a hostname of its own, which a fork of this host cannot have.
    b = subprocess.Popen(
        as_host("other-host", elsewhere("host-b", *settings)), cwd=elsewhere.home("host-b"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    here = socket.gethostname()
    deadline = time.monotonic() + 300
    while True:  # until a trial of host A has trained an epoch
        assert a.poll() is None and time.monotonic() < deadline, a.stderr and a.stderr.read()
        try:
            trials = study(url).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study does not exist yet
            trials = []
        mine = [t for t in trials if t.user_attrs.get("host") == here and t.intermediate_values]
        if mine:
            break
        time.sleep(0.1)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    killed = mine[0].number

    output = b.communicate(timeout=400)[0]
    assert b.returncode == 0, output[-3000:]
    assert "Warning" not in output, output  # Optuna's "experimental" heartbeats: nothing to act on
    trials = study(url).trials
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4 and not [t for t in trials if t.state == TrialState.RUNNING], (
        [(t.number, t.state.name, t.system_attrs, t.user_attrs) for t in trials],
        output[-3000:],
    )
    assert trials[killed].state == TrialState.FAIL  # by B, which could not see A's process
    (retry,) = [t for t in done if t.system_attrs.get("failed_trial") == killed]
    assert retry.params == trials[killed].params and retry.user_attrs["host"] == "other-host"
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4  # none twice
    assert {t.user_attrs["host"] for t in trials} == {here, "other-host"}  # both worked on it


def test_sweeps_and_searches_run_as_ray_tasks(ray_cluster, postgres, tracking, elsewhere):
    """`hydra/launcher=ray_cluster` on an existing two-node cluster: a grid's jobs and a search's
    trials run as Ray tasks (not in the command's process), each an MLflow child run of its
    sweep's parent; trials report to the study in PostgreSQL, and its pruner stops some."""
    home = elsewhere.home("host-a")
    ray = (
        "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_cluster.address}",
        f"logger.mlflow.tracking_uri={tracking}", "logger.mlflow.experiment_name=ray",
    )  # fmt: skip
    grid = warm.Popen(
        elsewhere("host-a", "-m", "model.hidden=16,32", *QUICK, *ray), cwd=home,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = grid.communicate(timeout=400)[0]
    assert grid.returncode == 0, output[-4000:]
    client, _ = mlflow_runs(str(tracking))
    experiment = client.get_experiment_by_name("ray").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert sorted(r.data.params["model.hidden"] for r in children) == ["16", "32"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert parent.data.tags["mnist.pid"] == str(grid.pid)  # the command's process...
    assert str(grid.pid) not in {r.data.tags["mnist.pid"] for r in children}  # ...not the jobs'

    url = postgres.database("ray_study")
    settings = search(
        url, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.params=null",
        "hydra.sweeper.pruner.n_startup_trials=1", "optimizer.lr=choice(0.01, 0.000001)",
        "seed=range(1, 3)", "trainer.max_epochs=3", "logger.mlflow.log_model=false", *ray[:3],
        "+trainer.limit_train_batches=4",
        "logger.mlflow.experiment_name=ray-search",
    )  # fmt: skip
    searched = warm.Popen(
        elsewhere("host-a", *settings), cwd=home,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    output = searched.communicate(timeout=400)[0]
    assert searched.returncode == 0, output[-4000:]
    trials = study(url).trials
    assert [t.state.is_finished() for t in trials] == [True] * len(trials)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4
    assert [t for t in done if t.state == TrialState.PRUNED]  # the pruner worked over Ray
    experiment = client.get_experiment_by_name("ray-search").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {int(r.data.tags["optuna.trial"]): r for r in runs if r is not parent}
    assert sorted(children) == sorted(t.number for t in done)
    for trial in done:
        run_ = children[trial.number]
        assert run_.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run_.data.tags["optuna.state"] == trial.state.name
        assert run_.data.tags["mnist.pid"] != str(searched.pid)  # a Ray task's
