"""Every PNG of the project: evaluation plots, the "how the network sees a digit" pictures and
a sweep's summary.

Figures are built with `matplotlib.figure.Figure`, never pyplot: no GUI backend, no global figure
registry to leak into, so nothing needs closing and the PNG is rendered by Agg. Each PNG is
rendered in memory and written atomically. Inputs may be numpy arrays or torch tensors.
matplotlib is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_pipeline.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
# The weight grid is laid out in whole pixels so its PNG size is exact (see
# `first_layer_weights_figure`): square cells, a title band on top and a margin below.
WEIGHT_CELL_PX, WEIGHT_HEADER_PX, WEIGHT_FOOTER_PX = 80, 90, 10
WEIGHT_COLUMNS, WEIGHT_MIN_COLUMNS = 16, 8
# The columns of reports/training_curve.csv (`training.curve`), one row per epoch.
CURVE_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
GUESS_COLOUR, OTHER_COLOUR = "tab:orange", "tab:blue"


def confusion_matrix_figure(matrix: Any, path: str | Path) -> None:
    """10x10 counts, actual digit on y and predicted on x, each cell annotated; accuracy on top."""
    counts = _numpy(matrix)
    total = counts.sum()
    correct = np.trace(counts)
    fig = _figure(figsize=(7.5, 6.5))
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, label="number of test digits")
    # White on dark cells, black on light ones: readable whatever the count.
    dark = counts > counts.max() / 2
    for (actual, predicted), count in np.ndenumerate(counts):
        ax.text(
            predicted,
            actual,
            f"{count:g}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if dark[actual, predicted] else "black",
        )
    classes = range(counts.shape[0])
    ax.set(xticks=classes, yticks=classes, xlabel="predicted digit", ylabel="actual digit")
    accuracy = correct / total if total else float("nan")
    ax.set_title(f"Confusion matrix: accuracy {accuracy:.2%} ({correct:g} of {total:g} correct)")
    _save(fig, path)


def misclassified_figure(
    images: Any, labels: Any, probabilities: Any, path: str | Path, max_images: int = 36
) -> None:
    """A grid of misclassified digits, each titled with the true label, the guess and 2nd guess."""
    images, labels, probabilities = _numpy(images), _numpy(labels), _numpy(probabilities)
    if len(images) == 0:
        fig = _figure(figsize=(6, 2))
        fig.text(0.5, 0.5, "no misclassified digits", ha="center", va="center", fontsize=16)
        _save(fig, path, tight=False)  # a tight box would shrink to the text
        return
    shown = min(len(images), max_images)
    cols = min(shown, 6)
    rows = math.ceil(shown / cols)
    fig = _figure(figsize=(1.7 * cols, 2.0 * rows + 0.5))
    fig.suptitle(f"Misclassified test digits ({shown} of {len(images)} shown)", fontsize=13)
    ranked = np.argsort(-probabilities, axis=1)
    pixels = images / 255.0 if images.max() > 1 else images
    for k in range(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(pixels[k], cmap="gray_r", vmin=0, vmax=1)
        first, second = ranked[k, :2]
        ax.set_title(
            f"true {labels[k]:g} → {first} ({probabilities[k, first]:.2f})\n"
            f"2nd guess {second} ({probabilities[k, second]:.2f})",
            fontsize=9,
        )
        ax.set_axis_off()
    _save(fig, path)


def training_curves_figure(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Loss and accuracy per epoch, train vs val; missing values ("" or None) are skipped."""
    curve = _curve(rows)
    fig = _figure(figsize=(11, 4.2))
    fig.suptitle("Training curves", fontsize=13)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "acc"), strict=True):
        for stage in ("train", "val"):
            _plot_series(ax, curve["epoch"], curve[f"{stage}_{metric}"], label=stage)
        _label_epoch_axes(ax, metric)
        ax.legend()
    _save(fig, path)


