"""A checkpoint or run folder someone sent you is data: opening it never runs code from it.

Each crafted file points at something that leaves a trace when called or imported (a directory
made by `os.makedirs`, the module `this`, which prints the Zen of Python when imported), and
each test checks both the one-line refusal and that no trace was left.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from mnist_pipeline.checkpoint_files import (
    CHECKSUM_KEY,
    CheckpointError,
    content_sha256,
    load_network,
)
from mnist_pipeline.config import UserError
from mnist_pipeline.networks import Probabilities
from mnist_pipeline.networks.mlp import MLP
from mnist_pipeline.tracking.outbox import MODEL_FILE, RECORDS, UNSENT_DIR, Outbox, sync

MLP_TARGET = "mnist_pipeline.networks.mlp.MLP"


def _crafted_models(trace: Path) -> dict[str, tuple[dict, str]]:
    """{case: (model config, what the refusal names)}; calling any of them would make `trace`."""
    call = {"_target_": "os.makedirs", "name": str(trace)}
    return {
        "a plain function": (call, "model._target_='os.makedirs' is a function"),
        "a nested function": (
            {"_target_": MLP_TARGET, "hidden": 8, "activation": call},
            "model.activation._target_='os.makedirs'",
        ),
        "a function in a list": (
            {"_target_": "torch.nn.Sequential", "_args_": [call]},
            "model._args_[0]._target_='os.makedirs'",
        ),
        "a class that is not a Module": (
            {"_target_": "pathlib.Path", "_args_": [str(trace)]},
            "model._target_='pathlib.Path' is a type, not a torch.nn.Module subclass",
        ),
        "a module never imported": (
            {"_target_": "this.Zen"},
            "module 'this' is neither loaded nor part of this project",
        ),
        "a partial": ({"_target_": MLP_TARGET, "_partial_": True}, "model._partial_=true"),
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    """A checkpoint as the pipeline saves one (the parts that matter here), checksummed."""
    net = MLP(hidden=8)
    return {
        "state_dict": {f"net.{key}": value for key, value in net.state_dict().items()},
        "hyper_parameters": {"parts": {"model": {"_target_": MLP_TARGET, "hidden": 8}}},
    }


def _save(checkpoint: dict, model: dict, path: Path) -> Path:
    crafted = {**checkpoint, "hyper_parameters": {"parts": {"model": model}}}
    crafted[CHECKSUM_KEY] = content_sha256(crafted)  # a checksum is no signature
    torch.save(crafted, path)
    return path


def test_an_honest_checkpoint_loads(checkpoint, tmp_path):
    net, _ = load_network(_save(checkpoint, {"_target_": MLP_TARGET, "hidden": 8}, tmp_path / "a"))
    assert isinstance(net, MLP) and not net.training


@pytest.mark.parametrize("case", list(_crafted_models(Path("x"))))
def test_a_checkpoint_naming_anything_but_a_network_is_refused(checkpoint, tmp_path, case, capsys):
    trace = tmp_path / "pwned"
    model, named = _crafted_models(trace)[case]
    path = _save(checkpoint, model, tmp_path / "crafted.ckpt")
    sys.modules.pop("this", None)
    with pytest.raises(CheckpointError) as error:
        load_network(path)
    message = str(error.value)
    assert message.startswith(f"checkpoint {path}: ") and named in message, message
    assert "\n" not in message
    assert not trace.exists() and "this" not in sys.modules
    assert "Zen of Python" not in capsys.readouterr().out


def _digit(tmp_path: Path) -> Path:
    image = Image.new("L", (60, 90), "white")
    ImageDraw.Draw(image).line([(10, 10), (50, 10), (20, 80)], fill="black", width=6)
    image.save(tmp_path / "seven.png")
    return tmp_path / "seven.png"


def test_predict_and_evaluate_refuse_a_crafted_checkpoint_in_one_line(
    checkpoint, tmp_path, cli, tiny_mnist
):
    trace = tmp_path / "pwned"
    path = _save(checkpoint, _crafted_models(trace)["a plain function"][0], tmp_path / "c.ckpt")
    expected = (
        f"error: checkpoint {path}: model._target_='os.makedirs' is a function, "
        "not a torch.nn.Module subclass"
    )
    result = cli("predict", f"ckpt_path={path}", f"image={_digit(tmp_path)}")
    assert (result.returncode, result.stderr.strip()) == (2, expected)
    source, sha256s = tiny_mnist
    data = [f"data.dir={source}", *(f"data.files.{n}={d}" for n, d in sha256s.items())]
    result = cli("evaluate", f"ckpt_path={path}", "logger=none", *data)
    assert (result.returncode, result.stderr.strip()) == (2, expected)
    assert not trace.exists()


# Run folders: the kept records of `tracking/outbox.py`.


def _run_folder(tmp_path: Path, *records: dict) -> Path:
    folder = tmp_path / "run" / UNSENT_DIR
    folder.mkdir(parents=True)
    # A store nobody answers at: every file is refused before anything would be sent.
    header = {"tracking_uri": "http://127.0.0.1:9", "run_id": "0" * 32}
    lines = [json.dumps(line) for line in (header, *records)]
    (folder / RECORDS).write_text("\n".join(lines) + "\n")
    return folder.parent


class _Payload:
    """Unpickling this makes a directory: what a pickled "model" could do."""

    def __init__(self, trace: Path) -> None:
        self.trace = trace

    def __reduce__(self):
        import os

        return os.makedirs, (str(self.trace),)


def test_a_kept_model_is_never_unpickled(tmp_path):
    trace = tmp_path / "pwned"
    run = _run_folder(tmp_path, {"model": MODEL_FILE})
    torch.save({"model": _Payload(trace), "example": torch.zeros(1)}, run / UNSENT_DIR / MODEL_FILE)
    with pytest.raises(UserError, match=f"{run / UNSENT_DIR / MODEL_FILE}: not a model kept"):
        sync(run)
    assert not trace.exists()


def test_a_kept_model_naming_a_function_is_refused(tmp_path):
    trace = tmp_path / "pwned"
    run = _run_folder(tmp_path, {"model": MODEL_FILE})
    kept = {
        "network": {"_target_": "os.makedirs", "name": str(trace)},
        "state_dict": {},
        "example": torch.zeros(1, 28, 28),
    }
    torch.save(kept, run / UNSENT_DIR / MODEL_FILE)
    with pytest.raises(UserError, match="model._target_='os.makedirs' is a function"):
        sync(run)
    assert not trace.exists()


@pytest.mark.parametrize(
    "record",
    [
        {"artifact": "/etc/passwd", "dir": "stolen"},
        {"artifact": "../../../etc/passwd", "dir": "stolen"},
        {"model": "/tmp/elsewhere/model.pt"},
    ],
)
def test_kept_records_name_only_files_of_their_own_run_folder(tmp_path, record):
    run = _run_folder(tmp_path, record)
    with pytest.raises(UserError, match=f"{run / UNSENT_DIR / RECORDS}:2: "):
        sync(run)


def test_a_kept_symlink_out_of_the_run_folder_is_refused(tmp_path):
    run = _run_folder(tmp_path, {"artifact": "reports/curve.csv", "dir": "reports"})
    (run / "reports").mkdir()
    (run / "reports" / "curve.csv").symlink_to("/etc/passwd")
    with pytest.raises(UserError, match="lies outside the run folder"):
        sync(run)


def test_a_model_kept_by_the_pipeline_round_trips_as_weights_only(tmp_path):
    """What `_keep` writes loads with `weights_only=True`: tensors and plain data only."""
    folder = tmp_path / UNSENT_DIR
    outbox = Outbox("http://127.0.0.1:9", folder, "0" * 32)
    outbox.offline = True  # as after the store went out of reach
    net = MLP(hidden=8)
    network = {"_target_": MLP_TARGET, "hidden": 8}
    outbox.post(None, {"model": Probabilities(net), "network": network, "example": torch.ones(2)})
    saved = torch.load(folder / MODEL_FILE, weights_only=True)
    assert saved["network"] == network
    model, example = outbox._kept_model()
    torch.testing.assert_close(model.network.state_dict(), net.state_dict())
    torch.testing.assert_close(example, torch.ones(2))
