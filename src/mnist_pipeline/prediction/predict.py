"""Predicting the digit in a picture with a trained model, and showing the guess in a terminal."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]
BAR_WIDTH = 40  # characters for probability 1
# A block character per eighth of a character cell: fine steps without a wide terminal.
EIGHTHS = " ▏▎▍▌▋▊▉"


def load_predictor(ckpt_path: str | Path | None = None, model_uri: str | None = None) -> Predictor:
    """A function from pixels (N, 28, 28) float32 in [0, 1] to probabilities (N, 10).

    From exactly one of a Lightning checkpoint or an MLflow model URI (`runs:/<id>/model`,
    `models:/<name>/<version>`, a local path...).
    """
    if (ckpt_path is None) == (model_uri is None):
        raise ValueError(
            "give exactly one model: ckpt_path=<Lightning .ckpt> or model_uri=<MLflow model URI>"
        )
    if ckpt_path is not None:
        return _from_checkpoint(Path(ckpt_path))
    return _from_mlflow(model_uri)


def _from_checkpoint(path: Path) -> Predictor:
    from mnist_pipeline.networks import Probabilities
    from mnist_pipeline.training.checkpoints import load_network

    net, _ = load_network(path)
    probabilities = Probabilities(net).eval()

    @torch.inference_mode()
    def predict(pixels: torch.Tensor) -> torch.Tensor:
        return probabilities(pixels.float())

    return predict


def _from_mlflow(model_uri: str) -> Predictor:
    import mlflow  # slow to import: only for this branch

    from mnist_pipeline.tracking.logger import resolve_tracking_uri

    # `runs:/` and `models:/` URIs are resolved against the project's tracking store.
    mlflow.set_tracking_uri(resolve_tracking_uri())
    # A download progress bar would bury the answer; a user's explicit setting still wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as error:  # a bad URI, an unknown run or model
        reason = str(error.message).splitlines()[0]
        raise ValueError(f"cannot load MLflow model {model_uri}: {reason}") from error

    def predict(pixels: torch.Tensor) -> torch.Tensor:
        output = model.predict(pixels.float().numpy())
        return torch.as_tensor(np.asarray(output), dtype=torch.float32)

    return predict


def render_probabilities(probabilities: torch.Tensor | np.ndarray) -> str:
    """A headline with the guess, then one bar per digit, e.g. `  7 ███████▍ 0.912  <- guess`."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    guess = int(p.argmax())
    lines = [f"guess: {guess} ({p[guess]:.1%})"]
    for digit, value in enumerate(p):
        marker = "  <- guess" if digit == guess else ""
        lines.append(f"  {digit} {_bar(value):<{BAR_WIDTH}} {value:.3f}{marker}")
    return "\n".join(lines)


def _bar(value: float) -> str:
    eighths = round(min(max(value, 0.0), 1.0) * BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[rest] if rest else "")
