"""Train a network on MNIST: `python src/train.py model.hidden=256` (configs in conf/)."""

import hydra
from omegaconf import DictConfig

from mnist_pipeline.stages import user_errors_exit_2
from mnist_pipeline.stages.train import train


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@user_errors_exit_2
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
