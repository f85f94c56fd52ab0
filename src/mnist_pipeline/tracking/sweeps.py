"""Hydra callbacks that group a multirun's trainings under one parent MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from mnist_pipeline.tracking.logger import (
    PARENT_RUN_FILE,
    check_server,
    experiment_id,
    resolve_tracking_uri,
    store_lock,
)

log = logging.getLogger(__name__)
LOGGER_TARGET = "mnist_pipeline.tracking.logger.MLflowLogger"


def mlflow_settings(config: DictConfig) -> DictConfig | None:
    """The config of the MLflow logger among `config.logger`, if one is on."""
    for part in (config.get("logger") or {}).values():
        if part and part.get("_target_") == LOGGER_TARGET:
            return part
    return None


class SweepParentRun(HydraCallback):
    """Groups a Hydra multirun's jobs under one parent MLflow run (children tag its id)."""

    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings = mlflow_settings(config)
        if settings is None:
            return
        from mlflow import MlflowClient

        uri = resolve_tracking_uri(settings.get("tracking_uri"))
        check_server(uri)
        with store_lock(uri):
            self.client = MlflowClient(uri)
            experiment = experiment_id(self.client, settings.get("experiment_name", "mnist"), uri)
        sweep_dir = Path(config.hydra.sweep.dir)
        parent = self.client.create_run(
            experiment,
            run_name=f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}",
            tags={
                "sweep.overrides": " ".join(config.hydra.overrides.task),
                "hydra.sweep_dir": str(sweep_dir.resolve()),
            },
        )
        self.run_id = parent.info.run_id
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self.run_id)
        log.info("MLflow parent run %s for sweep %s", self.run_id, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FINISHED")
