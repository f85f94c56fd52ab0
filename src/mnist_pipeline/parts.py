"""The objects of a training, built from their config groups with `hydra.utils.instantiate`.

A new data module, network, logger or callback is a YAML file in its group (plus, for a data
module or a network, the Python file of its class); nothing here names one. The data module and
the network are built by the config check (`config.validate`), which hands them on. A
`save_dir` or `dirpath` left null in a logger's or callback's config is this run's output
directory (`checkpoints/` for a callback), which a config cannot name itself: `${hydra:...}`
interpolations break DVC's composition.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import Logger, MLFlowLogger
from torch import nn

from mnist_pipeline.config import RUN_DIR_KEYS, ConfigError
from mnist_pipeline.errors import first_line
from mnist_pipeline.tracking.logger import default_run_name
from mnist_pipeline.training.classifier import Classifier

PARTS = ("model", "optimizer", "scheduler")


def part_configs(cfg: DictConfig) -> dict[str, Any]:
    """The model, optimizer and scheduler configs as plain data (None: no scheduler)."""
    return {name: OmegaConf.to_container(cfg[name], resolve=True) or None for name in PARTS}


def build_classifier(cfg: DictConfig, net: nn.Module) -> Classifier:
    """The LightningModule training `net` (built from `cfg.model`) with `cfg.optimizer` and
    `cfg.scheduler`."""
    parts = part_configs(cfg)
    scheduler = instantiate(parts["scheduler"]) if parts["scheduler"] else None
    return Classifier(net, instantiate(parts["optimizer"]), scheduler, parts=parts)


def _run_dirs(part: DictConfig, out: Path) -> dict[str, str]:
    places = {"save_dir": out, "dirpath": out / "checkpoints"}
    return {key: str(places[key]) for key in RUN_DIR_KEYS if key in part and part[key] is None}


def build_callbacks(cfg: DictConfig, out: Path) -> list[Callback]:
    """The callbacks of `cfg.callbacks` (one switched off with `callbacks.x=null` skipped).

    A progress bar is left out when the trainer is told to show none
    (`trainer.enable_progress_bar=false`): Lightning refuses one then.
    """
    bar = cfg.trainer.get("enable_progress_bar", True)
    callbacks = []
    for part in (cfg.callbacks or {}).values():
        if part is not None:
            callback = instantiate(part, **_run_dirs(part, out))
            if bar or not isinstance(callback, ProgressBar):
                callbacks.append(callback)
    return callbacks


def build_loggers(
    cfg: DictConfig,
    out: Path,
    mlflow_run_id: str | None = None,
    mlflow_tags: Mapping[str, str] | None = None,
) -> list[Logger]:
    """The loggers of `cfg.logger`; an MLflow logger continues `mlflow_run_id` when given, else
    starts a run with `mlflow_tags` besides its config's.

    MLflow loggers are built last: building one starts its run, and a logger that cannot be
    built (a missing package) must fail the command before any run is opened.
    """
    parts = [(name, part) for name, part in (cfg.logger or {}).items() if part is not None]
    parts.sort(key=lambda item: issubclass(get_class(item[1]._target_), MLFlowLogger))
    loggers = []
    for name, part in parts:
        extra = _run_dirs(part, out)
        if issubclass(get_class(part._target_), MLFlowLogger):
            if mlflow_run_id:
                extra["run_id"] = mlflow_run_id
            else:
                extra["tags"] = {**(part.get("tags") or {}), **(mlflow_tags or {})}
                if part.get("run_name", "") is None:
                    extra["run_name"] = default_run_name(cfg.model)
        try:
            loggers.append(instantiate(part, **extra))
        except Exception as error:
            cause = error.__cause__ or error  # Hydra wraps the class's error in its own
            if isinstance(cause, ImportError):  # an optional package, e.g. tensorboard
                reason = first_line(cause)
                raise ConfigError(
                    f"logger.{name}: {reason} (pip install -e '.[{name}]' for this project's extra)"
                ) from error
            raise cause from None
    return loggers
