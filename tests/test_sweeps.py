"""Grid sweeps: parallel jobs under one parent run in one sqlite store, and the parent's answer
(its children's table, seed groups, the best child, a figure), also after a rerun of the grid.
(Searches: test_search.)

One sweep, 2 hidden sizes x 2 seeds on the tiny data with the joblib launcher, run twice into
the same sweep directory, serves every test here.
"""

import json
import logging
import runpy
import statistics
import sys
from types import SimpleNamespace

import pytest
import warm
from conftest import REPO, _tiny_setup, make_tiny_mnist, mlflow_runs, run_table

from mnist_pipeline.tracking.sweeps import BEST_RUN_TAG, CHILDREN_TABLE, GROUPS_TABLE, seed_groups

QUICK = ("trainer.max_epochs=2", "report=false", "logger.mlflow.log_model=false")
GRID = ("model.hidden=8,16", "seed=1,2")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, empty_store):
    """The grid run twice into one sweep directory, the store read after each: in parallel
    jobs (a subprocess), then again as after a crash (in this process, as `cli` runs it: no
    second start-up to pay)."""
    from hydra.core.hydra_config import HydraConfig
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("grid")
    source = tmp / "tiny_mnist"
    with pytest.MonkeyPatch.context() as monkeypatch:
        overrides = [
            *_tiny_setup(tmp, (source, make_tiny_mnist(source)), monkeypatch, empty_store),
            f"hydra.sweep.dir={tmp / 'multirun'}",
            *QUICK,
            *GRID,
        ]
        # The experiment as an older version of the project made it: not marked as model
        # training.
        store = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
        store.create_experiment("mnist", artifact_location=(tmp / "mlruns").as_uri())
        train = [sys.executable, str(REPO / "src" / "train.py"), "-m"]
        parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        result = warm.run(
            [*train, *parallel, *overrides], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-4000:]
        first = mlflow_runs(tmp)[1]

        monkeypatch.chdir(REPO)
        monkeypatch.setattr(sys, "argv", ["src/train.py", "-m", *overrides])
        monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)
        monkeypatch.setattr(logging.root, "handlers", logging.root.handlers[:])
        try:
            runpy.run_path(str(REPO / "src" / "train.py"), run_name="__main__")
        except SystemExit as stop:
            assert stop.code in (0, None), stop
        client, second = mlflow_runs(tmp)
    return SimpleNamespace(client=client, first=first, second=second)


def split(runs):
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parent, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_seed_groups_average_the_finished_runs_over_seeds():
    rows = [
        {"model.hidden": hidden, "seed": seed, "best_val_acc": acc, "test_acc": acc - 0.1}
        | {"status": status, "run_id": f"{hidden}-{seed}"}
        for hidden, seed, acc, status in [
            (8, 1, 0.5, "FINISHED"),
            (8, 2, 0.7, "FINISHED"),
            (8, 3, 0.9, "FAILED"),  # not a result: left out
            (16, 1, 0.65, "FINISHED"),
        ]
    ]
    best, single = seed_groups(rows, ["model.hidden"])
    assert best["model.hidden"] == 16 and best["seeds"] == 1  # best mean first
    assert (best["val_acc"], best["val_acc_std"]) == (0.65, None)  # no spread of one seed
    assert single["run_ids"] == ["8-1", "8-2"]
    assert single["val_acc"] == pytest.approx(0.6)
    assert single["val_acc_std"] == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert single["test_acc"] == pytest.approx(0.5)


@pytest.mark.slow
def test_parallel_jobs_share_the_sqlite_store_without_losing_anything(grid):
    parent, children = split(grid.first)
    assert len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    settings = sorted((r.data.params["model.hidden"], r.data.params["seed"]) for r in children)
    assert settings == [("16", "1"), ("16", "2"), ("8", "1"), ("8", "2")]
    assert "model.hidden=8,16 seed=1,2" in parent.data.tags["sweep.overrides"]
    assert all(r.info.status == "FINISHED" for r in grid.first)
    for run in children:
        for key in ("train/loss", "val/acc", "test/acc"):
            history = grid.client.get_metric_history(run.info.run_id, key)
            assert len(history) == (1 if key.startswith("test") else 2), (run.info.run_name, key)


