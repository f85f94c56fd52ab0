"""MLflow tracking: one run per training, sweeps grouped under a parent run.

Only this module imports mlflow, and only inside functions: importing it costs about 2 s, which
`logger=none` runs, the data stage and the tests of other modules should not pay.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from mnist_pipeline import PROJECT_ROOT

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
PARENT_RUN_FILE = "mlflow_parent_run_id"


class TrackingError(RuntimeError):
    """The tracking server cannot be used."""


def repository_root() -> Path:
    """The user's repository, also inside a queued DVC experiment's temporary copy of it.

    DVC runs queued experiments in a throwaway copy and points $DVC_ROOT at the real repository;
    a store written inside the copy would be deleted with it.
    """
    return Path(os.environ.get("DVC_ROOT") or PROJECT_ROOT).resolve()


def tracking_uri(configured: str | None = None) -> str:
    """`logger.tracking_uri`, else $MLFLOW_TRACKING_URI, else the repository's sqlite store."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{repository_root() / 'mlflow.db'}"


def run_name(cfg: DictConfig) -> str:
    """A readable run name such as `mlp-h256-relu` or `mlp-h256x128-sigmoid`."""
    if cfg.logger.run_name:
        return cfg.logger.run_name
    hidden = cfg.model.hidden
    widths = "x".join(str(w) for w in hidden) if OmegaConf.is_list(hidden) else str(hidden)
    return f"mlp-h{widths}-{_value(cfg.model.activation)}"


def _value(option: Any) -> Any:
    return getattr(option, "value", option)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.hidden": "128", ...}, the form MLflow params take."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(_value(value))
    return flat


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def data_version() -> str | None:
    """The md5 that data.dvc pins for the raw MNIST files, if the project has one."""
    try:
        pinned = yaml.safe_load((PROJECT_ROOT / "data.dvc").read_text())
        return pinned["outs"][0]["md5"]
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return None


def run_tags(output_dir: Path) -> dict[str, str]:
    """Where a run came from: code version, data version, Hydra overrides, DVC experiment."""
    tags = {"hydra.output_dir": str(output_dir)}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    if version := data_version():
        tags["data.version"] = version
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        tags["hydra.overrides"] = " ".join(hydra_cfg.overrides.task) or "(none)"
        parent = _parent_run_id(hydra_cfg)
        if parent:
            tags["mlflow.parentRunId"] = parent
    for variable, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.baseline_rev"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def _parent_run_id(hydra_cfg: Any) -> str | None:
    from hydra.types import RunMode

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    marker = Path(hydra_cfg.sweep.dir) / PARENT_RUN_FILE
    return marker.read_text().strip() if marker.exists() else None


def client(uri: str) -> MlflowClient:
    """A client for `uri` that has answered, or a `TrackingError` saying why not."""
    from mlflow import MlflowClient

    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    return MlflowClient(tracking_uri=uri)


def _check_server(uri: str, timeout: float = 10.0) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({getattr(error, 'reason', error)}); "
            "start it, fix logger.tracking_uri / $MLFLOW_TRACKING_URI, or train with logger=none"
        ) from None


