"""Processes sharing files and stores: is the one that left a run, trial or file still there,
and taking turns through a lock file. `psutil` and `filelock` do the work; here each idea has
its one name."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from filelock import FileLock, Timeout

__all__ = ["Timeout", "exclusive", "gone", "lock_beside", "this_process"]


def this_process() -> tuple[str, int]:
    """(host, pid) of this process: what a run, trial or file records of its writer."""
    return socket.gethostname(), os.getpid()


def gone(pid: int, host: str | None = None) -> bool:
    """Whether process `pid` of `host` (None: this one) has ended (kill -9, a crash, a power cut).

    A process of another host cannot be told: not gone. One that ended but that its parent has
    not reaped yet (a zombie) is gone; one of another user's is not.
    """
    if host is not None and host != socket.gethostname():
        return False
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


# `exclusive(lock_file, timeout=-1)`: a lock file (created with its folder if missing) as a
# context manager: processes of one machine take turns; the system releases it when its holder
# dies. `timeout` seconds (-1: forever, 0: no wait) before `Timeout` is raised.
exclusive = FileLock


@contextmanager
def lock_beside(store: str, suffix: str) -> Iterator[bool]:
    """Hold the lock file `<file><suffix>` beside a local store (a file path or a `sqlite:///`
    URL); a database server has no such place: no lock. Yields whether the lock is held."""
    path = store.removeprefix("sqlite:///")
    if "://" in path:
        yield False
        return
    with exclusive(path + suffix):
        yield True
