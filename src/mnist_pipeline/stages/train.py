"""The train stage: config in; checkpoints, curve, metrics, report and an MLflow run out."""

from __future__ import annotations

import json
import logging
import signal
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.atomic import atomic_write_json, atomic_write_text
from mnist_pipeline.checkpoint_files import RUN_ID_KEY, read_checkpoint
from mnist_pipeline.config import ConfigError, differing_keys, flatten, resolve_path, validate
from mnist_pipeline.networks import describe
from mnist_pipeline.parts import build_callbacks, build_classifier, build_loggers, part_configs
from mnist_pipeline.reporting.evaluation import log_report, logits_of, score, write_report
from mnist_pipeline.reporting.model_card import FILE as CARD_FILE
from mnist_pipeline.reporting.model_card import card_summary, model_card
from mnist_pipeline.search.trial import TrialPruning, current_trial
from mnist_pipeline.stages.outputs import clear_staging, held, output_dir, publish
from mnist_pipeline.stages.params import warn_if_params_stale
from mnist_pipeline.tracking.logger import (
    DATA_VERSION_TAG,
    NOTE_TAG,
    MLflowLogger,
    RunCallback,
    check_registry,
    check_server,
    data_version,
    dataset_inputs,
    default_run_name,
    resolve_tracking_uri,
)
from mnist_pipeline.tracking.outbox import UNSENT_DIR, sync
from mnist_pipeline.tracking.sweeps import mlflow_settings
from mnist_pipeline.training.checkpoints import AtomicCheckpointIO, find_last
from mnist_pipeline.training.classifier import Classifier
from mnist_pipeline.training.curve import TrainingCurve

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> float:
    """Fit on train/val, test the best checkpoint, report; returns the best validation accuracy."""
    # Seeded, then the network and the data module built, once: the check builds them anyway.
    built: dict[str, Any] = {}
    cfg = validate(cfg, built)
    if rank_zero_only.rank == 0:
        warn_if_params_stale()  # the DVC stage: is params.yaml what conf/ says?
    resume = resume_from(cfg.ckpt_path)
    # A resumed training goes on where it was: same output directory, same MLflow run.
    out = resume.parent.parent if resume and not cfg.paths.output_dir else output_dir(cfg)
    run_id = None
    if resume:
        saved = read_checkpoint(resume)
        check_resumable(saved["hyper_parameters"]["parts"], cfg, resume)
        run_id = saved.get(RUN_ID_KEY)
        summary = out / "reports" / "train_metrics.json"
        if summary.is_file() and saved["epoch"] + 1 >= cfg.trainer.get("max_epochs", 1000):
            # Trained, tested and reported: resuming would only log it all a second time.
            log.info(
                "the run in %s is complete (%d epochs): nothing to resume", out, saved["epoch"] + 1
            )
            if (out / UNSENT_DIR).is_dir():  # all but the sending: send now
                count, outbox = sync(out)
                log.info("sent %d kept records to MLflow run %s", count, outbox.run_id)
            return float(json.loads(summary.read_text())["best_val_acc"])
    publish_to = (
        resolve_path(PROJECT_ROOT, cfg.paths.publish_dir) if cfg.paths.publish_dir else None
    )
    try:
        best_val_acc, mlflow = _train(cfg, built, out, resume, run_id)
    except BaseException:
        if publish_to is not None and rank_zero_only.rank == 0:
            log.error(
                "stopped before the end: %s/checkpoints and reports are as they were (the "
                "unfinished training is in %s); run `dvc repro` again to retrain",
                publish_to,
                out,
            )
        raise
    if publish_to is not None and rank_zero_only.rank == 0:
        publish(out, publish_to)
    if mlflow is not None:
        mlflow.check_sent()  # trained and saved, but the MLflow run misses part of it
    return best_val_acc


