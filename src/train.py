"""Train a network on MNIST: `python src/train.py model.hidden=256` (configs in conf/)."""

from omegaconf import DictConfig

from mnist_pipeline.stages import entry_point


@entry_point("config")
def main(cfg: DictConfig) -> float:
    # Imported once Hydra has composed the config: a typo fails in a second, not after
    # Lightning's ~4 s import.
    from mnist_pipeline.stages.train import train

    return train(cfg)


if __name__ == "__main__":
    main()
