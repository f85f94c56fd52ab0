"""Sweeps: Optuna search, and parallel grid jobs under one parent run in one sqlite store."""

import pytest
import yaml
from conftest import mlflow_runs

QUICK = ("trainer.max_epochs=2", "report=false", "logger.mlflow.log_model=false")


@pytest.mark.slow
def test_optuna_search_maximises_validation_accuracy(tiny_run, tmp_path):
    tiny_run("hparams_search=optuna", "hydra.sweeper.n_trials=2", *QUICK)
    results = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    assert 0.5 < results["best_value"] <= 1.0
    assert {"model.hidden", "model.activation", "model.dropout", "optimizer.lr"} <= set(
        results["best_params"]
    )
    _, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and len(children) == 2
    # The value Optuna saw is one of the trials' best validation accuracies.
    assert max(r.data.metrics["val/acc"] for r in children) >= results["best_value"] - 1e-6


@pytest.mark.slow
def test_parallel_jobs_share_the_sqlite_store_without_losing_anything(tiny_run, tmp_path):
    tiny_run(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.hidden=8,16,24,32", *QUICK
    )
    client, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(int(r.data.params["model.hidden"]) for r in children) == [8, 16, 24, 32]
    assert "model.hidden=8,16,24,32" in parent.data.tags["sweep.overrides"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in children:
        for key in ("train/loss", "val/acc", "test/acc"):
            history = client.get_metric_history(run.info.run_id, key)
            assert len(history) == (1 if key.startswith("test") else 2), (run.info.run_name, key)