def experiment_id(mlflow_client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created if needed.

    With the local sqlite store, artifacts go to an absolute `mlruns/` beside `mlflow.db`, not
    to `./mlruns` of whatever directory the run happened in.
    """
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / name).as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # another process of a parallel sweep created it first
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class Run:
    """An MLflow run this process writes to: params, tags, artifacts, status."""

    def __init__(self, mlflow_client: MlflowClient, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.uri = mlflow_client, run_id, uri

    @classmethod
    def create(cls, cfg: DictConfig, output_dir: Path) -> Run:
        uri = tracking_uri(cfg.logger.tracking_uri)
        mlflow_client = client(uri)
        experiment = experiment_id(mlflow_client, cfg.logger.experiment_name, uri)
        tags = {"mlflow.runName": run_name(cfg), **run_tags(output_dir)}
        run = mlflow_client.create_run(experiment, run_name=tags["mlflow.runName"], tags=tags)
        self = cls(mlflow_client, run.info.run_id, uri)
        self.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        self.client.log_text(self.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        log.info("MLflow run %s (%s) in %s", self.run_id, tags["mlflow.runName"], uri)
        return self

    @classmethod
    def attach(cls, run_id: str, configured_uri: str | None = None, status: str = "") -> Run:
        """The existing run `run_id`, set to `status` if given (e.g. RUNNING again)."""
        uri = tracking_uri(configured_uri)
        run = cls(client(uri), run_id, uri)
        if status:
            run.client.update_run(run_id, status=status)
        return run

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.log_metric_history([(key, value, now, step) for key, value in metrics.items()])

    def log_metric_history(self, entries: Sequence[tuple[str, float, int, int]]) -> None:
        """Write (key, value, timestamp in ms, step) entries in as few transactions as can be."""
        from mlflow.entities import Metric

        items = [Metric(key, float(value), ms, step) for key, value, ms, step in entries]
        for start in range(0, len(items), 1000):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    def log_model(self, network: Any, example: Any) -> None:
        """Log an MLflow model: pixels (N, 28, 28) float32 in [0, 1] -> probabilities (N, 10)."""
        import mlflow
        import torch
        from mlflow.models import infer_signature

        from mnist_pipeline.model import Probabilities

        model = Probabilities(network).eval()
        example = example.detach().cpu().float()
        with torch.no_grad():
            output = model(example).numpy()
        signature = infer_signature(example.numpy(), output)
        requirements = [
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            "numpy",
        ]
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.run_id):
            mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example.numpy(),
                pip_requirements=requirements,
                code_paths=[str(Path(__file__).parent)],
            )


class BackgroundRun:
    """A `Run` being created (or re-opened) in a background thread while training starts.

    Importing mlflow and opening the store take 1.5-3 s, and a training first needs its run at
    the end of its first epoch. `get()` waits for the run and re-raises what stopped it.
    """

    def __init__(self, open_run: Callable[[], Run]) -> None:
        executor = ThreadPoolExecutor(1, thread_name_prefix="mlflow-run")
        self._future = executor.submit(open_run)
        executor.shutdown(wait=False)  # its one thread ends with this one task

    def get(self) -> Run:
        return self._future.result()

    def end(self, status: str) -> None:
        """End the run with `status` once it exists; nothing to end if it could not be made."""
        try:
            run = self.get()
        except Exception:
            return
        run.end(status)


@contextmanager
def tracked_run(
    cfg: DictConfig, output_dir: Path, run_id: str | None = None
) -> Iterator[BackgroundRun | None]:
    """The run a training writes to (None with `logger=none` or on ranks other than 0).

    A new run unless `run_id` (from a resumed checkpoint) names one to continue, made in the
    background (see `BackgroundRun`). The run ends FINISHED, FAILED on an exception, or KILLED
    on Ctrl-C / SIGTERM: never left RUNNING.
    """
    from pytorch_lightning.utilities import rank_zero_only

    if _value(cfg.logger.backend) == "none" or rank_zero_only.rank != 0:
        yield None
        return
    uri = tracking_uri(cfg.logger.tracking_uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)  # an unreachable server fails the command before any work

    def open_run() -> Run:
        try:
            if run_id:
                return Run.attach(run_id, uri, status="RUNNING")
            return Run.create(cfg, output_dir)
        except Exception as error:
            raise TrackingError(
                f"MLflow store {uri}: {type(error).__name__}: {error}; fix logger.tracking_uri / "
                "$MLFLOW_TRACKING_URI, or train with logger=none"
            ) from error

    run = BackgroundRun(open_run)
    try:
        yield run
    except (KeyboardInterrupt, SystemExit) as stop:
        run.end("KILLED")
        raise stop
    except BaseException:
        run.end("FAILED")
        raise
    run.get().end("FINISHED")


class SweepParentRun(HydraCallback):
    """Groups a Hydra multirun's jobs under one parent MLflow run (children tag its id)."""

    def __init__(self) -> None:
        self.run: Run | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _value(config.logger.backend) == "none":
            return
        uri = tracking_uri(config.logger.tracking_uri)
        mlflow_client = client(uri)
        experiment = experiment_id(mlflow_client, config.logger.experiment_name, uri)
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
        parent = mlflow_client.create_run(
            experiment,
            run_name=f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}",
            tags={"sweep.overrides": overrides, "hydra.sweep_dir": str(sweep_dir.resolve())},
        )
        self.run = Run(mlflow_client, parent.info.run_id, uri)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self.run.run_id)
        log.info("MLflow parent run %s for sweep %s", self.run.run_id, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run is not None:
            self.run.end("FINISHED")
