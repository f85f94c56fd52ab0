"""A trained model, found and loaded for answering questions; the guess shown in a terminal.

Imports stay light: torch and this package only. Lightning is never needed, MLflow only for a
`model_uri`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mnist_pipeline import relative_to_root, repository_root
from mnist_pipeline.errors import UserError
from mnist_pipeline.networks import Probabilities
from mnist_pipeline.networks import describe as describe_network
from mnist_pipeline.prediction.images import ImageError, load_digit

Predictor = Callable[[torch.Tensor], torch.Tensor]
BAR_WIDTH = 40  # characters for probability 1
# A block character per eighth of a character cell: fine steps without a wide terminal.
EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass
class Model:
    """A trained model ready to answer, and where it came from."""

    # Pixels (N, 28, 28) float32 in [0, 1] -> probabilities (N, 10).
    predict: Predictor
    # The torch network, when the model is one (for its hidden layer); None for other models.
    network: nn.Module | None
    source: str  # the checkpoint's path or the model URI
    run_id: str | None = None
    test_accuracy: float | None = None

    def describe(self) -> str:
        """E.g. "MLP, 101,770 parameters; run 3f2a...; test accuracy 97.9%; <checkpoint>"."""
        parts = [describe_network(self.network) if self.network is not None else "an MLflow model"]
        if self.run_id:
            parts.append(f"run {self.run_id}")
        if self.test_accuracy is not None:
            parts.append(f"test accuracy {self.test_accuracy:.1%}")
        return "; ".join([*parts, self.source])


def load_model(ckpt_path: str | Path | None = None, model_uri: str | None = None) -> Model:
    """The model of a Lightning checkpoint or of an MLflow model URI (`runs:/<id>/model`,
    `models:/<name>@<alias>`, a local path...); with neither, the best checkpoint of the newest
    finished training (`newest_finished_checkpoint`)."""
    if ckpt_path is not None and model_uri is not None:
        raise UserError(
            "give one model: ckpt_path=<Lightning .ckpt> or model_uri=<MLflow model URI>, not both"
        )
    if model_uri is not None:
        return _from_mlflow(model_uri)
    return _from_checkpoint(Path(ckpt_path) if ckpt_path else newest_finished_checkpoint())


def newest_finished_checkpoint(root: Path | None = None) -> Path:
    """`checkpoints/best.ckpt` of the newest training that finished: tested, so that its
    `reports/train_metrics.json` exists beside it. Runs under `outputs/` and the DVC pipeline's
    (at the repository root) count."""
    root = root or repository_root()
    candidates = [root / "checkpoints" / "best.ckpt", *(root / "outputs").glob("**/best.ckpt")]
    finished = [
        (metrics.stat().st_mtime, path)
        for path in candidates
        if path.is_file()
        and (metrics := path.parent.parent / "reports" / "train_metrics.json").is_file()
    ]
    if not finished:
        raise UserError(
            f"no finished training under {root} (outputs/**/checkpoints/best.ckpt with its "
            "reports/train_metrics.json): train one (python src/train.py), or give "
            "ckpt_path=... or model_uri=..."
        )
    return max(finished)[1]


def _from_checkpoint(path: Path) -> Model:
    from mnist_pipeline.checkpoint_files import load_network

    net, run_id = load_network(path)
    probabilities = Probabilities(net).eval()

    @torch.inference_mode()
    def predict(pixels: torch.Tensor) -> torch.Tensor:
        return probabilities(pixels.float())

    shown = relative_to_root(path, repository_root())
    return Model(predict, net, str(shown), run_id, _test_accuracy(path))


def _test_accuracy(checkpoint: Path) -> float | None:
    """The test accuracy its training wrote beside a best checkpoint (the one it tested)."""
    metrics = checkpoint.parent.parent / "reports" / "train_metrics.json"
    if checkpoint.name != "best.ckpt" or not metrics.is_file():
        return None
    try:
        return float(json.loads(metrics.read_text())["test_acc"])
    except (ValueError, KeyError, TypeError):  # not ours, or damaged: the page just omits it
        return None


def _from_mlflow(model_uri: str) -> Model:
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
        raise UserError(f"cannot load MLflow model {model_uri}: {reason}") from error
    run_id = model.metadata.run_id
    test_accuracy = None
    if run_id:
        try:
            test_accuracy = mlflow.MlflowClient().get_run(run_id).data.metrics.get("test/acc")
        except mlflow.exceptions.MlflowException:  # a model copied from another store
            pass

    def predict(pixels: torch.Tensor) -> torch.Tensor:
        output = model.predict(pixels.float().numpy())
        return torch.as_tensor(np.asarray(output), dtype=torch.float32)

    # No network: MLflow saves the pytorch flavour as an exported graph of plain `Module`s, in
    # which the first dense layer cannot be told apart. The page then shows no hidden layer.
    return Model(predict, None, model_uri, run_id, test_accuracy)


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


# What a folder given as `image=` is searched for.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def image_paths(images: str | Path | list[str | Path]) -> list[Path]:
    """The pictures named by `image=`: a file, a list of files, or a folder's images (sorted)."""
    paths: list[Path] = []
    for item in [images] if isinstance(images, (str, Path)) else images:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"image={path}: the folder has no {'/'.join(IMAGE_SUFFIXES)} files")
            paths += found
        else:
            paths.append(path)
    return paths


def answer(model: Model, paths: list[Path], as_json: bool = False, chart: bool = False) -> int:
    """Prints the model's guess for each picture: one line each (a JSON object with `as_json`),
    or the bar chart with `chart`; a picture that cannot be read gets an `error:` line on
    stderr and the others are still answered. Returns how many could not be read."""
    digits, readable = [], []
    for path in paths:
        try:
            digits.append(load_digit(path))
            readable.append(path)
        except (ImageError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
    if digits:
        probabilities = model.predict(torch.stack(digits)).numpy()
        for path, p in zip(readable, probabilities, strict=True):
            if as_json:
                rounded = p.astype(float).round(5).tolist()
                row = {"image": str(path), "guess": int(p.argmax()), "probabilities": rounded}
                print(json.dumps(row))
            elif chart:
                print(render_probabilities(p))
            else:
                print(f"{path}: {int(p.argmax())} ({p.max():.1%})")
    return len(paths) - len(readable)
