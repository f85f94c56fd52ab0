"""Shared test helpers: a tiny synthetic MNIST, a loopback HTTP mirror with failure modes, and
runs of the project's commands on them.

`tiny_run` (and `warm.Popen`/`warm.run` in the tests) start `python src/<script>.py` warm: forked
from a multiprocessing forkserver that imported torch, Lightning, MLflow and Hydra once per test
process (tests/warm.py). Each run is still a real process of its own: its pid (the signal tests
send it SIGTERM/SIGINT/SIGKILL), environment, working directory, stdout/stderr and exit status;
the script runs as `__main__` with the argv and `sys.path` of a cold start. Cold `python` starts
stay where the start itself is under test: DVC's stages, torchrun, `predict.py`'s import time.
`train_tiny` and `cli` run in this process what needs no process of its own.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import runpy
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import pytest

# Helpers with asserts of their own, imported by test modules (and as a plugin): rewritten too.
pytest.register_assert_rewrite("cluster_engines", "warm")
import warm  # noqa: E402

SPLITS = {"train": "train", "test": "t10k"}


# The modules that take longest, longest first (measured: `--durations`). xdist (`--dist
# loadscope --no-loadscope-reorder`) hands whole modules out in this order; its own default (most
# tests first) started the long end-to-end modules last, each finishing alone.
LONGEST_FIRST = (
    "test_cluster", "test_dvc", "test_sweeps", "test_search", "test_outbox", "test_train",
    "test_tracking", "test_nodes", "test_config", "test_prediction", "test_resume", "test_run_page",
    "test_ddp", "test_outputs", "test_serve", "test_download", "test_clean_failures",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    # xdist runs one test per CPU. torch's default of one intra-op thread per CPU in each test,
    # and in each run or DVC stage a test starts, would put N x N spinning threads on N CPUs:
    # one each, as parallel test runs of torch code do. Set before any torch import (OpenMP
    # reads it then); the tests' processes inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest after


def pytest_sessionfinish() -> None:
    warm.stop()


def make_tiny_mnist(
    directory: Path, n_train: int = 600, n_test: int = 200, compress: bool = True, seed: int = 0
) -> dict[str, str]:
    """Write the four MNIST files with synthetic, easily learnable digits into `directory`.

    Each class is a fixed pattern of a few bright blobs; a sample is its class pattern shifted
    by up to 2 pixels, scaled in brightness and covered in noise. Labels are balanced. Returns
    {decompressed file name: sha256 of its decompressed content}.
    """
    from mnist_pipeline.data.idx import write_idx  # imports torch: not in xdist's controller

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    centres = [(y, x) for y in (6, 11, 16, 21) for x in (6, 11, 16, 21)]
    prototypes = np.zeros((10, 28, 28))
    for proto, cells in zip(prototypes, _distinct_subsets(rng, len(centres), 4, 10), strict=True):
        for cell in cells:
            cy, cx = centres[cell]
            proto += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2))
    prototypes = np.pad(
        prototypes / prototypes.max(axis=(1, 2), keepdims=True), ((0, 0), (2, 2), (2, 2))
    )
    # Every 28x28 window of the padded prototypes: indexing it shifts all samples at once.
    windows = np.lib.stride_tricks.sliding_window_view(prototypes, (28, 28), axis=(1, 2))

    sha256s = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % 10)
        dy, dx = rng.integers(0, 5, size=(2, n))
        brightness = rng.uniform(0.7, 1.0, size=(n, 1, 1))
        images = windows[labels, dy, dx] * brightness * 255 + rng.normal(0, 20, size=(n, 28, 28))
        images = np.clip(images, 0, 255).astype(np.uint8)
        for kind, data, dims in (("images", images, 3), ("labels", labels, 1)):
            name = f"{SPLITS[split]}-{kind}-idx{dims}-ubyte"
            path = directory / (name + ".gz" if compress else name)
            write_idx(path, data, compress=compress)
            sha256s[name] = content_sha256(path)
    return sha256s


def _distinct_subsets(rng: np.random.Generator, n: int, k: int, count: int) -> list[tuple]:
    """`count` different k-subsets of range(n), so no two classes share a pattern."""
    subsets: set[tuple] = set()
    while len(subsets) < count:
        subsets.add(tuple(sorted(rng.choice(n, k, replace=False))))
    return sorted(subsets)


def content_sha256(path: Path) -> str:
    """SHA-256 of a file's content, decompressed first if it is gzipped."""
    raw = path.read_bytes()
    return hashlib.sha256(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).hexdigest()


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """(directory holding a gzipped tiny MNIST, {file name: sha256 of decompressed content})."""
    directory = tmp_path / "tiny_mnist"
    return directory, make_tiny_mnist(directory)