def first_layer_weights_figure(weight: Any, path: str | Path, max_neurons: int = 128) -> None:
    """Each hidden neuron's 784 input weights drawn as a 28x28 picture, one cell per neuron.

    Shows the first `n = min(hidden, max_neurons)` neurons in `cols = min(n, 16)` columns and
    `rows = ceil(n / cols)` rows. The PNG is exactly `max(cols, 8) * 80` pixels wide and
    `rows * 80 + 100` pixels high (at 100 dpi): 1280 x 740 for 128 neurons. Red is a positive
    weight (ink there excites the neuron), blue negative; each cell is scaled symmetrically around
    0 by its own largest weight, so the colours show each neuron's pattern, not its scale.
    """
    weights = _numpy(weight)
    n = min(len(weights), max_neurons)
    cols = min(n, WEIGHT_COLUMNS)
    rows = math.ceil(n / cols)
    width_px = max(cols, WEIGHT_MIN_COLUMNS) * WEIGHT_CELL_PX
    height_px = rows * WEIGHT_CELL_PX + WEIGHT_HEADER_PX + WEIGHT_FOOTER_PX
    fig = _figure(figsize=(width_px / DPI, height_px / DPI), layout=None)
    shown = f"{n} neurons" if n == len(weights) else f"first {n} of {len(weights)} neurons"
    fig.suptitle(
        "What each hidden neuron looks for: its 784 input weights as 28x28",
        y=1 - 12 / height_px,
        va="top",
        fontsize=13,
    )
    fig.text(
        0.5,
        1 - 50 / height_px,
        f"{shown}; red = positive weight (ink there excites the neuron), blue = negative",
        ha="center",
        va="top",
        fontsize=9,
    )
    left_px = (width_px - cols * WEIGHT_CELL_PX) / 2  # centre the grid when it is narrow
    gap_px = 4
    for k in range(n):
        row, col = divmod(k, cols)
        x = left_px + col * WEIGHT_CELL_PX + gap_px / 2
        y = height_px - WEIGHT_HEADER_PX - (row + 1) * WEIGHT_CELL_PX + gap_px / 2
        size = WEIGHT_CELL_PX - gap_px
        ax = fig.add_axes((x / width_px, y / height_px, size / width_px, size / height_px))
        limit = np.abs(weights[k]).max() or 1.0
        ax.imshow(
            weights[k].reshape(28, 28),
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
            interpolation="nearest",
        )
        ax.set_axis_off()
    _save(fig, path, tight=False)


