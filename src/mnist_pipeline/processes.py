"""Processes sharing files and stores: is the one that left a run, trial or file still there
(`psutil`), and taking turns through a lock file beside a store (`filelock`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from filelock import FileLock


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


@contextmanager
def lock_beside(store: str, suffix: str) -> Iterator[bool]:
    """Hold the lock file `<file><suffix>` beside a local store (a file path or a `sqlite:///`
    URL); a database server has no such place: no lock. Yields whether the lock is held."""
    path = store.removeprefix("sqlite:///")
    if "://" in path:
        yield False
        return
    with FileLock(path + suffix):  # released by the system when its holder dies
        yield True
