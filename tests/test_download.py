"""The downloader against real mirrors: a loopback HTTP server, directories and file:// URLs."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import make_tiny_mnist

from mnist_pipeline.data.download import DownloadError, fetch, sha256_of
from mnist_pipeline.data.idx import load_images_and_labels

NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
IMAGES = "train-images-idx3-ubyte"


@pytest.fixture(autouse=True)
def no_env_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own $MNIST_MIRROR must not leak into these tests."""
    monkeypatch.delenv("MNIST_MIRROR", raising=False)


def assert_fetched(dest: Path, sha256s: dict[str, str]) -> None:
    """`dest` holds exactly the verified, decompressed files: nothing partial, nothing else."""
    assert sorted(os.listdir(dest)) == sorted(sha256s)
    for name, sha256 in sha256s.items():
        assert sha256_of(dest / name) == sha256
        assert (dest / name).read_bytes()[:2] == b"\x00\x00", f"{name} is decompressed IDX"


def test_fetch_from_http_mirror(tiny_mnist, http_mirror, tmp_path: Path) -> None:
    source, sha256s = tiny_mnist
    url = http_mirror(source)
    dest = tmp_path / "dest"

    paths = fetch(dest, sha256s, [url])

    assert paths == {name: dest / name for name in sha256s}
    assert_fetched(dest, sha256s)
    assert url.requests == [name + ".gz" for name in sha256s]
    images, labels = load_images_and_labels(paths[IMAGES], paths["train-labels-idx1-ubyte"])
    assert images.shape == (600, 28, 28) and labels.shape == (600,)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("as_url", [False, True], ids=["directory", "file-url"])
def test_env_mirror_is_tried_first(
    http_mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool, as_url: bool
) -> None:
    local = tmp_path / "local"
    sha256s = make_tiny_mnist(local, n_train=20, n_test=10, compress=compress)
    make_tiny_mnist(tmp_path / "remote", n_train=20, n_test=10)
    url = http_mirror(tmp_path / "remote")
    monkeypatch.setenv("MNIST_MIRROR", local.as_uri() if as_url else str(local))

    fetch(tmp_path / "dest", sha256s, [url])

    assert_fetched(tmp_path / "dest", sha256s)
    assert url.requests == []


def test_empty_env_mirror_is_ignored(tiny_mnist, tmp_path: Path, monkeypatch) -> None:
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", "")
    fetch(tmp_path / "dest", sha256s, [str(source)])
    assert_fetched(tmp_path / "dest", sha256s)


def test_checksum_mismatch_falls_through_to_next_mirror(
    tiny_mnist, http_mirror, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, sha256s = tiny_mnist
    make_tiny_mnist(tmp_path / "other", seed=1)  # valid IDX, different content
    wrong, right = http_mirror(tmp_path / "other"), http_mirror(source)

    fetch(tmp_path / "dest", sha256s, [wrong, right])

    assert_fetched(tmp_path / "dest", sha256s)
    # Both names are asked of the wrong mirror: it could hold a good plain copy.
    assert wrong.requests == [r for name in sha256s for r in (name + ".gz", name)]
    assert right.requests == [name + ".gz" for name in sha256s]
    assert f"mirror {wrong} failed: {IMAGES}.gz: sha256 mismatch" in caplog.text


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("404", "HTTP 404"),
        ("html", "bad magic number 0x3c21444f"),
        ("corrupt", "corrupt or truncated gzip stream"),
        ("truncate", "ConnectionError: connection closed after"),
    ],
)
def test_bad_mirror_falls_through(
    tiny_mnist, http_mirror, tmp_path: Path, caplog, behaviour: str, reason: str
) -> None:
    source, sha256s = tiny_mnist
    bad = http_mirror(source, {name + ".gz": behaviour for name in sha256s})
    good = http_mirror(source)

    fetch(tmp_path / "dest", sha256s, [bad, good])

    assert_fetched(tmp_path / "dest", sha256s)
    assert len(good.requests) == 4
    assert f"mirror {bad} failed: {IMAGES}.gz: {reason}" in caplog.text


