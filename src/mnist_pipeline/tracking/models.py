"""A trained network as an MLflow model: pixels (N, 28, 28) float32 in [0, 1] -> probabilities."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mnist_pipeline import installed
from mnist_pipeline.errors import first_line
from mnist_pipeline.tracking.outbox import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
CHAMPION = "champion"  # the alias of the registered version with the best test accuracy
SCORE = "test/acc"  # what makes a champion
DESCRIPTION_LIMIT = 5000  # characters of a model version's description in MLflow's stores
# A version's tag naming the registration that made it: a registration sent again (its answer
# was lost with the connection) finds its version instead of making a second one.
REGISTRATION_TAG = "mnist.registration"


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


def log_datasets(client: MlflowClient, run_id: str, datasets: list[dict[str, Any]]) -> None:
    """The data splits a run used as its dataset inputs: each `{"name", "digest", "source",
    "context", "rows"}`, the source where the data module reads it, the context
    training/validation/test."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [
        DatasetInput(
            Dataset(
                name=data["name"],
                digest=data["digest"],
                source_type="local",
                source=json.dumps(data["source"]),
                profile=json.dumps({"num_rows": data["rows"]}),
            ),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, data["context"])],
        )
        for data in datasets
    ]
    client.log_inputs(run_id, datasets=inputs)


def register(
    client: MlflowClient, run_id: str, name: str, description: str, key: str | None = None
) -> None:
    """Run `run_id`'s model as a new version of registered model `name`, described by
    `description` (its model card). The alias `champion` moves to it when its test accuracy
    beats the champion's (a tie keeps the champion); one log line says which. `key` names
    this registration: given again, the version it made is found, not made twice."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from mnist_pipeline.tracking.outbox import out_of_reach

    try:
        run = client.get_run(run_id)
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        if not models:
            raise ValueError("the run has no logged model")
        # The newest (a resumed run logs its model again), by its own id: a run's `runs:/`
        # path holds no model in MLflow 3 and registering it warns.
        model = max(models, key=lambda logged: logged.creation_timestamp)
        made = []
        if key is not None:
            versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            made = [v.version for v in versions if v.tags.get(REGISTRATION_TAG) == key]
        if made:
            version = made[0]
        else:
            mlflow.set_tracking_uri(client.tracking_uri)
            tags = {REGISTRATION_TAG: key} if key is not None else None
            version = mlflow.register_model(f"models:/{model.model_id}", name, tags=tags).version
        client.update_model_version(name, version, description[:DESCRIPTION_LIMIT])
        score = run.data.metrics.get(SCORE)
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:  # no champion yet
            champion, best = None, None
        else:
            best = _score(client, champion.run_id)
            if str(champion.version) == str(version):  # this registration's, sent again
                champion, best = None, None
        if champion is None or (score is not None and (best is None or score > best)):
            client.set_registered_model_alias(name, CHAMPION, version)
            before = f" after version {champion.version} ({_shown(best)})" if champion else ""
            log.info(
                "%s version %s (%s) is the %s%s", name, version, _shown(score), CHAMPION, before
            )
        else:
            log.info(
                "%s version %s (%s) registered; the %s stays version %s (%s)",
                *(name, version, _shown(score), CHAMPION, champion.version, _shown(best)),
            )
    except Exception as error:
        if out_of_reach(error):  # kept, and registered once the store is back
            raise
        reason = first_line(error)
        raise TrackingError(
            f"logger.mlflow.registered_model_name={name}: could not register the model of run "
            f"{run_id} in {client.tracking_uri} ({reason})"
        ) from None


def _shown(score: float | None) -> str:
    return f"{SCORE} {score:.4f}" if score is not None else f"no {SCORE}"


def _score(client: MlflowClient, run_id: str | None) -> float | None:
    """The test accuracy of run `run_id`, if it has one the store can tell."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).data.metrics.get(SCORE) if run_id else None
    except MlflowException:  # a run deleted since
        return None
