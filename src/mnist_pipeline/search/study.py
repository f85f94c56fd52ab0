"""The study of a search: durable storage, trials claimed under a lock, orphans failed.

`n_trials` is the study's total, not one command's: trials finished (complete or pruned) and
trials running in other live processes count, so a rerun after a crash runs only what is
missing, and processes sharing a study stop together at n.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    IntDistribution,
)
from optuna.pruners import BasePruner
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from mnist_pipeline.processes import gone, lock_beside, this_process

log = logging.getLogger(__name__)
JOURNAL = "optuna.journal"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
HOST_ATTR, PID_ATTR = "host", "pid"
PRUNED_ATTR = "pruned_at_epoch"
DUPLICATE_ATTR = "duplicate_of"
# Proposals of tried points in a row before a space of choices counts as exhausted.
MAX_ASKS = 100


def storage_location(storage: str | None, root: Path) -> str:
    """Where a study lives: a database URL as given, else a journal file (default
    `<root>/optuna.journal`, Optuna's storage for processes sharing one machine)."""
    if storage and "://" in storage:
        return storage
    return str((root / (storage or JOURNAL)).resolve())


def open_storage(location: str) -> BaseStorage:
    """Optuna's storage at `location` (a database URL or a journal file path)."""
    if "://" in location:
        return optuna.storages.RDBStorage(location)
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(location))


def fail_orphans(study: optuna.Study, locked: bool = True) -> list[int]:
    """Fail the trials left RUNNING by a process of this host that is gone (kill -9, a
    crash): they do not count, and a rerun does them again. Returns their numbers.

    A trial without host and pid was asked for by a process killed before it could tag it:
    with the claim lock `locked`, no live process can be in that step.
    """
    orphans = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get(HOST_ATTR), trial.user_attrs.get(PID_ATTR)
        if (host is not None and gone(pid, host)) or (host is None and locked):
            study.tell(trial.number, state=TrialState.FAIL)
            orphans.append(trial.number)
    return orphans


def progress(study: optuna.Study) -> dict[str, int]:
    """How many trials are done (complete or pruned), pruned, running and failed."""
    trials = study.get_trials(deepcopy=False)
    trials = [t for t in trials if DUPLICATE_ATTR not in t.user_attrs]  # never run
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    return {
        "done": count[TrialState.COMPLETE] + count[TrialState.PRUNED],
        "pruned": count[TrialState.PRUNED],
        "running": count[TrialState.RUNNING],
        "failed": count[TrialState.FAIL],
    }


def claim(
    study: optuna.Study,
    location: str,
    n_trials: int,
    batch: int,
    space: dict[str, BaseDistribution],
) -> list[Trial]:
    """Up to `batch` new trials, as many as the study still misses of `n_trials`, counting
    the ones running elsewhere; each tagged with this host and pid (see `fail_orphans`)."""
    # One process at a time counts the trials and asks for new ones, so that processes sharing
    # the study never start more than n. A database server has no place for the lock file (two
    # processes may then overshoot by a trial).
    with lock_beside(location, ".claim.lock") as locked:
        for number in fail_orphans(study, locked):
            log.warning("trial %d was left running by a process that is gone: failed", number)
        state = progress(study)
        missing = n_trials - state["done"] - state["running"]
        host, pid = this_process()
        if any(t.user_attrs.get(PID_ATTR) != pid for t in study.get_trials(deepcopy=False)):
            # Trials of another process (an earlier command, or one sharing the study): the
            # sampler, seeded as theirs was, would propose their points again.
            study.sampler.reseed_rng()
        trials = []
        for _ in range(max(0, min(batch, missing))):
            trial = ask_untried(study, space)
            if trial is None:
                break
            trial.set_user_attr(HOST_ATTR, host)
            trial.set_user_attr(PID_ATTR, pid)
            trials.append(trial)
        return trials


def ask_untried(study: optuna.Study, space: dict[str, BaseDistribution]) -> Trial | None:
    """A new trial whose params no finished or running trial of the study has had; None when
    the space has no such point left (a space of choices and ranges, all tried).

    A sampler may propose a point again (TPE over a few choices does); such a trial is told
    FAIL at once, marked `duplicate_of`, and not counted as a failure (`progress`).
    """
    tried = {
        _point(t.params): t.number
        for t in study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING))
    }
    size = _size(space)
    for _ in range(MAX_ASKS):
        if size is not None and len(tried) >= size:
            break
        trial = study.ask(space)
        twin = tried.get(_point(trial.params))
        if twin is None:
            return trial
        trial.set_user_attr(DUPLICATE_ATTR, twin)
        study.tell(trial, state=TrialState.FAIL)
    log.warning(
        "the search space is exhausted: %s points tried (%d asks in a row gave tried points)",
        len(tried),
        MAX_ASKS,
    )
    return None


def _point(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def _size(space: dict[str, BaseDistribution]) -> int | None:
    """How many points a space of choices and integer ranges has; None for a continuous one."""
    size = 1
    for dist in space.values():
        if isinstance(dist, CategoricalDistribution):
            size *= len(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            size *= (dist.high - dist.low) // dist.step + 1
        else:
            return None
    return size


def was_pruned(study: optuna.Study, number: int) -> bool:
    """Whether the training of trial `number` stopped early on the pruner's word
    (`TrialPruning`, in the training's process: read back from the storage)."""
    (trial,) = (t for t in study.get_trials(deepcopy=False) if t.number == number)
    return PRUNED_ATTR in trial.user_attrs


def trial_of(name: str, location: str, number: int, pruner: BasePruner) -> Trial:
    """Trial `number` of study `name`, for the training that runs it to report to."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(location)
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    study_id = storage.get_study_id_from_name(name)
    return Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))


def best(study: optuna.Study) -> FrozenTrial | None:
    """The best finished trial (pruned ones count with their last value), if any."""
    trials = study.get_trials(deepcopy=False, states=DONE)
    trials = [t for t in trials if t.value is not None]
    if not trials:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(trials, key=lambda t: t.value)


def load(name: str, location: str, **settings: Any) -> optuna.Study:
    """Study `name` at `location`, created if new (`settings`: sampler, pruner, direction)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO line per trial: ours say it
    return optuna.create_study(
        study_name=name, storage=open_storage(location), load_if_exists=True, **settings
    )