@pytest.mark.parametrize("behaviour", ["stall", "stall-body"])
def test_stalling_mirror_times_out_and_falls_through(
    tiny_mnist, http_mirror, tmp_path: Path, caplog, behaviour: str
) -> None:
    source, sha256s = tiny_mnist
    stalled = http_mirror(source, {IMAGES + ".gz": behaviour})
    good = http_mirror(source)

    start = time.perf_counter()
    fetch(tmp_path / "dest", {IMAGES: sha256s[IMAGES]}, [stalled, good], timeout=0.5)
    took = time.perf_counter() - start

    assert_fetched(tmp_path / "dest", {IMAGES: sha256s[IMAGES]})
    assert 0.5 <= took < 3
    # A stalled server is given up on entirely: asking it for the plain name would stall again.
    assert stalled.requests == [IMAGES + ".gz"]
    assert f"mirror {stalled} failed: {IMAGES}.gz: timed out after 0.5 s" in caplog.text


def test_parts_left_by_killed_fetches_are_removed(tiny_mnist, tmp_path: Path) -> None:
    # What `kill -9` during a download leaves: a dead writer's part, and an old-style one.
    source, sha256s = tiny_mnist
    dest = tmp_path / "dest"
    dest.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [
        dest / f".{IMAGES}.{dead.pid}.0a1b2c3d.part",
        dest / f".{IMAGES}.deadbeef.part",
    ]
    live = dest / f".t10k-labels-idx1-ubyte.{os.getpid()}.0a1b2c3d.part"  # a live parallel fetch
    for part in (*stale, live):
        part.write_bytes(b"half a file")
    fetch(dest, {IMAGES: sha256s[IMAGES]}, [str(source)])
    assert not any(part.exists() for part in stale)
    assert live.exists()
    assert sorted(os.listdir(dest)) == sorted([IMAGES, live.name])


def test_interrupted_download_leaves_no_temp_file(tiny_mnist, http_mirror, tmp_path) -> None:
    source, sha256s = tiny_mnist
    url = http_mirror(source, {IMAGES + ".gz": "stall-body"})
    dest = tmp_path / "dest"
    # Ctrl-C while the body is half received, i.e. while the temp file exists in dest. Python
    # ignores SIGINT when started in the background of a non-interactive shell: restore it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c = threading.Timer(
        0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            fetch(dest, {IMAGES: sha256s[IMAGES]}, [url], timeout=5)
    finally:
        ctrl_c.cancel()
        signal.signal(signal.SIGINT, previous)
    assert url.requests == [IMAGES + ".gz"]
    assert os.listdir(dest) == []


def test_all_mirrors_failing_raises_one_error_listing_each(
    tiny_mnist, http_mirror, tmp_path: Path
) -> None:
    source, sha256s = tiny_mnist
    (tmp_path / "empty").mkdir()
    not_found = http_mirror(tmp_path / "empty")
    html = http_mirror(source, {IMAGES + ".gz": "html"})
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{s.getsockname()[1]}/"
    missing_dir = str(tmp_path / "no-such-dir")
    mirrors = [not_found, html, refused, missing_dir]
    dest = tmp_path / "dest"

    with pytest.raises(DownloadError) as err:
        fetch(dest, {IMAGES: sha256s[IMAGES]}, mirrors, timeout=2)

    assert str(err.value) == (
        f"could not fetch {IMAGES} (expected sha256 {sha256s[IMAGES]}) from any of 4 mirrors "
        "(see above); set $MNIST_MIRROR to a directory or URL holding the MNIST files"
    )
    lines = err.value.failures  # each also logged as a warning when it failed
    assert len(lines) == 4
    assert lines[0] == (
        f"{not_found}: {IMAGES}.gz: HTTP 404 File not found; {IMAGES}: HTTP 404 File not found"
    )
    assert lines[1] == (
        f"{html}: {IMAGES}.gz: bad magic number 0x3c21444f, expected 0x00000801 to 0x00000804 "
        f"(ubyte, 1 to 4 dims); {IMAGES}: HTTP 404 File not found"
    )
    # Refused outright, so the plain name is not tried on that mirror.
    assert lines[2].startswith(f"{refused}: {IMAGES}.gz: ConnectionRefusedError: ")
    assert lines[3] == f"{missing_dir}: {IMAGES}.gz: not found; {IMAGES}: not found"
    assert os.listdir(dest) == []


