"""MLflow tracking against real stores: a sqlite file and an `mlflow server` on loopback."""

import json
import threading
import time

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import free_port, mlflow_runs, no_runs

from mnist_pipeline.checkpoint_files import load_network
from mnist_pipeline.data.datamodule import MNISTDataModule
from mnist_pipeline.data.download import DownloadError
from mnist_pipeline.data.idx import load_images_and_labels
from mnist_pipeline.reporting.evaluation import logits_of
from mnist_pipeline.tracking.logger import (
    MLflowLogger,
    TrackingError,
    data_version,
    dataset_inputs,
)

pytest_plugins = ["cluster_engines"]  # mlflow_server


@pytest.mark.slow
def test_training_run_is_fully_tracked_on_a_tracking_server(tiny_run, mlflow_server, tmp_path):
    tiny_run("model.hidden=24", "model.activation=sigmoid", "trainer.log_every_n_steps=4")
    assert no_runs(tmp_path)  # all of it went to the server
    client, runs = mlflow_runs(mlflow_server)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mlp-hidden=24-activation=sigmoid"

    params = run.data.params
    assert params["model.hidden"] == "24" and params["model.activation"] == "sigmoid"
    assert params["optimizer.lr"] == "0.001" and params["trainer.max_epochs"] == "2"
    assert params["data.val_size"] == "100"

    # 500 samples in batches of 50: 10 optimizer steps per epoch. A per-epoch value's step is
    # its epoch; a per-step value's is Lightning's: the index (from 0) of its optimizer step.
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.step for m in history] == [0, 1]  # once per epoch
    history = client.get_metric_history(run.info.run_id, "train/loss_step")
    assert [m.step for m in history] == [3, 7, 11, 15, 19]
    assert all(0 < m.value < 3 for m in history)
    for key in ("train/loss", "train/acc", "val/loss", "test/acc", "test/loss", "lr-Adam"):
        assert key in run.data.metrics, key
    # The report's headline, its numbers those of metrics.json; the digits are a table.
    report = json.loads((tmp_path / "run" / "reports" / "metrics.json").read_text())
    assert run.data.metrics["test/acc"] == pytest.approx(report["accuracy"], abs=1e-6)
    for key in ("macro_f1", "worst_f1", "worst_digit"):
        assert run.data.metrics[f"test/{key}"] == pytest.approx(report[key]), key
    assert len(run.data.metrics) == 12 and "epoch" not in run.data.metrics

    tags = run.data.tags
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["git.dirty"] in ("True", "False")
    assert len(tags["data.version"]) == 16  # the tiny files' (test_run_page checks the value)
    assert "model.hidden=24" in tags["hydra.overrides"]
    assert tags["hydra.output_dir"] == str(tmp_path / "run")

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints", "reports", "model_card.md"} <= artifacts
    reports = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert "reports/digits.json" in reports
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/best.ckpt"
    ]
    figures = {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "reports/figures")
    }
    assert {"confusion_matrix.png", "misclassified.png", "training_curves.png"} <= figures

    # The logged model takes raw pixels and answers probabilities that match the checkpoint's.
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    images, _ = load_images_and_labels(
        tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte",
        tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte",
    )
    pixels = images[:64].float().numpy() / 255.0
    served = np.asarray(model.predict(pixels))
    assert served.shape == (64, 10)
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
    net, run_id = load_network(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert run_id == run.info.run_id
    expected = logits_of(net, images[:64]).softmax(dim=-1).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_failing_run_ends_failed(train_tiny, tmp_path):
    # Data that cannot be had (a wrong checksum: every mirror fails verification) fails the
    # command before any run is opened...
    with pytest.raises(DownloadError, match="could not fetch t10k-labels-idx1-ubyte"):
        train_tiny("data.files.t10k-labels-idx1-ubyte=" + "0" * 64)
    assert no_runs(tmp_path)
    # ...a training that fails on the way (out of memory at its third step) fails its run.
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        train_tiny("+callbacks.oom._target_=conftest.AllocateTooMuch")
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]
    # Its artifacts go beside the sqlite store, not to ./mlruns of the working directory.
    assert runs[0].info.artifact_uri.startswith((tmp_path / "mlruns" / "mnist").as_uri())


