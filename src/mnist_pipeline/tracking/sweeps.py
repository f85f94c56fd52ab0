"""Hydra callbacks that group a multirun's trainings under one parent MLflow run (per study),
which answers the sweep: its children's table, the best child, a figure (`summarise`)."""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from mnist_pipeline import repository_root
from mnist_pipeline.reporting.figures import finite
from mnist_pipeline.search import STATE_TAG, STORAGE_TAG, STUDY_TAG
from mnist_pipeline.tracking.logger import (
    DATA_VERSION_TAG,
    NOTE_TAG,
    PARENT_RUN_FILE,
    SWEPT_KEYS_FILE,
    check_server,
    experiment_id,
    process_tags,
    reopen,
    resolve_tracking_uri,
    store_lock,
)
from mnist_pipeline.tracking.outbox import replace_table

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)
LOGGER_TARGET = "mnist_pipeline.tracking.logger.MLflowLogger"
OVERRIDES_TAG, SWEEP_TAG, SWEEP_DIR_TAG = "hydra.overrides", "sweep.overrides", "hydra.sweep_dir"
BEST_RUN_TAG = "sweep.best_run_id"
CHILDREN_TABLE, GROUPS_TABLE = "sweep/children.json", "sweep/seed_groups.json"


def mlflow_settings(config: DictConfig) -> DictConfig | None:
    """The config of the MLflow logger among `config.logger`, if one is on."""
    for part in (config.get("logger") or {}).values():
        if part and part.get("_target_") == LOGGER_TARGET:
            return part
    return None


