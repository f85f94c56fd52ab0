"""Train the lecture's MLP on MNIST: `python src/train.py model.hidden=256` (configs in conf/)."""

import hydra
from omegaconf import DictConfig

from mnist_pipeline.training import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
