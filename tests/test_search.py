"""The Optuna search: a durable study, orphaned trials failed, pruning, processes sharing it."""

import os
import signal
import statistics
import subprocess
import sys
import time

import optuna
import pytest
import warm
import yaml
from conftest import REPO, mlflow_runs, run_table
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mnist_pipeline.search.space import search_space
from mnist_pipeline.search.study import (
    DUPLICATE_ATTR,
    PID_ATTR,
    claim,
    fail_orphans,
    load,
    progress,
)
from mnist_pipeline.tracking.sweeps import BEST_RUN_TAG, CHILDREN_TABLE

QUICK = ("report=false", "logger.mlflow.log_model=false")


def test_search_space_in_hydra_syntax():
    space, fixed = search_space(
        [
            "model.hidden=choice(64, 128)",
            "model.dropout=interval(0.0, 0.5)",
            "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            "data.batch_size=range(32, 257, 32)",
            "trainer.max_epochs=5",
        ]
    )
    assert space == {
        "model.hidden": CategoricalDistribution([64, 128]),
        "model.dropout": FloatDistribution(0.0, 0.5),
        "optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "data.batch_size": IntDistribution(32, 256, step=32),
    }
    assert fixed == {"trainer.max_epochs": "5"}


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_n_trials_is_the_studys_total_and_orphans_do_not_count(tmp_path):
    location = str(tmp_path / "optuna.journal")
    study = load("s", location, direction="maximize")
    space = {"x": FloatDistribution(0, 1)}
    first = claim(study, location, n_trials=3, batch=2, space=space)
    assert len(first) == 2 and first[0].user_attrs[PID_ATTR] == os.getpid()
    study.tell(first[0], 0.5)
    # first[1] is running here: one trial is missing, however many are asked for.
    assert len(claim(study, location, n_trials=3, batch=5, space=space)) == 1
    assert claim(study, location, n_trials=3, batch=5, space=space) == []

    # A process that died mid-trial (kill -9) leaves its trial RUNNING: it is failed and redone.
    first[1].set_user_attr(PID_ATTR, dead_pid())
    again = load("s", location, direction="maximize")  # a rerun of the command
    assert fail_orphans(again) == [first[1].number]
    assert progress(again) == {"done": 1, "pruned": 0, "running": 1, "failed": 1}
    assert len(claim(again, location, n_trials=3, batch=5, space=space)) == 1


def search(tiny_run, tmp_path, *overrides, sweep="multirun", **popen):
    """The search command on the tiny data: its study in tmp_path, its own sweep directory."""
    return tiny_run.command(
        "hparams_search=optuna",
        f"hydra.sweeper.storage={tmp_path / 'optuna.journal'}",
        f"hydra.sweep.dir={tmp_path / sweep}",
        *QUICK,
        *overrides,
    )


def study_of(tmp_path, name="mnist-mlp"):
    return optuna.load_study(
        study_name=name,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
        ),
    )


def trials_so_far(tmp_path):
    """The trials of the search's study, none while the search has not created it yet."""
    if not (tmp_path / "optuna.journal").exists():
        return []
    try:
        return study_of(tmp_path).trials
    except KeyError:  # the journal exists, the study is not in it yet
        return []


