"""`hydra/sweeper=optuna`: an Optuna search whose study outlives the command (Hydra plugin).

Written here, not hydra-optuna-sweeper: that plugin pins optuna 2.10, keeps the study in
memory (its SQL storage fails with SQLAlchemy 2), counts `n_trials` per command and cannot
prune. This one keeps the study in `hydra.sweeper.storage` (a journal file, or a database a
team's hosts share), counts `n_trials` as the study's total (a rerun runs only what is
missing) and lets each training report to the study's pruner (`mnist_pipeline.search.trial`).
Hydra loads plugins only from `hydra_plugins`; the search itself is `mnist_pipeline.search`.
"""

# No `from __future__ import annotations`: Hydra loads this module without registering it in
# sys.modules, where dataclasses look string annotations up.
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    """`hydra.sweeper` of a search (conf/hparams_search/optuna.yaml sets the project's)."""

    _target_: str = "hydra_plugins.mnist_search.OptunaSweeper"
    # The sampler and pruner configs reach the sweeper as configs, built there (and the pruner
    # again in each training, from the same config).
    _recursive_: bool = False
    study_name: str = "mnist"
    # null: <repository root>/optuna.journal; a path: a journal file; a URL: a database.
    storage: str | None = None
    direction: str = "maximize"
    # The study's total: finished (complete or pruned) plus running trials.
    n_trials: int = 20
    # Trials per launch: run at once by a parallel launcher (hydra/launcher=joblib).
    n_jobs: int = 1
    # Stop after this many trials in a row failed (a broken config fails them all).
    max_failures: int = 3
    # A database storage only: each running trial's heartbeat, in seconds; a trial silent for
    # grace_period seconds (null: twice the interval) is dead, on whichever host, and is retried.
    heartbeat_interval: int = 60
    grace_period: int | None = None
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    # null or none: no pruning.
    pruner: Any = field(default_factory=lambda: {"_target_": "optuna.pruners.MedianPruner"})
    # The search space, in Hydra's sweep syntax: {model.hidden: "choice(64, 128)"}.
    params: dict[str, str] | None = None
    # Set by the sweeper for each training: the trial it is.
    trial: int | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="mnist_pipeline"
)


class OptunaSweeper(Sweeper):
    """Asks the study for trials, launches their trainings, tells it how they ended."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)
        self.launcher: Any = None
        self.sweep_dir = Path()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> None:
        # Imported here: Hydra imports this module when any script starts (plugin discovery),
        # and optuna costs 0.3 s that a plain training should not pay.
        from optuna.trial import TrialState

        from mnist_pipeline import repository_root
        from mnist_pipeline.search.space import checked_search
        from mnist_pipeline.search.study import (
            beating,
            best,
            claim,
            load,
            others_running,
            progress,
            shown,
            storage_location,
            was_pruned,
        )
        from mnist_pipeline.search.trial import make_pruner

        s = self.settings
        space, fixed = checked_search(s, arguments)
        location = storage_location(s.storage, repository_root())
        study = load(
            s.study_name,
            location,
            heartbeat_interval=s.heartbeat_interval,
            grace_period=s.grace_period,
            sampler=instantiate(s.sampler),
            pruner=make_pruner(s.pruner),
            direction=s.direction,
        )
        done = progress(study)["done"]
        log.info(
            "study %s: %d of %d trials done, %s (%s)",
            s.study_name,
            done,
            s.n_trials,
            "resuming" if done else "starting",
            shown(location),
        )
        failures, job, waiting = 0, 0, False
        while True:
            trials = claim(study, location, s.n_trials, s.n_jobs, space)
            if not trials:
                if not others_running(study, s.n_trials):
                    break
                if not waiting:
                    log.info("study %s: waiting for trials running elsewhere", s.study_name)
                waiting = True
                time.sleep(s.heartbeat_interval)  # until they end, or one is found dead
                continue
            waiting = False
            overrides = [
                [
                    *(f"{key}={value}" for key, value in fixed.items()),
                    *(f"{key}={value}" for key, value in trial.params.items()),
                    f"hydra.sweeper.trial={trial.number}",
                ]
                for trial in trials
            ]
            try:
                with beating(study, trials):
                    returns = self.launcher.launch(overrides, initial_job_idx=job)
            except BaseException:  # Ctrl-C, SIGTERM: these trials do not count
                for trial in trials:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise
            job += len(trials)
            for trial, result in zip(trials, returns, strict=True):
                try:
                    value = float(result.return_value)  # raises what failed the training
                except Exception as error:
                    failures += 1
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    log.warning("trial %d failed: %r", trial.number, error)
                    continue
                failures = 0
                # Already failed: its beats came too late (a stalled host); it was retried.
                if was_pruned(study, trial.number):
                    study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                else:
                    study.tell(trial, value, skip_if_finished=True)
            if failures >= s.max_failures:
                raise RuntimeError(
                    f"study {s.study_name}: {failures} trials failed in a row (see above); "
                    f"stopping (hydra.sweeper.max_failures={s.max_failures})"
                )
        state, top = progress(study), best(study)
        if top is not None:  # as hydra-optuna-sweeper wrote it, for scripts that read it
            results = {"name": s.study_name, "best_params": top.params, "best_value": top.value}
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            (self.sweep_dir / "optimization_results.yaml").write_text(yaml.safe_dump(results))
        log.info(
            "study %s: %d of %d trials done (%d pruned, %d failed, %d running elsewhere)%s",
            s.study_name,
            state["done"],
            s.n_trials,
            state["pruned"],
            state["failed"],
            state["running"],
            f"; best {top.value:.4f}, trial {top.number}: {top.params}" if top else "",
        )
