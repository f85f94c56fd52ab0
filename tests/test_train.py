import json

import pytest

from mnist_pipeline.checkpoints import load_checkpoint


def test_train_end_to_end_without_tracking(tiny_run, tmp_path):
    result = tiny_run("logger=none", "model.hidden=32")
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    summary = json.loads((run_dir / "reports" / "train_metrics.json").read_text())
    assert summary["epochs"] == 2
    assert summary["test_acc"] > 0.8  # the synthetic digits are easy; chance is 0.1
    assert "test accuracy" in result.stderr + result.stdout
    curve = (run_dir / "reports" / "training_curve.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,train_acc,val_loss,val_acc" and len(curve) == 3
    metrics = json.loads((run_dir / "reports" / "metrics.json").read_text())
    assert (
        metrics["accuracy"] == summary["test_acc"]
        or abs(metrics["accuracy"] - summary["test_acc"]) < 1e-6
    )
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    for name in ("confusion_matrix", "misclassified", "first_layer_weights", "training_curves"):
        assert (run_dir / "reports" / "figures" / f"{name}.png").stat().st_size > 1000
    model, run_id = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert run_id is None and model.hparams.hidden == 32
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.hidden=0", "model.hidden=0: expected a positive integer"),
        ("model.hidden=abc", "model.hidden='abc': expected a positive integer"),
        ("model.dropout=1.5", "model.dropout=1.5: expected 0 <= dropout < 1"),
        ("model.activation=swish", "expected one of [relu, sigmoid, tanh, gelu]"),
        ("optimizer=adamax", "Could not find 'optimizer/adamax'"),
        ("model.hiden=3", "Key 'hiden' is not in struct"),
    ],
)
def test_bad_override_fails_before_any_work(tiny_run, tmp_path, override, message):
    result = tiny_run(override, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()
