"""`src/predict.py` end to end on a real checkpoint, and the terminal bar chart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.networks.mlp import MLP
from mnist_pipeline.prediction.predict import load_predictor, render_probabilities
from mnist_pipeline.training.checkpoints import AtomicCheckpointIO, CheckpointError
from mnist_pipeline.training.classifier import Classifier

# "  7 ███████▍ 0.912  <- guess": digit, bar, probability
PROBABILITY_LINE = re.compile(r"^  (\d) [ █▏▎▍▌▋▊▉]* (\d\.\d{3})(  <- guess)?$", re.MULTILINE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained hidden=16 MLP saved the way training saves it."""
    path = tmp_path_factory.mktemp("model") / "tiny.ckpt"
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        plugins=[AtomicCheckpointIO()],
    )
    parts = {"model": {"_target_": "mnist_pipeline.networks.mlp.MLP", "hidden": 16}}
    trainer.strategy.connect(Classifier(MLP(hidden=16), torch.optim.Adam, parts=parts))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def digit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "seven.png"
    image = Image.new("RGB", (200, 300), "white")
    ImageDraw.Draw(image).line([(30, 40), (150, 40), (70, 250)], fill="black", width=20)
    image.save(path)
    return path


def test_predict_prints_probabilities_and_guess(checkpoint: Path, digit: Path, predict_cli):
    result = predict_cli(f"ckpt_path={checkpoint}", f"image={digit}")
    assert result.returncode == 0, result.stderr
    lines = PROBABILITY_LINE.findall(result.stdout)
    assert [int(d) for d, _, _ in lines] == list(range(10))
    assert sum(float(p) for _, p, _ in lines) == pytest.approx(1, abs=0.01)
    guess = re.search(r"^guess: (\d) \(\d+\.\d%\)$", result.stdout, re.MULTILINE)
    assert guess is not None
    assert [d for d, _, marker in lines if marker] == [guess.group(1)]
    # A prediction is an answer, not a run: Hydra leaves nothing behind.
    assert not (PROJECT_ROOT / ".hydra").exists()
    assert not (PROJECT_ROOT / "predict.log").exists()


def test_predict_rejects_a_file_that_is_not_an_image(
    checkpoint: Path, tmp_path: Path, predict_cli
) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    result = predict_cli(f"ckpt_path={checkpoint}", f"image={notes}")
    assert result.returncode == 2
    assert "notes.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_checkpoint_predictor_gives_probabilities(checkpoint: Path) -> None:
    probabilities = load_predictor(ckpt_path=checkpoint)(torch.rand(3, 28, 28))
    assert probabilities.shape == (3, 10)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3))


@pytest.mark.parametrize("sources", [{}, {"ckpt_path": "a.ckpt", "model_uri": "runs:/x/model"}])
def test_exactly_one_model_source(sources: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        load_predictor(**sources)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        load_predictor(ckpt_path=tmp_path / "missing.ckpt")


def test_render_probabilities() -> None:
    probabilities = torch.zeros(10)
    probabilities[7], probabilities[1], probabilities[3] = 0.875, 0.0625, 0.0625
    text = render_probabilities(probabilities)
    lines = text.splitlines()
    assert lines[0] == "guess: 7 (87.5%)"
    assert len(lines) == 11
    # 40 characters stand for probability 1, in eighths of a character.
    assert lines[1 + 7] == "  7 " + "█" * 35 + " " * 5 + " 0.875  <- guess"
    assert lines[1 + 1] == "  1 " + "██▌" + " " * 37 + " 0.062"
    assert lines[1 + 0] == "  0 " + " " * 40 + " 0.000"
