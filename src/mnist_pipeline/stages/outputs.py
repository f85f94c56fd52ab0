"""Where a training writes: its output directory, held by one process at a time."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig

from mnist_pipeline import PROJECT_ROOT, hydra_config
from mnist_pipeline.config import ConfigError, resolve_path

LOCK_FILE = ".lock"


def output_dir(cfg: DictConfig) -> Path:
    """`paths.output_dir`, or the Hydra run directory, or (outside Hydra) the working directory."""
    if cfg.paths.output_dir:
        return resolve_path(PROJECT_ROOT, cfg.paths.output_dir)
    hydra = hydra_config()
    return Path(hydra.runtime.output_dir) if hydra is not None else Path.cwd()


@contextmanager
def held(directory: Path) -> Iterator[Path]:
    """`directory`, held by this process for the duration through a lock on `<directory>/.lock`.

    Another training that is given the same directory (two runs started in the same
    microsecond, or the same `paths.output_dir`) is refused instead of mixing its checkpoints
    and metrics with this one's. The system releases the lock when its holder dies (kill -9):
    the directory can then be taken over.
    """
    try:
        lock = FileLock(directory / LOCK_FILE, timeout=0).acquire()
    except Timeout:
        raise ConfigError(
            f"output directory {directory} is in use by another training; give each training "
            "its own hydra.run.dir or paths.output_dir"
        ) from None
    with lock:  # released on leaving
        yield directory


def clear_staging(staging: Path) -> None:
    """Remove the `checkpoints/` and `reports/` that a failed training left in `staging`: a new
    training there starts afresh and publishes nothing of the one before."""
    for name in ("checkpoints", "reports"):
        shutil.rmtree(staging / name, ignore_errors=True)


def publish(staging: Path, target: Path) -> None:
    """Move a finished training's `checkpoints/` and `reports/` from `staging` into `target`.

    The DVC train stage trains in a staging directory and publishes into the repository only
    once it has succeeded; DVC keeps the outputs in place meanwhile (`persist: true`), so a
    stage that fails or is stopped leaves the last good ones as they were. `checkpoints/` is
    replaced whole (a rename each way); each file of `reports/` replaces its namesake, leaving
    the evaluate stage's files beside them.
    """
    if (staging / "checkpoints").is_dir():
        old = target / f".checkpoints.old.{os.getpid()}"
        if (target / "checkpoints").exists():
            os.replace(target / "checkpoints", old)
        os.replace(staging / "checkpoints", target / "checkpoints")
        shutil.rmtree(old, ignore_errors=True)
    for path in sorted((staging / "reports").rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(staging)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
