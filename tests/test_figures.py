"""Every figure function writes a PNG that opens, atomically, from tiny random inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize("count", [0, 3, 8])
def test_misclassified(tmp_path: Path, rng: np.random.Generator, count: int) -> None:
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(count, 10))), dim=1)
    labels = rng.integers(0, 10, size=count)
    figures.misclassified_figure(
        images, labels, probabilities, tmp_path / "wrong.png", max_images=6
    )
    _open_png(tmp_path / "wrong.png")


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
