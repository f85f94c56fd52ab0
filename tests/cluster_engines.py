"""Real engines started on loopback by the tests: an `mlflow server` (a plugin module:
`pytest_plugins = ["cluster_engines"]` gives its `mlflow_server` fixture), and those of a team's
setup, a throwaway PostgreSQL server (Debian's `postgresql`) and a two-node Ray cluster (the
`cluster` extra), started once per test module. `missing()` says why one cannot run. Each runs
with the cheapest settings that keep what the tests assert: start-ups are most of their cost."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import free_port

PG_BIN = (sorted(glob.glob("/usr/lib/postgresql/*/bin")) or [""])[-1]


def missing(*needs: str) -> str | None:
    """Why the engines `needs` ("postgresql", "ray") cannot run here; None if they can."""
    if "postgresql" in needs:
        if not PG_BIN:
            return "needs Debian's postgresql package (apt-get install postgresql)"
        if os.geteuid() != 0 or shutil.which("runuser") is None:
            return "starts PostgreSQL as the postgres user: needs root and runuser"
        if importlib.util.find_spec("psycopg") is None:
            return 'needs the PostgreSQL driver: pip install -e ".[cluster]"'
    if "ray" in needs:
        modules = ("ray", "hydra_plugins.hydra_ray_launcher")
        if not all(importlib.util.find_spec(module) for module in modules):
            return 'needs Ray and hydra-ray-launcher: pip install -e ".[cluster]"'
    return None


class TrackingServer(str):
    """A real `mlflow server` on loopback (the string is its URI), with its own store (sqlite in
    `directory`, or the database URL `backend`) and its artifact folder in `directory`, which
    it serves (clients never touch it); `kill()` sends it SIGKILL, `start()` starts it (again).

    Without MLflow's job runner (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`): it starts six
    more Python processes (huey consumers) for features no test uses, doubling the start-up."""

    def __new__(cls, directory: Path, backend: str | None = None) -> TrackingServer:
        server = super().__new__(cls, f"http://127.0.0.1:{free_port()}")
        server.directory, server.process = directory, None
        server.backend = backend or f"sqlite:///{directory / 'server.db'}"
        server.artifacts = directory / "server-artifacts"
        return server

    def start(self) -> None:
        port = self.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", port]
            + ["--workers", "1", "--backend-store-uri", self.backend]
            + ["--artifacts-destination", str(self.artifacts)],
            cwd=self.directory,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: `kill` reaches its workers too
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self}/health", timeout=2):
                    return
            except OSError:
                assert self.process.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not answer /health"
                time.sleep(0.1)

    def kill(self) -> None:
        """kill -9 of the server and of every process it started (its worker)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def mlflow_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Callable[[Path], str]
) -> Iterator[TrackingServer]:
    """A `TrackingServer` on sqlite in `tmp_path`, started; its URI is $MLFLOW_TRACKING_URI for
    the test. Its store is a copy of an empty one (`empty_store`): not migrated again. Killed at
    the end (a throwaway: SIGTERM's graceful shutdown took seconds)."""
    server = TrackingServer(tmp_path, empty_store(tmp_path / "server.db"))
    try:
        server.start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
        yield server
    finally:
        server.kill()


class Postgres:
    """A PostgreSQL server in a temporary folder on 127.0.0.1 (trust authentication), run as
    the postgres user (PostgreSQL refuses root). `database(name)` makes a fresh database."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pg-"))
        shutil.chown(self.folder, "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        data = self.folder / "data"
        self._as_postgres(
            f"{PG_BIN}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        # A throwaway: nothing is worth an fsync (MLflow's migrations commit hundreds of times).
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._as_postgres(
            f"{PG_BIN}/pg_ctl", "-D", str(data), "-o", options, "-l", str(self.folder / "log"),
            "-w", "start",
        )  # fmt: skip

    def database(self, name: str) -> str:
        """The URL of a new, empty database `name`."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        try:
            self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", str(self.folder / "data"), "-m", "fast",
                              "stop")  # fmt: skip
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


class RayCluster:
    """A two-node Ray cluster on 127.0.0.1, one CPU each: `ray start --head` and a second
    `ray start --address=...`, both `--block` in process groups of their own (stopped by
    their ids, not `ray stop`, which would stop every Ray of the machine)."""

    def __init__(self) -> None:
        # Short: Ray puts its sockets in it (a socket path has at most 107 characters).
        self.folder = Path(tempfile.mkdtemp(prefix="ray-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen] = []

    def _node(self, *arguments: str, timeout: float = 180) -> None:
        """Start a node; return once `ray start` says it runs (joined, for a second node)."""
        ray = str(Path(sys.executable).parent / "ray")
        log = self.folder / f"node-{len(self.nodes)}.log"
        with open(log, "w") as output:
            node = subprocess.Popen(
                [
                    ray,
                    "start",
                    "--block",
                    "--num-cpus=1",
                    "--disable-usage-stats",
                    "--include-log-monitor=false",
                    *arguments,
                ],  # fmt: skip
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.nodes.append(node)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text():
            assert node.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def start(self) -> None:
        self._node(
            "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
            "--include-dashboard=false", f"--temp-dir={self.folder}",
        )  # fmt: skip
        self._node(f"--address={self.address}", "--node-ip-address=127.0.0.1")

    def log(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in self.folder.glob("node-*.log"))

    def stop(self) -> None:
        # A throwaway cluster: SIGKILL ends each node's processes at once (`ray start --block`
        # takes 30 s to wind down on SIGTERM here); its temporary folder goes with them.
        # Ray's workers run in sessions of their own: found first, as the nodes' descendants.
        workers = [
            child
            for node in self.nodes
            if node.poll() is None
            for child in psutil.Process(node.pid).children(recursive=True)
        ]
        for node in reversed(self.nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
