"""Draw a digit and watch the trained network decide: `python src/serve.py`, then open
http://127.0.0.1:8000/. `ckpt_path=...` or `model_uri=runs:/<run id>/model` (or
`models:/<name>@<alias>`) picks the model; by default the best checkpoint of the newest finished
training. `host=` and `port=` pick the address (only loopback unless `host` is set).
"""

from omegaconf import DictConfig

from mnist_pipeline.serving.server import serve
from mnist_pipeline.stages import entry_point


@entry_point("serve")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
