"""A network scored on the 10k test images: metrics.json, per_class.json, confusion rows and
figures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from mnist_pipeline.atomic import atomic_write_json
from mnist_pipeline.networks import NUM_CLASSES, first_dense_layer, hidden_and_logits
from mnist_pipeline.reporting import figures
from mnist_pipeline.training.curve import read_curve

log = logging.getLogger(__name__)
WALKTHROUGH_DIGITS = 5
# The summary of a report (metrics.json), the numbers a reader looks at first.
HEADLINE = ("accuracy", "loss", "macro_f1", "worst_f1", "worst_digit")
# The per-class scores of a report, one column each of per_class.json.
SCORES = {
    "precision": multiclass_precision,
    "recall": multiclass_recall,
    "f1": multiclass_f1_score,
}


@torch.inference_mode()
def logits_of(net: nn.Module, images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Logits (N, 10) of `net` (in eval mode) for uint8 images (N, 28, 28)."""
    net = net.eval()
    return torch.cat([net(chunk.float() / 255.0) for chunk in images.split(batch_size)])


def score(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Accuracy, loss, macro F1, the worst digit and its F1, `per_class`: one row of
    precision/recall/F1 (torchmetrics) per digit, and `confusion`: the confusion matrix (a row
    per true digit, a column per guess) as lists.

    The loss is the training's cross-entropy of the logits, so it equals the test loss of the
    training (`test/loss`); from the softmax probabilities it would be capped wherever a
    probability rounds to 0 (a diverged network: 24 there against 409).
    """
    predicted = logits.argmax(dim=-1)
    columns = {name: fn(logits, labels, NUM_CLASSES, average=None) for name, fn in SCORES.items()}
    per_class = [
        {
            "digit": digit,
            **{name: round(float(values[digit]), 6) for name, values in columns.items()},
        }
        for digit in range(NUM_CLASSES)
    ]
    worst = min(per_class, key=lambda row: row["f1"])
    return {
        "accuracy": round(float((predicted == labels).float().mean()), 6),
        "loss": round(float(torch.nn.functional.cross_entropy(logits, labels)), 6),
        "macro_f1": round(float(columns["f1"].mean()), 6),
        "worst_f1": worst["f1"],
        "worst_digit": worst["digit"],
        "per_class": per_class,
        "confusion": multiclass_confusion_matrix(predicted, labels, NUM_CLASSES).tolist(),
    }


def digit_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """`per_class` of a `score` with, for each digit, its test images and the guess it is
    most often mistaken for (None when never) and how often."""
    rows = []
    for row, counts in zip(metrics["per_class"], metrics["confusion"], strict=True):
        digit = row["digit"]
        wrong = [(count, guess) for guess, count in enumerate(counts) if guess != digit]
        times, guess = max(wrong)
        rows.append(
            {
                **row,
                "images": sum(counts),
                "mistaken_for": guess if times else None,
                "times": times,
            }
        )
    return rows


def write_report(
    net: nn.Module, images: torch.Tensor, labels: torch.Tensor, reports: Path
) -> tuple[dict[str, Any], list[Path]]:
    """Score `net` and write metrics.json, per_class.json, confusion.json and the figures under
    `reports`.

    Returns the metrics and the written figure paths.
    """
    outputs = logits_of(net, images)
    metrics = score(outputs, labels)
    probabilities = outputs.softmax(dim=-1)
    predicted = outputs.argmax(dim=-1)
    # metrics.json is DVC's (a column each in `dvc exp show`): the summary only; the table of
    # 10 digits x 3 scores is a plot (bars of F1 per digit).
    summary = {key: value for key, value in metrics.items() if key in HEADLINE}
    atomic_write_json(reports / "metrics.json", summary)
    atomic_write_json(reports / "per_class.json", metrics["per_class"])
    # DVC's confusion template reads one {actual, predicted} row per test image.
    rows = [{"actual": int(a), "predicted": int(p)} for a, p in zip(labels, predicted, strict=True)]
    atomic_write_json(reports / "confusion.json", rows, indent=None)

    pictures = reports / "figures"
    written = [pictures / "confusion_matrix.png", pictures / "misclassified.png"]
    wrong = (predicted != labels).nonzero().flatten()
    figures.confusion_matrix_figure(torch.tensor(metrics["confusion"]), written[0])
    figures.misclassified_figure(
        images[wrong] / 255.0, labels[wrong], probabilities[wrong], written[1]
    )
    dense = first_dense_layer(net)
    if dense is None:
        log.info(
            "%s has no dense layer over the 784 pixels: no first-layer weights or hidden "
            "activations figures",
            type(net).__name__,
        )
        for stale in ("first_layer_weights.png", "digit_walkthrough.png"):  # another network's
            (pictures / stale).unlink(missing_ok=True)
    else:
        layer, activation = dense
        written.append(pictures / "first_layer_weights.png")
        figures.first_layer_weights_figure(layer.weight, written[-1])
        # The first test image of each of the first WALKTHROUGH_DIGITS digits.
        sample = torch.stack([(labels == d).nonzero()[0, 0] for d in range(WALKTHROUGH_DIGITS)])
        pixels = images[sample] / 255.0
        hidden, logits = hidden_and_logits(net, activation or layer, pixels)
        written.append(pictures / "digit_walkthrough.png")
        figures.digit_walkthrough_figure(
            pixels, hidden, logits, logits.softmax(dim=-1), labels[sample], written[-1]
        )
    curve = read_curve(reports / "training_curve.csv")
    if curve:
        written.append(pictures / "training_curves.png")
        figures.training_curves_figure(curve, written[-1])
    log.info("report of %d test images in %s", len(labels), reports)
    return metrics, written


def log_report(logger: Any, metrics: dict[str, Any], reports: Path, written: list[Path]) -> None:
    """A report in an MLflow run: its headline as test/* metrics (accuracy and loss are the
    training's test/acc and test/loss already), the digits as one table artifact
    (reports/digits.json: not 30 metrics, 30 charts), metrics.json and the figures."""
    logger.log_metrics({f"test/{key}": metrics[key] for key in HEADLINE[2:]})
    logger.flush()
    logger.log_table(digit_rows(metrics), "reports/digits.json")
    logger.log_artifact(reports / "metrics.json", "reports")
    for path in written:
        logger.log_artifact(path, "reports/figures")
