"""`serve.py`'s stage: load the model, bind the address, run uvicorn on the app."""

from __future__ import annotations

import socket

from omegaconf import DictConfig

from mnist_pipeline.errors import UserError
from mnist_pipeline.prediction.predict import load_model


def serve(cfg: DictConfig) -> None:
    """Serves the page for `cfg`'s model on `cfg.host`:`cfg.port` until Ctrl-C or SIGTERM."""
    import uvicorn

    from mnist_pipeline.serving.app import create_app

    model = load_model(cfg.ckpt_path, cfg.model_uri)
    sock = _bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {model.describe()}", flush=True)
    print(f"open http://{shown}:{port}/ (API docs: /docs); Ctrl-C stops", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(model), log_level="warning"))
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a `UserError` saying why not.

    Bound here rather than by uvicorn, whose failure is a log line and exit status 1; and so
    that `port=0` reports the port it got.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    except (OSError, OverflowError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UserError(f"cannot listen on host={host} port={port}: {reason}") from None
    return sock
