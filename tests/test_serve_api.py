"""`POST /predict` over real HTTP on loopback (uvicorn in a thread): good inputs answered as
`predict.py` would, bad ones refused with a 4xx JSON error naming the problem, and the server
still serving after them."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import uvicorn
from PIL import Image, ImageDraw

from mnist_pipeline.networks import Probabilities
from mnist_pipeline.networks.cnn import CNN
from mnist_pipeline.networks.mlp import MLP
from mnist_pipeline.prediction.images import load_digit
from mnist_pipeline.prediction.predict import Model
from mnist_pipeline.serving.app import MAX_BYTES, create_app
from mnist_pipeline.serving.server import _bind


def _model(net: torch.nn.Module) -> Model:
    net = net.eval()
    return Model(Probabilities(net), net, "test network", "run-1", 0.5)


@pytest.fixture
def serve() -> Iterator:
    """Factory: `serve(model) -> base URL`, the app on a free loopback port until the test ends."""
    running = []

    def start(model: Model) -> str:
        sock = _bind("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(create_app(model), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


def post(url: str, body: bytes, content_type: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(url + "predict", data=body, method="POST")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def drawing(mode: str = "RGBA") -> bytes:
    """A white '7' on a transparent 280x280 canvas, as the page sends it."""
    image = Image.new(mode, (280, 280), (0, 0, 0, 0))
    ImageDraw.Draw(image).line([(70, 60), (210, 60), (110, 230)], fill="white", width=20)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def multipart(field: str, filename: str | None, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    body = (
        (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_a_drawing_is_answered_as_predict_py_would(serve) -> None:
    torch.manual_seed(0)
    net = MLP(hidden=16)
    url = serve(_model(net))
    png = drawing()
    digit = load_digit(io.BytesIO(png))  # predict.py's preprocessing, the one path
    expected = Probabilities(net.eval())(digit[None])[0].detach()

    status, answer = post(url, png, "image/png")
    assert status == 200, answer
    assert answer["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert answer["guess"] == int(expected.argmax())
    assert np.asarray(answer["input"]) == pytest.approx(digit.numpy(), abs=1e-3)
    # The hidden layer as the MLP computes it: relu of the first Linear over the pixels.
    first = net.layers[2]
    hidden = torch.relu(first(net.layers[1](net.layers[0](digit[None]))))[0]
    assert answer["hidden"] == pytest.approx(hidden.tolist(), abs=1e-3)
    assert min(answer["hidden"]) >= 0 and len(answer["hidden"]) == 16

    # The same drawing as a multipart upload, and its centred input sent back as JSON.
    body, content_type = multipart("image", "digit.png", png)
    assert post(url, body, content_type) == (200, answer)
    status, again = post(url, json.dumps(answer["input"]).encode(), "application/json")
    assert status == 200 and again["guess"] == answer["guess"]
    assert np.asarray(again["input"]) == pytest.approx(digit.numpy(), abs=0.01)

    # What the page reads about the model: its line, and 16 units' weights as bytes.
    with urllib.request.urlopen(url + "model", timeout=10) as response:
        info = json.loads(response.read())
    assert info["description"] == "MLP, 12,730 parameters; run run-1; test accuracy 50.0%; " + (
        "test network"
    )
    assert info["activation"] == "relu" and info["weights"]["units"] == 16
    weights = np.frombuffer(base64.b64decode(info["weights"]["data"]), np.uint8).reshape(16, 784)
    signs = np.sign(weights.astype(int) - 128)
    assert (signs == np.sign(first.weight.detach().numpy().round(3))).mean() > 0.98


def test_a_network_without_a_dense_first_layer_has_no_hidden_grid(serve) -> None:
    url = serve(_model(CNN(channels=(2, 2), hidden=8)))
    status, answer = post(url, drawing(), "image/png")
    assert status == 200 and answer["hidden"] is None
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)


def test_bad_input_gets_a_4xx_naming_the_problem_and_the_server_goes_on(serve) -> None:
    url = serve(_model(MLP(hidden=16)))
    row = [0.0] * 28
    empty_canvas = io.BytesIO()
    Image.new("RGBA", (280, 280), (0, 0, 0, 0)).save(empty_canvas, "PNG")
    cases = [
        (b"<html>not a picture</html>", "image/png", 422, "not an image"),
        (empty_canvas.getvalue(), "image/png", 422, "empty"),
        (b"", "image/png", 400, "empty request"),
        (json.dumps([row] * 27).encode(), "application/json", 422, "got shape [27, 28]"),
        (json.dumps([row] * 27 + [[0.0]]).encode(), "application/json", 422, "different lengths"),
        (json.dumps([[2.0] * 28] * 28).encode(), "application/json", 422, r"in [0, 1]"),
        (b"[[0, 1", "application/json", 400, "not JSON"),
        (*multipart("image", None, drawing()), 400, "without a file"),
    ]
    for body, content_type, status, expected in cases:
        code, answer = post(url, body, content_type)
        assert (code, expected in answer["detail"]) == (status, True), (expected, answer)
    # Over 1 MB: refused from its Content-Length, before the body is read (the client is
    # still sending it; urllib would see a broken pipe, so the request is written by hand).
    host, port = url.removeprefix("http://").strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {MAX_BYTES + 1}\r\n\r\n".encode()
            + b"\x89PNG"
        )
        reply = sock.makefile("rb").read().decode()
    assert reply.startswith("HTTP/1.1 413 ")
    detail = json.loads(reply.split("\r\n\r\n", 1)[1])["detail"]
    assert detail == "the picture is larger than 1 MB"
    assert post(url, drawing(), "image/png")[0] == 200


def test_the_page_and_its_assets_are_served_locally(serve) -> None:
    url = serve(_model(MLP(hidden=16)))
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(assets) == ["static/draw.js", "static/style.css"]
    for asset in assets:
        with urllib.request.urlopen(url + asset, timeout=10) as response:
            text = response.read().decode()
        # Works offline: nothing is fetched from anywhere but this server.
        assert not re.search(r"https?://|//[a-z]", text.replace("// ", "")), asset
    with urllib.request.urlopen(url + "openapi.json", timeout=10) as response:
        api = json.loads(response.read())
    assert set(api["paths"]["/predict"]["post"]["requestBody"]["content"]) == {
        "image/png",
        "multipart/form-data",
        "application/json",
    }
