"""mnist-pipeline: the lecture's MNIST MLP trained, tracked and reproduced."""

import os
import sys
from pathlib import Path
from typing import Any

# The repository root (this file is src/mnist_pipeline/__init__.py): where relative paths in the
# configs point, and where the default MLflow store lives.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def repository_root() -> Path:
    """The user's repository, also inside a queued DVC experiment's temporary copy of it: where
    the MLflow store and the Optuna studies live.

    DVC runs queued experiments in a throwaway copy and points $DVC_ROOT at the real repository;
    a store written inside the copy would be deleted with it.
    """
    return Path(os.environ.get("DVC_ROOT") or PROJECT_ROOT).resolve()


def relative_to_root(path: str | Path, root: Path = PROJECT_ROOT) -> Path:
    """`path` relative to `root` when inside it (the same in every clone), else as given."""
    resolved = Path(path).resolve()
    return resolved.relative_to(root) if resolved.is_relative_to(root) else Path(path)


def hydra_config() -> Any:
    """The running Hydra job's own config (`HydraConfig`), None outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def installed(path: str | Path) -> bool:
    """Whether `path` belongs to the Python installation (the standard library, site-packages
    of a venv, which may lie inside the repository), not to the user's own code."""
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return bool(prefixes & {*Path(path).resolve().parents})
