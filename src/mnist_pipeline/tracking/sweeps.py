"""Hydra callbacks that group a multirun's trainings under one parent MLflow run (per study)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from mnist_pipeline import repository_root
from mnist_pipeline.search import STORAGE_TAG, STUDY_TAG
from mnist_pipeline.tracking.logger import (
    PARENT_RUN_FILE,
    check_server,
    experiment_id,
    process_tags,
    reopen,
    resolve_tracking_uri,
    store_lock,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
LOGGER_TARGET = "mnist_pipeline.tracking.logger.MLflowLogger"


def mlflow_settings(config: DictConfig) -> DictConfig | None:
    """The config of the MLflow logger among `config.logger`, if one is on."""
    for part in (config.get("logger") or {}).values():
        if part and part.get("_target_") == LOGGER_TARGET:
            return part
    return None


class SweepParentRun(HydraCallback):
    """Groups a Hydra multirun's jobs under one parent MLflow run (children tag its id).

    A grid sweep gets a parent run of its own. A search's parent is its study's: found again
    by a rerun that resumes the study or by a second process sharing it (under the store's
    lock), and at the end of each command given the study's best trial, its counts and its
    figures (optimization history, parameter importances).
    """

    # The parent run of the multirun in progress in this process, if any (see `end_open`).
    _open: SweepParentRun | None = None

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: str | None = None

    @classmethod
    def end_open(cls, status: str) -> None:
        """End the parent run of a multirun that stopped before `on_multirun_end`."""
        parent, cls._open = cls._open, None
        if parent is not None and parent.run_id is not None:
            parent.client.set_terminated(parent.run_id, status)
            log.info("MLflow parent run %s: %s", parent.run_id, status)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings = mlflow_settings(config)
        study = _study(config)
        if study is not None:
            from mnist_pipeline.config import ConfigError
            from mnist_pipeline.search.space import checked_search

            try:
                checked_search(config.hydra.sweeper, list(config.hydra.overrides.task))
            except ConfigError:
                return  # the sweeper refuses it in one line: no parent run for it
        if settings is None:
            return
        from mlflow import MlflowClient

        uri = resolve_tracking_uri(settings.get("tracking_uri"))
        check_server(uri)
        sweep_dir = Path(config.hydra.sweep.dir)
        with store_lock(uri):
            self.client = MlflowClient(uri)
            experiment = experiment_id(self.client, settings.get("experiment_name", "mnist"), uri)
            if study is not None:
                self.run_id = self._find_study_run(experiment, *study)
            if self.run_id is None:
                self.run_id = self.client.create_run(
                    experiment,
                    run_name=f"study-{study[0]}" if study else _grid_name(sweep_dir),
                    tags={**(_study_tags(*study) if study else {}), **process_tags()},
                ).info.run_id
        self.client.set_tag(self.run_id, "sweep.overrides", " ".join(config.hydra.overrides.task))
        self.client.set_tag(self.run_id, "hydra.sweep_dir", str(sweep_dir.resolve()))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self.run_id)
        SweepParentRun._open = self
        log.info("MLflow parent run %s for sweep %s", self.run_id, sweep_dir)

    def _find_study_run(self, experiment: str, name: str, location: str) -> str | None:
        """The parent run of study `name` at `location`, made RUNNING by this process."""
        tags = _study_tags(name, location)
        found = self.client.search_runs(
            [experiment],
            filter_string=" and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items()),
            max_results=1,
        )
        if not found:
            return None
        run_id = found[0].info.run_id
        reopen(self.client, run_id)
        return run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SweepParentRun._open = None
        if self.run_id is None:
            return
        study = _study(config)
        finished = True
        if study is not None:
            finished = log_study(self.client, self.run_id, *study, config.hydra.sweeper.n_trials)
        if finished:  # else another process still runs trials of the study: it ends the run
            self.client.set_terminated(self.run_id, "FINISHED")


def _study(config: DictConfig) -> tuple[str, str] | None:
    """(name, storage location) of the study a search multirun works on; None for a grid."""
    sweeper = config.hydra.sweeper
    if "study_name" not in sweeper or "trial" not in sweeper:  # not mnist_search's sweeper
        return None
    from mnist_pipeline.search.study import storage_location

    return sweeper.study_name, storage_location(sweeper.storage, repository_root())


def _study_tags(name: str, location: str) -> dict[str, str]:
    from mnist_pipeline.search.study import shown

    return {STUDY_TAG: name, STORAGE_TAG: shown(location)}


def _grid_name(sweep_dir: Path) -> str:
    return f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}"


def log_study(client: MlflowClient, run_id: str, name: str, location: str, n_trials: int) -> bool:
    """Best value and params, trial counts and figures of a study into its parent run.

    Returns whether the study has all its `n_trials` done.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from mlflow.entities import Metric, RunTag

    from mnist_pipeline.search.study import best, open_storage, progress

    study = optuna.load_study(study_name=name, storage=open_storage(location))
    counts, top = progress(study), best(study)
    tags = [RunTag(f"study.{key}", str(value)) for key, value in counts.items()]
    metrics = []
    if top is not None:
        tags += [RunTag(f"best.{key}", str(value)) for key, value in top.params.items()]
        tags.append(RunTag("best.trial", str(top.number)))
        metrics.append(Metric("best_value", top.value, int(time.time() * 1000), counts["done"]))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for figure, plot in (
            ("optimization_history.png", optuna.visualization.matplotlib.plot_optimization_history),
            ("param_importances.png", optuna.visualization.matplotlib.plot_param_importances),
        ):
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as error:  # e.g. importances of a single trial
                log.info("no %s yet: %s", figure, error)
                continue
            path = Path(folder) / figure
            axes.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(axes.figure)
            client.log_artifact(run_id, str(path), "study")
    return counts["done"] >= n_trials
