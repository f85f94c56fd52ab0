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
WEIGHT_CELL_PX, WEIGHT_HEADER_PX, WEIGHT_FOOTER_PX, WEIGHT_GAP_PX = 80, 90, 10, 4
WEIGHT_COLUMNS, WEIGHT_MIN_COLUMNS = 16, 8
# The misclassified digits likewise: (width, height) of a cell, its digit's size, the space under
# the digit and between the digit and its two-line title above it, a band on top for the title.
MISCLASSIFIED_CELL_PX, MISCLASSIFIED_IMAGE_PX = (170, 207), 162
MISCLASSIFIED_GAP_PX, MISCLASSIFIED_TITLE_PAD_PX, MISCLASSIFIED_HEADER_PX = 8, 4, 33
MISCLASSIFIED_MIN_COLUMNS = 3  # wide enough for the figure's title
MARGIN_PX = 10  # white around a figure drawn to pixels, as `bbox_inches="tight"` leaves
# The digit walkthrough's grid, fixed in pixels: measuring it (constrained layout) took a third
# of its drawing. Room on top for the titles, below for x labels, to the left for "label k", and
# between axes for x tick labels and a row's title, or a y label and y tick labels of up to 5
# characters: a working network's numbers (others are measured: see `_short_y_ticks`).
WALK_EDGES_PX = {"left": 31, "right": MARGIN_PX, "top": 59, "bottom": 53}
WALK_GAPS_PX = (88, 50)  # between columns, between rows
WALK_WIDTHS = (1.1, 3.2, 1.7, 1.7)  # image, hidden layer, logits, probabilities
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
        fig = _figure(figsize=(6, 2), layout=None)
        fig.text(0.5, 0.5, "no misclassified digits", ha="center", va="center", fontsize=16)
        _save(fig, path)
        return
    shown = min(len(images), max_images)
    cols = min(shown, 6)
    rows = math.ceil(shown / cols)
    cell_w, cell_h = MISCLASSIFIED_CELL_PX
    width_px = max(cols, MISCLASSIFIED_MIN_COLUMNS) * cell_w + 2 * MARGIN_PX
    left_px = (width_px - cols * cell_w) // 2  # centre the grid when it is narrow
    height_px = rows * cell_h + MISCLASSIFIED_HEADER_PX
    fig = _figure(figsize=(width_px / DPI, height_px / DPI), layout=None)
    fig.suptitle(
        f"Misclassified test digits ({shown} of {len(images)} shown)",
        y=1 - MARGIN_PX / height_px,
        va="top",
        fontsize=13,
    )
    pixels = images[:shown] / 255.0 if images.max() > 1 else images[:shown]
    # One picture of all the digits, each at the bottom of its cell: the titles go above.
    top = cell_h - MISCLASSIFIED_IMAGE_PX - MISCLASSIFIED_GAP_PX
    mosaic = _mosaic(pixels, cols, MISCLASSIFIED_CELL_PX, MISCLASSIFIED_IMAGE_PX, top)
    fig.figimage(mosaic, left_px, 0, cmap=_colormap("gray_r"), vmin=0, vmax=1, origin="upper")
    ranked = np.argsort(-probabilities, axis=1)
    for k in range(shown):
        row, col = divmod(k, cols)
        first, second = ranked[k, :2]
        fig.text(
            (left_px + (col + 0.5) * cell_w) / width_px,
            ((rows - row) * cell_h - top + MISCLASSIFIED_TITLE_PAD_PX) / height_px,
            f"true {labels[k]:g} → {first} ({probabilities[k, first]:.2f})\n"
            f"2nd guess {second} ({probabilities[k, second]:.2f})",
            ha="center",
            va="bottom",
            fontsize=9,
        )
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
    # One picture of all the cells, each neuron scaled by its own largest |weight| so that one
    # colour scale (-1..1) draws every cell: one image instead of an axes per neuron.
    limits = np.abs(weights[:n]).max(axis=1, keepdims=True)
    scaled = (weights[:n] / np.where(limits > 0, limits, 1.0)).reshape(n, 28, 28)
    image_px = WEIGHT_CELL_PX - WEIGHT_GAP_PX
    mosaic = _mosaic(scaled, cols, (WEIGHT_CELL_PX, WEIGHT_CELL_PX), image_px, WEIGHT_GAP_PX // 2)
    left_px = (width_px - cols * WEIGHT_CELL_PX) // 2  # centre the grid when it is narrow
    fig.figimage(
        mosaic,
        left_px,
        WEIGHT_FOOTER_PX,
        cmap=_colormap("RdBu_r"),
        vmin=-1,
        vmax=1,
        origin="upper",
    )
    _save(fig, path)


def digit_walkthrough_figure(
    images: Any, hidden: Any, logits: Any, probabilities: Any, labels: Any, path: str | Path
) -> None:
    """One row per digit: pixels -> hidden activations -> 10 logits -> softmax probabilities."""
    images, hidden, logits = _numpy(images), _numpy(hidden), _numpy(logits)
    probabilities, labels = _numpy(probabilities), _numpy(labels)
    k = len(images)
    fig = _figure(figsize=(15, 2.3 * k + 0.9), layout=None)
    grid = _grid_px(fig, k, WALK_WIDTHS, WALK_EDGES_PX, WALK_GAPS_PX)
    axes = np.atleast_2d(fig.subplots(k, 4, gridspec_kw=grid))
    digits = np.arange(logits.shape[1])
    for row, (ax_image, ax_hidden, ax_logits, ax_probs) in enumerate(axes):
        guess = int(probabilities[row].argmax())
        colours = [GUESS_COLOUR if d == guess else OTHER_COLOUR for d in digits]
        pixels = images[row] / 255.0 if images[row].max() > 1 else images[row]
        ax_image.imshow(pixels, cmap="gray_r", vmin=0, vmax=1)
        ax_image.set(xticks=[], yticks=[])
        ax_image.set_ylabel(f"label {labels[row]:g}", fontsize=11)

        # The bars of width 1 as one filled outline: one patch, not one per neuron.
        edges = np.arange(hidden.shape[1] + 1) - 0.5
        ax_hidden.stairs(hidden[row], edges, fill=True, color="tab:green", linewidth=0)
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
    title = "How the network sees a digit: 784 pixels → hidden layer → 10 logits → softmax"
    if all(_short_y_ticks(ax) for ax in axes[:, 1:3].flat):
        fig.suptitle(title, y=1 - MARGIN_PX / fig.bbox.height, va="top", fontsize=14)
    else:  # a diverged network's numbers: lay it out by measuring its tick labels
        axes[0, 0].get_gridspec().update(wspace=None, hspace=None)  # the engine's spacing
        _constrained_layout(fig)
        fig.suptitle(title, fontsize=14)
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

    fig = Figure(figsize=figsize, dpi=DPI, layout=None)
    if layout == "constrained":
        _constrained_layout(fig)
    return fig


def _constrained_layout(fig: Figure) -> None:
    """Lay `fig` out with constrained layout, MARGIN_PX from its edges: the white around what
    is drawn that `bbox_inches="tight"` used to leave (see `_save`)."""
    fig.set_layout_engine("constrained")
    engine = fig.get_layout_engine()
    pads = engine.get()  # the engine pads the edges by w_pad and h_pad (inches) already
    width, height = fig.bbox.width, fig.bbox.height
    x, y = MARGIN_PX - pads["w_pad"] * DPI, MARGIN_PX - pads["h_pad"] * DPI
    engine.set(rect=(x / width, y / height, 1 - 2 * x / width, 1 - 2 * y / height))


def _short_y_ticks(ax: Axes) -> bool:
    """Whether the y tick labels `ax` will draw have at most 5 characters ("-7500", "-0.75")
    and no offset text ("1e5" above the axis): what the walkthrough's fixed grid has room for."""
    formatter = ax.yaxis.get_major_formatter()
    ticks = ax.get_yticks()
    labels = formatter.format_ticks(ticks)  # as drawing does: all ticks, then those in view
    low, high = sorted(ax.get_ylim())
    shown = [label for tick, label in zip(ticks, labels, strict=True) if low <= tick <= high]
    return not formatter.get_offset() and all(len(label) <= 5 for label in shown)


def _grid_px(
    fig: Figure,
    rows: int,
    width_ratios: Sequence[float],
    edges_px: Mapping[str, float],
    gaps_px: tuple[float, float],
) -> dict[str, Any]:
    """`gridspec_kw` of `rows` rows of axes with `width_ratios`, laid out in pixels: `edges_px`
    (left, right, top, bottom) from the figure's edges and `gaps_px` (between columns, rows)."""
    width, height = fig.bbox.width, fig.bbox.height
    gap_x, gap_y = gaps_px
    cols = len(width_ratios)
    axes_w = (width - edges_px["left"] - edges_px["right"] - (cols - 1) * gap_x) / cols
    axes_h = (height - edges_px["top"] - edges_px["bottom"] - (rows - 1) * gap_y) / rows
    return {
        "width_ratios": width_ratios,
        "left": edges_px["left"] / width,
        "right": 1 - edges_px["right"] / width,
        "top": 1 - edges_px["top"] / height,
        "bottom": edges_px["bottom"] / height,
        "wspace": gap_x / axes_w,  # as fractions of the mean axes width and height
        "hspace": gap_y / axes_h,
    }


def _save(fig: Figure, path: str | Path) -> None:
    # Drawn once, at the figure's size: bbox_inches="tight" would draw it twice (once to measure
    # the crop), the most expensive part of a figure; constrained layout already fills it.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())


def _colormap(name: str) -> Any:
    """The colormap `name`, white where a mosaic has NaN (between its tiles)."""
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="white")


def _mosaic(
    tiles: np.ndarray, cols: int, cell_px: tuple[int, int], image_px: int, top_px: int
) -> np.ndarray:
    """Square `tiles` (n, h, h) as one picture of `cols` columns of (width, height) `cell_px`
    pixel cells: each tile scaled to `image_px` pixels (nearest pixel), `top_px` below the top
    of its cell and centred across it; NaN elsewhere. Drawn 1:1 with `Figure.figimage`, so a
    grid of small pictures costs one image, not an axes each."""
    n, size = len(tiles), tiles.shape[1]
    cell_w, cell_h = cell_px
    rows = math.ceil(n / cols)
    source = (2 * np.arange(image_px) + 1) * size // (2 * image_px)  # pixel centres, nearest
    mosaic = np.full((rows * cols, cell_h, cell_w), np.nan)
    left_px = (cell_w - image_px) // 2
    mosaic[:n, top_px : top_px + image_px, left_px : left_px + image_px] = tiles[
        :, source[:, None], source
    ]
    return mosaic.reshape(rows, cols, cell_h, cell_w).swapaxes(1, 2).reshape(rows * cell_h, -1)


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
