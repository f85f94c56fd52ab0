"""The drawing page and its API (FastAPI), answered by one loaded model.

`POST /predict` takes a picture (a PNG as the raw body or a multipart upload) or a 28x28 JSON
array of grey levels, runs it through the same preprocessing as `predict.py`
(`prediction.images.load_digit`) and answers with the probabilities, the guess, the centred
28x28 input and, for a network with a dense first layer, the hidden activations. `GET /` is the
page, whose assets are all in `static/` (no CDN: it works offline).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from mnist_pipeline.networks import IMAGE_SIZE, first_dense_layer, hidden_and_logits
from mnist_pipeline.prediction.images import ImageError, load_digit
from mnist_pipeline.prediction.predict import Model

STATIC = Path(__file__).parent / "static"
MAX_BYTES = 1_000_000  # a drawing is a few kB; anything over 1 MB is refused unread
MAX_PIXELS = 4_000_000  # a drawing, not a poster: decoding stays a matter of milliseconds
PICTURE = "the picture"  # how errors name what was sent

BODIES = {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {"image": {"type": "string", "format": "binary"}},
        }
    },
    "application/json": {
        "schema": {
            "type": "array",
            "minItems": IMAGE_SIZE,
            "maxItems": IMAGE_SIZE,
            "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}},
        }
    },
}


class Prediction(BaseModel):
    """The network's answer for one picture."""

    guess: int
    probabilities: list[float]  # 10, summing to 1
    input: list[list[float]]  # the 28x28 picture the network saw, white ink on black in [0, 1]
    hidden: list[float] | None  # the first hidden layer's activations, when the network has one


class Answerer:
    """One model's answers, with its first hidden layer caught on the way when it has one."""

    def __init__(self, model: Model) -> None:
        self.model = model
        dense = first_dense_layer(model.network) if model.network is not None else None
        self.dense, self.hidden_layer = (dense[0], dense[1] or dense[0]) if dense else (None, None)

    def __call__(self, digit: torch.Tensor) -> Prediction:
        hidden = None
        if self.hidden_layer is not None:
            caught, logits = hidden_and_logits(self.model.network, self.hidden_layer, digit[None])
            probabilities = logits.softmax(dim=-1)[0]
            hidden = caught[0].numpy().round(4).tolist()
        else:
            probabilities = self.model.predict(digit[None])[0]
        return Prediction(
            guess=int(probabilities.argmax()),
            probabilities=probabilities.tolist(),
            input=digit.numpy().round(3).tolist(),
            hidden=hidden,
        )

    def info(self) -> dict[str, Any]:
        """What the page shows about the model, and the first layer's weights as images."""
        info: dict[str, Any] = {
            "description": self.model.describe(),
            "run_id": self.model.run_id,
            "test_accuracy": self.model.test_accuracy,
            "activation": None,
            "weights": None,
        }
        if self.dense is not None:
            if self.hidden_layer is not self.dense:
                info["activation"] = type(self.hidden_layer).__name__.lower()
            # Each unit's 784 weights scaled by its largest magnitude to -127..127, shifted to
            # bytes: 100 kB of base64 for the MLP instead of a megabyte of JSON numbers.
            weight = self.dense.weight.detach().cpu()
            scaled = weight / weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
            data = (scaled * 127).round().to(torch.int16).add(128).to(torch.uint8).numpy()
            info["weights"] = {"units": weight.shape[0], "data": base64.b64encode(data).decode()}
        return info


def create_app(model: Model) -> FastAPI:
    """The page, `/model` and `/predict` for `model`."""
    answer = Answerer(model)
    app = FastAPI(
        title="mnist-pipeline: draw a digit",
        description="Draw a digit, see the trained network's educated guess among 10 classes.",
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/model")
    def model_info() -> dict[str, Any]:
        """The model served: description, run, test accuracy, first-layer weights (base64)."""
        return answer.info()

    @app.post(
        "/predict",
        response_model=Prediction,
        openapi_extra={"requestBody": {"required": True, "content": BODIES}},
    )
    async def predict(request: Request) -> Prediction:
        """A PNG (raw body or multipart field `image`) or a 28x28 JSON array of grey levels in
        [0, 1]: the probabilities, the guess, the centred input, the hidden activations."""
        # Async and computed in place (a few ms): one request at a time on the model, so the
        # forward hook that catches the hidden layer never sees two pictures.
        body = await _read_body(request)
        content_type = request.headers.get("content-type", "")
        try:
            if content_type.startswith("application/json"):
                digit = load_digit(_json_array(body), name=PICTURE)
            else:
                if content_type.startswith("multipart/form-data"):
                    body = _multipart_file(body, content_type)
                digit = load_digit(io.BytesIO(body), name=PICTURE, max_pixels=MAX_PIXELS)
        except ImageError as error:
            raise HTTPException(422, str(error)) from None
        return answer(digit)

    return app


async def _read_body(request: Request) -> bytes:
    """The request's body, refused with 413 as soon as it passes `MAX_BYTES`."""
    too_large = HTTPException(413, f"{PICTURE} is larger than {MAX_BYTES // 1_000_000} MB")
    if int(request.headers.get("content-length") or 0) > MAX_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BYTES:  # no or a false Content-Length: stop reading all the same
            raise too_large
        chunks.append(chunk)
    if not size:
        raise HTTPException(400, "empty request: send a PNG, or a 28x28 JSON array of grey levels")
    return b"".join(chunks)


def _json_array(body: bytes) -> np.ndarray:
    """A 28x28 array of numbers, or 422 naming what is wrong with it."""
    try:
        value = json.loads(body)
    except ValueError as error:
        raise HTTPException(400, f"the body is not JSON: {error}") from None
    expected = f"expected a {IMAGE_SIZE}x{IMAGE_SIZE} array of grey levels in [0, 1]"
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):  # ragged rows, strings, objects
        got = "rows of different lengths or non-numbers"
        raise HTTPException(422, f"{expected}, got {got}") from None
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise HTTPException(422, f"{expected}, got shape {list(array.shape)}")
    return array


def _multipart_file(body: bytes, content_type: str) -> bytes:
    """The first file of a multipart/form-data body (the field `image`, or any other).

    The standard library's MIME parser, not starlette's form parsing: that needs the
    python-multipart package, which nothing else here installs.
    """
    header = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    files = [part for part in message.iter_parts() if part.get_filename() is not None]
    if not message.is_multipart() or not files:
        raise HTTPException(400, "multipart request without a file: send the PNG as field `image`")
    files.sort(key=lambda part: part.get_param("name", header="content-disposition") != "image")
    return files[0].get_payload(decode=True) or b""
