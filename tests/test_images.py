"""`load_digit` turns any picture of a digit into an MNIST-style 28x28 input, or says why not."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_pipeline.prediction.images import ImageError, load_digit


def _seven(path: Path, ink: str = "black", paper: str = "white", mode: str = "RGB") -> Path:
    """A thick '7' stroke drawn on a 200x300 canvas, off-centre, and saved to `path`."""
    image = Image.new(mode, (200, 300), paper)
    ImageDraw.Draw(image).line([(30, 40), (150, 40), (70, 250)], fill=ink, width=20)
    image.save(path)
    return path


def _centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(pixels.shape)
    mass = pixels.sum()
    return (rows * pixels).sum() / mass, (cols * pixels).sum() / mass


def test_dark_ink_on_paper_becomes_mnist_style(tmp_path: Path) -> None:
    digit = load_digit(_seven(tmp_path / "seven.png")).numpy()
    assert digit.shape == (28, 28)
    assert digit.dtype == np.float32
    assert digit.min() >= 0 and digit.max() == pytest.approx(1)
    # Inverted: the paper is black, and the ink fills a 20 px box in the 28 px field.
    assert np.abs(digit[:, :3]).max() < 0.05 and np.abs(digit[:3]).max() < 0.05
    rows, cols = np.nonzero(digit > 0.1)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (20, 21)
    row, col = _centre_of_mass(digit)
    assert abs(row - 13.5) <= 1 and abs(col - 13.5) <= 1


def test_dark_background_is_not_inverted(tmp_path: Path) -> None:
    on_paper = load_digit(_seven(tmp_path / "paper.png"))
    on_screen = load_digit(_seven(tmp_path / "screen.jpg", ink="white", paper="black"))
    assert on_screen[0, 0] < 0.05
    # The same digit either way (up to JPEG artefacts).
    assert (on_screen - on_paper).abs().mean() < 0.05


def test_transparent_background_counts_as_white_paper(tmp_path: Path) -> None:
    path = _seven(tmp_path / "seven.png", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA")
    digit = load_digit(path).numpy()
    assert digit[0, 0] < 0.05 and digit.max() == pytest.approx(1)


def test_white_stroke_on_transparent_canvas_is_a_digit(tmp_path: Path) -> None:
    # What the drawing page's canvas gives: white ink, everything else fully transparent.
    path = _seven(tmp_path / "seven.png", ink=(255, 255, 255, 255), paper=(0, 0, 0, 0), mode="RGBA")
    on_canvas = load_digit(path)
    on_paper = load_digit(_seven(tmp_path / "paper.png"))
    assert (on_canvas - on_paper).abs().max() < 1e-6


def test_pil_image_array_and_bytes_give_the_same_digit(tmp_path: Path) -> None:
    path = _seven(tmp_path / "seven.png")
    from_file = load_digit(path)
    with Image.open(path) as image:
        assert (load_digit(image) - from_file).abs().max() < 1e-6
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255
    assert (load_digit(gray) - from_file).abs().max() < 1e-6
    assert (load_digit(io.BytesIO(path.read_bytes())) - from_file).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.zeros((2, 28, 28)), "2-D array"),
        (np.full((28, 28), 2.0), r"in \[0, 1\]"),
        (np.full((28, 28), np.nan), r"in \[0, 1\]"),
        (np.zeros((28, 28)), "empty"),
    ],
)
def test_bad_arrays_are_named(array: np.ndarray, expected: str) -> None:
    with pytest.raises(ImageError, match=f"drawing: .*{expected}"):
        load_digit(array, name="drawing")


def test_upload_bytes_that_are_not_an_image() -> None:
    with pytest.raises(ImageError, match="upload: not an image"):
        load_digit(io.BytesIO(b"<html>no</html>"), name="upload")


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="notes.png.*not an image"):
        load_digit(path)


def test_empty_image(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("RGB", (120, 80), "white").save(path)
    with pytest.raises(ImageError, match="blank.png.*empty"):
        load_digit(path)


def test_too_large_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(path)  # 48 megapixels, a few kB on disk
    with pytest.raises(ImageError, match="huge.png.*too large"):
        load_digit(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        load_digit(tmp_path / "nowhere.png")