def digit_walkthrough_figure(
    images: Any, hidden: Any, logits: Any, probabilities: Any, labels: Any, path: str | Path
) -> None:
    """One row per digit: pixels -> hidden activations -> 10 logits -> softmax probabilities."""
    images, hidden, logits = _numpy(images), _numpy(hidden), _numpy(logits)
    probabilities, labels = _numpy(probabilities), _numpy(labels)
    k = len(images)
    fig = _figure(figsize=(15, 2.3 * k + 0.9))
    fig.suptitle(
        "How the network sees a digit: 784 pixels → hidden layer → 10 logits → softmax",
        fontsize=14,
    )
    axes = np.atleast_2d(fig.subplots(k, 4, width_ratios=(1.1, 3.2, 1.7, 1.7)))
    digits = np.arange(logits.shape[1])
    for row, (ax_image, ax_hidden, ax_logits, ax_probs) in enumerate(axes):
        guess = int(probabilities[row].argmax())
        colours = [GUESS_COLOUR if d == guess else OTHER_COLOUR for d in digits]
        pixels = images[row] / 255.0 if images[row].max() > 1 else images[row]
        ax_image.imshow(pixels, cmap="gray_r", vmin=0, vmax=1)
        ax_image.set(xticks=[], yticks=[])
        ax_image.set_ylabel(f"label {labels[row]:g}", fontsize=11)

        ax_hidden.bar(np.arange(hidden.shape[1]), hidden[row], width=1.0, color="tab:green")
        ax_hidden.set(xlim=(-0.5, hidden.shape[1] - 0.5), ylabel="activation")

        ax_logits.bar(digits, logits[row], color=colours)
        ax_logits.axhline(0, color="black", linewidth=0.8)
        ax_logits.set(xticks=digits, ylabel="logit")

        ax_probs.bar(digits, probabilities[row], color=colours)
        ax_probs.set(xticks=digits, ylim=(0, 1.15), ylabel="probability")
        ax_probs.text(
            guess,
            probabilities[row, guess] + 0.03,
            f"{probabilities[row, guess]:.2f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
        ax_probs.set_title(
            f"guess {guess}, sum = {probabilities[row].sum():.2f}", fontsize=9, loc="right"
        )
    top = axes[0]
    top[0].set_title("input 28x28")
    top[1].set_title(f"hidden layer: {hidden.shape[1]} activations", loc="left")
    top[2].set_title("logits (before softmax)")
    top[3].set_title("probabilities", loc="left")
    axes[-1][1].set_xlabel("hidden neuron")
    axes[-1][2].set_xlabel("digit")
    axes[-1][3].set_xlabel("digit (orange = argmax)")
    _save(fig, path)


def activation_comparison_figure(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path
) -> None:
    """Validation accuracy and loss per epoch, one line per activation function."""
    fig = _figure(figsize=(11, 4.2))
    fig.suptitle("Activation functions compared on the validation set", fontsize=13)
    ax_acc, ax_loss = fig.subplots(1, 2)
    for name, rows in curves.items():
        curve = _curve(rows)
        finite = curve["val_acc"][np.isfinite(curve["val_acc"])]
        label = f"{name} (final {finite[-1]:.2%})" if len(finite) else name
        _plot_series(ax_acc, curve["epoch"], curve["val_acc"], label=label)
        _plot_series(ax_loss, curve["epoch"], curve["val_loss"], label=name)
    for ax, metric in ((ax_acc, "acc"), (ax_loss, "loss")):
        _label_epoch_axes(ax, metric, prefix="validation ")
        ax.legend()
    _save(fig, path)


def sweep_figure(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    best_run_id: str | None,
    path: str | Path,
) -> None:
    """A sweep's objective against each swept key: one panel per key, a dot per finished child
    (`rows` of the parent's table: the key's value, `best_val_acc`, `status`, `run_id`), the
    mean per value joined by a line, the best child a star."""
    keys = list(keys) or ["run"]
    fig = _figure(figsize=(min(4.2 * len(keys), 13), 3.8))
    fig.suptitle("Best validation accuracy by swept value", fontsize=13)
    done = [r for r in rows if r["status"] == "FINISHED" and finite(r["best_val_acc"])]
    for ax, key in zip(np.atleast_1d(fig.subplots(1, len(keys))), keys, strict=True):
        points = [r for r in done if r.get(key) is not None]
        values = sorted({r[key] for r in points}, key=lambda v: (isinstance(v, str), v))
        numeric = all(isinstance(v, int | float) for v in values)
        where = {v: (v if numeric else i) for i, v in enumerate(values)}
        x, y = [where[r[key]] for r in points], [r["best_val_acc"] for r in points]
        ax.scatter(x, y, alpha=0.6, s=25, label="a run")
        if len(values) < len(points):  # a grid: several runs share a value (a search: rarely)
            means = [np.mean([r["best_val_acc"] for r in points if r[key] == v]) for v in values]
            ax.plot([where[v] for v in values], means, color="tab:gray", label="mean at a value")
        for r in points:
            if r["run_id"] == best_run_id:
                ax.scatter(
                    where[r[key]],
                    r["best_val_acc"],
                    marker="*",
                    s=220,
                    color=GUESS_COLOUR,
                    label="best run",
                    zorder=3,
                )
        if numeric and len(values) > 2 and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values], rotation=30, ha="right")
        elif len(values) <= 12:  # a grid's few values, not 1.2, 1.4, ... between seeds 1 and 2
            ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.set(xlabel=key, ylabel="best validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def finite(value: Any) -> bool:
    """Whether `value` is a number and neither NaN nor infinite (a logged metric may be)."""
    return isinstance(value, int | float) and math.isfinite(value)


def _figure(figsize: tuple[float, float], layout: str | None = "constrained") -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=DPI, layout=layout)


def _save(fig: Figure, path: str | Path, tight: bool = True) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight" if tight else None)
    atomic_write_bytes(path, buffer.getvalue())


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu()
    return np.asarray(x)


def _curve(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Columns of a training curve as float arrays; "" or None (not logged that epoch) -> NaN."""

    def number(value: Any) -> float:
        return float("nan") if value is None or value == "" else float(value)

    return {key: np.array([number(row.get(key)) for row in rows]) for key in CURVE_KEYS}


def _plot_series(ax: Axes, epochs: np.ndarray, values: np.ndarray, label: str) -> None:
    # Drop missing points rather than let a NaN break the line into pieces.
    known = np.isfinite(epochs) & np.isfinite(values)
    ax.plot(epochs[known], values[known], marker="o", markersize=4, label=label)


def _label_epoch_axes(ax: Axes, metric: str, prefix: str = "") -> None:
    from matplotlib.ticker import MaxNLocator

    name = {"loss": "cross-entropy loss", "acc": "accuracy"}[metric]
    ax.set(xlabel="epoch", ylabel=prefix + name, title=(prefix + name).capitalize())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
