"""Warm starts of the project's commands: `warm.Popen` and `warm.run`, as `subprocess`'s, for
`[sys.executable, "src/<script>.py", *args]`.

A cold `python src/train.py` spends ~8 s of CPU importing torch, Lightning, MLflow and Hydra
before it does anything; the suite starts dozens. Here Python's own multiprocessing forkserver
imports them once (per test process) and forks each command from it. Each command is still a
real, separate OS process: its own pid (signals reach it, `kill -9` ends it), environment,
working directory, session (`start_new_session`), stdout/stderr (the pipes or files asked for),
exit status (SystemExit's code, -N when a signal N ended it), running the script as `__main__`
with the argv and `sys.path` a cold start gives it. Only the imported modules are shared, copy on
write. What differs from a cold start: the modules are imported already (so an environment
variable read at import time, e.g. OMP_NUM_THREADS, is the server's; but Lightning's rank is
read again), stdin is /dev/null, and
SIGINT raises KeyboardInterrupt as in a user's shell (a cold child of a non-interactive shell
inherits SIGINT ignored). Where the start itself is under test (import times, the README's
commands, DVC, torchrun) tests start `python` cold.

Forking a process that ran torch ops is unsafe (its OpenMP pool); the forkserver only imports.
"""

from __future__ import annotations

import ast
import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import threading
import traceback
from multiprocessing import reduction
from pathlib import Path

# Imported once in the forkserver: what the commands spend their start-up on.
PRELOAD = [
    "torch",
    "pytorch_lightning",
    "torchmetrics",
    "mlflow",
    "mlflow.pytorch",
    "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store",  # a sqlite store's
    "git",  # MLflow's run tags of the source version
    "torch.export._trace",  # MLflow's model logging (networkx, sympy: 0.5 s)
    "hydra",
    "optuna",
    "matplotlib.pyplot",
    "pandas",
    "sqlalchemy",
    "alembic",
    "mnist_pipeline.stages.train",
]

_context = None
# The class of a process's own multiprocessing record (private; read where this is imported).
_MainProcess = type(multiprocessing.process.current_process())


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([*PRELOAD, __name__])
    return _context


class _Fd:
    """A file descriptor handed to the forked child (multiprocessing sends it with the job)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        return _received_fd, (reduction.DupFd(self.fd),)


def _received_fd(duplicate) -> int:
    return duplicate.detach()


def _cold_sys_path() -> list[str]:
    """`sys.path` after its first entry (the script's directory) in a cold `python script.py`
    without PYTHONPATH: the standard library, site-packages and .pth entries."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import sys; print(repr(sys.path[1:]))"
    listed = subprocess.check_output([sys.executable, "-c", code], env=env, text=True)
    return ast.literal_eval(listed)


def _main(script: str, argv: list[str], env: dict, cwd: str, base_path: list, fds: tuple) -> None:
    """The child: set up as a cold `python script argv...` would be, run, exit as Python does."""
    out, err, new_session = fds
    if new_session:
        os.setsid()
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out), os.close(err)
    # Python's own dispositions, whatever the forkserver set (it ignores SIGINT).
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(  # noqa: SIM115
        2, "w", buffering=1, closefd=False, errors="backslashreplace"
    )
    os.environ.clear()
    os.environ.update(env)
    # Lightning took the process's rank from the environment when the server imported it
    # (SLURM_PROCID, LOCAL_RANK, ...): taken again from this one's, as its own import would.
    from lightning_fabric.utilities.rank_zero import _get_rank, rank_zero_only

    rank_zero_only.rank = _get_rank() or 0
    os.chdir(cwd)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [str(Path(script).parent), *extra, *base_path]
    sys.argv[:] = [script, *argv]
    # As in a process of its own, not a multiprocessing child (joblib, Lightning ask).
    multiprocessing.process._current_process = _MainProcess()
    multiprocessing.process._parent_process = None

    import runpy

    code, interrupted = 0, False
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
    except KeyboardInterrupt as error:
        _print_traceback(error)
        code, interrupted = 1, True
    except BaseException as error:
        _print_traceback(error)
        code = 1
    # Python's own shutdown: wait for threads, run the atexit handlers (MLflow, logging), flush.
    threading._shutdown()
    atexit._run_exitfuncs()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:  # as Python does: end by the signal, so the parent sees -SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


def _print_traceback(error: BaseException) -> None:
    """The traceback as Python prints it for an uncaught exception: from the script down."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb)


class Popen(subprocess.Popen):
    """`subprocess.Popen` for `[sys.executable, script, *args]`, forked warm (see the module).

    Takes `cwd`, `env`, `stdout`, `stderr`, `text`, `start_new_session` as `subprocess.Popen`
    does; stdin is /dev/null.
    """

    _base_path: list[str] | None = None

    def __init__(self, args, **kwargs) -> None:
        if args[0] != sys.executable or args[1].startswith("-"):
            raise ValueError(f"warm.Popen runs `python script ...`, not {args[:2]}")
        unsupported = set(kwargs) - {"cwd", "env", "stdout", "stderr", "text", "start_new_session"}
        if unsupported:
            raise TypeError(f"warm.Popen does not take {sorted(unsupported)}")
        if Popen._base_path is None:
            Popen._base_path = _cold_sys_path()
        self._job = None
        super().__init__(args, stdin=subprocess.DEVNULL, **kwargs)

    def _execute_child(self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
                       startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite,
                       errread, errwrite, restore_signals, gid, gids, uid, umask,
                       start_new_session, *rest) -> None:  # fmt: skip
        # subprocess.Popen's hook for starting the child (private, stable since Python 3.2).
        out = c2pwrite if c2pwrite != -1 else 1
        err = errwrite if errwrite != -1 else 2  # stderr=STDOUT: errwrite is c2pwrite
        script = str(Path(cwd or os.getcwd(), args[1]))
        self._job = _forkserver().Process(
            target=_main,
            args=(
                script,
                [str(a) for a in args[2:]],
                dict(os.environ if env is None else env),
                str(cwd or os.getcwd()),
                Popen._base_path,
                (_Fd(out), _Fd(err), start_new_session),
            ),
        )
        self._job.start()
        self.pid = self._job.pid
        # The child's ends of the pipes subprocess made, closed here as subprocess does.
        devnull = getattr(self, "_devnull", None)
        for mine, theirs in ((p2cread, p2cwrite), (c2pwrite, c2pread), (errwrite, errread)):
            if mine != -1 and theirs != -1 and mine != devnull:
                os.close(mine)
        if devnull is not None:
            os.close(devnull)
        self._closed_child_pipe_fds = True

    def _internal_poll(self, *args, **kwargs):
        if self.returncode is None and self._job is not None:
            self.returncode = self._job.exitcode
        return self.returncode

    def _wait(self, timeout):
        self._job.join(timeout)
        if self._job.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        self.returncode = self._job.exitcode
        return self.returncode


def stop() -> None:
    """End the forkserver (if one was started), and wait for it: its CPU time counted, no stray."""
    if _context is not None:
        multiprocessing.forkserver._forkserver._stop()  # private: the stdlib's own tests use it


def run(args, *, timeout: float | None = None, capture_output: bool = False, **kwargs):
    """`subprocess.run` with a warm start (`Popen` above)."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with Popen(args, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            process.kill()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
