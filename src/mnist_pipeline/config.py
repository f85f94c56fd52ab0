"""The config schema: every key the pipeline reads, its type, and what values are allowed.

`conf/` (or DVC's composed `params.yaml`) is merged onto these dataclasses before any data is
loaded or any run is opened, so a typo or a bad value fails at once with the key's name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config key has a value the pipeline cannot use."""


class Activation(str, Enum):
    relu = "relu"
    sigmoid = "sigmoid"
    tanh = "tanh"
    gelu = "gelu"


class OptimizerName(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Scheduler(str, Enum):
    none = "none"
    cosine = "cosine"


class LoggerBackend(str, Enum):
    mlflow = "mlflow"
    none = "none"


@dataclass
class PathsConfig:
    data_dir: str = "data"
    # None: the run's Hydra output directory.
    output_dir: str | None = None


@dataclass
class DataConfig:
    dir: str = "data/mnist"
    local_mirror: str | None = "data/raw"
    mirrors: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    val_size: int = 5000
    batch_size: int = 128
    eval_batch_size: int = 1000
    chunk_size: int = 4096
    split_seed: int = 0
    timeout: float = 30.0


@dataclass
class ModelConfig:
    # An int, or a list of ints for a deeper network (OmegaConf has no Union type).
    hidden: Any = 128
    activation: Activation = Activation.relu
    dropout: float = 0.2


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adam
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float | None = None
    scheduler: Scheduler = Scheduler.none


@dataclass
class CheckpointConfig:
    monitor: str = "val/acc"
    mode: str = "max"
    save_last: bool = True


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val/acc"
    mode: str = "max"
    patience: int = 3


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    progress_bar: bool = True
    model_summary: bool = True


@dataclass
class LoggerConfig:
    backend: LoggerBackend = LoggerBackend.mlflow
    # None: $MLFLOW_TRACKING_URI if set, else sqlite:///<repository root>/mlflow.db.
    tracking_uri: str | None = None
    experiment_name: str = "mnist"
    # None: derived from the model, e.g. "mlp-h256-relu".
    run_name: str | None = None
    log_model: bool = True


@dataclass
class Config:
    seed: int = 42
    ckpt_path: str | None = None
    # Write the evaluation report (metrics.json, figures) after training.
    report: bool = True
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    # Passed to `pl.Trainer` as keyword arguments; Lightning checks the names.
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def validate(cfg: DictConfig) -> DictConfig:
    """`cfg` checked against the schema and value ranges; a `ConfigError` names the bad key."""
    try:
        checked = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error)) from None
    problems = _range_problems(checked)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return checked


def _describe(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    message = str(error).splitlines()[0]
    return f"invalid config key '{key}': {message}" if key else f"invalid config: {message}"


def _range_problems(cfg: DictConfig) -> list[str]:
    problems = []
    hidden = cfg.model.hidden
    if OmegaConf.is_list(hidden):
        hidden = OmegaConf.to_container(hidden)
    widths = hidden if isinstance(hidden, list) else [hidden]
    if not widths or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
    ):
        problems.append(
            f"model.hidden={hidden!r}: expected a positive integer or a non-empty list of "
            "them (e.g. 128 or [256,128])"
        )
    if not 0.0 <= cfg.model.dropout < 1.0:
        problems.append(f"model.dropout={cfg.model.dropout}: expected 0 <= dropout < 1")
    if cfg.optimizer.lr <= 0:
        problems.append(f"optimizer.lr={cfg.optimizer.lr}: expected a positive learning rate")
    if cfg.optimizer.momentum is not None and cfg.optimizer.name != OptimizerName.sgd:
        problems.append(
            f"optimizer.momentum is only used by sgd, not {cfg.optimizer.name.value}: remove it"
        )
    for key in ("batch_size", "eval_batch_size", "chunk_size", "val_size"):
        if cfg.data[key] <= 0:
            problems.append(f"data.{key}={cfg.data[key]}: expected a positive integer")
    trainer_arguments = inspect.signature(pl.Trainer.__init__).parameters
    for key in cfg.trainer:
        if key not in trainer_arguments or key in ("callbacks", "logger", "plugins"):
            problems.append(
                f"trainer.{key}: not a pytorch_lightning.Trainer argument this config can set"
            )
    every = cfg.trainer.get("log_every_n_steps", 50)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        problems.append(
            f"trainer.log_every_n_steps={every!r}: expected a whole number of optimizer steps "
            "(0: no step loss)"
        )
    for key, default in (("gradient_clip_val", None), ("accumulate_grad_batches", 1)):
        if cfg.trainer.get(key, default) != default:
            problems.append(
                f"trainer.{key}: not supported: the model steps its optimizer itself, once per "
                "batch of each training chunk (data.chunk_size), so Lightning cannot"
            )
    for key, mode in (
        ("callbacks.checkpoint.mode", cfg.callbacks.checkpoint.mode),
        ("callbacks.early_stopping.mode", cfg.callbacks.early_stopping.mode),
    ):
        if mode not in ("min", "max"):
            problems.append(f"{key}={mode!r}: expected 'min' or 'max'")
    return problems


def resolve_path(root: Path, path: str | Path) -> Path:
    """`path` as given if absolute, else relative to the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path