def _train(
    cfg: DictConfig, built: dict[str, Any], out: Path, resume: Path | None, run_id: str | None
) -> tuple[float, MLflowLogger | None]:
    """Train, test and report into `out`, in an MLflow run of its own or `run_id`'s; the best
    validation accuracy and the MLflow logger, if any."""
    if rank_zero_only.rank == 0:
        # An unreachable server fails the command before any work; data that cannot be had
        # fails it before any run is opened.
        if (settings := mlflow_settings(cfg)) is not None:
            uri = resolve_tracking_uri(settings.get("tracking_uri"))
            check_registry(
                uri, settings.get("registered_model_name"), settings.get("log_model", True)
            )
            check_server(uri)
        built["data"].prepare_data()
    # fast_dev_run logs nothing (Lightning swaps the loggers out): then open no run at all.
    with held(out) if rank_zero_only.rank == 0 else nullcontext():
        if cfg.paths.publish_dir and resume is None and rank_zero_only.rank == 0:
            clear_staging(out)
        loggers = []
        if not cfg.trainer.get("fast_dev_run"):
            version = data_version(built["data"])
            tags = {DATA_VERSION_TAG: version} if version else {}
            loggers = build_loggers(cfg, out, run_id, tags)
        # MLflow's run is being created in the background from here on (see MLflowLogger).
        mlflow = next((lg for lg in loggers if isinstance(lg, MLflowLogger)), None)
        try:
            with sigterm_stops(), ending_run(mlflow):
                model = build_classifier(cfg, built["model"])
                if rank_zero_only.rank == 0:  # once, not once per DDP process
                    log.info("model: %s; output: %s", describe(model.net), out)
                best_val_acc = _fit_test_report(
                    cfg, model, built["data"], out, resume, loggers, mlflow
                )
        except SIGTERMException as stop:
            # Lightning stops on SIGTERM with a bare SystemExit (exit status 0): say "killed".
            raise SystemExit(128 + signal.SIGTERM) from stop
    return best_val_acc, mlflow


def _fit_test_report(
    cfg: DictConfig,
    model: Classifier,
    datamodule: pl.LightningDataModule,
    out: Path,
    resume: Path | None,
    loggers: list[Any],
    mlflow: MLflowLogger | None,
) -> float:
    callbacks = build_callbacks(cfg, out)
    if mlflow is not None:
        callbacks.insert(0, RunCallback(mlflow))  # first: before LearningRateMonitor's
    if (trial := current_trial()) is not None:  # a trial of a search: report, maybe prune
        callbacks.append(TrialPruning(trial))
    reports = out / "reports"
    # Whichever loggers are configured: the curve comes from this one.
    csv_log = CSVLogger(out)
    callbacks.append(TrainingCurve(csv_log, reports / "training_curve.csv"))
    trainer = pl.Trainer(
        **cfg.trainer,
        callbacks=callbacks,
        logger=[*loggers, csv_log],
        default_root_dir=out,
        plugins=[AtomicCheckpointIO()],
    )
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    params["model/params/total"] = sum(p.numel() for p in model.net.parameters())
    for logger in loggers:  # MLflow's keeps the keys of its `params` setting
        logger.log_hyperparams(params)
    if mlflow is not None:
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    if resume is not None:  # Lightning's warning of files in the checkpoint directory: its own
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    with ctrl_c_exits_130(trainer):
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    checkpoint = next(
        (c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor),
        None,
    )
    best = (checkpoint.best_model_path or None) if checkpoint else None
    best_score = checkpoint.best_model_score if checkpoint else None
    if best_score is None:  # no checkpointing (e.g. debug=fdr): the last validation
        best_score = trainer.callback_metrics.get("val/acc", float("nan"))
    # Loads the best weights into `model`: the report and the logged model are the best.
    with ctrl_c_exits_130(trainer):
        (test,) = trainer.test(model, datamodule=datamodule, ckpt_path=best, verbose=False)
    summary = {
        "best_val_acc": float(best_score),
        "test_acc": test["test/acc"],
        "test_loss": test["test/loss"],
        "epochs": trainer.current_epoch,
    }
    if not trainer.is_global_zero:
        return summary["best_val_acc"]
    log.info("test accuracy %.4f, loss %.4f (%s)", test["test/acc"], test["test/loss"], best)
    atomic_write_json(reports / "train_metrics.json", summary)
    if datamodule.test is None:  # ddp_spawn loaded the data in the processes it started only
        datamodule.setup("test")
    images, labels = (tensor.cpu() for tensor in datamodule.test)
    net = model.net.cpu().eval()
    written: list[Path] = []
    if cfg.report:
        metrics, written = write_report(net, images, labels, reports)
    else:  # the card's numbers: a forward pass over the test set, no figures
        metrics = score(logits_of(net, images), labels)
    splits = {
        split: len(getattr(datamodule, split)[1])
        for split in ("train", "val", "test")
        if getattr(datamodule, split, None) is not None
    }
    data = {"version": data_version(datamodule), "splits": splits}
    card = _card(cfg, net, metrics, summary, data, mlflow, best, out)
    if mlflow is not None:
        if datasets := dataset_inputs(datamodule, splits):
            mlflow.log_datasets(datasets)
        if best:
            mlflow.log_artifact(Path(best), "checkpoints")
        mlflow.log_artifact(reports / "training_curve.csv", "reports")
        if cfg.report:
            log_report(mlflow, metrics, reports, written)
        mlflow.log_artifact(out / CARD_FILE)
        mlflow.set_tags({NOTE_TAG: card_summary(card)})
        if mlflow.log_pyfunc:
            network = OmegaConf.to_container(cfg.model, resolve=True)
            mlflow.log_pyfunc_model(net, network, images[:5].float() / 255.0, card)
    return summary["best_val_acc"]


