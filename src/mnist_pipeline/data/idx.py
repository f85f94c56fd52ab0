"""Read and write IDX files, the format MNIST ships in.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the data in C order. Only the unsigned-byte type
(0x08) is supported: it is the only one MNIST uses.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from mnist_pipeline.atomic import atomic_write_bytes

GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08
MAX_DIMS = 4


class IdxError(ValueError):
    """A file is not a well-formed unsigned-byte IDX file (or not the one that was expected)."""


def decompress(raw: bytes, source: str | Path) -> bytes:
    """Gunzip `raw` if it starts with the gzip magic bytes, else return it unchanged."""
    # Sniff the content rather than trust the suffix: mirrors serve both forms under either name.
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise IdxError(f"{source}: corrupt or truncated gzip stream ({err})") from err


def parse_idx(content: bytes, source: str | Path, ndim: int | None = None) -> np.ndarray:
    """Check an uncompressed IDX buffer and return its data as a read-only uint8 array.

    `ndim`, if given, is the number of dimensions the caller expects; `source` names the data
    in error messages.
    """
    if len(content) < 4:
        raise IdxError(f"{source}: truncated: {len(content)} bytes, too short for a magic number")
    ok_dims = content[3] == ndim if ndim else 1 <= content[3] <= MAX_DIMS
    if content[:3] != bytes([0, 0, UBYTE]) or not ok_dims:
        magic = int.from_bytes(content[:4], "big")
        if ndim:
            expected = f"0x{UBYTE << 8 | ndim:08x} (ubyte, {ndim} dims)"
        else:
            expected = "0x00000801 to 0x00000804 (ubyte, 1 to 4 dims)"
        raise IdxError(f"{source}: bad magic number 0x{magic:08x}, expected {expected}")

    header_size = 4 + 4 * content[3]
    if len(content) < header_size:
        raise IdxError(
            f"{source}: truncated: a {content[3]}-dim header needs {header_size} bytes, "
            f"file has {len(content)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(content, ">u4", count=content[3], offset=4))
    size = int(np.prod(shape))
    promise = f"header promises {'x'.join(map(str, shape))} = {size} bytes of data"
    actual = len(content) - header_size
    if actual < size:
        raise IdxError(f"{source}: truncated: {promise}, file has {actual}")
    if actual > size:
        raise IdxError(f"{source}: {actual - size} trailing bytes: {promise}, file has {actual}")
    return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape)


def read_idx(path: str | Path, ndim: int | None = None) -> torch.Tensor:
    """Read a plain or gzipped IDX file into a uint8 tensor of the shape its header gives."""
    raw = Path(path).read_bytes()
    # frombuffer views immutable bytes; copy so callers get an ordinary writable tensor.
    return torch.from_numpy(parse_idx(decompress(raw, path), path, ndim).copy())


def write_idx(
    path: str | Path, data: torch.Tensor | np.ndarray, compress: bool | None = None
) -> None:
    """Write integer data in 0..255 as an unsigned-byte IDX file, atomically.

    Compresses with gzip if `compress` is True, or if it is None and the path ends in ".gz".
    """
    path = Path(path)
    array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if not 1 <= array.ndim <= MAX_DIMS:
        raise ValueError(f"{path}: IDX needs 1 to {MAX_DIMS} dims, got shape {array.shape}")
    if array.dtype != np.uint8:
        # Casting blindly would wrap e.g. label 256 to 0; only accept what fits exactly.
        in_range = array.size == 0 or (array.min() >= 0 and array.max() <= 255)
        if array.dtype.kind not in "iub" or not in_range:
            raise ValueError(f"{path}: IDX ubyte needs integers in 0..255, got {array.dtype}")
        array = array.astype(np.uint8)

    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    content = header + np.ascontiguousarray(array).tobytes()
    if compress or (compress is None and path.name.endswith(".gz")):
        content = gzip.compress(content, compresslevel=6, mtime=0)

    atomic_write_bytes(path, content)


def load_images_and_labels(
    images_path: str | Path, labels_path: str | Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST image/label file pair: uint8 images (N, 28, 28) and int64 labels (N,)."""
    images = read_idx(images_path, ndim=3)
    if tuple(images.shape[1:]) != (28, 28):
        h, w = images.shape[1:]
        raise IdxError(f"{images_path}: images are {h}x{w}, expected 28x28")
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise IdxError(
            f"count mismatch: {images_path} has {len(images)} images, "
            f"{labels_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        i = int((labels > 9).nonzero()[0])
        raise IdxError(f"{labels_path}: label {int(labels[i])} at index {i} is outside 0..9")
    return images, labels.long()
