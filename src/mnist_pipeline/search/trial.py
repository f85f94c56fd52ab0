"""The training's side of a search trial: report each epoch, stop when the pruner says so.

The sweeper tells a training which trial it is with `hydra.sweeper.trial=<number>` among its
Hydra overrides; the study's name, storage and pruner are in the same `hydra.sweeper` config.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from hydra.utils import instantiate

from mnist_pipeline import hydra_config, repository_root
from mnist_pipeline.search import STATE_TAG, STUDY_TAG, TRIAL_TAG

if TYPE_CHECKING:  # optuna is imported by trials only: every other training is spared it
    from optuna.pruners import BasePruner
    from optuna.trial import Trial

log = logging.getLogger(__name__)


def make_pruner(config: Any) -> BasePruner:
    """The pruner of `hydra.sweeper.pruner`: a `_target_` config, or null / `none` for none."""
    if config is None or config == "none":
        from optuna.pruners import NopPruner

        return NopPruner()
    return instantiate(config)


def sweeper_settings() -> Any:
    """`hydra.sweeper` of this job when it is a trial of a search, else None."""
    hydra = hydra_config()
    return hydra.sweeper if hydra is not None and hydra.sweeper.get("trial") is not None else None


def current_trial() -> Trial | None:
    """The Optuna trial this training is, if a search sweeper started it."""
    sweeper = sweeper_settings()
    if sweeper is None:
        return None
    from mnist_pipeline.search.study import storage_location, trial_of

    location = storage_location(sweeper.storage, repository_root())
    return trial_of(sweeper.study_name, location, sweeper.trial, make_pruner(sweeper.pruner))


class TrialPruning(pl.Callback):
    """Reports `monitor` after each validation to `trial` and stops the training when the
    study's pruner says the trial is hopeless: it ends as a normal, shorter training (tested,
    reported, its MLflow run FINISHED and tagged `optuna.state=PRUNED`).

    Optuna's own Lightning callback (optuna-integration) raises `TrialPruned` instead, which
    would end the run FAILED without its test and report.
    """

    def __init__(self, trial: Trial, monitor: str = "val/acc") -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tag(trainer, {STUDY_TAG: self.trial.study.study_name, TRIAL_TAG: self.trial.number})

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            epoch = trainer.current_epoch
            self.trial.report(float(trainer.callback_metrics[self.monitor]), step=epoch)
            prune = self.trial.should_prune()
            if prune:
                from mnist_pipeline.search.study import PRUNED_ATTR

                self.trial.set_user_attr(PRUNED_ATTR, epoch)
                log.info(
                    "trial %d pruned after %d of %d epochs",
                    self.trial.number,
                    epoch + 1,
                    trainer.max_epochs,
                )
        if trainer.strategy.broadcast(prune, src=0):  # every DDP rank stops at the same epoch
            self.pruned = trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tag(trainer, {STATE_TAG: "PRUNED" if self.pruned else "COMPLETE"})

    @staticmethod
    def _tag(trainer: pl.Trainer, tags: dict[str, Any]) -> None:
        for logger in trainer.loggers:  # the loggers that take tags (MLflowLogger)
            if callable(getattr(logger, "set_tags", None)):
                logger.set_tags({key: str(value) for key, value in tags.items()})
