"""The evaluate stage: a checkpoint scored on the 10k test images, as numbers and pictures."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from mnist_pipeline import figures
from mnist_pipeline.atomic import atomic_write_text
from mnist_pipeline.checkpoints import load_checkpoint
from mnist_pipeline.model import NUM_CLASSES, Classifier

log = logging.getLogger(__name__)
WALKTHROUGH_DIGITS = 5


def predict(model: Classifier, images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Softmax probabilities (N, 10) for uint8 images (N, 28, 28)."""
    return torch.cat([model.predict_proba(chunk / 255.0) for chunk in images.split(batch_size)])


def score(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Accuracy, loss and per-class precision/recall/F1 (torchmetrics) of the predictions."""
    predicted = probabilities.argmax(dim=-1)
    log_likelihood = probabilities.gather(1, labels[:, None]).clamp_min(1e-12).log()
    per_class = {
        name: fn(probabilities, labels, NUM_CLASSES, average=None)
        for name, fn in (
            ("precision", multiclass_precision),
            ("recall", multiclass_recall),
            ("f1", multiclass_f1_score),
        )
    }
    return {
        "accuracy": round(float((predicted == labels).float().mean()), 6),
        "loss": round(float(-log_likelihood.mean()), 6),
        "samples": len(labels),
        "per_class": {
            str(digit): {name: round(float(values[digit]), 6) for name, values in per_class.items()}
            for digit in range(NUM_CLASSES)
        },
    }


def read_curve(path: Path) -> list[dict[str, Any]]:
    """Rows of a training_curve.csv, or [] when there is none."""
    if not path.is_file():
        return []
    with path.open() as file:
        return [
            {key: float(value) if value else "" for key, value in row.items()}
            for row in csv.DictReader(file)
        ]


def write_report(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, reports: Path
) -> tuple[dict[str, Any], list[Path]]:
    """Score the model and write metrics.json, confusion.json and the figures under `reports`.

    Returns the metrics and the written figure paths.
    """
    probabilities = predict(model, images)
    metrics = score(probabilities, labels)
    predicted = probabilities.argmax(dim=-1)
    atomic_write_text(reports / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    # DVC's confusion template reads one {actual, predicted} row per test image.
    rows = [{"actual": int(a), "predicted": int(p)} for a, p in zip(labels, predicted, strict=True)]
    atomic_write_text(reports / "confusion.json", json.dumps(rows) + "\n")

    pictures = reports / "figures"
    wrong = (predicted != labels).nonzero().flatten()
    matrix = multiclass_confusion_matrix(predicted, labels, NUM_CLASSES)
    figures.confusion_matrix_figure(matrix, pictures / "confusion_matrix.png")
    figures.misclassified_figure(
        images[wrong] / 255.0, labels[wrong], probabilities[wrong], pictures / "misclassified.png"
    )
    first_layer = model.net.layers[1].weight
    figures.first_layer_weights_figure(first_layer, pictures / "first_layer_weights.png")
    sample = _one_per_class(labels, WALKTHROUGH_DIGITS)
    hidden, logits = _activations(model, images[sample] / 255.0)
    figures.digit_walkthrough_figure(
        images[sample] / 255.0,
        hidden,
        logits,
        logits.softmax(dim=-1),
        labels[sample],
        pictures / "digit_walkthrough.png",
    )
    written = [
        pictures / name
        for name in (
            "confusion_matrix.png",
            "misclassified.png",
            "first_layer_weights.png",
            "digit_walkthrough.png",
        )
    ]
    curve = read_curve(reports / "training_curve.csv")
    if curve:
        figures.training_curves_figure(curve, pictures / "training_curves.png")
        written.append(pictures / "training_curves.png")
    log.info(
        "test accuracy %.4f, loss %.4f on %d images; reports in %s",
        metrics["accuracy"],
        metrics["loss"],
        metrics["samples"],
        reports,
    )
    return metrics, written


def _one_per_class(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the first test image of each of the first `count` digits."""
    return torch.stack([(labels == digit).nonzero()[0, 0] for digit in range(count)])


@torch.no_grad()
def _activations(model: Classifier, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First hidden layer's activations and the logits for `pixels`."""
    layers = model.net.layers
    normalised = (pixels - model.net.mean) / model.net.std
    hidden = layers[2](layers[1](layers[0](normalised)))
    return hidden, model.net(pixels)


def flat_metrics(metrics: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """metrics.json as flat MLflow metric names: eval/accuracy, eval/f1_3, ..."""
    flat = {f"{prefix}accuracy": metrics["accuracy"], f"{prefix}loss": metrics["loss"]}
    for digit, values in metrics["per_class"].items():
        flat.update({f"{prefix}{name}_{digit}": value for name, value in values.items()})
    return flat


def evaluate(cfg: DictConfig, ckpt_path: str | Path) -> dict[str, Any]:
    """Score `ckpt_path`; reports go beside it (`<run>/reports` for `<run>/checkpoints/x.ckpt`).

    The metrics and figures are logged into the MLflow run that trained the checkpoint.
    """
    from mnist_pipeline.training import build_datamodule

    model, run_id = load_checkpoint(ckpt_path)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    images, labels = datamodule.test
    reports = Path(ckpt_path).resolve().parent.parent / "reports"
    metrics, written = write_report(model, images, labels, reports)
    if run_id and cfg.logger.backend.value != "none":
        from mnist_pipeline.tracking import Run

        run = Run.attach(run_id, cfg.logger.tracking_uri)
        log_report(run, metrics, reports, written)
        log.info("logged the evaluation into MLflow run %s", run_id)
    return metrics


def log_report(run: Any, metrics: dict[str, Any], reports: Path, written: list[Path]) -> None:
    """Metrics, metrics.json and figures of a report into an MLflow `tracking.Run`."""
    run.log_metrics(flat_metrics(metrics))
    run.log_artifact(reports / "metrics.json", "reports")
    for path in written:
        run.log_artifact(path, "reports/figures")
