"""Train a network on MNIST: `python src/train.py model.hidden=256` (configs in conf/)."""

from omegaconf import DictConfig

from mnist_pipeline.stages import entry_point
from mnist_pipeline.stages.train import train


@entry_point("config")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
