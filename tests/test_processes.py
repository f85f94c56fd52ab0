"""What every shared file and store goes through: `gone` and `filelock.FileLock`, with real
processes and a lock contended across processes."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from filelock import FileLock, Timeout

from mnist_pipeline.processes import gone, lock_beside, this_process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def _hold(lock_file, ready):
    """A process that takes the lock on `lock_file`, writes `ready` and keeps it."""
    code = (
        "import sys, time; from pathlib import Path\n"
        "from filelock import FileLock\n"
        "with FileLock(sys.argv[1]):\n"
        "    Path(sys.argv[2]).write_text('held')\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock_file), str(ready)])
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert holder.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.05)
    return holder


def test_a_running_process_is_not_gone_and_a_killed_one_is():
    process = subprocess.Popen(SLEEPER)
    try:
        assert not gone(process.pid)
        assert not gone(process.pid, socket.gethostname())
        process.kill()
        deadline = time.monotonic() + 10
        while not gone(process.pid):  # a zombie until reaped: already gone
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert os.waitpid(process.pid, os.WNOHANG) != (0, 0)  # it was not reaped by `gone`
        process.returncode = -signal.SIGKILL
        assert gone(process.pid)  # reaped: no such process at all
    finally:
        process.kill()


def test_this_process_is_not_gone_and_another_hosts_cannot_be_told():
    host, pid = this_process()
    assert (host, pid) == (socket.gethostname(), os.getpid())
    assert not gone(pid, host)
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert gone(process.pid)
    assert not gone(process.pid, host + "-elsewhere")  # its processes are out of sight


def test_the_lock_keeps_a_second_process_out_until_its_holder_dies(tmp_path):
    lock_file = tmp_path / "new" / "folder" / "store.lock"  # folders created as needed
    holder = _hold(lock_file, tmp_path / "ready")
    try:
        start = time.monotonic()
        with pytest.raises(Timeout):
            with FileLock(lock_file, timeout=0.5):
                pytest.fail("two processes held the lock at once")
        assert time.monotonic() - start >= 0.5  # it waited as long as it was told
        os.kill(holder.pid, signal.SIGKILL)  # no clean-up of its own: the system releases it
        holder.wait()
        with FileLock(lock_file, timeout=5):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_processes_taking_turns_lose_no_update(tmp_path):
    # Each adds 1 to a counter file 50 times under the lock (read, pause, write): without the
    # lock the two would overwrite each other's increments.
    counter, lock_file = tmp_path / "counter", tmp_path / "counter.lock"
    counter.write_text("0")
    code = (
        "import sys, time; from pathlib import Path\n"
        "from filelock import FileLock\n"
        "path = Path(sys.argv[1])\n"
        "for _ in range(50):\n"
        "    with FileLock(sys.argv[2]):\n"
        "        value = int(path.read_text())\n"
        "        time.sleep(0.001)\n"
        "        path.write_text(str(value + 1))\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(counter), str(lock_file)])
        for _ in range(2)
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    assert counter.read_text() == "100"


@pytest.mark.parametrize("form", ["path", "sqlite"])
def test_a_local_store_is_locked_beside_its_file_and_a_server_not(tmp_path, form):
    database = tmp_path / "mlflow.db"
    store = str(database) if form == "path" else f"sqlite:///{database}"
    with lock_beside(store, ".lock") as held:
        assert held
        with pytest.raises(Timeout):  # another holder (here: a second lock object) waits
            with FileLock(tmp_path / "mlflow.db.lock", timeout=0):
                pass
    with FileLock(tmp_path / "mlflow.db.lock", timeout=0):
        pass
    with lock_beside("postgresql://user@127.0.0.1:5432/db", ".lock") as held:
        assert not held
