"""`MLflowLogger`: Lightning's `MLFlowLogger`, plus what the README promises of an MLflow run."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytorch_lightning import Callback, Trainer
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from mnist_pipeline import PROJECT_ROOT, hydra_config, relative_to_root, repository_root
from mnist_pipeline.checkpoint_files import RUN_ID_KEY
from mnist_pipeline.processes import gone, lock_beside, this_process
from mnist_pipeline.tracking.outbox import (
    UNSENT_DIR,
    Outbox,
    Record,
    TrackingError,
    bound_http_waits,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from torch import Tensor, nn

log = logging.getLogger(__name__)
PARENT_RUN_FILE = "mlflow_parent_run_id"
# The keys a multirun sweeps, one a line, beside PARENT_RUN_FILE: part of each child's name.
SWEPT_KEYS_FILE = "mlflow_swept_keys"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
HOST_TAG, PID_TAG = "mnist.host", "mnist.pid"
# A run's description, shown at the top of its page in the MLflow UI (Markdown).
NOTE_TAG = "mlflow.note.content"
# A digest of the pinned checksums of the data a run trained on (`data_version`).
DATA_VERSION_TAG = "data.version"
# Hydra's instructions for building an object, not settings of it: never a param.
HYDRA_FLAGS = ("_partial_", "_recursive_", "_convert_")


def resolve_tracking_uri(configured: str | None = None) -> str:
    """`configured`, else $MLFLOW_TRACKING_URI, else the repository's sqlite store."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{repository_root() / 'mlflow.db'}"


def artifact_location(uri: str, experiment_name: str) -> str | None:
    """With a local sqlite store, artifacts go to `mlruns/` beside `mlflow.db`, not `./mlruns`."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / experiment_name).as_uri()


def store_lock(uri: str) -> AbstractContextManager[bool]:
    """A lock beside a local sqlite store while it may be created or migrated: MLflow does that
    without one, and three trainings started together on a fresh clone all crashed (`table
    _alembic_tmp_metrics already exists`). Other stores: no lock."""
    return lock_beside(uri, ".lock")


def check_server(uri: str, timeout: float = 10.0) -> None:
    """A `TrackingError` unless an http(s) tracking server answers its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({getattr(error, 'reason', error)}); "
            "start it, fix the logger's tracking_uri / $MLFLOW_TRACKING_URI, or train with "
            "logger=none"
        ) from None


def check_registry(uri: str, name: str | None, log_model: bool) -> None:
    """A `TrackingError` unless a model can be registered as `name` in store `uri` (no name:
    nothing to check): before training, not after it."""
    if not name:
        return
    if not log_model:
        raise TrackingError(
            f"logger.mlflow.registered_model_name={name}: the registered version is the run's "
            "MLflow model; set logger.mlflow.log_model=true"
        )
    from urllib.parse import urlsplit

    scheme = urlsplit(uri).scheme
    if scheme == "file" or len(scheme) <= 1:  # or a bare path (or a Windows drive letter)
        raise TrackingError(
            f"logger.mlflow.registered_model_name={name}: the MLflow store {uri} is a file "
            "store, which has no model registry; use a database (sqlite:///mlflow.db, the "
            "default) or a tracking server"
        )


def data_version(datamodule: Any) -> str | None:
    """A digest of the files `datamodule` verifies (its `files`: name -> SHA-256 of the
    content), the same wherever the same data is read from; None for a data module that pins
    none: a version is claimed only for what was checked."""
    files = getattr(datamodule, "files", None)
    if not isinstance(files, Mapping) or not files:
        return None
    pinned = "".join(f"{name} {sha256}\n" for name, sha256 in sorted(files.items()))
    return hashlib.sha256(pinned.encode()).hexdigest()[:16]


