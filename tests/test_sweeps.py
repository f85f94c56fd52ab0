"""Grid sweeps: parallel jobs under one parent run in one sqlite store (searches: test_search)."""

import pytest
from conftest import mlflow_runs

QUICK = ("trainer.max_epochs=2", "report=false", "logger.mlflow.log_model=false")


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
