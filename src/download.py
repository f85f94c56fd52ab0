"""Fetch and verify MNIST into data/mnist: `python src/download.py` (the DVC `download` stage).

Runs the data module's `prepare_data`: for MNIST, tries $MNIST_MIRROR, then data/raw (pinned by
data.dvc), then the mirrors in conf/data/mnist.yaml.
"""

from typing import Any

from omegaconf import DictConfig

from mnist_pipeline.config import validate
from mnist_pipeline.stages import entry_point


@entry_point("config")
def main(cfg: DictConfig) -> None:
    built: dict[str, Any] = {}
    validate(cfg, built)
    built["data"].prepare_data()


if __name__ == "__main__":
    main()
