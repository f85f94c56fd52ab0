"""`experiment=activation_comparison`: one sweep, relu vs sigmoid, figure + table + verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import mlflow_runs
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from PIL import Image

from mnist_pipeline.reporting.comparison import Summary, markdown, summarise, verdict

REPO = Path(__file__).resolve().parents[1]


def _summary(epochs: int, to_95: int | None, to_97: int | None, final: float) -> Summary:
    return Summary(epochs, final, final, epochs, 0.1, {0.95: to_95, 0.97: to_97})


def test_experiment_composes_as_a_sweep_over_the_activation():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=["experiment=activation_comparison"], return_hydra_config=True
        )
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.hydra.sweeper.params == {"model.activation": "sigmoid,relu"}
    assert cfg.trainer.max_epochs == 10
    callback = cfg.hydra.callbacks.activation_comparison
    assert callback._target_ == "mnist_pipeline.reporting.comparison.ActivationComparison"
    # A run writes into its sweep directory and MLflow, not over the README's picture in git.
    assert callback.output is None
    # The sweep is still grouped under one parent MLflow run.
    assert "mlflow_sweep" in cfg.hydra.callbacks


def test_summary_and_verdict_from_curves():
    rows = [
        {"epoch": 1.0, "val_acc": 0.93, "val_loss": 0.3},
        {"epoch": 2.0, "val_acc": 0.96, "val_loss": ""},  # a loss not logged that epoch
        {"epoch": 3.0, "val_acc": 0.955, "val_loss": 0.2},
    ]
    assert summarise(rows) == Summary(3, 0.955, 0.96, 2, 0.2, {0.95: 2, 0.97: None})
    both = {"sigmoid": _summary(10, 4, 9, 0.971), "relu": _summary(10, 1, 3, 0.979)}
    assert verdict(both) == (
        "relu reaches 97% val accuracy at epoch 3, sigmoid at epoch 9: relu is 3.0x faster to "
        "97%; after 10 epochs relu 97.9% vs sigmoid 97.1%"
    )
    only_relu = {"sigmoid": _summary(10, 4, None, 0.96), "relu": _summary(10, 1, 4, 0.975)}
    assert "sigmoid not in 10 epochs: relu is at least 2.8x faster to 97%" in verdict(only_relu)
    slow = {"sigmoid": _summary(2, None, None, 0.5), "relu": _summary(2, None, None, 0.6)}
    assert verdict(slow).startswith("neither reaches 95%")
    assert verdict({"relu": both["relu"]}).startswith("no verdict")
    table = markdown(both)
    assert "| relu | 97.90% | 97.90% (epoch 10) | 0.1000 | 1 | 3 |" in table
    assert "| sigmoid |" in table


@pytest.mark.slow
def test_sweep_writes_figure_table_and_parent_run_artifacts(tiny_run, tmp_path):
    figure = tmp_path / "cmp" / "cmp.png"
    result = tiny_run(
        "experiment=activation_comparison",
        "trainer.max_epochs=2",
        "report=false",
        "logger.mlflow.log_model=false",
        f"hydra.callbacks.activation_comparison.output={figure}",
    )
    # Hydra turns an exception in a callback into a warning: it must not have happened.
    assert "ActivationComparison" not in result.stderr, result.stderr[-4000:]
    sweep = tmp_path / "multirun"
    for png in (figure, sweep / "activation_comparison.png"):
        with Image.open(png) as image:
            image.load()
            assert image.format == "PNG" and image.width > 400
        table = png.with_suffix(".md").read_text()
        assert "| relu |" in table and "| sigmoid |" in table and "**Verdict:**" in table
    assert "**Verdict:** relu" in result.stdout  # the table is in the log too

    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0].info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent}
    assert sorted(r.data.params["model.activation"] for r in children) == ["relu", "sigmoid"]
    artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"activation_comparison.png", "activation_comparison.md"} <= artifacts
    assert "| relu |" in parents[0].data.tags["mlflow.note.content"]
