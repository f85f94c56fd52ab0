"""Fetch and verify MNIST into data/mnist: `python src/download.py` (the DVC `download` stage).

Tries data/raw (pinned by data.dvc), then $MNIST_MIRROR, then the mirrors in conf/data/mnist.yaml.
"""

import hydra
from omegaconf import DictConfig

from mnist_pipeline.config import validate
from mnist_pipeline.training import build_datamodule


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    build_datamodule(validate(cfg)).prepare_data()


if __name__ == "__main__":
    main()