class SweepParentRun(HydraCallback):
    """Groups a Hydra multirun's jobs under one parent MLflow run (children tag its id).

    A grid sweep gets a parent run of its own, found again by the same grid run again into the
    same sweep directory. A search's parent is its study's: found again by a rerun that resumes
    the study or by a second process sharing it (under the store's lock), and at the end of
    each command given the study's best trial, its counts and its figures (optimization
    history, parameter importances). Either ends each command with the sweep's answer
    (`summarise`), even a command that fails or is stopped (`end_open`). The swept keys go
    into the sweep directory beside the parent's id: each child's name carries its values.
    """

    # The parent run of the multirun in progress in this process, if any (see `end_open`).
    _open: SweepParentRun | None = None

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment = ""
        self.swept: list[str] = []

    @classmethod
    def end_open(cls, status: str) -> None:
        """End the parent run of a multirun that stopped before `on_multirun_end`, with the
        summary of the children it has."""
        parent, cls._open = cls._open, None
        if parent is not None and parent.run_id is not None:
            try:
                summarise(parent.client, parent.experiment, parent.run_id, parent.swept)
            except Exception as error:  # the error that stopped the sweep is the one to see
                log.warning("no summary in MLflow parent run %s: %s", parent.run_id, error)
            parent.client.set_terminated(parent.run_id, status)
            log.info("MLflow parent run %s: %s", parent.run_id, status)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_pipeline.stages import launch

        if launch.rank() != 0:  # torchrun or SLURM run the sweep on every rank: one parent
            return
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
        sweep = {
            SWEEP_TAG: " ".join(config.hydra.overrides.task),
            SWEEP_DIR_TAG: str(sweep_dir.resolve()),
        }
        self.swept = swept_keys(config)
        with store_lock(uri):
            self.client = MlflowClient(uri)
            self.experiment = experiment_id(
                self.client, settings.get("experiment_name", "mnist"), uri
            )
            if study is not None:
                self.run_id, name = self._find_study_run(*study), f"study-{study[0]}"
            else:
                self.run_id = self._find_grid_run(sweep_dir / PARENT_RUN_FILE, sweep)
                name = f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}"
            if self.run_id is None:
                self.run_id = self.client.create_run(
                    self.experiment,
                    run_name=name,
                    tags={**(_study_tags(*study) if study else {}), **sweep, **process_tags()},
                ).info.run_id
            else:  # found again: this process goes on with it
                reopen(self.client, self.run_id)
        for key, value in sweep.items():  # a study's parent: the latest command's
            self.client.set_tag(self.run_id, key, value)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self.run_id)
        (sweep_dir / SWEPT_KEYS_FILE).write_text("".join(f"{key}\n" for key in self.swept))
        SweepParentRun._open = self
        log.info("MLflow parent run %s for sweep %s", self.run_id, sweep_dir)

    def _find_grid_run(self, marker: Path, sweep: dict[str, str]) -> str | None:
        """The parent run of the same grid run before into the same sweep directory (a rerun
        after a crash): its table keeps one row per job."""
        if not marker.is_file():
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(marker.read_text().strip())
        except MlflowException:  # a marker of another store
            return None
        tags = run.data.tags
        same = all(tags.get(key) == value for key, value in sweep.items())
        if not same or run.info.experiment_id != self.experiment or STUDY_TAG in tags:
            return None
        return run.info.run_id

    def _find_study_run(self, name: str, location: str) -> str | None:
        """The parent run of study `name` at `location`."""
        tags = _study_tags(name, location)
        found = self.client.search_runs(
            [self.experiment],
            filter_string=" and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items()),
            max_results=1,
        )
        return found[0].info.run_id if found else None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        study = _study(config)
        finished = True
        if study is not None:
            finished = log_study(self.client, self.run_id, *study, config.hydra.sweeper.n_trials)
        # If it fails, `end_open` ends the run FAILED.
        summarise(self.client, self.experiment, self.run_id, self.swept)
        SweepParentRun._open = None
        if finished:  # else another process still runs trials of the study: it ends the run
            self.client.set_terminated(self.run_id, "FINISHED")


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a multirun sweeps (`model.hidden=8,16`, `seed=range(1,4)`, a search space), from
    `hydra.sweeper.params` and the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    overrides = [*(f"{key}={value}" for key, value in params.items()), *config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return list(dict.fromkeys(o.get_key_element() for o in parsed if o.is_sweep_override()))


def summarise(client: MlflowClient, experiment: str, run_id: str, swept: Sequence[str]) -> None:
    """The answer of a sweep into its parent run `run_id`, rebuilt from the store each time.

    - the table `sweep/children.json`: a row per child (its swept values, best val acc, test
      acc, epochs, status, run id), the latest child of each job only: a rerun of the grid
      (or a resumed study) replaces rows, never adds them twice;
    - when `seed` is swept: `sweep/seed_groups.json`, a row per setting of the other keys with
      the mean and standard deviation over its seeds;
    - metrics: the best child's, under their own names, and the headline `sweep/val_acc`
      (with `sweep/test_acc`): the best child's, or with seeds the best group's mean (and
      `*_std`); the best child (of the best group) is tagged `sweep.best_run_id`;
    - the figure `sweep/swept_values.png`: each swept key against the best val acc;
    - the run's description in the UI (`mlflow.note.content`): the best run and the groups.
    Best means highest best val acc (`val/acc_best`), the objective of every sweep here.
    """
    from mlflow.entities import Metric, RunTag

    from mnist_pipeline.reporting.figures import sweep_figure

    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=10_000,
    )
    latest: dict[str, Run] = {}
    for run in runs:  # newest first: a job run again keeps its latest run only
        latest.setdefault(run.data.tags.get(OVERRIDES_TAG, run.info.run_id), run)
    if not latest:
        log.info("MLflow parent run %s: no child runs to summarise", run_id)
        return
    rows = sorted(
        (_child_row(client, run, swept) for run in latest.values()),
        key=lambda row: -row["best_val_acc"] if _done(row) else math.inf,
    )
    grouped = "seed" in swept
    groups = seed_groups(rows, [key for key in swept if key != "seed"]) if grouped else []
    if grouped and groups:
        top = groups[0]  # of finished rows only, and `rows` go best first
        best = next(r for r in rows if r["run_id"] in top["run_ids"])
        headline = {f"sweep/{name}": top[name] for name in _GROUP_METRICS if finite(top[name])}
    else:
        best = next((r for r in rows if _done(r)), None)
        headline = {"sweep/val_acc": best["best_val_acc"]} if best else {}
        if best and finite(best["test_acc"]):
            headline["sweep/test_acc"] = best["test_acc"]
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in headline.items()]
    metrics.append(Metric("sweep/runs", len(rows), now, 0))
    tags = []
    if best is not None:
        (winner,) = [run for run in latest.values() if run.info.run_id == best["run_id"]]
        metrics += [Metric(key, value, now, 0) for key, value in winner.data.metrics.items()]
        tags = [RunTag(BEST_RUN_TAG, best["run_id"]), RunTag("sweep.best_run_name", best["run"])]
    versions = {run.data.tags.get(DATA_VERSION_TAG) for run in latest.values()}
    if len(versions) == 1 and None not in versions:  # the children's data, when they share it
        tags.append(RunTag(DATA_VERSION_TAG, versions.pop()))
    note = client.get_run(run_id).data.tags.get(NOTE_TAG)
    if note is None or note.startswith(NOTE_HEAD):  # not another callback's (the activations')
        tags.append(RunTag(NOTE_TAG, _note(rows, groups, best, swept)))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    replace_table(client, run_id, rows, CHILDREN_TABLE)
    if grouped:
        table = [{key: value for key, value in g.items() if key != "run_ids"} for g in groups]
        replace_table(client, run_id, table, GROUPS_TABLE)
    with tempfile.TemporaryDirectory() as folder:
        figure = Path(folder) / "swept_values.png"
        sweep_figure(rows, swept, best["run_id"] if best else None, figure)
        client.log_artifact(run_id, str(figure), "sweep")
    log.info(
        "MLflow parent run %s: %d runs, best %s (%s)",
        run_id,
        len(rows),
        best["run"] if best else "none",
        ", ".join(f"{key} {value:.4f}" for key, value in headline.items()),
    )


