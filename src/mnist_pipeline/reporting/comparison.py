"""relu vs sigmoid in one sweep: a figure, a table and a verdict (experiment=activation_comparison).

`ActivationComparison` is a Hydra callback: when the sweep's jobs are done it reads each job's
training curve and activation from its directory, so it works with any launcher and needs
nothing from the jobs beyond the files they write anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.atomic import atomic_write_bytes, atomic_write_text
from mnist_pipeline.config import resolve_path
from mnist_pipeline.reporting.figures import activation_comparison_figure
from mnist_pipeline.tracking.logger import NOTE_TAG, PARENT_RUN_FILE, resolve_tracking_uri
from mnist_pipeline.tracking.sweeps import mlflow_settings
from mnist_pipeline.training.curve import read_curve

log = logging.getLogger(__name__)
NAME = "activation_comparison"
THRESHOLDS = (0.95, 0.97)


@dataclass(frozen=True)
class Summary:
    """One activation's validation curve in numbers; `reached` maps a threshold to an epoch."""

    epochs: int
    final_acc: float
    best_acc: float
    best_epoch: int
    final_loss: float | None
    reached: dict[float, int | None]


def sweep_curves(sweep_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """{activation: training-curve rows} of the jobs under `sweep_dir`, in job order.

    Directories without a curve holding a validation accuracy (no job, or a job that failed
    before its first validation) are skipped.
    """
    curves: dict[str, list[dict[str, Any]]] = {}
    jobs = sorted((d for d in sweep_dir.iterdir() if d.is_dir()), key=_job_order)
    for job in jobs:
        rows = read_curve(job / "reports" / "training_curve.csv")
        config = job / ".hydra" / "config.yaml"
        if not config.is_file() or not any(row.get("val_acc") != "" for row in rows):
            continue
        activation = str(OmegaConf.load(config).model.activation)
        # A sweep over more than the activation (e.g. seeds) must not overwrite a curve.
        curves[activation if activation not in curves else f"{activation} (job {job.name})"] = rows
    return curves


def _job_order(job: Path) -> tuple[int, int | str]:
    # Numerically, so job 10 comes after job 9.
    return (0, int(job.name)) if job.name.isdigit() else (1, job.name)


def summarise(rows: Sequence[Mapping[str, Any]]) -> Summary:
    """Final and best val accuracy, final val loss and the first epoch reaching each threshold."""
    acc = [(int(row["epoch"]), float(row["val_acc"])) for row in rows if row["val_acc"] != ""]
    loss = [float(row["val_loss"]) for row in rows if row.get("val_loss", "") != ""]
    best_epoch, best_acc = max(acc, key=lambda point: point[1])
    return Summary(
        epochs=int(rows[-1]["epoch"]),
        final_acc=acc[-1][1],
        best_acc=best_acc,
        best_epoch=best_epoch,
        final_loss=loss[-1] if loss else None,
        reached={t: next((e for e, a in acc if a >= t), None) for t in THRESHOLDS},
    )


def verdict(summaries: Mapping[str, Summary]) -> str:
    """One line answering "does relu train faster here, and by how much?"."""
    relu, sigmoid = summaries.get("relu"), summaries.get("sigmoid")
    if relu is None or sigmoid is None:
        return "no verdict: the sweep needs a relu and a sigmoid job"
    if relu.epochs == sigmoid.epochs:
        final = f"after {relu.epochs} epochs relu {relu.final_acc:.1%} vs sigmoid "
        final += f"{sigmoid.final_acc:.1%}"
    else:
        final = f"at the end relu {relu.final_acc:.1%} ({relu.epochs} epochs) vs sigmoid "
        final += f"{sigmoid.final_acc:.1%} ({sigmoid.epochs} epochs)"
    return f"{_speed(relu, sigmoid)}; {final}"


def _speed(relu: Summary, sigmoid: Summary) -> str:
    # The highest threshold either one reaches says the most about speed.
    for threshold in sorted(THRESHOLDS, reverse=True):
        r, s = relu.reached[threshold], sigmoid.reached[threshold]
        target = f"{threshold:.0%}"
        if r is not None and s is not None:
            head = f"relu reaches {target} val accuracy at epoch {r}, sigmoid at epoch {s}"
            if r < s:
                return f"{head}: relu is {s / r:.1f}x faster to {target}"
            if r > s:
                return f"{head}: relu is slower, sigmoid is {r / s:.1f}x faster to {target}"
            return f"{head}: relu is no faster to {target}"
        # The one that never got there would need at least one more epoch than it had.
        if r is not None:
            return (
                f"relu reaches {target} val accuracy at epoch {r}, sigmoid not in "
                f"{sigmoid.epochs} epochs: relu is at least {(sigmoid.epochs + 1) / r:.1f}x "
                f"faster to {target}"
            )
        if s is not None:
            return (
                f"sigmoid reaches {target} val accuracy at epoch {s}, relu not in {relu.epochs} "
                f"epochs: relu is slower, sigmoid at least {(relu.epochs + 1) / s:.1f}x faster "
                f"to {target}"
            )
    return f"neither reaches {min(THRESHOLDS):.0%} val accuracy, so neither is faster to it"


def markdown(summaries: Mapping[str, Summary]) -> str:
    """The numbers as a markdown table, followed by the verdict."""
    reach = " | ".join(f"epoch to {t:.0%}" for t in THRESHOLDS)
    lines = [
        f"| activation | final val acc | best val acc | final val loss | {reach} |",
        "|---|---:|---:|---:|" + "---:|" * len(THRESHOLDS),
    ]
    for name, s in summaries.items():
        loss = "n/a" if s.final_loss is None else f"{s.final_loss:.4f}"
        epochs = " | ".join("never" if e is None else str(e) for e in s.reached.values())
        lines.append(
            f"| {name} | {s.final_acc:.2%} | {s.best_acc:.2%} (epoch {s.best_epoch}) | {loss} "
            f"| {epochs} |"
        )
    return "\n".join([*lines, "", f"**Verdict:** {verdict(summaries)}", ""])


class ActivationComparison(Callback):
    """At the end of a sweep: the figure and table of its jobs' validation curves.

    Written to `<sweep dir>/activation_comparison.{png,md}` and into the sweep's parent MLflow
    run; copied to `output` (relative to the repository root) with its `.md` beside it only when
    asked: the README's copy is in git, and a run must not change the checkout.
    """

    def __init__(self, output: str | None = None) -> None:
        self.output = output

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        curves = sweep_curves(sweep_dir) if sweep_dir.is_dir() else {}
        if not curves:
            log.warning("activation comparison: no training curves under %s", sweep_dir)
            return
        table = markdown({name: summarise(rows) for name, rows in curves.items()})
        figure = sweep_dir / f"{NAME}.png"
        activation_comparison_figure(curves, figure)
        atomic_write_text(figure.with_suffix(".md"), table)
        written = [figure]
        if self.output:
            copy = resolve_path(PROJECT_ROOT, self.output)
            atomic_write_bytes(copy, figure.read_bytes())
            atomic_write_text(copy.with_suffix(".md"), table)
            written.append(copy)
        log.info("activation comparison in %s:\n%s", " and ".join(str(p) for p in written), table)
        self._log_to_parent_run(config, sweep_dir, figure)

    @staticmethod
    def _log_to_parent_run(config: DictConfig, sweep_dir: Path, figure: Path) -> None:
        marker = sweep_dir / PARENT_RUN_FILE
        settings = mlflow_settings(config)
        # A marker left by an earlier tracked sweep into the same directory is not this one's.
        if settings is None or not marker.is_file():
            return
        from mlflow import MlflowClient

        client = MlflowClient(resolve_tracking_uri(settings.get("tracking_uri")))
        run_id = marker.read_text().strip()
        client.log_artifact(run_id, str(figure))
        client.log_artifact(run_id, str(figure.with_suffix(".md")))
        # The run's description in the MLflow UI: the table is readable there without a click.
        client.set_tag(run_id, NOTE_TAG, figure.with_suffix(".md").read_text())
        log.info("activation comparison logged into MLflow parent run %s", run_id)
