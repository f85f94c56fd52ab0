"""Every figure function writes a PNG that opens, atomically, from tiny random inputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from mnist_pipeline.reporting import figures
from mnist_pipeline.reporting.evaluation import digit_rows, score


def _curve(epochs: int, rng: np.random.Generator) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = [
        {
            "epoch": epoch,
            "train_loss": float(rng.uniform(0.1, 1)),
            "train_acc": float(rng.uniform(0.8, 1)),
            "val_loss": float(rng.uniform(0.1, 1)),
            "val_acc": float(rng.uniform(0.8, 1)),
        }
        for epoch in range(1, epochs + 1)
    ]
    rows[-1]["val_loss"] = ""  # a metric not logged in some epoch
    return rows


def _open_png(path: Path) -> Image.Image:
    """The PNG at `path`, checked to be the only file in its directory (no temp files left)."""
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    # Something drawn: not one flat colour (a figure whose plotting failed silently).
    gray = np.asarray(image.convert("L"), dtype=float)
    assert gray.std() > 5 and (gray < 128).mean() > 0.002, (path.name, gray.std())
    return image


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_confusion_matrix(tmp_path: Path, rng: np.random.Generator) -> None:
    matrix = torch.from_numpy(rng.integers(0, 50, size=(10, 10))) + 500 * torch.eye(10).long()
    figures.confusion_matrix_figure(matrix, tmp_path / "confusion.png")
    _open_png(tmp_path / "confusion.png")


def _pixel_centres(size_px: int) -> np.ndarray:
    """Offsets of the middle of each of 28 image pixels drawn `size_px` screen pixels wide."""
    return ((np.arange(28) + 0.5) * size_px / 28).astype(int)


@pytest.mark.parametrize("count", [0, 3, 8])
def test_misclassified(tmp_path: Path, rng: np.random.Generator, count: int) -> None:
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(count, 10))), dim=1)
    labels = rng.integers(0, 10, size=count)
    figures.misclassified_figure(
        images, labels, probabilities, tmp_path / "wrong.png", max_images=6
    )
    png = _open_png(tmp_path / "wrong.png")
    if count == 0:
        return
    # Each shown digit, in order, in its cell under its title: ink dark (gray_r), every pixel.
    shown, cols = min(count, 6), min(count, 6)
    (cell_w, cell_h), size = figures.MISCLASSIFIED_CELL_PX, figures.MISCLASSIFIED_IMAGE_PX
    gray = np.asarray(png.convert("L"), dtype=float)
    left = (png.width - cols * cell_w) // 2 + (cell_w - size) // 2
    top = figures.MISCLASSIFIED_HEADER_PX + cell_h - size - figures.MISCLASSIFIED_GAP_PX
    at = _pixel_centres(size)
    for k in range(shown):
        row, col = divmod(k, cols)
        x, y = left + col * cell_w + at, top + row * cell_h + at
        drawn = gray[np.ix_(y, x)]
        assert np.abs(drawn - (255 - images[k])).max() <= 3, k


def test_training_curves(tmp_path: Path, rng: np.random.Generator) -> None:
    figures.training_curves_figure(_curve(4, rng), tmp_path / "curves.png")
    _open_png(tmp_path / "curves.png")


@pytest.mark.parametrize(
    ("hidden", "max_neurons", "size"),
    [
        # max(cols, 8) * 80 wide, rows * 80 + 100 high; cols = min(n, 16)
        (20, 128, (16 * 80, 2 * 80 + 100)),
        (40, 18, (16 * 80, 2 * 80 + 100)),
        (5, 128, (8 * 80, 1 * 80 + 100)),
    ],
)
def test_first_layer_weights_size(
    tmp_path: Path, hidden: int, max_neurons: int, size: tuple[int, int]
) -> None:
    weight = torch.randn(hidden, 784, requires_grad=True)  # as taken from a live nn.Linear
    figures.first_layer_weights_figure(weight, tmp_path / "weights.png", max_neurons=max_neurons)
    assert _open_png(tmp_path / "weights.png").size == size


def test_first_layer_weights_colours(tmp_path: Path, rng: np.random.Generator) -> None:
    # 20 neurons at scales from 0.01 to 100, each weight at least half its neuron's largest:
    # every cell pixel is clearly red (positive) or blue (negative) whatever the neuron's scale;
    # an all-zero neuron is the colour scale's white middle, the gaps between cells white.
    signs = rng.choice([-1.0, 1.0], size=(20, 784))
    scales = 10.0 ** (np.arange(20) % 5 - 2)
    weight = signs * rng.uniform(0.5, 1.0, size=(20, 784)) * scales[:, None]
    weight[7] = 0.0
    figures.first_layer_weights_figure(torch.from_numpy(weight), tmp_path / "weights.png")
    rgb = np.asarray(_open_png(tmp_path / "weights.png").convert("RGB"), dtype=int)
    cell, gap = figures.WEIGHT_CELL_PX, figures.WEIGHT_GAP_PX
    at = _pixel_centres(cell - gap)
    for k in range(20):
        row, col = divmod(k, 16)
        x = col * cell + gap // 2 + at
        y = figures.WEIGHT_HEADER_PX + row * cell + gap // 2 + at
        red, blue = rgb[np.ix_(y, x, [0])][..., 0], rgb[np.ix_(y, x, [2])][..., 0]
        if k == 7:
            assert (np.abs(red - 247) <= 2).all() and (np.abs(blue - 247) <= 2).all()
            continue
        pattern = signs[k].reshape(28, 28) > 0
        assert ((red - blue > 50) == pattern).all(), k
        assert ((blue - red > 50) == ~pattern).all(), k
    between = rgb[figures.WEIGHT_HEADER_PX : figures.WEIGHT_HEADER_PX + 2 * cell, cell - 1]
    assert (between == 255).all()


def _panels_apart(fig: Figure) -> None:
    """Everything drawn inside `fig`; no two panels (an axes with its ticks, labels and titles),
    titles, or a panel and another's title overlapping."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    (suptitle,) = fig.findobj(lambda a: isinstance(a, Text) and a.get_text() == fig.get_suptitle())
    drawn = [(suptitle, suptitle.get_window_extent(renderer))]
    for ax in fig.axes:
        drawn.append((ax, ax.get_tightbbox(renderer)))
        titles = [t for t in ax.get_children() if isinstance(t, Text) and t.get_text()]
        drawn += [(title, title.get_window_extent(renderer)) for title in titles]
    for artist, box in drawn:
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width, artist
        assert 0 <= box.y0 and box.y1 <= fig.bbox.height, artist
    for (one, box), (other, other_box) in itertools.combinations(drawn, 2):
        if one is not other.axes:  # a panel holds its own titles
            assert not box.overlaps(other_box), (one, other)


