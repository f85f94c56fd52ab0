"""The pipeline's stages, one module each, called by the thin entry points in `src/*.py`."""

from __future__ import annotations

import contextlib
import difflib
import errno
import functools
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import hydra
from hydra.errors import (
    ConfigCompositionException,
    MissingConfigException,
    OverrideParseException,
    SearchPathException,
)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from mnist_pipeline import PROJECT_ROOT, hydra_config
from mnist_pipeline.errors import UserError, first_line
from mnist_pipeline.stages import launch

Result = TypeVar("Result")
# `${project_root:}` in conf/ (Hydra's output directories): outputs/ of this repository wherever
# a command runs from. Hydra's own `${hydra:runtime.cwd}` would be the working directory.
# Registered here, with the entry points, not in the package: an MLflow model carries the
# package and loads without omegaconf.
OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
# `${launch_time:%H-%M}` in Hydra's run directory: `now`, the same in every process of a job that
# torchrun or SLURM started; `${rank_zero:x}`: x on that job's rank 0 (and alone), else null.
OmegaConf.register_new_resolver(
    "launch_time",
    lambda pattern: launch.launch_time().strftime(pattern),
    use_cache=True,  # as Hydra's `now`
    replace=True,
)
OmegaConf.register_new_resolver(
    "rank_zero", lambda value: value if launch.rank() == 0 else None, replace=True
)


# Lightning's INFO lines that no user can act on.
LIGHTNING_NOISE = (
    # Its advertisement for its cloud logger, on every Trainer.
    "litlogger",
    # No GPU or TPU here: Lightning warns of one that is there and not used.
    "GPU available: False",
    "TPU available: False",
    # Loading the best weights before each test (the test line names the checkpoint); a resume
    # still says "Restored all states from the checkpoint at ...".
    "Restoring states from the checkpoint path at",
    "Loaded model weights from the checkpoint at",
)


def silence_known_noise() -> None:
    """Hide what every run printed and no user can act on, at its source.

    - Lightning's `LIGHTNING_NOISE` lines.
    - torch's deprecation of `LeafSpec`, which Lightning's own pytree helper still uses.
    - Lightning's advice to log epoch values with `sync_dist=True` under DDP: ours are
      torchmetrics' `compute()`, already all-reduced over the ranks (`Classifier._log_epoch`).
    """
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
        lambda record: not any(noise in record.getMessage() for noise in LIGHTNING_NOISE)
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist")


def one_line_errors(stage: Callable[..., Result]) -> Callable[..., Result]:
    """Runs an entry point's stage without the known noise. A config or file the pipeline
    refuses is the user's mistake, not a crash: its lines and exit status 2. The machine
    running out of memory or disk is one line naming the first cause, and exit status 1."""

    @functools.wraps(stage)
    def run(*args: Any, **kwargs: Any) -> Result:
        silence_known_noise()
        try:
            return stage(*args, **kwargs)
        except UserError as error:
            _remove_unused_output_dir()
            fail(str(error), 2)
        except Exception as error:
            reason = out_of_resources(error)
            if reason is None:
                raise
            fail(reason, 1)

    return run


def fail(message: str, status: int) -> NoReturn:
    """Each line of `message` as an `error:` line on stderr, then exit with `status`."""
    for line in message.splitlines():
        print(f"error: {line}", file=sys.stderr)
    sys.exit(status)


def out_of_resources(error: BaseException) -> str | None:
    """One line for the first out-of-memory or disk-full error in `error`'s chain, else None.

    The first cause, because a failure can cause others on its way out (a checkpoint that
    cannot be saved after an allocation failed)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        # As Python shows a chain: `raise ... from None` hides the context.
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    for cause in reversed(chain):
        message = first_line(cause)
        if isinstance(cause, MemoryError) or "can't allocate memory" in message:
            size = re.search(r"allocate (\d+) bytes", message)
            failed = f"of {int(size[1]):,} bytes ({int(size[1]) / 2**30:.1f} GiB) " if size else ""
            return f"out of memory: an allocation {failed}failed"
        if type(cause).__name__ == "OutOfMemoryError":  # torch's, on a GPU
            return f"out of GPU memory: {message}"
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the disk to write {cause.filename or 'a file'}"
    return None


def _remove_unused_output_dir() -> None:
    """A refused command leaves nothing behind: its Hydra output directory goes when it holds
    nothing but Hydra's own config and log (never a directory with anything else in it, such
    as the repository root that DVC's stages run in)."""
    hydra = hydra_config()
    if hydra is None:
        return
    out = Path(hydra.runtime.output_dir)
    own = {hydra.output_subdir, f"{hydra.job.name}.log"}
    if out.is_dir() and {path.name for path in out.iterdir()} <= own:
        for handler in logging.root.handlers[:]:  # Hydra's job log, in the folder going away
            if (
                isinstance(handler, logging.FileHandler)
                and Path(handler.baseFilename).parent == out
            ):
                logging.root.removeHandler(handler)
                handler.close()
        shutil.rmtree(out)
        # And the folders made for it, if it was their only run: outputs/runs/<day>/.
        with contextlib.suppress(OSError):  # not empty
            for folder in out.parents[:3]:
                folder.rmdir()


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], None]]:
    """`@hydra.main` of a `src/*.py` script on `conf/<config_name>.yaml`, where every mistake of
    the user's is `error:` lines and exit status 2: an override Hydra cannot compose (a key or
    an option that does not exist, bad syntax) and what the stage refuses (`UserError`)."""

    def decorate(stage: Callable[[DictConfig], Any]) -> Callable[[], None]:
        # "../conf" is relative to the script: Hydra finds it through `__wrapped__`.
        main = hydra.main(version_base="1.3", config_path="../conf", config_name=config_name)(
            one_line_errors(stage)
        )

        @functools.wraps(stage)
        def run() -> None:
            composition_errors_exit_2(main)

        return run

    return decorate


