"""The train stage: config in, checkpoints, curves and metrics out."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.atomic import atomic_write_text
from mnist_pipeline.config import resolve_path, validate
from mnist_pipeline.data import MNISTDataModule
from mnist_pipeline.evaluation import log_report, write_report
from mnist_pipeline.model import Classifier
from mnist_pipeline.tracking import RunIdInCheckpoint, tracked_run

log = logging.getLogger(__name__)
CURVE_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def build_datamodule(cfg: DictConfig, root: Path = PROJECT_ROOT) -> MNISTDataModule:
    data = cfg.data
    return MNISTDataModule(
        dir=resolve_path(root, data.dir),
        files=data.files,
        mirrors=data.mirrors,
        local_mirror=resolve_path(root, data.local_mirror) if data.local_mirror else None,
        val_size=data.val_size,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        split_seed=data.split_seed,
        shuffle_seed=cfg.seed,
        timeout=data.timeout,
    )


def build_model(cfg: DictConfig) -> Classifier:
    model, opt = cfg.model, cfg.optimizer
    hidden = (
        OmegaConf.to_container(model.hidden) if OmegaConf.is_list(model.hidden) else model.hidden
    )
    return Classifier(
        hidden=hidden,
        activation=model.activation.value,
        dropout=model.dropout,
        optimizer=opt.name.value,
        lr=opt.lr,
        weight_decay=opt.weight_decay,
        momentum=opt.momentum,
        scheduler=opt.scheduler.value,
        log_every_n_steps=cfg.trainer.get("log_every_n_steps", 50),
    )


def output_dir(cfg: DictConfig) -> Path:
    """`paths.output_dir`, or the Hydra run directory, or (outside Hydra) the working directory."""
    if cfg.paths.output_dir:
        return resolve_path(PROJECT_ROOT, cfg.paths.output_dir)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


class TrainingCurve(Callback):
    """Writes per-epoch train/val loss and accuracy to a CSV (DVC plots, MLflow artifact)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch + 1}
        for column in CURVE_COLUMNS[1:]:
            value = metrics.get(column.replace("_", "/", 1))
            row[column] = round(float(value), 6) if value is not None else ""
        self.rows.append(row)
        if trainer.is_global_zero:
            atomic_write_text(self.path, _csv(self.rows))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


def _csv(rows: list[dict[str, Any]]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def build_callbacks(cfg: DictConfig, out: Path) -> tuple[list[Callback], ModelCheckpoint]:
    ckpt = cfg.callbacks.checkpoint
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=ckpt.monitor,
        mode=ckpt.mode,
        save_last=ckpt.save_last,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [checkpoint, TrainingCurve(out / "reports" / "training_curve.csv")]
    stopping = cfg.callbacks.early_stopping
    if stopping.enabled:
        callbacks.append(
            EarlyStopping(monitor=stopping.monitor, mode=stopping.mode, patience=stopping.patience)
        )
    if cfg.callbacks.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=20))
    return callbacks, checkpoint


def train(cfg: DictConfig) -> float:
    """Fit on train/val, test the best checkpoint, report; returns the best monitored score."""
    cfg = validate(cfg)
    out = output_dir(cfg)
    reports = out / "reports"
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg)
    callbacks, checkpoint = build_callbacks(cfg, out)
    log.info(
        "model: %s, %s parameters; output: %s",
        _describe_model(cfg),
        f"{sum(p.numel() for p in model.parameters()):,}",
        out,
    )
    with tracked_run(cfg, out) as run:
        if run is not None:
            callbacks.append(RunIdInCheckpoint(run.run_id))
        trainer = pl.Trainer(
            **cfg.trainer,
            callbacks=callbacks,
            logger=run.lightning_logger() if run else False,
            default_root_dir=out,
            enable_progress_bar=cfg.callbacks.progress_bar,
            enable_model_summary=cfg.callbacks.model_summary,
        )
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        best = checkpoint.best_model_path or None
        # Loads the best weights into `model`: the report and the logged model are the best.
        (test,) = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)
        log.info("test accuracy %.4f, loss %.4f (%s)", test["test/acc"], test["test/loss"], best)
        summary = {
            "best_val_acc": float(
                checkpoint.best_model_score or trainer.callback_metrics["val/acc"]
            ),
            "test_acc": test["test/acc"],
            "test_loss": test["test/loss"],
            "epochs": trainer.current_epoch,
        }
        if not trainer.is_global_zero:
            return summary["best_val_acc"]
        atomic_write_text(reports / "train_metrics.json", json.dumps(summary, indent=2) + "\n")
        images, labels = (tensor.cpu() for tensor in datamodule.test)
        model = model.cpu().eval()
        if cfg.report:
            metrics, written = write_report(model, images, labels, reports)
        if run is not None:
            if best:
                run.log_artifact(Path(best), "checkpoints")
            run.log_artifact(reports / "training_curve.csv", "reports")
            if cfg.report:
                log_report(run, metrics, reports, written)
            if cfg.logger.log_model:
                run.log_model(model.net, images[:5].float() / 255.0)
    return summary["best_val_acc"]


def _describe_model(cfg: DictConfig) -> str:
    hidden = cfg.model.hidden
    widths = list(hidden) if OmegaConf.is_list(hidden) else [hidden]
    layers = "-".join(str(w) for w in [784, *widths, 10])
    return f"MLP {layers} {cfg.model.activation.value} dropout {cfg.model.dropout}"
