"""The train stage: config in, checkpoints, curves and metrics out."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.atomic import atomic_write_text
from mnist_pipeline.checkpoints import (
    RUN_ID_KEY,
    AtomicCheckpointIO,
    CheckpointOnInterrupt,
    RunIdInCheckpoint,
    find_last,
    read_checkpoint,
)
from mnist_pipeline.config import ConfigError, resolve_path, validate
from mnist_pipeline.data import MNISTDataModule
from mnist_pipeline.evaluation import log_report, read_curve, write_report
from mnist_pipeline.model import Classifier
from mnist_pipeline.tracking import BackgroundRun, TrackingError, tracked_run

log = logging.getLogger(__name__)
CURVE_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def build_datamodule(cfg: DictConfig) -> MNISTDataModule:
    """The data module of `cfg.data`, relative paths taken from the repository root."""
    data = cfg.data
    return MNISTDataModule(
        dir=resolve_path(PROJECT_ROOT, data.dir),
        files=data.files,
        mirrors=data.mirrors,
        local_mirror=resolve_path(PROJECT_ROOT, data.local_mirror) if data.local_mirror else None,
        val_size=data.val_size,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size,
        chunk_size=data.chunk_size,
        split_seed=data.split_seed,
        shuffle_seed=cfg.seed,
        timeout=data.timeout,
    )


def build_model(cfg: DictConfig) -> Classifier:
    """The LightningModule of `cfg.model` and `cfg.optimizer`."""
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


class TrainingCurve(Logger):
    """Per-epoch train/val loss and accuracy as a CSV (DVC plots, MLflow artifact, figure).

    A logger rather than a callback: loggers get the epoch's metrics after every hook has
    logged them. A resumed training continues the file it finds.
    """

    def __init__(self, path: Path, resumed: bool = False) -> None:
        super().__init__()
        self.path = path
        rows = read_curve(path) if resumed else []
        self.rows = {int(row["epoch"]): {**row, "epoch": int(row["epoch"])} for row in rows}

    @property
    def name(self) -> str:
        return "training_curve"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        values = {
            column: round(float(metrics[key]), 6)
            for column in CURVE_COLUMNS[1:]
            if (key := column.replace("_", "/", 1)) in metrics
        }
        if not values or "epoch" not in metrics:
            return
        epoch = int(metrics["epoch"]) + 1
        self.rows.setdefault(epoch, {"epoch": epoch}).update(values)
        rows = [self.rows[e] for e in sorted(self.rows) if e <= epoch]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())


class RunLogger(Logger):
    """Lightning's metrics into an MLflow `Run`, written once per epoch.

    A write to the sqlite store takes about 10 ms, as long as 20 training steps, so step metrics
    wait in memory and go with the epoch's metrics, or at the end, in one transaction. Before
    the curve CSV, so that once the curve shows an epoch, MLflow has it too.
    """

    def __init__(self, run: BackgroundRun) -> None:
        super().__init__()
        self.run = run
        self.pending: list[tuple[str, float, int, int]] = []

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> int:
        return 0  # not the run id: asking for it would wait for the run to exist

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the whole config is logged when the run is created

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.pending += [(key, float(value), now, step or 0) for key, value in metrics.items()]
        if "epoch" in metrics:
            self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        try:
            self.flush()
        except TrackingError:
            if status == "success":
                raise
            # Already failing, most likely for this very reason: report the first error only.

    def flush(self) -> None:
        if self.pending:
            self.run.get().log_metric_history(self.pending)
            self.pending = []


def build_callbacks(cfg: DictConfig, out: Path) -> tuple[list[Callback], ModelCheckpoint]:
    """The callbacks of a training, and the one that keeps `checkpoints/best.ckpt`."""
    ckpt, directory = cfg.callbacks.checkpoint, out / "checkpoints"
    best = ModelCheckpoint(
        dirpath=directory,
        filename="best",
        monitor=ckpt.monitor,
        mode=ckpt.mode,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [best, CheckpointOnInterrupt(directory / "last.ckpt")]
    if ckpt.save_last:
        # Lightning's own save_last writes only in epochs that improved the best checkpoint;
        # resuming needs every epoch.
        callbacks.append(
            ModelCheckpoint(dirpath=directory, filename="last", enable_version_counter=False)
        )
    stopping = cfg.callbacks.early_stopping
    if stopping.enabled:
        callbacks.append(
            EarlyStopping(monitor=stopping.monitor, mode=stopping.mode, patience=stopping.patience)
        )
    if cfg.callbacks.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))  # once per chunk
    return callbacks, best


def train(cfg: DictConfig) -> float:
    """Fit on train/val, test the best checkpoint, report; returns the best monitored score."""
    cfg = validate(cfg)
    resume = resume_from(cfg.ckpt_path)
    # A resumed training goes on where it was: same output directory, same MLflow run.
    out = resume.parent.parent if resume and not cfg.paths.output_dir else output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg)
    run_id = None
    if resume:
        saved = read_checkpoint(resume)
        check_resumable(saved["hyper_parameters"], model.hparams, resume)
        run_id = saved.get(RUN_ID_KEY)
    log.info("model: %s; output: %s", _describe_model(cfg), out)
    try:
        with tracked_run(cfg, out, run_id) as tracking:
            return _fit_test_report(cfg, model, out, resume, tracking)
    except SIGTERMException as stop:
        # Lightning stops on SIGTERM with a bare SystemExit, i.e. exit status 0: say "killed".
        raise SystemExit(128 + signal.SIGTERM) from stop


def _fit_test_report(
    cfg: DictConfig,
    model: Classifier,
    out: Path,
    resume: Path | None,
    tracking: BackgroundRun | None,
) -> float:
    datamodule = build_datamodule(cfg)
    callbacks, checkpoint = build_callbacks(cfg, out)
    reports = out / "reports"
    curve = TrainingCurve(reports / "training_curve.csv", resumed=resume is not None)
    if tracking is not None:
        callbacks.append(RunIdInCheckpoint(lambda: tracking.get().run_id))
    trainer = pl.Trainer(
        **{
            **cfg.trainer,
            # The model logs the loss every `log_every_n_steps` optimizer steps itself; to
            # Lightning a step is a chunk of batches, and it has nothing to log per step.
            "log_every_n_steps": 1,
        },
        callbacks=callbacks,
        # MLflow first: once the curve shows an epoch, MLflow has it too.
        logger=[RunLogger(tracking), curve] if tracking else [curve],
        default_root_dir=out,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.callbacks.progress_bar,
        enable_model_summary=cfg.callbacks.model_summary,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    best = checkpoint.best_model_path or None
    # Loads the best weights into `model`: the report and the logged model are the best.
    (test,) = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    log.info("test accuracy %.4f, loss %.4f (%s)", test["test/acc"], test["test/loss"], best)
    summary = {
        "best_val_acc": float(checkpoint.best_model_score or trainer.callback_metrics["val/acc"]),
        "test_acc": test["test/acc"],
        "test_loss": test["test/loss"],
        "epochs": trainer.current_epoch,
    }
    if not trainer.is_global_zero:
        return summary["best_val_acc"]
    atomic_write_text(reports / "train_metrics.json", json.dumps(summary, indent=2) + "\n")
    images, labels = (tensor.cpu() for tensor in datamodule.test)
    model = model.cpu().eval()
    written: list[Path] = []
    if cfg.report:
        metrics, written = write_report(model, images, labels, reports)
    if tracking is not None:
        run = tracking.get()
        if best:
            run.log_artifact(Path(best), "checkpoints")
        run.log_artifact(reports / "training_curve.csv", "reports")
        if cfg.report:
            log_report(run, metrics, reports, written)
        if cfg.logger.log_model:
            run.log_model(model.net, images[:5].float() / 255.0)
    return summary["best_val_acc"]


def check_resumable(saved: dict[str, Any], configured: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint into a differently configured model (it would load)."""
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, config {value!r}"
        for key, value in configured.items()
        if key != "log_every_n_steps" and saved.get(key) != value
    ]
    if differences:
        raise ConfigError(
            f"ckpt_path={path} was trained with other model/optimizer settings "
            f"({'; '.join(differences)}); resume with the settings it was trained with"
        )


def resume_from(ckpt_path: str | None) -> Path | None:
    """The checkpoint to resume: None, `last` (the newest under outputs/), or a path."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        return find_last(Path("outputs"))
    path = resolve_path(PROJECT_ROOT, ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint ({path})")
    return path


def _describe_model(cfg: DictConfig) -> str:
    """E.g. "MLP 784-128-10 relu dropout 0.2, 101,770 parameters"."""
    hidden = cfg.model.hidden
    widths = list(hidden) if OmegaConf.is_list(hidden) else [hidden]
    layers = [784, *widths, 10]
    parameters = sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(layers))
    shape = "-".join(str(width) for width in layers)
    activation, dropout = cfg.model.activation.value, cfg.model.dropout
    return f"MLP {shape} {activation} dropout {dropout}, {parameters:,} parameters"