class MirrorURL(str):
    """A mirror's base URL that also records the paths requested from it (without '/')."""

    requests: list[str]


# What the "html" behaviour serves with status 200, as captive portals and CDN error pages do.
HTML_PAGE = b"<!DOCTYPE html><html><body><h1>Welcome to our CDN!</h1></body></html>\n"


class _Handler(SimpleHTTPRequestHandler):
    behaviours: Mapping[str, str | bytes]
    requests: list[str]
    stop: threading.Event

    def do_GET(self) -> None:
        name = urlsplit(self.path).path.lstrip("/")
        self.requests.append(name)
        behaviour = self.behaviours.get(name)
        if behaviour is None:
            super().do_GET()
        elif behaviour == "404":
            self.send_error(404)
        elif behaviour == "html":
            self._send(HTML_PAGE, content_type="text/html")
        elif behaviour == "stall":  # never answer: the client must time out
            self.stop.wait(30)
        elif isinstance(behaviour, bytes):
            self._send(behaviour)
        else:
            self._send_broken(behaviour, Path(self.translate_path(self.path)).read_bytes())

    def _send_broken(self, behaviour: str, body: bytes) -> None:
        half = len(body) // 2
        if behaviour == "corrupt":  # flip 16 bytes in the middle, keep the length
            flipped = bytes(b ^ 0xFF for b in body[half : half + 16])
            self._send(body[:half] + flipped + body[half + 16 :])
        elif behaviour == "truncate":  # promise the whole file, send half, hang up
            self._send(body[:half], length=len(body))
        elif behaviour == "stall-body":  # send half, then go silent mid-transfer
            self._send(body[:half], length=len(body))
            self.wfile.flush()
            self.stop.wait(30)
        else:
            raise ValueError(f"unknown mirror behaviour {behaviour!r}")

    def _send(
        self, body: bytes, content_type: str = "application/octet-stream", length: int | None = None
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def http_mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., MirrorURL]]:
    """Factory: `http_mirror(directory, behaviours=None) -> MirrorURL` ('http://127.0.0.1:PORT/').

    Serves `directory` over real HTTP on loopback. `behaviours` maps a path (e.g.
    "train-images-idx3-ubyte.gz") to what to do instead: "404"; "html" (200 with an HTML page);
    "stall" (never answer); "stall-body" (send half, then go silent); "corrupt" (the file with
    16 bytes flipped); "truncate" (promise the whole file, send half, close); or raw bytes to
    serve with 200. `url.requests` lists every requested path, in order.
    """
    # A proxy configured in the environment must not see (or swallow) loopback requests.
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    started: list[tuple[ThreadingHTTPServer, threading.Thread, threading.Event]] = []

    def start(directory: Path, behaviours: Mapping[str, str | bytes] | None = None) -> MirrorURL:
        stop, requests = threading.Event(), []
        handler = type(
            "Handler",
            (_Handler,),
            {"behaviours": dict(behaviours or {}), "requests": requests, "stop": stop},
        )
        server = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((server, thread, stop))
        url = MirrorURL(f"http://127.0.0.1:{server.server_address[1]}/")
        url.requests = requests
        return url

    yield start
    for server, thread, stop in started:
        stop.set()  # wake stalled handlers so their threads end now, not 30 s later
        server.shutdown()
        server.server_close()
        thread.join()


