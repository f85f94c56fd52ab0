"""The pipeline's stages, one module each, called by the thin entry points in `src/*.py`."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from mnist_pipeline.config import ConfigError

Result = TypeVar("Result")


def user_errors_exit_2(stage: Callable[..., Result]) -> Callable[..., Result]:
    """A config the pipeline refuses is the user's mistake, not a crash: its lines, exit 2."""

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Result:
        try:
            return stage(*args, **kwargs)
        except ConfigError as error:
            for line in str(error).splitlines():
                print(f"error: {line}", file=sys.stderr)
            sys.exit(2)

    return run
