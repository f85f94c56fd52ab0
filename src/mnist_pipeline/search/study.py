"""The study of a search: durable storage, trials claimed under a lock, orphans failed.

`n_trials` is the study's total, not one command's: trials finished (complete or pruned) and
trials running in other live processes count, so a rerun after a crash runs only what is
missing, and processes sharing a study stop together at n.

Two kinds of storage, one way each to find a dead trial and to take turns:
- a journal file (the default) is shared by the processes of one machine: a trial is dead when
  the process that claimed it is gone (its pid), and claims take turns under a lock file;
- a database (`postgresql://...`) may be shared by several machines: Optuna's heartbeat tells
  dead trials (no beat for `grace_period` seconds), whichever host looks, and replaces each
  with a retry of the same point; claims take turns under the database's own lock.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    IntDistribution,
)
from optuna.exceptions import ExperimentalWarning
from optuna.pruners import BasePruner
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
    fail_stale_trials,
)
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
# Times a trial whose process died is run again (same point) before a new point replaces it.
MAX_RETRIES = 1
# PostgreSQL's error codes of a CREATE that lost a race: duplicate_table, duplicate_object.
PG_ALREADY_EXISTS = ("42P07", "42710")
# Optuna warns that heartbeats are meant for `Study.optimize`, which beats for its trials itself:
# the sweeper asks and tells (its trials run in a launcher's jobs) and beats for them (`beating`).
# Its ExperimentalWarnings are told as the caller's (this module's), so no `module=` filter.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO line per trial: ours say it


def storage_location(storage: str | None, root: Path) -> str:
    """Where a study lives: a database URL as given, else a journal file (default
    `<root>/optuna.journal`, Optuna's storage for processes sharing one machine)."""
    if storage and "://" in storage:
        return storage
    return str((root / (storage or JOURNAL)).resolve())


def shown(location: str) -> str:
    """`location` fit to log or tag: a database URL without its password."""
    if "://" not in location:
        return location
    from sqlalchemy.engine import make_url

    return make_url(location).render_as_string(hide_password=True)


def open_storage(
    location: str, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> BaseStorage:
    """Optuna's storage at `location` (a database URL or a journal file path). A database's
    trials beat every `heartbeat_interval` seconds while they run (`beating`); one silent for
    `grace_period` (default twice the interval) is failed and retried (`claim`)."""
    if "://" in location:
        from sqlalchemy.exc import DBAPIError, IntegrityError

        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        for attempt in range(3):
            try:
                return RDBStorage(
                    location,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=retry if heartbeat_interval else None,
                )
            except DBAPIError as error:
                # Hosts started together on a new database all create Optuna's tables (and
                # alembic's): on PostgreSQL the losers' CREATE TABLE fails once the winner's has
                # committed (not atomic across sessions), as a duplicate key in the catalog or
                # as "type ... already exists". Opened again, the tables are there.
                raced = isinstance(error, IntegrityError) or (
                    getattr(error.orig, "sqlstate", None) in PG_ALREADY_EXISTS
                )
                if attempt == 2 or not raced:
                    raise
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(location))


def _storage(study: optuna.Study) -> BaseStorage:
    return study._storage  # Optuna has no public accessor; its own helpers read it


def beats(study: optuna.Study) -> bool:
    """Whether the study's trials beat (a database): dead ones are found by their silence."""
    from optuna.storages._heartbeat import is_heartbeat_enabled  # what Study.optimize asks

    return is_heartbeat_enabled(_storage(study))


@contextmanager
def beating(study: optuna.Study, trials: list[Trial]) -> Iterator[None]:
    """Optuna's heartbeat for `trials` while this process runs them (none for a journal)."""
    # The thread `Study.optimize` runs for its trial; Optuna exports no public name for it.
    from optuna.storages._heartbeat import get_heartbeat_thread

    with ExitStack() as stack:
        for trial in trials:
            stack.enter_context(get_heartbeat_thread(trial._trial_id, _storage(study)))
        yield


@contextmanager
def claim_lock(location: str, name: str) -> Iterator[bool]:
    """One process at a time claims trials of study `name`: a lock file beside a journal or
    sqlite file; the database's own lock on a PostgreSQL or MySQL server, which every host
    sharing the study reaches. The system (or the server, when the connection drops) releases
    it if its holder dies. Yields whether a lock is held."""
    if not location.startswith(("postgresql", "mysql")):
        with lock_beside(location, ".claim.lock") as locked:
            yield locked
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    # NullPool: the connection closes on leaving, and the session's lock ends with it.
    engine = sqlalchemy.create_engine(location, poolclass=NullPool)
    postgresql = location.startswith("postgresql")
    take = "SELECT pg_advisory_lock(:key)" if postgresql else "SELECT GET_LOCK(:key, -1)"
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(take), {"key": key})
            yield True
    finally:
        engine.dispose()


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
    # the study never start more than n.
    with claim_lock(location, study.study_name) as locked:
        for number in fail_stale(study) if beats(study) else fail_orphans(study, locked):
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
            if beats(study):  # a trial that never beat is never found dead: beat once now
                _storage(study).record_heartbeat(trial._trial_id)
            trials.append(trial)
        return trials


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the trials that stopped beating (their process died, on whichever host), each
    replaced by a waiting retry of its point (up to `MAX_RETRIES`). Returns their numbers."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    fail_stale_trials(study)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return [t.number for t in failed if t.number in running]


def others_running(study: optuna.Study, n_trials: int) -> bool:
    """Whether a process sharing a beating study still runs trials it needs: one of them may
    die, and its trial must then be redone here (the study is not done until they end)."""
    state = progress(study)
    return beats(study) and state["running"] > 0 and state["done"] < n_trials


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


def load(
    name: str,
    location: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    **settings: Any,
) -> optuna.Study:
    """Study `name` at `location`, created if new (`settings`: sampler, pruner, direction;
    the heartbeat: see `open_storage`)."""
    storage = open_storage(location, heartbeat_interval, grace_period)
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, **settings)
