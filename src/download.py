"""Fetch and verify MNIST into data/mnist: `python src/download.py` (the DVC `download` stage).

Tries $MNIST_MIRROR, then data/raw (pinned by data.dvc), then the mirrors in conf/data/mnist.yaml.
"""

from omegaconf import DictConfig

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.config import resolve_path, validate
from mnist_pipeline.data.download import fetch
from mnist_pipeline.stages import entry_point


@entry_point("config")
def main(cfg: DictConfig) -> None:
    data = validate(cfg).data
    local = resolve_path(PROJECT_ROOT, data.local_mirror) if data.local_mirror else None
    mirrors = [str(local)] if local else []
    fetch(
        resolve_path(PROJECT_ROOT, data.dir),
        data.files,
        mirrors + list(data.mirrors),
        data.timeout,
        pinned=local,
    )


if __name__ == "__main__":
    main()
