"""Where a training writes: its output directory, held by one process at a time."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.config import ConfigError, resolve_path
from mnist_pipeline.processes import alive

OWNER_FILE = ".owner"


def output_dir(cfg: DictConfig) -> Path:
    """`paths.output_dir`, or the Hydra run directory, or (outside Hydra) the working directory."""
    if cfg.paths.output_dir:
        return resolve_path(PROJECT_ROOT, cfg.paths.output_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


@contextmanager
def held(directory: Path) -> Iterator[Path]:
    """`directory`, held by this process for the duration: `<directory>/.owner`, created
    exclusively, names the host and pid, and goes away at the end.

    Another training that is given the same directory (two runs started in the same
    microsecond, or the same `paths.output_dir`) is refused instead of mixing its checkpoints
    and metrics with this one's. An owner file whose process is gone (kill -9) is taken over.
    """
    directory.mkdir(parents=True, exist_ok=True)
    owner = directory / OWNER_FILE
    me = f"{socket.gethostname()} {os.getpid()}"
    while True:
        try:
            fd = os.open(owner, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = owner.read_text().strip() if owner.exists() else ""
            if holder and _holder_alive(holder):
                raise ConfigError(
                    f"output directory {directory} is in use by another training (host and pid "
                    f"{holder}); give each training its own hydra.run.dir or paths.output_dir"
                ) from None
            owner.unlink(missing_ok=True)  # its process is gone
            continue
        with os.fdopen(fd, "w") as file:
            file.write(me + "\n")
        break
    try:
        yield directory
    finally:
        if owner.exists() and owner.read_text().strip() == me:
            owner.unlink()


def _holder_alive(holder: str) -> bool:
    """Is the process `host pid` still running? On another host it cannot be told: yes."""
    host, _, pid = holder.partition(" ")
    if host != socket.gethostname():
        return True
    return pid.isdigit() and alive(int(pid))