@pytest.mark.parametrize(
    ("hidden_range", "logit_scale", "fixed"),
    [
        ((0, 12), 15, True),  # a trained relu network's numbers: the fixed grid
        ((-1, 0), 9, True),  # negative activations, logit ticks "-10.0"
        ((0, 1), 9000, True),  # the widest tick labels the fixed grid has room for: "-7500"
        ((0, 1e4), 1e5, False),  # a diverged network's: laid out by measuring them
    ],
)
def test_digit_walkthrough_layout(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    hidden_range: tuple[float, float],
    logit_scale: float,
    fixed: bool,
) -> None:
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    k = 2  # the first row's titles, the space between rows, the last row's x labels
    logits = torch.from_numpy(rng.uniform(-1, 1, size=(k, 10)) * logit_scale)
    figures.digit_walkthrough_figure(
        rng.uniform(size=(k, 28, 28)),
        rng.uniform(*hidden_range, size=(k, 128)),
        logits,
        logits.softmax(dim=1),
        rng.integers(0, 10, size=k),
        tmp_path / "walkthrough.png",
    )
    (fig,) = drawn
    assert (fig.get_layout_engine() is None) == fixed
    _panels_apart(fig)


def test_digit_walkthrough(tmp_path: Path, rng: np.random.Generator) -> None:
    k, hidden = 2, 32
    logits = rng.normal(size=(k, 10)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    figures.digit_walkthrough_figure(
        rng.uniform(size=(k, 28, 28)),
        np.maximum(rng.normal(size=(k, hidden)), 0),
        logits,
        probabilities,
        rng.integers(0, 10, size=k),
        tmp_path / "walkthrough.png",
    )
    _open_png(tmp_path / "walkthrough.png")


def test_activation_comparison(tmp_path: Path, rng: np.random.Generator) -> None:
    curves = {"relu": _curve(3, rng), "sigmoid": _curve(3, rng)}
    figures.activation_comparison_figure(curves, tmp_path / "activations.png")
    _open_png(tmp_path / "activations.png")


def test_sweep(tmp_path: Path, rng: np.random.Generator) -> None:
    # A search's rows: a choice, a continuous value, a pruned and a failed trial, a key missing.
    rows = [
        {
            "model.activation": str(rng.choice(["relu", "tanh"])),
            "optimizer.lr": float(10 ** rng.uniform(-4, -2)),
            "best_val_acc": float(rng.uniform(0.8, 1)),
            "status": status,
            "run_id": str(number),
        }
        for number, status in enumerate(["FINISHED"] * 6 + ["PRUNED", "FAILED"])
    ]
    del rows[0]["optimizer.lr"]
    rows[-1]["best_val_acc"] = None
    keys = ["model.activation", "optimizer.lr"]
    figures.sweep_figure(rows, keys, best_run_id="3", path=tmp_path / "sweep.png")
    _open_png(tmp_path / "sweep.png")


def test_score_summarises_and_tables_the_digits() -> None:
    # 10 images of each digit, all right except three 7s taken for 1s.
    labels = torch.arange(10).repeat_interleave(10)
    guesses = labels.clone()
    guesses[70:73] = 1
    metrics = score(torch.nn.functional.one_hot(guesses, 10).float(), labels)
    assert metrics["accuracy"] == pytest.approx(0.97)
    seven, one = metrics["per_class"][7], metrics["per_class"][1]
    assert (seven["digit"], seven["precision"], seven["recall"]) == (7, 1.0, 0.7)
    assert seven["f1"] == pytest.approx(2 * 0.7 / 1.7, abs=1e-6)
    assert (one["precision"], one["recall"]) == (pytest.approx(10 / 13, abs=1e-6), 1.0)
    assert (metrics["worst_digit"], metrics["worst_f1"]) == (7, seven["f1"])
    f1 = [row["f1"] for row in metrics["per_class"]]
    assert metrics["macro_f1"] == pytest.approx(sum(f1) / 10, abs=1e-6)
    # The table of digits (MLflow's): what each is most often taken for, and how often.
    rows = digit_rows(metrics)
    assert rows[7] == {**seven, "images": 10, "mistaken_for": 1, "times": 3}
    assert rows[1] == {**one, "images": 10, "mistaken_for": None, "times": 0}


def test_the_report_loss_is_the_training_cross_entropy_even_for_a_diverged_network() -> None:
    # Logits of a diverged network: the true class 400 below the guess. Its softmax probability
    # is 0 in float32, so a loss from probabilities would be capped (-log 1e-12 = 27.6).
    logits = torch.zeros(4, 10)
    logits[:, 3] = 400.0
    labels = torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(logits, labels)
    assert float(loss) == pytest.approx(300.0, rel=1e-4)
    assert score(logits, labels)["loss"] == pytest.approx(float(loss), rel=1e-6)