@pytest.mark.slow
def test_children_have_unique_names_and_an_old_experiment_is_marked_model_training(grid):
    _, children = split(grid.first)
    names = sorted(r.info.run_name for r in children)
    assert names == ["mlp-hidden=16-seed=1", "mlp-hidden=16-seed=2"] + [
        "mlp-hidden=8-seed=1",
        "mlp-hidden=8-seed=2",
    ]
    experiment = grid.client.get_experiment(children[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_the_parent_answers_the_sweep_with_seed_groups(grid):
    client = grid.client
    parent, children = split(grid.second)
    rows = run_table(client, parent, CHILDREN_TABLE)
    by_id = {r.info.run_id: r for r in children}
    assert len(rows) == 4
    for row in rows:
        child = by_id[row["run_id"]]
        assert row["run"] == child.info.run_name
        assert (row["model.hidden"], row["seed"]) == (
            int(child.data.params["model.hidden"]),
            int(child.data.params["seed"]),
        )
        assert row["best_val_acc"] == pytest.approx(child.data.metrics["val/acc_best"])
        assert row["test_acc"] == pytest.approx(child.data.metrics["test/acc"])
        assert (row["epochs"], row["status"]) == (2, "FINISHED")

    groups = run_table(client, parent, GROUPS_TABLE)
    assert sorted(g["model.hidden"] for g in groups) == [8, 16]
    for group in groups:
        accs = [r["best_val_acc"] for r in rows if r["model.hidden"] == group["model.hidden"]]
        tests = [r["test_acc"] for r in rows if r["model.hidden"] == group["model.hidden"]]
        assert group["seeds"] == 2
        assert group["val_acc"] == pytest.approx(statistics.mean(accs))
        assert group["val_acc_std"] == pytest.approx(statistics.stdev(accs))
        assert group["test_acc"] == pytest.approx(statistics.mean(tests))
        assert group["test_acc_std"] == pytest.approx(statistics.stdev(tests))

    # The headline is the best group's mean; the best child is the best run of that group.
    top = max(groups, key=lambda g: g["val_acc"])
    assert parent.data.metrics["sweep/val_acc"] == pytest.approx(top["val_acc"])
    assert parent.data.metrics["sweep/val_acc_std"] == pytest.approx(top["val_acc_std"])
    assert parent.data.metrics["sweep/test_acc"] == pytest.approx(top["test_acc"])
    members = [r for r in rows if r["model.hidden"] == top["model.hidden"]]
    best = by_id[max(members, key=lambda r: r["best_val_acc"])["run_id"]]
    assert parent.data.tags[BEST_RUN_TAG] == best.info.run_id
    assert parent.data.tags["sweep.best_run_name"] == best.info.run_name
    assert {r.data.tags["data.version"] for r in children} == {parent.data.tags["data.version"]}
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert parent.data.metrics[key] == pytest.approx(best.data.metrics[key]), key
    note = parent.data.tags["mlflow.note.content"]  # the run's description in the UI
    assert f"Best run: `{best.info.run_name}`" in note and "| model.hidden=16 | 2 |" in note
    logged = json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    assert {"path": CHILDREN_TABLE, "type": "table"} in logged
    figure = client.download_artifacts(parent.info.run_id, "sweep/swept_values.png")
    assert open(figure, "rb").read(8) == b"\x89PNG\r\n\x1a\n"  # noqa: SIM115


@pytest.mark.slow
def test_a_rerun_of_the_grid_replaces_its_rows(grid):
    first_parent, first_children = split(grid.first)
    parent, children = split(grid.second)
    assert parent.info.run_id == first_parent.info.run_id  # found again
    assert parent.info.status == "FINISHED"
    assert len(children) == 8  # every job ran again...
    rows = run_table(grid.client, parent, CHILDREN_TABLE)
    rerun = {r.info.run_id for r in children} - {r.info.run_id for r in first_children}
    assert sorted(row["run_id"] for row in rows) == sorted(rerun)  # ...and its rows replaced
    assert len(run_table(grid.client, parent, GROUPS_TABLE)) == 2
