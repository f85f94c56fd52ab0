"""A real 2-process DDP training on CPU (gloo), launched by Lightning from the Hydra entry point."""

import json
import pickle

import pytest
from conftest import REPO, mlflow_runs

from mnist_pipeline.checkpoint_files import RUN_ID_KEY, load_network
from mnist_pipeline.data.idx import load_images_and_labels
from mnist_pipeline.reporting.evaluation import logits_of, score
from mnist_pipeline.tracking.logger import MLflowLogger, RunCallback


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "probes"))
    result = tiny_run(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "model.hidden=32",
        # Not what DDP changes: the figures and the MLflow model (test_tracking.py's).
        "report=false",
        "logger.mlflow.log_model=false",
        "+callbacks.record_samples={_target_:record_samples.RecordSamples,dirpath:null}",
    )
    run_dir = tmp_path / "run"
    # Said once, by rank 0; Lightning's advice to sync values torchmetrics synced is not shown.
    console = result.stdout + result.stderr
    assert console.count("model: MLP") == console.count("test accuracy 0.") == 1, console
    assert "sync_dist" not in console, console

    # Exactly one MLflow run, written by rank 0, finished.
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]

    # Every training sample once per epoch across the ranks, in disjoint equal shards.
    seen = run_dir / "seen"
    split = (seen / "train-split.txt").read_text().split()
    assert len(split) == len(set(split)) == 500
    for epoch in (0, 1):
        rank0, rank1 = ((seen / f"rank{r}-epoch{epoch}.txt").read_text().split() for r in (0, 1))
        assert len(rank0) == len(rank1) == 250
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == sorted(split)
    # Gradients all-reduced at each step: the ranks stay equal.
    weights = {(seen / f"rank{r}-weights.txt").read_text() for r in (0, 1)}
    assert len(weights) == 1

    # The synced test accuracy is the accuracy on each of the 200 test images counted once.
    summary = json.loads((run_dir / "reports" / "train_metrics.json").read_text())
    model, run_id = load_network(run_dir / "checkpoints" / "best.ckpt")
    assert run_id == runs[0].info.run_id
    data = tmp_path / "data" / "mnist"
    images, labels = load_images_and_labels(
        data / "t10k-images-idx3-ubyte", data / "t10k-labels-idx1-ubyte"
    )
    single_process = score(logits_of(model, images), labels)
    assert summary["test_acc"] == pytest.approx(single_process["accuracy"], abs=1e-6)
    assert runs[0].data.metrics["test/acc"] == pytest.approx(single_process["accuracy"], abs=1e-6)
    # One Hydra output directory: the second rank wrote into the first one's.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run"]


def test_ddp_spawn_takes_the_mlflow_run_into_its_processes(tmp_path):
    """`ddp_spawn` (sweeps on several devices) pickles the trainer into the processes it starts:
    the MLflow logger, whose run is made in a background thread, and the callback writing that
    run's id into checkpoints go with it, and log into that one run."""
    logger = MLflowLogger(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    callback = RunCallback(logger)
    spawned, spawned_callback = pickle.loads(pickle.dumps((logger, callback)))
    checkpoint = {}
    spawned_callback.on_save_checkpoint(None, None, checkpoint)
    assert checkpoint[RUN_ID_KEY] == spawned.run_id == logger.run_id is not None
    spawned.log_metrics({"val/acc": 0.5}, step=0)
    spawned.end("FINISHED")
    _, (run,) = mlflow_runs(tmp_path)
    assert run.data.metrics == {"val/acc": 0.5} and run.info.status == "FINISHED"