# What Hydra raises when the command line or a config cannot be composed.
COMPOSITION_ERRORS = (ConfigCompositionException, OverrideParseException, SearchPathException)


def composition_errors_exit_2(main: Callable[[], None]) -> None:
    """Run Hydra's `main`; what it cannot compose is one `error:` line and exit status 2.

    Hydra prints a composition error as a block of lines and exits 1, and has no hook for it;
    its documented HYDRA_FULL_ERROR=1 makes it raise the exception instead (in multirun jobs
    too), so it is set here and the exception turned into one line, as is a `UserError` raised
    outside any job (by a sweeper). Other errors go on as Python's traceback (exit status 1). A
    user who sets HYDRA_FULL_ERROR=1 gets Hydra's trace. A multirun stopped by any of them
    ends its parent MLflow run (`_end_open_sweep`).
    """
    previous = os.environ.get("HYDRA_FULL_ERROR")
    user_wants_trace = previous == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except COMPOSITION_ERRORS as error:
        if user_wants_trace:
            raise
        fail(_describe_composition_error(error), 2)
    except UserError as error:  # refused by a sweeper or a callback, outside any job
        _end_open_sweep(error)
        fail(str(error), 2)
    except BaseException as error:
        _end_open_sweep(error)
        raise
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


def _end_open_sweep(error: BaseException) -> None:
    """A multirun that stops before its end ends its parent MLflow run too: KILLED on Ctrl-C
    or SIGTERM, FAILED otherwise (Hydra calls no callback then)."""
    sweeps = sys.modules.get("mnist_pipeline.tracking.sweeps")  # loaded by a multirun only
    code = error.code if isinstance(error, SystemExit) else None
    if sweeps is None or code == 0:
        return
    killed = isinstance(error, KeyboardInterrupt) or code in (130, 143)
    sweeps.SweepParentRun.end_open("KILLED" if killed else "FAILED")


def _describe_composition_error(error: Exception) -> str:
    """One line for what Hydra could not compose, naming the override."""
    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options:
        group, _, option = error.missing_cfg_file.rpartition("/")
        return f"{group}={option}: no such option; choose one of {', '.join(error.options)}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return _unknown_key(cause.full_key, cause.parent_node)
    if isinstance(error, OverrideParseException):
        return f"{error.override}: {error.message.splitlines()[0]}"
    # Anything else: Hydra's own sentences, without the config search path it appends.
    lines = str(error).split("\nConfig search path:")[0].splitlines()
    return " ".join(line.strip() for line in lines if line.strip())


def _unknown_key(key: str, parent: Any) -> str:
    """`key=value: no such key`, with the close match or the keys beside it."""
    # The override as typed (`model.x=1` for the key `model`); the key if no override names it.
    typed = key
    for override in (arg.lstrip("+~") for arg in sys.argv[1:]):
        if f"{override.split('=')[0]}.".startswith(f"{key}."):
            typed = override
    group, _, name = key.rpartition(".")
    siblings = [k for k in parent.keys() if k != "hydra"] if isinstance(parent, DictConfig) else []
    close = difflib.get_close_matches(name, siblings, n=1)
    if close:
        return f"{typed}: no such key; did you mean {group + '.' if group else ''}{close[0]}?"
    beside = f" ({group or 'the config'} has {', '.join(siblings)})" if siblings else ""
    return f"{typed}: no such key{beside}; +{typed} adds it"