REPO = Path(__file__).resolve().parents[1]


def mlflow_runs(store: str | Path):
    """(client, every run of every experiment) of a tracking URI or a directory's mlflow.db."""
    from mlflow import MlflowClient

    uri = store if isinstance(store, str) else f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def no_runs(store: str | Path) -> bool:
    """True if the store (a URI or a directory's mlflow.db) holds no run."""
    return mlflow_runs(store)[1] == []


@pytest.fixture(scope="session")
def empty_store(request: pytest.FixtureRequest, tmp_path_factory) -> Callable[[Path], str]:
    """Factory: `empty_store(path) -> URI` of a new, empty MLflow sqlite store at `path`.

    The schema is copied from a template store: MLflow's creation of a store (its schema
    migrations) costs 2.4 s of CPU, which every training test would pay again. The template is
    made once per MLflow version and kept in pytest's cache (once per test process without it).
    """
    from importlib.metadata import version

    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("mlflow-store") if cache else tmp_path_factory.mktemp("mlflow-store")
    template = folder / f"mlflow-{version('mlflow')}.db"
    if not template.exists():
        from mlflow import MlflowClient

        made = template.with_suffix(f".{os.getpid()}.tmp")
        MlflowClient(f"sqlite:///{made}").search_experiments()
        os.replace(made, template)  # whole, even with another test process making it too

    def create(path: Path) -> str:
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    return create


def run_table(client, run, path: str) -> list[dict]:
    """The rows of a table that `run` logged (`log_table`). Not `client.load_table`: it finds
    the run through the global tracking URI, not the client's."""
    import pandas as pd

    local = client.download_artifacts(run.info.run_id, path)
    return pd.read_json(local, orient="split").to_dict("records")


def _tiny_setup(
    tmp_path: Path,
    tiny_mnist: tuple[Path, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    empty_store: Callable[[Path], str],
) -> list[str]:
    """The tiny data set served by MNIST_MIRROR, an empty MLflow store in `tmp_path`, and the
    overrides of a short quiet CPU training on them."""
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_store(tmp_path / "mlflow.db"))
    return [
        f"data.dir={tmp_path / 'data' / 'mnist'}",
        "data.local_mirror=null",
        "data.mirrors=[]",
        "data.val_size=100",
        "data.batch_size=50",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *(f"data.files.{name}={digest}" for name, digest in sha256s.items()),
    ]


