"""The pipeline's stages, one module each, called by the thin entry points in `src/*.py`."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from mnist_pipeline.config import UserError

Result = TypeVar("Result")


def silence_known_noise() -> None:
    """Hide what every run printed and no user can act on, at its source.

    - Lightning's advertisement for its cloud logger (an INFO line on every Trainer).
    - torch's deprecation of `LeafSpec`, which Lightning's own pytree helper still uses.
    """
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def user_errors_exit_2(stage: Callable[..., Result]) -> Callable[..., Result]:
    """Runs an entry point's stage: a config or file the pipeline refuses is the user's
    mistake, not a crash, so its lines and exit status 2; and without the known noise."""

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Result:
        silence_known_noise()
        try:
            return stage(*args, **kwargs)
        except UserError as error:
            for line in str(error).splitlines():
                print(f"error: {line}", file=sys.stderr)
            sys.exit(2)

    return run
