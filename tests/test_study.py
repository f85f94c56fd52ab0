"""A study never proposes a point it already tried, and a search that cannot run is one line."""

import logging

import pytest
from conftest import _tiny_setup, mlflow_runs, no_runs
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.samplers import TPESampler
from optuna.trial import TrialState

from mnist_pipeline.config import ConfigError
from mnist_pipeline.search import study as study_module
from mnist_pipeline.search.space import checked_search
from mnist_pipeline.search.study import DUPLICATE_ATTR, claim, load, progress

SPACE = {"x": FloatDistribution(0, 1), "y": CategoricalDistribution([1, 2, 3])}


def _command(location: str, pid: int, monkeypatch, n_trials: int, space=SPACE) -> list[dict]:
    """One `hparams_search=optuna` command as process `pid`: the same seeded sampler each time,
    trials claimed and finished until the study has `n_trials`. The params it tried."""
    monkeypatch.setattr(study_module, "this_process", lambda: ("host", pid))
    study = load("s", location, sampler=TPESampler(seed=42), direction="maximize")
    tried = []
    while trials := claim(study, location, n_trials=n_trials, batch=1, space=space):
        study.tell(trials[0], 0.5)
        tried.append(trials[0].params)
    return tried


def test_a_resumed_study_does_not_propose_the_points_it_tried(tmp_path, monkeypatch):
    location = str(tmp_path / "optuna.journal")
    first = _command(location, 1000, monkeypatch, n_trials=2)
    # The same command again, as after a kill -9: its sampler is seeded as the first one was.
    second = _command(location, 2000, monkeypatch, n_trials=4)
    assert len(first) == len(second) == 2
    assert not any(point in first for point in second), (first, second)
    # Not by luck of the dedup: the resumed sampler is reseeded, so it proposes new points.
    assert not any(DUPLICATE_ATTR in t.user_attrs for t in load("s", location).trials)


def test_an_exhausted_space_of_choices_says_so_and_stops(tmp_path, monkeypatch, caplog):
    location = str(tmp_path / "optuna.journal")
    space = {"y": CategoricalDistribution([1, 2, 3])}
    with caplog.at_level(logging.WARNING):
        tried = _command(location, 1000, monkeypatch, n_trials=5, space=space)
    assert sorted(point["y"] for point in tried) == [1, 2, 3]  # each once, then no more
    assert "the search space is exhausted: 3 points tried" in caplog.text
    study = load("s", location)
    duplicates = [t for t in study.trials if DUPLICATE_ATTR in t.user_attrs]
    assert all(t.state == TrialState.FAIL for t in duplicates)
    assert progress(study) == {"done": 3, "pruned": 0, "running": 0, "failed": 0}


class _Sweeper(dict):
    """`hydra.sweeper` as the sweeper sees it: keys and attributes."""

    __getattr__ = dict.__getitem__


@pytest.mark.parametrize(
    ("settings", "arguments", "message"),
    [
        ({"n_trials": 0}, [], "hydra.sweeper.n_trials=0: expected a whole number >= 1"),
        ({"n_trials": -1}, [], "hydra.sweeper.n_trials=-1: expected a whole number >= 1"),
        (
            {"heartbeat_interval": 0},
            [],
            "hydra.sweeper.heartbeat_interval=0: expected a whole number >= 1",
        ),
        (
            {"grace_period": 0},
            [],
            "hydra.sweeper.grace_period=0: expected null or a whole number >= 1",
        ),
        (
            {},
            ["model.hidden=range(5,5)"],
            "model.hidden=range(5,5): an empty search space (`low <= high` must hold, but got "
            "(low=5, high=4)); expected a non-empty choice, range or interval",
        ),
        (
            {"params": {"optimizer.lr": "interval(1,0)"}},
            [],
            "optimizer.lr=interval(1,0): an empty search space (`low <= high` must hold, but "
            "got (low=1.0, high=0.0)); expected a non-empty choice, range or interval",
        ),
    ],
)
def test_a_search_that_cannot_run_is_one_line(settings, arguments, message):
    sweeper = _Sweeper({"n_trials": 20, "n_jobs": 1, "max_failures": 3, "params": None})
    sweeper.update(heartbeat_interval=60, grace_period=None)
    sweeper.update(settings)
    with pytest.raises(ConfigError) as error:
        checked_search(sweeper, arguments)
    assert str(error.value) == message


@pytest.fixture
def sweep_cli(cli, tmp_path, tiny_mnist, monkeypatch, empty_store):
    """`sweep_cli(*overrides)`: `python src/train.py -m ...` in this process on the tiny data,
    every output in tmp_path."""
    base = [
        *_tiny_setup(tmp_path, tiny_mnist, monkeypatch, empty_store),
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    return lambda *overrides: cli("train", "-m", *base, *overrides)


def test_a_failed_grid_ends_its_parent_run_failed(sweep_cli, tmp_path):
    result = sweep_cli("model.hidden=0,64")
    assert result.returncode == 2
    error = result.stderr.splitlines()[-1]
    assert error.startswith("error: model.hidden=0: expected a positive integer")
    (parent,) = mlflow_runs(tmp_path)[1]  # the refused job opened no run of its own
    assert parent.info.status == "FAILED"


def test_a_search_of_no_trials_opens_no_parent_run(sweep_cli, tmp_path):
    result = sweep_cli(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=0",
        f"hydra.sweeper.storage={tmp_path / 'optuna.journal'}",
    )
    assert (result.returncode, result.stderr) == (
        2,
        "error: hydra.sweeper.n_trials=0: expected a whole number >= 1\n",
    )
    assert no_runs(tmp_path)
