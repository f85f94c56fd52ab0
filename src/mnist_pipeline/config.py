"""The config check: every key the pipeline reads, refused at once when it cannot work.

`conf/` (or DVC's composed `params.yaml`) is checked before any data is loaded or any run is
opened, so a typo or a bad value fails at once, naming the key. The fixed part (paths, trainer)
has a schema; the parts built from `_target_` (data, model, optimizer, scheduler, loggers,
callbacks) are checked against their class: the class must import, every key must be one of
its arguments, and the data module, network, optimizer, scheduler and callbacks are built on
the spot, so that their own argument checks run too (building them costs milliseconds; the
data module loads its data later, in `prepare_data`/`setup`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.errors import UserError, first_line
from mnist_pipeline.networks import ArgumentError

# Keys of a part's config that the pipeline fills in when they are null (see `parts`).
RUN_DIR_KEYS = ("save_dir", "dirpath")
# Keys of the data config that hold paths: relative ones are taken from the repository root.
DATA_PATH_KEYS = ("dir", "data_dir", "local_mirror")


class ConfigError(UserError):
    """A config key has a value the pipeline cannot use."""


@dataclass
class PathsConfig:
    data_dir: str = "data"
    # None: the run's Hydra output directory.
    output_dir: str | None = None
    # None: the outputs stay in output_dir (see `stages.outputs.publish`).
    publish_dir: str | None = None


@dataclass
class Config:
    seed: int = 42
    ckpt_path: str | None = None
    # Write the evaluation report (metrics.json, figures) after training.
    report: bool = True
    paths: PathsConfig = field(default_factory=PathsConfig)
    # Built from `_target_` and checked against their classes, not a schema.
    data: Any = None
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    logger: Any = None
    callbacks: Any = None
    # Passed to `pl.Trainer` as keyword arguments.
    trainer: dict[str, Any] = field(default_factory=dict)


def validate(cfg: DictConfig, built: dict[str, Any] | None = None) -> DictConfig:
    """`cfg` checked; a `ConfigError` names each bad key, one line each.

    Given `built`, the data module and the network the check builds are kept there
    (`built["data"]`, `built["model"]`) for the caller, who then builds neither again; every
    random generator is seeded with `seed` first, as a training starts, so that the network's
    initial weights are the seed's.
    """
    try:
        checked = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error)) from None
    if built is not None:
        pl.seed_everything(checked.seed, workers=True, verbose=False)
    built = {} if built is None else built
    problems = (
        _data_problems(checked, built) + _trainer_problems(checked) + _part_problems(checked, built)
    )
    problems += _device_problems(checked)
    if problems:
        raise ConfigError("\n".join(problems))
    return checked


def _describe(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    message = first_line(error)
    return f"{key}: {message}" if key else f"invalid config: {message}"


def _data_problems(cfg: DictConfig, built: dict[str, Any]) -> list[str]:
    problems = _target_problems(cfg.data, "data", base="pytorch_lightning.LightningDataModule")
    if not problems:
        problems += _built(lambda: built.update(data=build_datamodule(cfg.data)), "data")
    return problems


def build_datamodule(data: DictConfig) -> pl.LightningDataModule:
    """The data module of a `data` config, its relative paths taken from the repository root."""
    paths = {key: resolve_path(PROJECT_ROOT, data[key]) for key in DATA_PATH_KEYS if data.get(key)}
    return instantiate(data, **{key: str(path) for key, path in paths.items()})


def _trainer_problems(cfg: DictConfig) -> list[str]:
    problems = []
    arguments = inspect.signature(pl.Trainer.__init__).parameters
    for key in cfg.trainer:
        if key not in arguments or key in ("callbacks", "logger", "plugins"):
            problems.append(
                f"trainer.{key}: not a pytorch_lightning.Trainer argument this config can set"
            )
    epochs = cfg.trainer.get("max_epochs", 1)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or not (epochs >= 1 or epochs == -1):
        problems.append(
            f"trainer.max_epochs={epochs!r}: expected a whole number of epochs >= 1 (-1: no limit)"
        )
    every = cfg.trainer.get("log_every_n_steps", 50)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        problems.append(
            f"trainer.log_every_n_steps={every!r}: expected a whole number of optimizer steps "
            "(0: no step loss)"
        )
    return problems


def _device_problems(cfg: DictConfig) -> list[str]:
    """A GPU asked for where there is none: Lightning's own error is a traceback."""
    accelerator = str(cfg.trainer.get("accelerator", "auto")).lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return [
            f"trainer.accelerator={accelerator}: this machine has no CUDA GPU that torch can "
            "use (torch.cuda.is_available() is False); train on the CPU with trainer=default"
        ]
    return []