def dataset_inputs(datamodule: Any, splits: Mapping[str, int]) -> list[dict[str, Any]]:
    """The data splits of a training as MLflow dataset inputs (`models.log_datasets`): named
    `<data>-<split>` after the data module's class, with `data_version` as digest and the data
    module's `dir` as source; none when the data module pins no files."""
    version = data_version(datamodule)
    if version is None:
        return []
    name = type(datamodule).__name__.removesuffix("DataModule").lower() or "data"
    directory = getattr(datamodule, "dir", None)
    source = str(relative_to_root(directory)) if directory is not None else name
    contexts = {"train": "training", "val": "validation", "test": "test"}
    return [
        {
            "name": f"{name}-{split}",
            "digest": version,
            "source": {"uri": source},
            "context": contexts.get(split, split),
            "rows": rows,
        }
        for split, rows in splits.items()
    ]


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created (or restored) if needed, marked as model training
    (`EXPERIMENT_KIND`): the MLflow UI opens an unmarked experiment in its GenAI view."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location(uri, name), tags=dict([EXPERIMENT_KIND])
            )
        except Exception:  # another process of a parallel sweep created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # made by an older version
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment.experiment_id


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def selected_params(flat: Mapping[str, Any], patterns: Sequence[str] | None) -> dict[str, Any]:
    """The keys of a flattened config that match one of `patterns` (fnmatch; None: all), less
    Hydra's building flags (`HYDRA_FLAGS`)."""
    from fnmatch import fnmatchcase

    return {
        key: value
        for key, value in flat.items()
        if key.rsplit(".", 1)[-1] not in HYDRA_FLAGS
        and (patterns is None or any(fnmatchcase(key, pattern) for pattern in patterns))
    }


def process_tags() -> dict[str, str]:
    """The host and pid of the process writing a run: a run left RUNNING by a process that is
    gone can be told from one still training (`mark_orphans`)."""
    host, pid = this_process()
    return {HOST_TAG: host, PID_TAG: str(pid)}


def reopen(client: MlflowClient, run_id: str) -> None:
    """Run `run_id` goes on in this process: RUNNING, with this process's host and pid."""
    for key, value in process_tags().items():
        client.set_tag(run_id, key, value)
    client.update_run(run_id, status="RUNNING")


def mark_orphans(client: MlflowClient, experiment: str, keep: str) -> list[str]:
    """End KILLED the runs of `experiment` left RUNNING by a process of this host that no longer
    exists (kill -9, a power cut); `keep` is the caller's own run. Returns their ids."""
    host, _ = this_process()
    running = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    runs = client.search_runs([experiment], filter_string=running)
    orphans = []
    for run in runs:
        pid = run.data.tags.get(PID_TAG, "")
        if run.info.run_id != keep and pid.isdigit() and gone(int(pid), host):
            client.set_tag(run.info.run_id, "mnist.ended_by", f"a later run: pid {pid} was gone")
            client.set_terminated(run.info.run_id, "KILLED")
            orphans.append(run.info.run_id)
    return orphans


def run_tags() -> dict[str, str]:
    """Where a run came from: code version, Hydra overrides, sweep, DVC experiment."""
    tags: dict[str, str] = process_tags()
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        # dvc.lock is the pipeline's own bookkeeping: `dvc repro` updates it between stages.
        changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock")
        tags["git.dirty"] = str(bool(changes))
    hydra = hydra_config()
    if hydra is not None:
        from hydra.types import RunMode

        tags["hydra.output_dir"] = hydra.runtime.output_dir
        tags["hydra.overrides"] = " ".join(hydra.overrides.task) or "(none)"
        marker = Path(hydra.sweep.dir) / PARENT_RUN_FILE
        if hydra.mode == RunMode.MULTIRUN and marker.is_file():
            tags["mlflow.parentRunId"] = marker.read_text().strip()
    dvc = {"dvc.exp_name": "DVC_EXP_NAME", "dvc.baseline_rev": "DVC_EXP_BASELINE_REV"}
    return tags | {tag: os.environ[name] for tag, name in dvc.items() if os.environ.get(name)}


