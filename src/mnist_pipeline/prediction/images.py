"""A user's picture of a digit turned into what the network was trained on.

MNIST digits are white ink on black, scaled so the longer side is 20 px and placed in a 28x28
field so that their centre of mass is at the centre. `load_digit` does the same to any photo or
drawing: dark ink on light paper, light ink on a dark screen, or either on a transparent
canvas. `predict.py` and the drawing page (`serve.py`) both go through it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_pipeline.errors import UserError

# Refuse before decoding: a 40-megapixel grayscale image already needs 40 MB, a bomb far more.
MAX_PIXELS = 40_000_000
# After background removal and stretching to 0..255, what counts as ink when cropping.
INK_THRESHOLD = 0.1 * 255
# Below this contrast to the background there is nothing that could be a digit.
MIN_CONTRAST = 16
BOX, SIZE = 20, 28


class ImageError(UserError):
    """The picture cannot be turned into a digit: not an image, too large, or empty."""


Source = str | Path | BinaryIO | Image.Image | np.ndarray


def load_digit(
    source: Source, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> torch.Tensor:
    """A picture as an MNIST-style digit: float32 (28, 28) in [0, 1], white ink on black.

    `source` is an image file (a path or an open binary file, e.g. an upload's bytes), a PIL
    image, or a 2-D array of grey levels in [0, 1]. `name` names it in errors (default: the
    path, or "the image").
    """
    name = name or (str(source) if isinstance(source, (str, Path)) else "the image")
    if isinstance(source, np.ndarray):
        gray = np.asarray(source, dtype=np.float32)
        if gray.ndim != 2 or gray.size == 0:
            raise ImageError(f"{name}: expected a 2-D array of grey levels, got shape {gray.shape}")
        if not (np.isfinite(gray).all() and gray.min() >= 0 and gray.max() <= 1):
            raise ImageError(f"{name}: expected grey levels in [0, 1]")
        gray = gray * 255
    elif isinstance(source, Image.Image):
        gray = _grayscale(source, name, max_pixels)
    else:
        with _open(source, name) as image:
            gray = _grayscale(image, name, max_pixels)
    ink = _ink(gray, name)
    return torch.from_numpy(_centre(_fit_box(_crop(ink))) / 255).float()


def _open(source: str | Path | BinaryIO, name: str) -> Image.Image:
    """The image in a file, not yet decoded."""
    if isinstance(source, (str, Path)) and not Path(source).exists():
        raise FileNotFoundError(f"image file not found: {source}")
    try:
        with warnings.catch_warnings():
            # Pillow warns about huge images when opening them; `_grayscale` refuses them.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source)
    except UnidentifiedImageError as error:
        raise ImageError(f"{name}: not an image file (or a format Pillow cannot read)") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: image too large ({error})") from error


def _grayscale(image: Image.Image, name: str, max_pixels: int) -> np.ndarray:
    """The image as float32 grey levels 0..255, checked for size before it is decoded.

    Transparent parts are background: the drawing is laid on paper of the opposite brightness
    to its ink (white paper under dark ink, black under light ink), so that a white stroke on a
    transparent canvas is as much a digit as a black one.
    """
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: image too large ({width}x{height} px, more than "
            f"{max_pixels / 1_000_000:g} megapixels)"
        )
    try:
        image = ImageOps.exif_transpose(image)  # phone photos are often stored rotated
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32)
            luminance = np.asarray(rgba.convert("L"), dtype=np.float32)
            light_ink = (luminance * alpha).sum() > 127 * alpha.sum()
            paper = Image.new("RGBA", rgba.size, "black" if light_ink else "white")
            image = Image.alpha_composite(paper, rgba)
        return np.asarray(image.convert("L"), dtype=np.float32)
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: image too large ({error})") from error
    except (OSError, SyntaxError) as error:  # a truncated or corrupt file of a known format
        raise ImageError(f"{name}: cannot decode the image: {error}") from error


def _ink(gray: np.ndarray, name: str) -> np.ndarray:
    """Ink brightness 0..255 on a black background, whatever the picture's polarity."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:  # a light background: dark ink on paper, the opposite of MNIST
        gray, border = 255 - gray, 255 - border
    # Grey paper or a lit screen is not ink: subtract the background, stretch the ink to 255.
    ink = np.clip(gray - np.median(border), 0, None)
    if ink.max() < MIN_CONTRAST:
        raise ImageError(f"{name}: the image is empty (no ink stands out from the background)")
    return ink * (255 / ink.max())


def _crop(ink: np.ndarray) -> np.ndarray:
    """The bounding box of the ink."""
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    return ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _fit_box(ink: np.ndarray) -> np.ndarray:
    """Scaled, aspect ratio kept, so that the longer side is 20 px."""
    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray(ink.astype(np.float32), mode="F").resize(size, Image.LANCZOS)
    return np.clip(np.asarray(resized), 0, 255)  # Lanczos overshoots around sharp edges


def _centre(digit: np.ndarray) -> np.ndarray:
    """The digit pasted into a 28x28 field with its centre of mass at the centre.

    The shift is whole pixels and stops at the field's edges, so no ink is ever cut off.
    """
    height, width = digit.shape
    rows, cols = np.indices(digit.shape)
    mass = digit.sum()
    centre = (SIZE - 1) / 2
    top = int(np.clip(round(centre - (rows * digit).sum() / mass), 0, SIZE - height))
    left = int(np.clip(round(centre - (cols * digit).sum() / mass), 0, SIZE - width))
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    field[top : top + height, left : left + width] = digit
    return field
