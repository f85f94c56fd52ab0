"""A trained network as an MLflow model: pixels (N, 28, 28) float32 in [0, 1] -> probabilities."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from mnist_pipeline import installed


def log_model(uri: str, run_id: str, model: nn.Module, example: torch.Tensor) -> None:
    """Log `model` (on CPU, pixels -> probabilities) as the model "model" of run `run_id`.

    The network's own source file travels with it when it lives outside this package (a
    user's network in `src/`), so the model loads wherever MLflow loads it.
    """
    import mlflow
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(example).numpy()
    code = {str(Path(__file__).resolve().parents[1]), *_user_code(model)}
    requirements = [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        "numpy",
    ]
    mlflow.set_tracking_uri(uri)
    # In the run, not `log_model(run_id=...)`: that puts the model in the Default experiment.
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example.numpy(), output),
            input_example=example.numpy(),
            pip_requirements=requirements,
            code_paths=sorted(code),
        )


def _user_code(net: nn.Module) -> set[str]:
    """Source of the network's modules that are neither installed packages nor this one.

    A user's network in `src/my_net.py` (or a folder of them) travels with the model this way.
    """
    paths = set()
    for name in {type(module).__module__ for module in net.modules()}:
        top = sys.modules.get(name.split(".")[0])
        source = Path(getattr(top, "__file__", None) or sys.prefix).resolve()
        if name.startswith(("mnist_pipeline", "__main__")) or installed(source):
            continue
        paths.add(str(source.parent if source.name == "__init__.py" else source))
    return paths
