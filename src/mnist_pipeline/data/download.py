"""Fetch the MNIST IDX files from a list of mirrors and verify them by SHA-256.

Files are verified by the digest of their decompressed content, because mirrors re-compress
the archives and the `.gz` bytes differ between them.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import secrets
import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm  # Lightning's progress bars' dependency

from mnist_pipeline.data.idx import decompress, parse_idx
from mnist_pipeline.errors import UserError
from mnist_pipeline.processes import gone

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MIRROR_ENV = "MNIST_MIRROR"


class DownloadError(UserError):
    """No mirror could supply a file whose decompressed content has the expected SHA-256.

    One line (each mirror's failure is logged as it happens, and kept in `failures`)."""

    def __init__(self, name: str, sha256: str, failures: list[str]) -> None:
        self.failures = failures
        tried = f"from any of {len(failures)} mirrors (see above)" if failures else "(no mirror)"
        super().__init__(
            f"could not fetch {name} (expected sha256 {sha256}) {tried}; set ${MIRROR_ENV} to "
            "a directory or URL holding the MNIST files"
        )


def sha256_of(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    dest: str | Path,
    files: Mapping[str, str],
    mirrors: Sequence[str],
    timeout: float = 30.0,
    pinned: str | Path | None = None,
) -> dict[str, Path]:
    """Make sure `dest` holds each file in `files` (name -> SHA-256 of decompressed content).

    Files already present with the right digest are kept without touching the network. Others
    are fetched from the first mirror that has them: `$MNIST_MIRROR` if set, then `mirrors`.
    A mirror is an http(s):// or file:// URL, or a directory; for each file it is asked for
    `name.gz`, then `name`. Returns name -> path in `dest`.

    `pinned`: the folder that `data.dvc` pins (`data/raw`); when it does not exist, it is made
    of the verified files (hard links), so that DVC finds what it pins, and can push it.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(dest)
    env_mirror = os.environ.get(MIRROR_ENV)
    mirrors = [env_mirror, *mirrors] if env_mirror else list(mirrors)

    paths = {}
    for name, sha256 in files.items():
        path = dest / name
        if path.is_file():
            if sha256_of(path) == sha256.lower():
                log.debug("%s: present and verified", path)
                paths[name] = path
                continue
            log.warning("%s: present but its sha256 differs, fetching it again", path)
        _fetch_file(path, sha256.lower(), mirrors, timeout)
        paths[name] = path
    if pinned is not None and not Path(pinned).exists():
        _pin(paths, Path(pinned))
    return paths


def _pin(paths: Mapping[str, Path], folder: Path) -> None:
    """`folder` made of the verified `paths` at once (a temp folder renamed into place)."""
    tmp = _part(folder)
    tmp.mkdir(parents=True)
    try:
        for name, path in paths.items():
            try:
                os.link(path, tmp / name)
            except OSError:  # another file system: a copy
                shutil.copy2(path, tmp / name)
        os.rename(tmp, folder)
    except OSError as error:  # a parallel fetch made it first, or no room: DVC will say so
        shutil.rmtree(tmp, ignore_errors=True)
        log.debug("%s not made: %s", folder, error)
    else:
        log.info("%s: the verified files, as data.dvc pins them", folder)


def _part(path: Path) -> Path:
    """A temporary name beside `path`; the pid in it tells a later fetch whether its writer is
    still alive (`remove_stale_parts`)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


def remove_stale_parts(dest: Path) -> None:
    """Delete partial downloads that a killed fetch left in `dest` (`.<name>.<pid>.<hex>.part`).

    A part whose writing process is still alive (a parallel fetch) is left alone; one without a
    pid in its name predates that naming and is stale.
    """
    for part in dest.glob(".*.part"):
        fields = part.name.split(".")
        pid = int(fields[-3]) if len(fields) >= 5 and fields[-3].isdigit() else None
        if pid is None or gone(pid):
            log.info("removing %s, left by a fetch that was killed", part)
            part.unlink(missing_ok=True)


def _fetch_file(path: Path, sha256: str, mirrors: Sequence[str], timeout: float) -> None:
    """Fetch one file from the first mirror that serves verified content, or raise."""
    failures = []
    for mirror in mirrors:
        base = _base_url(mirror)
        reasons = []
        for candidate in (path.name + ".gz", path.name):
            url = base + candidate
            local = urllib.request.url2pathname(urlparse(url).path)
            if urlparse(url).scheme == "file" and not Path(local).exists():
                reasons.append(f"{candidate}: not found")  # directories may hold either form
                continue
            # Temp file in dest so the final os.replace is an atomic rename on one filesystem.
            tmp = _part(path)
            try:
                size = _download(url, tmp, timeout)
                _verify(tmp, candidate, sha256)
                os.replace(tmp, path)
                log.info("fetched %s from %s (%.2f MB)", path.name, mirror, size / 1e6)
                return
            except ValueError as err:  # not the file; the message already names the candidate
                reasons.append(str(err))
            except (urllib.error.HTTPError, http.client.HTTPException) as err:
                reasons.append(f"{candidate}: {_describe(err, timeout)}")
            except OSError as err:  # includes URLError
                reasons.append(f"{candidate}: {_describe(err, timeout)}")
                break  # unreachable or stalled: asking for the other name would only wait again
            finally:
                tmp.unlink(missing_ok=True)
        log.warning("%s: mirror %s failed: %s", path.name, mirror, "; ".join(reasons))
        failures.append(f"{mirror}: {'; '.join(reasons)}")
    raise DownloadError(path.name, sha256, failures)


def _download(url: str, tmp: Path, timeout: float) -> int:
    """Stream `url` into `tmp`; return the number of bytes received. A progress bar on stderr
    when it is a terminal (tqdm's `disable=None`)."""
    size = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "xb") as f:
        total = int(response.headers.get("Content-Length") or 0) or None
        desc = url.rsplit("/", 1)[-1]
        with tqdm(
            total=total, desc=desc, unit="B", unit_scale=True, leave=False, disable=None
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    # http.client returns a short body without complaint when the server hangs up early.
    if total is not None and size < total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")
    return size


def _verify(tmp: Path, candidate: str, sha256: str) -> None:
    """Replace `tmp` by its decompressed content, or raise ValueError if that is not the file."""
    content = decompress(tmp.read_bytes(), candidate)
    # Parse first: an HTML error page served with status 200 gets a clearer reason than a digest.
    parse_idx(content, candidate)
    actual = hashlib.sha256(content).hexdigest()
    if actual != sha256:
        raise ValueError(f"{candidate}: sha256 mismatch, got {actual}")
    tmp.write_bytes(content)


def _base_url(mirror: str) -> str:
    """Mirror as a URL ending in '/': directories become file:// URLs."""
    url = mirror if "://" in mirror else Path(mirror).expanduser().resolve().as_uri()
    return url if url.endswith("/") else url + "/"


def _describe(err: BaseException, timeout: float) -> str:
    """Short reason for a failed request, without urllib's wrapper noise."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
        err = err.reason
    if isinstance(err, TimeoutError):
        return f"timed out after {timeout:g} s"
    return f"{type(err).__name__}: {err}"