def default_run_name(model: Any) -> str:
    """The model option and its command-line settings, e.g. `mlp-hidden=256-activation=sigmoid`,
    and in a multirun every other swept override too (`mlp-hidden=16-seed=1`: no two jobs of a
    grid share a name); the network's class when there is no option (DVC's params.yaml): `mlp`;
    for a trial of a search, the study and trial: `mnist-mlp-trial-7`."""
    hydra = hydra_config()
    name = str(model.get("_target_", "model")).rsplit(".", 1)[-1].lower()
    if hydra is None:
        return name
    if hydra.sweeper.get("trial") is not None:  # a trial of a search
        return f"{hydra.sweeper.study_name}-trial-{hydra.sweeper.trial}"
    # Written by the multirun's parent run (tracking.sweeps); absent in a single run.
    swept_file = Path(hydra.sweep.dir) / SWEPT_KEYS_FILE
    swept = swept_file.read_text().split() if swept_file.is_file() else []
    parts = [
        o.removeprefix("model.")
        for o in hydra.overrides.task
        if o.startswith("model.") or (o.split("=", 1)[0] in swept and not o.startswith("model="))
    ]
    return "-".join([hydra.runtime.choices.get("model") or name, *parts])


class _ClientOnceCreated:
    """`MLflowLogger.experiment` while its run is being created: the client, waited for at the
    first attribute used."""

    def __init__(self, created: Future[MlflowClient]) -> None:
        self._created = created

    def __getattr__(self, name: str) -> Any:
        return getattr(self._created.result(), name)


