"""The evaluate stage: a checkpoint scored on the 10k test images, logged into its MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from mnist_pipeline.checkpoint_files import load_network
from mnist_pipeline.config import build_datamodule
from mnist_pipeline.reporting.evaluation import log_report, write_report
from mnist_pipeline.tracking.sweeps import mlflow_settings

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig, ckpt_path: str | Path) -> dict[str, Any]:
    """Score `ckpt_path`; reports go beside it (`<run>/reports` for `<run>/checkpoints/x.ckpt`).

    The metrics and figures are logged into the MLflow run that trained the checkpoint, when
    the MLflow logger is on; the run keeps the status it had.
    """
    net, run_id = load_network(ckpt_path)
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    images, labels = datamodule.test
    reports = Path(ckpt_path).resolve().parent.parent / "reports"
    metrics, written = write_report(net, images, labels, reports)
    log.info("test accuracy %.4f, loss %.4f (%s)", metrics["accuracy"], metrics["loss"], ckpt_path)
    settings = mlflow_settings(cfg)
    if run_id and settings is not None:
        logger = instantiate(settings, run_id=run_id, save_dir=str(reports.parent))
        log_report(logger, metrics, reports, written)
        logger.end(logger.resumed_status)
        logger.check_sent()
        log.info("logged the evaluation into MLflow run %s", run_id)
    return metrics