def test_unreachable_server_fails_fast(train_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(TrackingError) as error:
        train_tiny()
    assert "is unreachable" in str(error.value) and "logger=none" in str(error.value)
    assert not (tmp_path / "data").exists()  # failed before any data was fetched
    assert time.monotonic() - started < 30


def test_store_that_cannot_be_opened_fails_the_training_with_its_uri(train_tiny, tmp_path):
    # The run is created in the background while training starts; its error still ends it.
    not_a_directory = tmp_path / "plain-file"
    not_a_directory.write_text("")
    uri = f"sqlite:///{not_a_directory}/mlflow.db"
    with pytest.raises(TrackingError) as error:
        train_tiny(f"logger.mlflow.tracking_uri={uri}")
    assert f"MLflow store {uri}: FileExistsError" in str(error.value)
    assert "logger=none" in str(error.value)


class FirstStepProbe(pl.Callback):
    """Notes whether the MLflow run existed when the first training batch started, then lets
    its creation finish (see the test below)."""

    run_existed: bool | None = None
    release = threading.Event()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if FirstStepProbe.run_existed is None:
            (logger,) = [lg for lg in trainer.loggers if isinstance(lg, MLflowLogger)]
            FirstStepProbe.run_existed = logger._created.done()
            FirstStepProbe.release.set()


def test_training_starts_while_the_mlflow_run_is_created(train_tiny, tmp_path, monkeypatch):
    """The run is created in a background thread, and the first step does not wait for it
    (Lightning touches `logger.experiment` before setup; the learning rate is logged as the
    epoch starts): everything logged meanwhile reaches the run."""
    create = MLflowLogger._create

    def slow_create(self, arguments):
        FirstStepProbe.release.wait(timeout=20)  # until the first batch, at most 20 s
        return create(self, arguments)

    monkeypatch.setattr(MLflowLogger, "_create", slow_create)
    monkeypatch.setattr(FirstStepProbe, "release", threading.Event())
    monkeypatch.setattr(FirstStepProbe, "run_existed", None)
    train_tiny(
        "trainer.max_epochs=1",
        "+callbacks.probe={_target_:test_tracking.FirstStepProbe}",
        "report=false",  # neither the report nor the MLflow model is asserted here
        "logger.mlflow.log_model=false",
    )
    assert FirstStepProbe.run_existed is False
    _, (run,) = mlflow_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert {"lr-Adam", "train/loss", "val/acc", "test/acc"} <= set(run.data.metrics)
    assert run.data.params["model.hidden"]


def test_a_data_version_is_claimed_only_for_the_files_a_data_module_verified(tmp_path):
    files = {"train-images-idx3-ubyte": "1" * 64, "train-labels-idx1-ubyte": "2" * 64}
    here, there = (MNISTDataModule(dir=tmp_path / d, files=files) for d in ("here", "there"))
    version = data_version(here)
    assert len(version) == 16 and version == data_version(there)  # the data, not its place
    other = MNISTDataModule(dir=tmp_path / "here", files={**files, "train-labels-idx1-ubyte": "3"})
    assert data_version(other) != version
    (train,) = dataset_inputs(here, {"train": 500})
    assert train == {
        "name": "mnist-train",
        "digest": version,
        "source": {"uri": str(tmp_path / "here")},
        "context": "training",
        "rows": 500,
    }
    # A user's data module that pins no files: no version, no dataset inputs.
    assert data_version(pl.LightningDataModule()) is None
    assert dataset_inputs(pl.LightningDataModule(), {"train": 500}) == []
