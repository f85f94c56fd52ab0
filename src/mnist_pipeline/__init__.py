"""mnist-pipeline: the lecture's MNIST MLP trained, tracked and reproduced."""

import os
from pathlib import Path

from omegaconf import OmegaConf

# The repository root (this file is src/mnist_pipeline/__init__.py): where relative paths in the
# configs point, and where the default MLflow store lives.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# `${project_root:}` in conf/ (Hydra's output directories): outputs/ of this repository wherever
# a command runs from. Hydra's own `${hydra:runtime.cwd}` would be the working directory.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)


def repository_root() -> Path:
    """The user's repository, also inside a queued DVC experiment's temporary copy of it: where
    the MLflow store and the Optuna studies live.

    DVC runs queued experiments in a throwaway copy and points $DVC_ROOT at the real repository;
    a store written inside the copy would be deleted with it.
    """
    return Path(os.environ.get("DVC_ROOT") or PROJECT_ROOT).resolve()
