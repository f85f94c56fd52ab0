"""`model_card.md`: what a trained model is, how well it does, where it fails, how to use it.

Written beside each training's outputs, logged into its MLflow run (its first paragraph is the
run's description) and, when registered, the registered version's description.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from mnist_pipeline.networks import describe
from mnist_pipeline.reporting.evaluation import digit_rows

FILE = "model_card.md"
# What the model expects, as every network of this project does (networks/__init__.py) and as
# `predict.py` and the drawing page prepare a picture.
INPUT_CONTRACT = (
    "28x28 pixels in [0, 1], white digit on black, centred (as MNIST's: the digit's centre of "
    "mass at the centre), float32 of shape (N, 28, 28); out: 10 probabilities per picture"
)
WORST = 3  # digits shown with their confusions


def model_card(
    title: str,
    net: nn.Module,
    metrics: Mapping[str, Any],
    summary: Mapping[str, Any],
    data: Mapping[str, Any],
    model_uri: str | None,
    checkpoint: str | None,
    registered_name: str | None = None,
) -> str:
    """The card, in Markdown.

    `metrics`: a `score` of the test set; `summary`: the training's train_metrics.json;
    `data`: {"version": `tracking.logger.data_version` or None, "splits": {split: images}};
    `model_uri`: the MLflow model, if logged; `checkpoint`: the best checkpoint's path, if saved;
    `registered_name`: the registered model it becomes a version of.
    """
    rows = sorted(digit_rows(metrics), key=lambda row: row["f1"])
    worst = rows[0]
    splits = ", ".join(f"{name} {count:,}" for name, count in data["splits"].items())
    version = data.get("version") or "not pinned"
    taken = (
        f"most often taken for a {worst['mistaken_for']}"
        if worst["mistaken_for"] is not None
        else "never mistaken"
    )
    lines = [
        f"# {title}: an MNIST digit classifier",
        "",
        f"{describe(net)}: test accuracy {metrics['accuracy']:.2%}, macro F1 "
        f"{metrics['macro_f1']:.4f}; weakest digit {worst['digit']} (F1 {worst['f1']:.4f}, "
        f"{taken}). {summary['epochs']} epochs on data version {version}.",
        "",
        "## Network",
        "",
        f"{describe(net)}.",
        "",
        "```",
        str(net),
        "```",
        "",
        "## Data",
        "",
        f"Data version {version} (a digest of the files' checksums that the data module verified); "
        f"images per split: {splits}.",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        f"| test accuracy | {metrics['accuracy']:.4f} |",
        f"| test loss | {metrics['loss']:.4f} |",
        f"| test macro F1 | {metrics['macro_f1']:.4f} |",
        f"| best validation accuracy | {summary['best_val_acc']:.4f} |",
        f"| epochs | {summary['epochs']} |",
        "",
        "## Weakest digits",
        "",
        "| digit | F1 | precision | recall | most often taken for | times |",
        "|---|---|---|---|---|---|",
        *(
            f"| {row['digit']} | {row['f1']:.4f} | {row['precision']:.4f} | {row['recall']:.4f} "
            f"| {'-' if row['mistaken_for'] is None else row['mistaken_for']} "
            f"| {row['times']} of {row['images']} |"
            for row in rows[:WORST]
        ),
        "",
        "## Input",
        "",
        INPUT_CONTRACT + ".",
        "",
        "## Use it",
        "",
        "```",
        *_usage(model_uri, checkpoint, registered_name),
        "```",
        "",
    ]
    return "\n".join(lines)


def _usage(model_uri: str | None, checkpoint: str | None, registered: str | None) -> list[str]:
    usage = []
    if registered:
        usage.append(f"# the best registered version: model_uri=models:/{registered}@champion")
    if model_uri:
        usage += [
            f"python src/predict.py model_uri={model_uri} image=digit.png",
            f"mlflow models serve -m {model_uri} --env-manager local --port 5001",
            f'mlflow.pyfunc.load_model("{model_uri}").predict(pixels)  # (N, 28, 28) float32',
        ]
    if checkpoint:
        usage.append(f"python src/predict.py ckpt_path={checkpoint} image=digit.png")
    return usage or ["(no model saved: train with checkpoints or the MLflow logger on)"]


def card_summary(card: str) -> str:
    """The card's title and first paragraph: the MLflow run's description."""
    return card.split("\n## ", 1)[0].strip()