def _card(
    cfg: DictConfig,
    net: Any,
    metrics: dict[str, Any],
    summary: dict[str, Any],
    data: dict[str, Any],
    mlflow: MLflowLogger | None,
    best: str | None,
    out: Path,
) -> str:
    """Write `out`/model_card.md; returns it."""
    logged = mlflow is not None and mlflow.log_pyfunc
    card = model_card(
        # The run's name; a resumed run's logger has none: the name it would have had.
        title=(mlflow._run_name if mlflow is not None else None) or default_run_name(cfg.model),
        net=net,
        metrics=metrics,
        summary=summary,
        data=data,
        model_uri=f"runs:/{mlflow.run_id}/model" if logged else None,
        checkpoint=best,
        registered_name=mlflow.registered_model_name if logged else None,
    )
    atomic_write_text(out / CARD_FILE, card)
    return card


@contextmanager
def ending_run(mlflow: MLflowLogger | None) -> Iterator[None]:
    """The MLflow run ends FINISHED, FAILED on an exception, KILLED on Ctrl-C / SIGTERM."""
    if mlflow is None:
        yield
        return
    try:
        yield
    except (KeyboardInterrupt, SystemExit, SIGTERMException):
        mlflow.end("KILLED")
        raise
    except BaseException:
        mlflow.end("FAILED")
        raise
    mlflow.end("FINISHED")


@contextmanager
def ctrl_c_exits_130(trainer: pl.Trainer) -> Iterator[None]:
    """Ctrl-C ends the command with status 130, as the shell expects of it.

    Lightning answers a KeyboardInterrupt by shutting down gracefully and `sys.exit(1)`, the
    status of a crash.
    """
    try:
        yield
    except SystemExit as stop:
        if trainer.interrupted and stop.code == 1:
            raise SystemExit(128 + signal.SIGINT) from stop
        raise


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM ends the training as Ctrl-C does, whatever phase it is in (exit status 143).

    During `fit` Lightning's handler is installed around this one and calls it after its own:
    Lightning then stops after the current batch with `last.ckpt` saved, so this one stands back.
    Elsewhere (loading data, testing, drawing the report) the default action would kill the
    process on the spot and leave its MLflow run RUNNING.
    """

    def stop(signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is stop:  # not inside Lightning's fit
            raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_resumable(saved: Mapping[str, Any], cfg: DictConfig, path: Path) -> None:
    """Refuse to resume a checkpoint into a differently configured model (it would load)."""
    configured, before = flatten(part_configs(cfg)), flatten(saved)
    differences = [
        f"{key}: checkpoint {before.get(key)}, config {configured.get(key)}"
        for key in sorted(differing_keys(before, configured))
    ]
    if differences:
        raise ConfigError(
            f"ckpt_path={path} was trained with other model/optimizer/scheduler settings "
            f"({'; '.join(differences)}); resume with the settings it was trained with"
        )


def resume_from(ckpt_path: str | None) -> Path | None:
    """The checkpoint to resume: None, `last` (the newest under outputs/), or a path."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        return find_last(PROJECT_ROOT / "outputs")
    path = resolve_path(PROJECT_ROOT, ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint ({path})")
    return path