@pytest.fixture
def tiny_run(tmp_path: Path, tiny_mnist, monkeypatch: pytest.MonkeyPatch, empty_store):
    """Factory: `tiny_run(*overrides, cwd=REPO, script="src/train.py") -> CompletedProcess`;
    `tiny_run.popen(*overrides, **popen_args) -> warm.Popen` starts it and returns at once;
    `tiny_run.command(*overrides)` is the argv, to start it yourself.

    Runs a real `python <script>` process on the tiny data set (served by MNIST_MIRROR), with
    every output (data, Hydra run dir, MLflow sqlite store) inside `tmp_path`. The process is
    started warm (`warm.py`: forked from a process that has imported torch, Lightning, MLflow
    and Hydra already; still a process of its own, its pid, signals, exit status and output).
    """
    base = [
        *_tiny_setup(tmp_path, tiny_mnist, monkeypatch, empty_store),
        f"hydra.run.dir={tmp_path / 'run'}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]

    def command(*overrides: str, cwd: Path = REPO, script: str = "src/train.py") -> list[str]:
        flags = [arg for arg in overrides if arg.startswith("-")]  # argparse wants them first
        overrides = [arg for arg in overrides if not arg.startswith("-")]
        return [sys.executable, str(cwd / script), *flags, *base, *overrides]

    def popen(*overrides: str, script: str = "src/train.py", **popen_args) -> warm.Popen:
        return warm.Popen(command(*overrides, script=script), cwd=REPO, **popen_args)

    def run(*overrides: str, cwd: Path = REPO, script: str = "src/train.py", check: bool = True):
        result = warm.run(
            command(*overrides, cwd=cwd, script=script),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    run.command, run.popen = command, popen
    return run


@pytest.fixture
def train_tiny(tmp_path: Path, tiny_mnist, monkeypatch: pytest.MonkeyPatch, empty_store):
    """Factory: `train_tiny(*overrides) -> best validation accuracy`: `stages.train.train` run
    in this process on the tiny data set, the config composed from conf/ as `src/train.py`
    would. Outputs in `tmp_path / "run"`, the MLflow store in `tmp_path / "mlflow.db"`.
    """
    from hydra import compose, initialize_config_dir

    from mnist_pipeline.stages.train import train

    base = [
        *_tiny_setup(tmp_path, tiny_mnist, monkeypatch, empty_store),
        f"paths.output_dir={tmp_path / 'run'}",
    ]

    def run(*overrides: str) -> float:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[*base, *overrides])
        return train(cfg)

    return run


def train_once(directory: Path, empty_store: Callable[[Path], str], *overrides: str) -> Path:
    """A training as `train_tiny` runs one, for a module-scoped fixture: its own tiny data set,
    store and outputs in `directory`; returns the output directory, `directory / "run"`."""
    from hydra import compose, initialize_config_dir

    from mnist_pipeline.stages.train import train

    source = directory / "tiny_mnist"
    with pytest.MonkeyPatch.context() as patch:
        base = _tiny_setup(directory, (source, make_tiny_mnist(source)), patch, empty_store)
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose(
                "config", overrides=[*base, f"paths.output_dir={directory / 'run'}", *overrides]
            )
        train(cfg)
    return directory / "run"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Factory: `cli(script, *args)`: `src/<script>.py` run as `python src/<script>.py ...` would
    (as `__main__`, Hydra's main, argv and all), in this process; its exit status and output."""
    monkeypatch.chdir(REPO)

    def run(script: str, *args: str) -> SimpleNamespace:
        from hydra.core.hydra_config import HydraConfig

        monkeypatch.setattr(sys, "argv", [f"src/{script}.py", *args])
        # Hydra leaves its config and its log handlers (on this test's captured stdout) behind:
        # later tests in this process must see neither.
        monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)
        monkeypatch.setattr(logging.root, "handlers", logging.root.handlers[:])
        try:
            runpy.run_path(str(REPO / "src" / f"{script}.py"), run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code
        output = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=output.out, stderr=output.err)

    return run


@pytest.fixture
def predict_cli(cli):
    """Factory: `predict_cli(*overrides)`: `cli("predict", *overrides)`."""
    return functools.partial(cli, "predict")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tiny_cli_overrides(
    tmp_path: Path, tiny_mnist, monkeypatch: pytest.MonkeyPatch, empty_store
) -> list[str]:
    """Overrides for `cli("train", ...)`: a short quiet training on the tiny data, all of its
    output in tmp_path (Hydra's run directory `run/`)."""
    return [
        *_tiny_setup(tmp_path, tiny_mnist, monkeypatch, empty_store),
        f"hydra.run.dir={tmp_path / 'run'}",
        "report=false",
    ]


def __getattr__(name: str):
    """`conftest.AllocateTooMuch`, a callback (`+callbacks.oom._target_=conftest.AllocateTooMuch`):
    the training runs out of memory at its third step, asking for 10 TB, which the kernel
    refuses. Defined when first asked for: xdist's controller loads this file too, and needs no
    Lightning (5 s of imports before any worker starts)."""
    if name != "AllocateTooMuch":
        raise AttributeError(name)
    import pytorch_lightning as pl
    import torch

    class AllocateTooMuch(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step >= 3:
                torch.empty(10**13, dtype=torch.uint8)

    globals()[name] = AllocateTooMuch
    return AllocateTooMuch