def _part_problems(cfg: DictConfig, built: dict[str, Any]) -> list[str]:
    problems = _target_problems(cfg.model, "model", base="torch.nn.Module")
    if not problems:
        problems += _built(lambda: built.update(model=instantiate(cfg.model)), "model")
    optimizer_problems = _target_problems(cfg.optimizer, "optimizer", skip=1)
    lr = (cfg.optimizer or {}).get("lr", 1.0)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < float("inf"):
        optimizer_problems.append(f"optimizer.lr={lr!r}: expected a positive learning rate")
    problems += optimizer_problems
    optimizer: list[torch.optim.Optimizer] = []
    if not optimizer_problems:
        parameter = torch.nn.Parameter(torch.zeros(1))
        problems += _built(
            lambda: optimizer.append(instantiate(cfg.optimizer)([parameter])), "optimizer"
        )
    if cfg.scheduler:  # scheduler=none: {}
        scheduler_problems = _target_problems(cfg.scheduler, "scheduler", skip=1)
        problems += scheduler_problems
        if optimizer and not scheduler_problems:
            problems += _built(lambda: instantiate(cfg.scheduler)(optimizer[0]), "scheduler")
    for group in ("logger", "callbacks"):
        for name, part in (cfg[group] or {}).items():
            if part is None:
                continue  # switched off with `group.name=null`
            key = f"{group}.{name}"
            part_problems = _target_problems(part, key)
            problems += part_problems
            if group == "callbacks" and not part_problems:
                filled = {k: "." for k in RUN_DIR_KEYS if k in part and part[k] is None}
                problems += _built(
                    lambda part=part, filled=filled: instantiate(part, **filled), key
                )
    return problems


def _target_problems(part: Any, key: str, skip: int = 0, base: str | None = None) -> list[str]:
    """Is `part` a `_target_` config whose class imports and takes each of its keys?

    `skip`: leading arguments given at run time (an optimizer's parameters, a scheduler's
    optimizer), which the config must not set. `base`: the dotted path of a class it must subclass.
    """
    if not OmegaConf.is_dict(part) or not part.get("_target_"):
        return [
            f"{key}: expected a config with _target_ (the dotted path of a class), got {part!r}"
        ]
    target = part["_target_"]
    try:
        factory = get_object(target)
    except Exception as error:  # noqa: BLE001  Hydra wraps every import failure differently
        reason = str(error).strip().splitlines()[-1]
        return [f"{key}._target_={target}: cannot import it ({reason})"]
    if base and not (inspect.isclass(factory) and issubclass(factory, get_object(base))):
        return [f"{key}._target_={target}: expected a {base} class"]
    try:
        parameters = list(inspect.signature(factory).parameters.values())[skip:]
    except (TypeError, ValueError):
        return []  # no signature to check against (a builtin): building it will tell
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return []
    names = [p.name for p in parameters]
    return [
        f"{key}.{name}: not an argument of {target} (it takes {', '.join(names) or 'none'})"
        for name in part
        if not str(name).startswith("_") and name not in names
    ]


def _built(build: Callable[[], Any], key: str) -> list[str]:
    """[] if `build()` works, else its error as one line naming `key`."""
    try:
        build()
    except Exception as error:  # noqa: BLE001  a library's own check, worded its own way
        cause = error.__cause__ or error  # Hydra wraps the class's error in its own
        if isinstance(cause, ArgumentError):
            return [f"{key}.{cause}"]
        return [f"{key}: {first_line(cause)}"]
    return []


def resolve_path(root: Path, path: str | Path) -> Path:
    """`path` as given if absolute, else relative to the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"model.hidden": 128, ...}, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_ABSENT = object()  # a key on one side only


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The dotted keys (`flatten`) whose values differ between two nested configs, in the order
    of `a`, then of the keys only `b` has."""
    a, b = flatten(a), flatten(b)
    keys = dict.fromkeys([*a, *b])
    return [key for key in keys if a.get(key, _ABSENT) != b.get(key, _ABSENT)]
