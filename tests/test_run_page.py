"""What an MLflow run holds for a reader and a registry (issue 21): params that compare, few
metrics charted against epochs, the dataset as inputs, a model card, registered versions and the
`champion` alias, system metrics. Three real trainings on tiny data share one sqlite store."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, _tiny_setup, make_tiny_mnist

from mnist_pipeline.tracking.logger import TrackingError
from mnist_pipeline.tracking.models import CHAMPION, register

NAME = "mnist-mlp"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, empty_store):
    """Two trainings registered as NAME: `weak` (1 epoch, 8 hidden units, a low learning rate,
    no report), then `better` (3 epochs, with the report and system metrics); their runs and
    client."""
    from hydra import compose, initialize_config_dir
    from mlflow import MlflowClient

    from mnist_pipeline.stages.train import train

    tmp = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        source = tmp / "tiny_mnist"
        files = make_tiny_mnist(source)
        base = _tiny_setup(tmp, (source, files), patch, empty_store)
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
        for name, overrides in (
            ("weak", ("trainer.max_epochs=1", "optimizer.lr=0.0003", "model.hidden=8")),
            (
                "better",
                ("trainer.max_epochs=3", "report=true", "logger.mlflow.log_system_metrics=true"),
            ),
        ):
            with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
                cfg = compose(
                    "config",
                    overrides=[
                        *base,
                        f"paths.output_dir={tmp / name}",
                        f"logger.mlflow.run_name={name}",
                        f"logger.mlflow.registered_model_name={NAME}",
                        "report=false",  # the better run's report: its overrides
                        *overrides,
                    ],
                )
            train(cfg)
        client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
        found = client.search_runs([e.experiment_id for e in client.search_experiments()])
        yield SimpleNamespace(
            client=client,
            dir=tmp,
            files=files,
            **{r.info.run_name: r for r in found},
        )


def test_a_run_compares_in_the_run_table_and_reads_on_its_page(runs):
    run, client = runs.better, runs.client
    params = run.data.params
    assert params == {
        "seed": "42",
        "model._target_": "mnist_pipeline.networks.mlp.MLP",
        "model.hidden": "128",
        "model.activation": "relu",
        "model.dropout": "0.2",
        "optimizer._target_": "torch.optim.Adam",
        "optimizer.lr": "0.001",
        "optimizer.weight_decay": "0.0",
        "data.val_size": "100",
        "data.split_seed": "0",
        "data.shuffle_seed": "42",
        "data.batch_size": "50",
        "trainer.max_epochs": "3",
        "trainer.devices": "1",
        "model/params/total": str(784 * 128 + 128 + 128 * 10 + 10),
    }
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(runs.dir))
    assert "data:" in Path(config).read_text() and "logger:" in Path(config).read_text()

    # Per-epoch metrics at step = epoch; the learning rate each epoch; the report's headline;
    # no per-digit metric: they are one table.
    metrics = set(run.data.metrics) - {m for m in run.data.metrics if m.startswith("system/")}
    assert metrics == {
        "train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc",
        "test/loss", "test/macro_f1", "test/worst_f1", "test/worst_digit", "lr-Adam",
    }  # fmt: skip
    table = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "reports/digits.json", str(runs.dir))
        ).read_text()
    )
    assert table["columns"] == [
        "digit", "precision", "recall", "f1", "images", "mistaken_for", "times"
    ]  # fmt: skip
    assert [row[0] for row in table["data"]] == list(range(10))
    assert sum(row[4] for row in table["data"]) == 200
    worst = min(table["data"], key=lambda row: row[3])
    assert (worst[0], worst[3]) == (
        run.data.metrics["test/worst_digit"],
        run.data.metrics["test/worst_f1"],
    )
    for key in ("val/acc", "train/loss", "lr-Adam"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1, 2], key
    # System metrics by MLflow's monitor (opt-in): not in the runs without it.
    assert run.data.metrics["system/cpu_utilization_percentage"] >= 0
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    assert not any(m.startswith("system/") for m in runs.weak.data.metrics)

    # The three splits as dataset inputs, their digest the version of the files the data
    # module verified (the tiny set's, not MNIST's), also tagged; their source where it read them.
    version = hashlib.sha256(
        "".join(f"{name} {sha256}\n" for name, sha256 in sorted(runs.files.items())).encode()
    ).hexdigest()[:16]
    assert run.data.tags["data.version"] == version
    inputs = {
        d.dataset.name: (d.dataset.digest, d.tags[0].value, json.loads(d.dataset.profile))
        for d in run.inputs.dataset_inputs
    }
    assert inputs == {
        "mnist-train": (version, "training", {"num_rows": 500}),
        "mnist-val": (version, "validation", {"num_rows": 100}),
        "mnist-test": (version, "test", {"num_rows": 200}),
    }
    source = json.loads(run.inputs.dataset_inputs[0].dataset.source)["uri"]
    assert source == str(runs.dir / "data" / "mnist")

    # The model card: written, logged, its first paragraph the run's description.
    card = (runs.dir / "better" / "model_card.md").read_text()
    assert {"config.yaml", "model_card.md", "checkpoints"} <= artifacts
    assert card.startswith("# better: an MNIST digit classifier\n\nMLP, 101,770 parameters: test ")
    note = run.data.tags["mlflow.note.content"]
    assert card.startswith(note) and "## " not in note and "weakest digit" in note
    for part in ("## Weakest digits", "28x28 pixels in [0, 1], white digit on black, centred"):
        assert part in card
    assert f"model_uri=runs:/{run.info.run_id}/model" in card
    assert f"models:/{NAME}@{CHAMPION}" in card
    assert f"data version {version}." in card


def test_versions_are_registered_and_the_champion_moves_only_when_beaten(runs, caplog):
    client, weak, better = runs.client, runs.weak.info.run_id, runs.better.info.run_id
    assert runs.weak.data.metrics["test/acc"] < runs.better.data.metrics["test/acc"]
    versions = client.search_model_versions(f"name='{NAME}'")
    assert sorted((int(v.version), v.run_id) for v in versions) == [(1, weak), (2, better)]
    # The weak run was the champion, until the better one beat it.
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    card = (runs.dir / "better" / "model_card.md").read_text()
    assert client.get_model_version(NAME, "2").description == card

    # The same models again: worse (version 3) and a tie (version 4) keep the champion.
    with caplog.at_level(logging.INFO, logger="mnist_pipeline.tracking.models"):
        register(client, weak, NAME, "weak again")
        register(client, better, NAME, "better again")
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == "2"
    assert client.get_model_version(NAME, "4").description == "better again"
    assert [r.getMessage().split(";")[1].strip() for r in caplog.records] == [
        f"the champion stays version 2 (test/acc {runs.better.data.metrics['test/acc']:.4f})"
    ] * 2

    # A registration sent again (its answer lost with the connection: the outbox resends it,
    # same key) finds the version it made; a new key makes a new one.
    register(client, weak, NAME, "sent", key="k1")
    register(client, weak, NAME, "sent again", key="k1")
    versions = client.search_model_versions(f"name='{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4, 5]
    assert client.get_model_version(NAME, "5").description == "sent again"
    register(client, weak, NAME, "another", key="k2")
    assert len(client.search_model_versions(f"name='{NAME}'")) == 6


def test_the_champion_answers_predict(runs, predict_cli, tmp_path, monkeypatch):
    from PIL import Image, ImageDraw

    from mnist_pipeline.prediction.images import load_digit
    from mnist_pipeline.prediction.predict import load_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{runs.dir / 'mlflow.db'}")
    digit = tmp_path / "digit.png"
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(8, 6), (20, 6), (12, 22)], fill=255, width=3)
    image.save(digit)
    result = predict_cli(f"model_uri=models:/{NAME}@{CHAMPION}", f"image={digit}", "json=true")
    assert result.returncode == 0, result.stderr
    # The champion is the better run's model: the same answer as its best checkpoint's.
    checkpoint = load_model(runs.dir / "better" / "checkpoints" / "best.ckpt")
    expected = checkpoint.predict(load_digit(digit)[None])[0].tolist()
    assert json.loads(result.stdout)["probabilities"] == pytest.approx(expected, abs=1e-4)


def test_a_file_store_cannot_register_and_says_so_before_training(train_tiny, tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    with pytest.raises(TrackingError, match="is a file store, which has no model registry"):
        train_tiny(
            f"logger.mlflow.tracking_uri={uri}", f"logger.mlflow.registered_model_name={NAME}"
        )
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlruns").exists()
