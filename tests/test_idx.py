"""IDX reading and writing on real files: round trips and every kind of malformed file."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_mnist

from mnist_pipeline.data.idx import IdxError, load_images_and_labels, read_idx, write_idx


def random_images(n: int, h: int = 28, w: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8) % 10


@pytest.mark.parametrize("name", ["data-idx3-ubyte", "data-idx3-ubyte.gz"])
@pytest.mark.parametrize("shape", [(7,), (5, 28, 28), (2, 3, 4, 5)])
def test_round_trip(tmp_path: Path, name: str, shape: tuple[int, ...]) -> None:
    data = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / name
    write_idx(path, torch.from_numpy(data))

    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == shape
    assert np.array_equal(out.numpy(), data)
    out += 1  # an ordinary writable tensor, not a view of immutable bytes
    assert os.listdir(tmp_path) == [name], "no temp files left behind"


def test_layout_matches_the_spec(tmp_path: Path) -> None:
    write_idx(tmp_path / "x", np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8))
    assert (tmp_path / "x").read_bytes() == bytes.fromhex("00000802 00000002 00000003 010203040506")


def test_gzip_is_detected_by_content_not_suffix(tmp_path: Path) -> None:
    data = random_images(3)
    write_idx(tmp_path / "compressed", data, compress=True)
    write_idx(tmp_path / "plain.gz", data, compress=False)
    assert (tmp_path / "compressed").read_bytes()[:2] == b"\x1f\x8b"
    assert np.array_equal(read_idx(tmp_path / "compressed").numpy(), data)
    assert np.array_equal(read_idx(tmp_path / "plain.gz").numpy(), data)


def test_write_accepts_integer_labels_in_range_and_rejects_the_rest(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels", torch.arange(10))  # int64, as labels usually are
    assert read_idx(tmp_path / "labels").tolist() == list(range(10))
    with pytest.raises(ValueError, match="0..255, got int64"):
        write_idx(tmp_path / "big", np.array([1, 256]))
    with pytest.raises(ValueError, match="float32"):
        write_idx(tmp_path / "float", np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="1 to 4 dims"):
        write_idx(tmp_path / "5d", np.zeros((1,) * 5, dtype=np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["labels"]


@pytest.mark.parametrize(
    ("magic", "shown"),
    [
        (b"\x00\x00\x00\x00", "0x00000000"),
        (b"\x00\x00\x0d\x03", "0x00000d03"),  # float32: valid IDX, not supported
        (b"\x00\x00\x08\x05", "0x00000805"),  # 5 dims
        (b"<!DO", "0x3c21444f"),  # an HTML page
    ],
)
def test_bad_magic(tmp_path: Path, magic: bytes, shown: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(magic + bytes(100))
    with pytest.raises(IdxError) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path}: bad magic number {shown}, expected 0x00000801 to")


def test_labels_file_given_as_images_names_the_expected_magic(tmp_path: Path) -> None:
    write_idx(tmp_path / "images", labels(10))
    write_idx(tmp_path / "labels", labels(10))
    with pytest.raises(IdxError) as err:
        load_images_and_labels(tmp_path / "images", tmp_path / "labels")
    assert str(err.value) == (
        f"{tmp_path / 'images'}: bad magic number 0x00000801, expected 0x00000803 (ubyte, 3 dims)"
    )


def test_truncated_payload(tmp_path: Path) -> None:
    path = tmp_path / "images"
    write_idx(path, random_images(10))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(IdxError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path}: truncated: header promises 10x28x28 = 7840 bytes of data, file has 7839"
    )


@pytest.mark.parametrize("size", [0, 3, 10])
def test_truncated_header(tmp_path: Path, size: int) -> None:
    path = tmp_path / "images"
    write_idx(path, random_images(1))
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(IdxError) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path}: truncated: ")
    assert f"{size} bytes" in str(err.value) or f"file has {size}" in str(err.value)


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    write_idx(path, labels(60))
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\n\n"))
    with pytest.raises(IdxError) as err:
        read_idx(path)
    assert str(err.value) == (
        f"{path}: 2 trailing bytes: header promises 60 = 60 bytes of data, file has 62"
    )


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, random_images(20))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IdxError) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path}: corrupt or truncated gzip stream")


def test_corrupt_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, random_images(20))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 32] = bytes(32)
    path.write_bytes(bytes(raw))
    with pytest.raises(IdxError) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path}: corrupt or truncated gzip stream")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "train-images-idx3-ubyte"
    with pytest.raises(FileNotFoundError) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    assert err.value.filename == str(path)


def test_load_images_and_labels(tmp_path: Path) -> None:
    images = random_images(30)
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", labels(30))
    x, y = load_images_and_labels(tmp_path / "images.gz", tmp_path / "labels.gz")
    assert x.dtype == torch.uint8 and tuple(x.shape) == (30, 28, 28)
    assert y.dtype == torch.int64 and y.tolist() == labels(30).tolist()
    assert np.array_equal(x.numpy(), images)


def test_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    write_idx(tmp_path / "images", random_images(10))
    write_idx(tmp_path / "labels", labels(9))
    with pytest.raises(IdxError) as err:
        load_images_and_labels(tmp_path / "images", tmp_path / "labels")
    assert str(err.value) == (
        f"count mismatch: {tmp_path / 'images'} has 10 images, {tmp_path / 'labels'} has 9 labels"
    )


def test_wrong_image_size(tmp_path: Path) -> None:
    write_idx(tmp_path / "images", random_images(4, 32, 32))
    write_idx(tmp_path / "labels", labels(4))
    with pytest.raises(IdxError) as err:
        load_images_and_labels(tmp_path / "images", tmp_path / "labels")
    assert str(err.value) == f"{tmp_path / 'images'}: images are 32x32, expected 28x28"


def test_label_out_of_range(tmp_path: Path) -> None:
    write_idx(tmp_path / "images", random_images(4))
    write_idx(tmp_path / "labels", np.array([1, 2, 10, 3], dtype=np.uint8))
    with pytest.raises(IdxError) as err:
        load_images_and_labels(tmp_path / "images", tmp_path / "labels")
    assert str(err.value) == f"{tmp_path / 'labels'}: label 10 at index 2 is outside 0..9"


def test_tiny_mnist_is_balanced_and_learnable(tmp_path: Path) -> None:
    sha256s = make_tiny_mnist(tmp_path)
    assert sorted(sha256s) == sorted(p.name.removesuffix(".gz") for p in tmp_path.iterdir())
    x, y = load_images_and_labels(
        tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz"
    )
    x_test, y_test = load_images_and_labels(
        tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz"
    )
    assert len(x) == 600 and len(x_test) == 200
    assert y.bincount(minlength=10).tolist() == [60] * 10
    assert make_tiny_mnist(tmp_path / "again") == sha256s, "same seed, same files"

    # Two epochs of the pipeline's default: MLP with 128 hidden units, Adam at 1e-3, batch 128.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def normalize(images: torch.Tensor) -> torch.Tensor:
        return (images / 255.0 - 0.1307) / 0.3081

    for _ in range(2):
        for batch in torch.randperm(len(x)).split(128):
            loss = torch.nn.functional.cross_entropy(model(normalize(x[batch])), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    accuracy = (model(normalize(x_test)).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.8