def test_no_mirrors_at_all(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"\) \(no mirror\); set \$MNIST_MIRROR to a"):
        fetch(tmp_path, {IMAGES: "0" * 64}, [])


def test_verified_files_present_means_no_request(tiny_mnist, http_mirror, tmp_path: Path) -> None:
    source, sha256s = tiny_mnist
    dest = tmp_path / "dest"
    fetch(dest, sha256s, [str(source)])
    mtimes = {name: (dest / name).stat().st_mtime_ns for name in sha256s}
    url = http_mirror(source)

    assert fetch(dest, sha256s, [url]) == {name: dest / name for name in sha256s}

    assert url.requests == []
    assert {name: (dest / name).stat().st_mtime_ns for name in sha256s} == mtimes


def test_file_with_wrong_content_is_fetched_again(tiny_mnist, http_mirror, tmp_path: Path) -> None:
    source, sha256s = tiny_mnist
    dest = tmp_path / "dest"
    fetch(dest, sha256s, [str(source)])
    (dest / IMAGES).write_bytes(b"stale")
    url = http_mirror(source)

    fetch(dest, sha256s, [url])

    assert url.requests == [IMAGES + ".gz"]
    assert_fetched(dest, sha256s)


def test_recompressed_archive_still_verifies(tiny_mnist, http_mirror, tmp_path: Path) -> None:
    source, sha256s = tiny_mnist
    original = (source / f"{IMAGES}.gz").read_bytes()
    recompressed = gzip.compress(gzip.decompress(original), compresslevel=1, mtime=12345)
    assert recompressed != original
    url = http_mirror(source, {IMAGES + ".gz": recompressed})

    fetch(tmp_path / "dest", {IMAGES: sha256s[IMAGES]}, [url])

    assert_fetched(tmp_path / "dest", {IMAGES: sha256s[IMAGES]})
    assert url.requests == [IMAGES + ".gz"]


def test_plain_file_served_under_gz_name_verifies(tiny_mnist, http_mirror, tmp_path) -> None:
    source, sha256s = tiny_mnist
    plain = gzip.decompress((source / f"{IMAGES}.gz").read_bytes())
    url = http_mirror(source, {IMAGES + ".gz": plain})

    fetch(tmp_path / "dest", {IMAGES: sha256s[IMAGES]}, [url])

    assert_fetched(tmp_path / "dest", {IMAGES: sha256s[IMAGES]})
    assert url.requests == [IMAGES + ".gz"]


def test_the_folder_data_dvc_pins_is_made_of_the_verified_files(tiny_mnist, tmp_path: Path):
    """After the first download, `data/raw` holds what data.dvc pins (so `dvc status` after
    `dvc repro` is clean, and `dvc push data.dvc` has something to push)."""
    source, sha256s = tiny_mnist
    dest, pinned = tmp_path / "mnist", tmp_path / "raw"
    fetch(dest, sha256s, [str(source)], pinned=pinned)
    assert sorted(os.listdir(pinned)) == sorted(sha256s)
    for name in sha256s:
        assert os.path.samefile(pinned / name, dest / name)  # hard links: no second copy
    # A folder that is there (pulled with dvc, or the user's) is left as it is.
    (pinned / "note.txt").write_text("mine")
    fetch(dest, sha256s, [str(source)], pinned=pinned)
    assert (pinned / "note.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
