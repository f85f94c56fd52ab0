"""A tracking store out of reach costs one bounded wait; what it missed is kept and sent later."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import warm
from conftest import REPO, free_port, mlflow_runs

from mnist_pipeline.config import UserError
from mnist_pipeline.networks import Probabilities
from mnist_pipeline.networks.mlp import MLP
from mnist_pipeline.tracking.outbox import (
    MODEL_FILE,
    RECORDS,
    UNSENT_DIR,
    Outbox,
    TrackingError,
    bound_http_waits,
    sync,
)

pytest_plugins = ["cluster_engines"]  # mlflow_server


@pytest.fixture
def sqlite_run(tmp_path, empty_store):
    """(uri, client, run id) of a fresh RUNNING run in a real sqlite store."""
    from mlflow import MlflowClient

    uri = empty_store(tmp_path / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("mnist", artifact_location=(tmp_path / "mlruns").as_uri())
    return uri, client, client.create_run(experiment).info.run_id


@pytest.fixture
def dead_server(monkeypatch):
    """(URI of an http server that is not there, its client) with the waits `bound_http_waits`
    sets for a training, but no retries: a refused connection is what these tests need (the
    retries' bound is the killed-server test's)."""
    from mlflow import MlflowClient

    for name in ("MAX_RETRIES", "BACKOFF_FACTOR", "TIMEOUT"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    bound_http_waits(uri)
    return uri, MlflowClient(uri)


def records(tmp_path, run_id):
    artifact = tmp_path / "curve.csv"
    artifact.write_text("epoch,val/acc\n0,0.5\n")
    return [
        {"params": {"model.hidden": "24"}},
        {"text": "seed: 7\n", "file": "config.yaml"},
        {"metrics": [["val/acc", 0.5, 1000, 10], ["val/acc", 0.75, 2000, 20]]},
        {"artifact": str(artifact), "dir": "reports"},
        {"table": [{"digit": 0, "f1": 0.9}, {"digit": 1, "f1": 0.8}], "file": "reports/t.json"},
        {
            "datasets": [
                {
                    "name": "mnist-train",
                    "digest": "0" * 16,
                    "source": {"uri": "data/mnist"},
                    "context": "training",
                    "rows": 500,
                }
            ]
        },
        {"status": "FINISHED"},
    ]


def test_records_are_kept_once_the_store_is_out_of_reach_and_synced_in_order(
    tmp_path, sqlite_run, dead_server
):
    uri, client, run_id = sqlite_run
    dead_uri, dead_client = dead_server
    outbox = Outbox(dead_uri, tmp_path / "run" / UNSENT_DIR, run_id)
    started = time.monotonic()
    for record in records(tmp_path, run_id):
        outbox.post(dead_client, record)
    assert time.monotonic() - started < 10  # one refused connection, then no more asking
    assert outbox.offline
    lines = (tmp_path / "run" / UNSENT_DIR / RECORDS).read_text().splitlines()
    assert json.loads(lines[0]) == {"tracking_uri": dead_uri, "run_id": run_id}
    # The artifact from outside the run folder is kept as a copy inside it.
    expected = records(tmp_path, run_id)
    expected[3]["artifact"] = f"{UNSENT_DIR}/files/curve.csv"
    assert [json.loads(line) for line in lines[1:]] == expected
    with pytest.raises(TrackingError, match=r"7 records of run .* src/sync.py .*run"):
        outbox.check_sent()

    # The store comes back (here: under another address).
    count, synced = sync(tmp_path / "run", tracking_uri=uri)
    assert (count, synced.run_id) == (7, run_id)
    assert not (tmp_path / "run" / UNSENT_DIR).exists()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model.hidden": "24"}
    history = client.get_metric_history(run_id, "val/acc")
    assert [(m.step, m.value) for m in history] == [(10, 0.5), (20, 0.75)]
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "reports"}
    table = json.loads(
        Path(client.download_artifacts(run_id, "reports/t.json", str(tmp_path))).read_text()
    )
    assert table == {"columns": ["digit", "f1"], "data": [[0, 0.9], [1, 0.8]]}
    (data,) = run.inputs.dataset_inputs
    assert (data.dataset.name, data.dataset.digest, data.tags[0].value) == (
        "mnist-train",
        "0" * 16,
        "training",
    )
    outbox.check_sent()  # nothing waits any more


def test_a_record_the_store_refuses_is_raised_not_kept(tmp_path, sqlite_run):
    uri, client, run_id = sqlite_run
    client.log_param(run_id, "model.hidden", "24")
    outbox = Outbox(uri, tmp_path / UNSENT_DIR, run_id)
    with pytest.raises(Exception, match="model.hidden"):  # MLflow refuses to change a param
        outbox.post(client, {"params": {"model.hidden": "32"}})
    assert not outbox.offline and not (tmp_path / UNSENT_DIR).exists()


def test_without_a_folder_the_error_is_raised(sqlite_run, dead_server):
    _, _, run_id = sqlite_run
    with pytest.raises(Exception, match="Max retries exceeded"):
        Outbox(dead_server[0], None, run_id).post(dead_server[1], {"status": "FINISHED"})


def test_a_resumed_run_sends_the_kept_records_first_and_goes_on_running(
    tmp_path, sqlite_run, dead_server
):
    uri, client, run_id = sqlite_run
    folder = tmp_path / UNSENT_DIR
    offline = Outbox(dead_server[0], folder, run_id)
    for record in records(tmp_path, run_id):
        offline.post(dead_server[1], record)
    # A crash while appending leaves half a line: it is left out, the rest is sent.
    with open(folder / RECORDS, "a") as file:
        file.write('{"metrics": [["val/acc", 0.9')

    resumed = Outbox(uri, folder, run_id)
    assert resumed.replay(client) == "FINISHED"  # the status it had; the run goes on
    assert client.get_run(run_id).info.status == "RUNNING"
    assert len(client.get_metric_history(run_id, "val/acc")) == 2
    assert not folder.exists()


def test_a_kept_model_is_logged_by_sync(tmp_path, sqlite_run, dead_server):
    uri, client, run_id = sqlite_run
    model = Probabilities(MLP(hidden=8)).eval()
    example = torch.rand(3, 28, 28)
    outbox = Outbox(dead_server[0], tmp_path / UNSENT_DIR, run_id)
    network = {"_target_": "mnist_pipeline.networks.mlp.MLP", "hidden": 8}
    outbox.post(dead_server[1], {"model": model, "network": network, "example": example})
    outbox.post(dead_server[1], {"register": "kept", "description": "card", "key": "k1"})
    assert (tmp_path / UNSENT_DIR / MODEL_FILE).is_file()
    kept = tmp_path / "kept-copy"
    shutil.copytree(tmp_path / UNSENT_DIR, kept)

    sync(tmp_path, tracking_uri=uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(example.numpy())
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(served), model(example))
    # The records sent again, as after an answer lost on the way back: one version all the same.
    assert not (tmp_path / UNSENT_DIR).exists()  # all sent
    shutil.copytree(kept, tmp_path / UNSENT_DIR)
    sync(tmp_path, tracking_uri=uri)
    (version,) = client.search_model_versions("name='kept'")
    assert (version.run_id, version.description) == (run_id, "card")


def test_sync_of_a_folder_without_records_names_it(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path}/{RECORDS}: no kept MLflow records"):
        sync(tmp_path)


@pytest.mark.slow
def test_a_tracking_server_killed_mid_training_loses_nothing(tiny_run, mlflow_server, tmp_path):
    """kill -9 of the server during training: training and checkpoints go on, the command
    ends soon with one line naming the kept records, and `src/sync.py` sends them later."""
    epochs = 4  # killed after the second: the 2 others, the test and the report come after it
    process = tiny_run.popen(
        f"trainer.max_epochs={epochs}", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    curve = tmp_path / "run" / "reports" / "training_curve.csv"
    deadline = time.monotonic() + 120
    while not (curve.is_file() and len(curve.read_text().splitlines()) >= 3):  # 2 epochs
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    mlflow_server.kill()
    killed = time.monotonic()
    assert len(curve.read_text().splitlines()) < 1 + epochs  # mid-training: an epoch is to come
    _, stderr = process.communicate(timeout=300)
    # Unbounded, MLflow's retries kept a 10 s training waiting 12 minutes; bounded, the rest of
    # the training (2 epochs, test, report) is what takes time, up to a minute on a busy CPU.
    assert time.monotonic() - killed < 120, stderr
    assert process.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"python src/sync.py {tmp_path / 'run'}" in errors[0], stderr
    # Nothing trained is lost: all the epochs, their checkpoints, the test and the report.
    assert len(curve.read_text().splitlines()) == 1 + epochs
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt")["epoch"] == epochs - 1
    assert json.loads((tmp_path / "run" / "reports" / "train_metrics.json").read_text())["epochs"]

    mlflow_server.start()  # the server is back: same address, same store
    sent = warm.run(
        [sys.executable, "src/sync.py", str(tmp_path / "run")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sent.returncode == 0, sent.stderr
    client, (run,) = mlflow_runs(mlflow_server)
    assert f"records of MLflow run {run.info.run_id}" in sent.stdout
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val/acc")
    # Each epoch's, at step = the epoch (from 0).
    assert [m.step for m in history] == list(range(epochs))
    assert "test/acc" in run.data.metrics and "test/macro_f1" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints", "reports"} <= artifacts
    assert client.search_logged_models([run.info.experiment_id])[0].source_run_id == (
        run.info.run_id
    )
    assert not (tmp_path / "run" / UNSENT_DIR).exists()
