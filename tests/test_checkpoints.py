"""Checkpoints carry a checksum of their content; a damaged one is refused wherever it is read."""

import shutil
import zipfile
from pathlib import Path

import pytest
from conftest import train_once
from PIL import Image, ImageDraw

from mnist_pipeline.checkpoint_files import CheckpointError, load_network, read_checkpoint
from mnist_pipeline.config import ConfigError


def _tensor_entries(path: Path) -> list[tuple[int, int]]:
    """(offset of the data, size) of each tensor stored in a checkpoint (a zip), largest first."""
    with zipfile.ZipFile(path) as archive:
        entries = [info for info in archive.infolist() if "/data/" in info.filename]
    with path.open("rb") as file:
        spans = []
        for info in entries:
            file.seek(info.header_offset + 26)  # the local header's name and extra lengths
            name, extra = (int.from_bytes(file.read(2), "little") for _ in range(2))
            spans.append((info.header_offset + 30 + name + extra, info.file_size))
    return sorted(spans, key=lambda span: -span[1])


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(data)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, empty_store) -> Path:
    """last.ckpt of a short training: weights and Adam's state."""
    run = train_once(
        tmp_path_factory.mktemp("trained"),
        empty_store,
        "trainer.max_epochs=1",
        "report=false",
        "logger=none",
    )
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture
def trained(trained_once, tmp_path) -> Path:
    """A copy of `trained_once` of the test's own, to damage."""
    return Path(shutil.copy(trained_once, tmp_path / "last.ckpt"))


def _damaged(trained: Path, kind: str) -> Path:
    damaged = trained.with_name(f"{kind}.ckpt")
    shutil.copy(trained, damaged)
    spans = _tensor_entries(damaged)
    if kind == "flipped-weights":  # the largest tensor: the first layer's weights
        offset, size = spans[0]
        original = damaged.read_bytes()[offset + size // 2 : offset + size // 2 + 16]
        _overwrite(damaged, offset + size // 2, bytes(b ^ 0xFF for b in original))
    elif kind == "zeroed-optimizer":  # Adam's moments have the weights' size: the 2nd/3rd largest
        offset, size = spans[1]
        _overwrite(damaged, offset, bytes(size // 2))
    elif kind == "truncated":
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    elif kind == "garbage":
        damaged.write_bytes(b"not a checkpoint at all\n" * 100)
    return damaged


@pytest.mark.parametrize("kind", ["flipped-weights", "zeroed-optimizer", "truncated", "garbage"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(trained, kind):
    read_checkpoint(trained)  # the intact one verifies
    damaged = _damaged(trained, kind)
    expected = "is damaged" if "ed-" in kind else "cannot be read"
    for read in (read_checkpoint, load_network):  # resume / evaluate and predict
        with pytest.raises(CheckpointError, match=expected) as error:
            read(damaged)
        assert str(damaged) in str(error.value) and "\n" not in str(error.value)


def test_damaged_checkpoints_are_refused_by_resume_and_predict(
    trained, train_tiny, predict_cli, tmp_path
):
    damaged = _damaged(trained, "flipped-weights")
    with pytest.raises(CheckpointError, match="is damaged"):
        train_tiny(f"ckpt_path={damaged}", "logger=none")
    assert not issubclass(CheckpointError, ConfigError)  # a bad file, not a bad config
    digit = tmp_path / "seven.png"
    image = Image.new("L", (60, 90), "white")
    ImageDraw.Draw(image).line([(10, 10), (50, 10), (20, 80)], fill="black", width=6)
    image.save(digit)
    result = predict_cli(f"ckpt_path={damaged}", f"image={digit}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: checkpoint {damaged} is damaged: its content does not match the checksum "
        "saved in it"
    )