_GROUP_METRICS = ("val_acc", "val_acc_std", "test_acc", "test_acc_std")
NOTE_HEAD = "**Sweep**"


def _note(
    rows: Sequence[dict[str, Any]],
    groups: Sequence[dict[str, Any]],
    best: dict[str, Any] | None,
    swept: Sequence[str],
) -> str:
    """The parent run's description in the UI: the sweep's answer in a few lines."""
    done = sum(_done(row) for row in rows)
    lines = [f"{NOTE_HEAD} of {', '.join(swept) or 'nothing'}: {len(rows)} runs, {done} finished."]
    if best is not None:
        test = f", test acc {best['test_acc']:.4f}" if finite(best["test_acc"]) else ""
        lines.append(f"Best run: `{best['run']}`, best val acc {best['best_val_acc']:.4f}{test}.")
    if groups:
        lines += ["", "| setting | seeds | val acc (mean ± std) | test acc (mean ± std) |"]
        lines.append("|---|---:|---:|---:|")
        for group in groups:
            setting = ", ".join(f"{k}={group[k]}" for k in swept if k != "seed") or "all"
            lines.append(
                f"| {setting} | {group['seeds']} | {_spread(group, 'val_acc')} | "
                f"{_spread(group, 'test_acc')} |"
            )
    return "\n".join(lines)


def _spread(group: dict[str, Any], name: str) -> str:
    mean, std = group[name], group[f"{name}_std"]
    if not finite(mean):
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if finite(std) else f"{mean:.4f}"


def _child_row(client: MlflowClient, run: Run, swept: Sequence[str]) -> dict[str, Any]:
    """A child's row of the parent's table: its values of the `swept` keys and results."""
    overrides = run.data.tags.get(OVERRIDES_TAG, "")
    values = dict(o.split("=", 1) for o in overrides.split() if "=" in o)
    metrics = run.data.metrics
    status = run.info.status
    if run.data.tags.get(STATE_TAG) == "PRUNED":  # a trial stopped early by the search
        status = "PRUNED"
    return {
        **{key: _parsed(values.get(key)) for key in swept},
        "run": run.info.run_name,
        "best_val_acc": metrics.get("val/acc_best", metrics.get("val/acc")),
        "test_acc": metrics.get("test/acc"),
        "epochs": len(client.get_metric_history(run.info.run_id, "val/acc")),
        "status": status,
        "run_id": run.info.run_id,
    }


def seed_groups(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """The finished `rows` grouped by their values of `keys` (all but the seed): per group the
    number of seeds, mean and standard deviation (n - 1; none for one seed) of the best val and
    the test accuracy, best mean first."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if _done(row):
            groups.setdefault(tuple(row[key] for key in keys), []).append(row)
    table = []
    for values, members in groups.items():
        entry: dict[str, Any] = dict(zip(keys, values, strict=True))
        entry["seeds"] = len(members)
        for name, column in (("val_acc", "best_val_acc"), ("test_acc", "test_acc")):
            numbers = [r[column] for r in members if finite(r[column])]
            entry[name] = statistics.fmean(numbers) if numbers else None
            entry[f"{name}_std"] = statistics.stdev(numbers) if len(numbers) > 1 else None
        entry["run_ids"] = [r["run_id"] for r in members]
        table.append(entry)
    return sorted(table, key=lambda entry: -entry["val_acc"])


def _done(row: dict[str, Any]) -> bool:
    return row["status"] == "FINISHED" and finite(row["best_val_acc"])


def _parsed(value: str | None) -> Any:
    """An override's value as a number where it is one (a figure's axis), else the text."""
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return value


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
    with warnings.catch_warnings():
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
            saving = {"dpi": 100, "bbox_inches": "tight"}
            client.log_figure(run_id, axes.figure, f"study/{figure}", save_kwargs=saving)
            plt.close(axes.figure)
    return counts["done"] >= n_trials