@pytest.mark.slow
def test_pruning_stops_hopeless_trials_and_mlflow_shows_them(tiny_run, tmp_path):
    tiny_run(
        "hparams_search=optuna",
        f"hydra.sweeper.storage={tmp_path / 'optuna.journal'}",
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.params=null",  # the search space from the command line only:
        "optimizer.lr=choice(0.01, 0.000001)",  # 1e-6 learns nothing
        "seed=range(1, 7)",  # 12 points: 6 trials need not repeat one
        "trainer.max_epochs=4",
        *QUICK,
    )
    # A point proposed again is set aside (never run): the trials are the others.
    trials = [t for t in study_of(tmp_path).trials if DUPLICATE_ATTR not in t.user_attrs]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(pruned) + len(complete) == 6 and pruned
    assert all(len(t.intermediate_values) < 4 for t in pruned)  # stopped early
    assert all(len(t.intermediate_values) == 4 for t in complete)
    assert all(t.params["optimizer.lr"] == 0.000001 for t in pruned)

    client, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {int(r.data.tags["optuna.trial"]): r for r in runs if r is not parent}
    assert sorted(children) == [t.number for t in trials]
    for trial in trials:
        run = children[trial.number]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.data.tags["optuna.study"] == "mnist-mlp"  # the tags README names
        assert "optuna.storage" not in run.data.tags  # only the parent: it is found by both
        assert run.info.run_name == f"mnist-mlp-trial-{trial.number}"
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert len(history) == len(trial.intermediate_values)  # its metrics so far
    assert parent.data.tags["optuna.study"] == "mnist-mlp"
    assert parent.data.tags["optuna.storage"] == str(tmp_path / "optuna.journal")
    best = max(complete, key=lambda t: t.value)
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best.optimizer.lr"] == str(best.params["optimizer.lr"])
    assert parent.data.tags["study.pruned"] == str(len(pruned))
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert figures == {"study/optimization_history.png", "study/param_importances.png"}
    results = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(best.value)

    # The parent's answer, as a grid's: a row per trial, seeds grouped (seed is swept here).
    rows = run_table(client, parent, CHILDREN_TABLE)
    trial_of = {children[t.number].info.run_id: t for t in trials}
    assert sorted(row["run_id"] for row in rows) == sorted(trial_of)
    for row in rows:
        trial = trial_of[row["run_id"]]
        assert row["status"] == ("PRUNED" if trial in pruned else "FINISHED")
        assert row["optimizer.lr"] == pytest.approx(trial.params["optimizer.lr"])
        assert row["seed"] == trial.params["seed"]
        assert row["epochs"] == len(trial.intermediate_values)
    tagged = trial_of[parent.data.tags[BEST_RUN_TAG]]
    kind = client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"  # created so: the UI opens on model training
    assert tagged.value == pytest.approx(best.value)  # the best (of several, where they tie)
    learning = [t.value for t in complete if t.params["optimizer.lr"] == 0.01]
    assert parent.data.metrics["sweep/val_acc"] == pytest.approx(statistics.mean(learning))


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_to_exactly_n_trials(tiny_run, tmp_path):
    command = search(tiny_run, tmp_path, "hydra.sweeper.n_trials=4", "trainer.max_epochs=6")
    process = warm.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while True:  # until a trial is complete and the next one has trained an epoch
        assert process.poll() is None and time.monotonic() < deadline, "search ended early"
        trials = trials_so_far(tmp_path)
        if any(t.state == TrialState.COMPLETE for t in trials):
            last = trials[-1]
            if last.state == TrialState.RUNNING and last.intermediate_values:
                break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = last.number

    rerun = warm.run(
        search(
            tiny_run,
            tmp_path,
            "hydra.sweeper.n_trials=4",
            "trainer.max_epochs=6",
            sweep="multirun-2",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"study mnist-mlp: {killed} of 4 trials done, resuming" in rerun.stdout + rerun.stderr
    trials = study_of(tmp_path).trials
    states = {t.number: t.state for t in trials}
    assert states[killed] == TrialState.FAIL  # the killed one does not count...
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states.values()) == 4
    assert len(trials) == 5  # ...and exactly one more trial replaced it
    done = [tuple(sorted(t.params.items())) for t in trials if t.state != TrialState.FAIL]
    assert len(set(done)) == len(done)  # the rerun's sampler did not replay the first points

    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # found again
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    numbers = [int(r.data.tags["optuna.trial"]) for r in children]
    assert sorted(numbers) == list(range(5))  # one run per trial, none twice
    (ghost,) = [r for r in children if int(r.data.tags["optuna.trial"]) == killed]
    assert ghost.info.status == "KILLED"  # marked by the rerun: its process was gone
    statuses = [row["status"] for row in run_table(client, parents[0], CHILDREN_TABLE)]
    assert sorted(statuses) == ["FINISHED"] * 4 + ["KILLED"]  # every trial once


@pytest.mark.slow
def test_two_processes_share_one_study(tiny_run, tmp_path):
    processes = [
        warm.Popen(
            search(
                tiny_run,
                tmp_path,
                "hydra.sweeper.n_trials=5",
                "trainer.max_epochs=2",
                sweep=f"multirun-{worker}",
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for worker in (1, 2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-2000:]
    trials = study_of(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5  # n between them, no extra
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both worked on it
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5  # no point tried twice

    _, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(5))
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
