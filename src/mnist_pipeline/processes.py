"""Is a process still there? For files and runs that name the process writing them."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