class MLflowLogger(MLFlowLogger):
    """Lightning's `MLFlowLogger`, with what it lacks for the run this project promises (README,
    "MLflow"):

    1. the run's end status set by the train stage (`end`), which knows whether the test and
       report after `fit` succeeded and whether the user interrupted (KILLED); Lightning's
       `finalize` knows only success or failure;
    2. provenance tags (`run_tags`), a default run name, and the host and pid that let a later
       run end this one KILLED if its process dies (`mark_orphans`); a resumed run reopened;
    3. every record through an `Outbox`: a store that goes out of reach mid-training costs one
       bounded wait, and what it misses is kept in `save_dir`/mlflow-unsent (sent by a resume
       or `python src/sync.py`). Metrics wait in memory and go in one write per epoch (a sqlite
       write costs as much as 20 steps of the MLP), before the curve CSV: once the curve shows
       an epoch, MLflow has it too;
    4. with `log_model`, an MLflow pyfunc model instead of Lightning's checkpoint upload,
       registered as a new version of `registered_model_name` when given (`models.register`);
    5. a run table that compares: only the config keys of `params` as params, and per-epoch
       metrics at step = epoch (Lightning's step is the optimizer step), so that their charts'
       x-axis counts epochs (`RunCallback` tells it the epoch of a learning-rate record);
    6. with `log_system_metrics`, MLflow's own monitor of CPU, memory, disk, network (and GPU).

    And one thread: the run is created (Lightning's `__init__` and `experiment`, under the
    store's lock) while training starts. Importing mlflow and opening the store take 1.5-3 s,
    which Lightning's logger spends before the first step; measured, the thread brings the first
    step 2-10 s earlier on this project's 2-core machine (README, Performance). What is logged
    before the run exists (params, config, tags) waits in memory, in order, for the first record
    that must go now (the first epoch's metrics); that one waits for the run, and its error
    (a store that cannot be opened) ends the training.
    """

    def __init__(
        self,
        experiment_name: str = "mnist",
        tracking_uri: str | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        log_model: bool = True,
        save_dir: str | None = None,
        params: Sequence[str] | None = None,
        registered_model_name: str | None = None,
        log_system_metrics: bool = False,
    ) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        self.log_pyfunc = log_model
        self.params = list(params) if params is not None else None
        self.registered_model_name = registered_model_name
        self.log_system_metrics = log_system_metrics
        self.epoch = 0  # of the metrics logged without one (see `log_metrics`)
        self._monitor: Any = None  # MLflow's SystemMetricsMonitor, once started
        self.outbox = Outbox(self.uri, Path(save_dir) / UNSENT_DIR if save_dir else None, run_id)
        self._pending: list[tuple[str, float, int, int]] = []  # metrics until the epoch ends
        self._waiting: list[Record] = []  # records until they are sent, in order
        self.resumed_status = "RUNNING"
        self._resumed = run_id is not None
        arguments = {
            "experiment_name": experiment_name,
            "run_name": None if run_id else run_name or "training",
            "tracking_uri": self.uri,
            "run_id": run_id,
            "log_model": False,  # the train stage logs the best checkpoint and model itself
        }
        # What Lightning reads before the parent's __init__ has run in the background.
        self._tracking_uri, self._run_id, self._experiment_id = self.uri, run_id, None
        self._experiment_name, self._prefix = experiment_name, ""
        self._log_model, self._checkpoint_callback = False, None
        if rank_zero_only.rank != 0:
            # Other DDP ranks log nothing (Lightning's dummy experiment) and open no store: the
            # parent's __init__ would, and ranks starting together on a new sqlite store raced
            # to create its tables (seen with torchrun on two nodes).
            return
        bound_http_waits(self.uri)
        check_server(self.uri)  # an unreachable server fails the command before any work
        arguments["tags"] = None if run_id else {**run_tags(), **(tags or {})}
        executor = ThreadPoolExecutor(1, thread_name_prefix="mlflow-run")
        self._created = executor.submit(self._create, arguments)
        executor.shutdown(wait=False)  # its one thread ends with this one task

    def __getstate__(self) -> dict[str, Any]:
        """`ddp_spawn` pickles the trainer, loggers included, into the processes it starts: the
        run is made first, and its future goes as its result (a future does not pickle)."""
        client = self._created.result() if hasattr(self, "_created") else None
        return {**self.__dict__, "_created": client} if client else self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("_created") is not None:
            created: Future[MlflowClient] = Future()
            created.set_result(state["_created"])
            state["_created"] = created
        self.__dict__.update(state)

    def _create(self, arguments: dict[str, Any]) -> MlflowClient:
        try:
            with store_lock(self.uri):  # opening a new sqlite store creates its tables
                MLFlowLogger.__init__(self, **arguments)  # imports mlflow, opens the store
                if not self._resumed:  # Lightning's lookup races in parallel runs
                    self._experiment_id = experiment_id(
                        self._mlflow_client, self._experiment_name, self.uri
                    )
                client = MLFlowLogger.experiment.fget(self)  # type: ignore[attr-defined]
            self._started(client)
            return client
        except Exception as error:
            raise TrackingError(
                f"MLflow store {self.uri}: {type(error).__name__}: {error}; fix the logger's "
                "tracking_uri / $MLFLOW_TRACKING_URI, or train with logger=none"
            ) from error

    def _started(self, client: MlflowClient) -> None:
        """A resumed run (or an evaluation of its checkpoint) gets what an earlier process of it
        kept, this process's tags and RUNNING; runs of dead processes end KILLED."""
        self.outbox.run_id = self._run_id
        if self._resumed:
            status = client.get_run(self._run_id).info.status
            self.resumed_status = self.outbox.replay(client) or status
            reopen(client, self._run_id)
        else:
            log.info("MLflow run %s (%s) in %s", self._run_id, self._run_name, self.uri)
        for orphan in mark_orphans(client, self._experiment_id, keep=self._run_id):
            log.info("MLflow run %s was left RUNNING by a process that is gone: KILLED", orphan)
        if self.log_system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self._run_id, resume_logging=self._resumed, tracking_uri=self.uri
            )
            self._monitor.start()

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The MLflow client; while the run is being created, a stand-in that waits for it at
        its first use (and re-raises what stopped it). Lightning touches `experiment` before
        `setup`: waiting there would hold the first training step until the run exists."""
        if self._created.done():
            return self._created.result()
        return _ClientOnceCreated(self._created)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return self._experiment_name  # Lightning's asks the store (for the experiment id)

    @property
    def version(self) -> str | None:
        return self._run_id  # Lightning's waits for the run: the progress bar asks at once

    def _post(self, record: Record, now: bool = True) -> None:
        """Send `record` after the ones before it; with `now=False` it waits in memory with them
        while the run is still being created."""
        self._waiting.append(record)
        if now or self._created.done():
            client = self._created.result()
            while self._waiting:
                self.outbox.post(client, self._waiting.pop(0))

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """The keys of `params` (a flattened config) that `self.params` names, at MLflow's own
        limit of 6000 characters a value (Lightning cuts at 250)."""
        params = {
            key: str(value)[:6000]
            for key, value in selected_params(dict(params), self.params).items()
        }
        # A resumed run keeps the params it started with: MLflow refuses to change one (and
        # the resume check made sure the model settings are the same).
        if params and not self._resumed:
            self._post({"params": params}, now=False)

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tags of the run (set or changed)."""
        self._post({"tags": dict(tags)}, now=False)

    @rank_zero_only
    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact."""
        self._post({"text": text, "file": artifact_file}, now=False)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Per-step values (`*_step`) at Lightning's step, the optimizer step; they wait in
        memory for the epoch's. Other values at step = their epoch: the "epoch" that Lightning
        adds to its calls (not logged itself: the step says it), else `self.epoch`."""
        now = int(time.time() * 1000)
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        if epoch is not None:
            self.epoch = int(epoch)
        per_step = any(key.endswith("_step") for key in metrics)
        step = (step or 0) if per_step else self.epoch
        self._pending += [(key, float(value), now, step) for key, value in metrics.items()]
        # Sent with Lightning's calls, which carry the epoch: what a callback logs itself (the
        # learning rate, as the epoch starts) goes with the epoch's values, so that the first
        # training step never waits for the run to be created.
        if epoch is not None and metrics and not per_step:
            self.flush()

    def flush(self) -> None:
        """Send the metrics waiting in memory (after what waits before them)."""
        if self._pending:
            metrics, self._pending = self._pending, []
            self._post({"metrics": metrics})

    @rank_zero_only
    def finalize(self, status: str) -> None:
        try:
            self.flush()
        except TrackingError:
            if status == "success":
                raise
            # Already failing, most likely for this very reason: report the first error only.

    @rank_zero_only
    def end(self, status: str) -> None:
        """End the run FINISHED, FAILED or KILLED; nothing to end if it could not be created
        (that error is on its way, or was raised at the first epoch end)."""
        try:
            self._created.result()
        except Exception as error:
            log.debug("no MLflow run to end: %s", error)
            return
        if self._monitor is not None:  # its last samples before the run ends
            self._monitor.finish()
        self.flush()  # what was logged after the last epoch's values
        self._post({"status": status})

    def check_sent(self) -> None:
        """A `TrackingError` (one line) if records could not be sent and wait on disk."""
        if rank_zero_only.rank == 0:
            self.outbox.check_sent()

    @rank_zero_only
    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        self._post({"artifact": str(path), "dir": artifact_dir})

    @rank_zero_only
    def log_table(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """A table artifact (MLflow's `log_table`): one row a dict, the same keys in each."""
        self._post({"table": rows, "file": artifact_file})

    @rank_zero_only
    def log_datasets(self, datasets: list[dict[str, Any]]) -> None:
        """Inputs of the run (`models.log_datasets`: name, digest, source, context, rows)."""
        self._post({"datasets": datasets})

    @rank_zero_only
    def log_pyfunc_model(
        self, net: nn.Module, config: Mapping[str, Any], example: Tensor, card: str = ""
    ) -> None:
        """An MLflow model: pixels (N, 28, 28) float32 in [0, 1] -> probabilities (N, 10);
        registered as a new version of `registered_model_name`, if set, with the model card
        `card` as its description.

        `config` is the model config `net` was built from: if the store is out of reach, the
        model is kept as that config and the weights (see `Outbox._keep`)."""
        from mnist_pipeline.networks import Probabilities

        model = Probabilities(net).cpu().eval()
        example = example.detach().cpu().float()
        self._post({"model": model, "network": dict(config), "example": example})
        if self.registered_model_name:
            # Its key: a registration sent again after a lost answer makes no second version.
            key = uuid.uuid4().hex
            self._post({"register": self.registered_model_name, "description": card, "key": key})


class RunCallback(Callback):
    """What the training loop tells an `MLflowLogger`'s run: the epoch as it starts, before the
    other callbacks (Lightning's `LearningRateMonitor` logs the epoch's learning rate then, with
    the optimizer step only), and the run id in every checkpoint, so that evaluation and resumes
    log into that run."""

    def __init__(self, logger: MLflowLogger) -> None:
        # The logger, not a function of it: `ddp_spawn` pickles the callbacks.
        self.logger = logger

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.logger.epoch = trainer.current_epoch

    def on_save_checkpoint(self, trainer: Trainer, pl_module: Any, checkpoint: dict) -> None:
        checkpoint[RUN_ID_KEY] = self.logger.run_id  # asked at each save: it may be in the making
