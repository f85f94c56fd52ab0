"""Score a checkpoint on the 10k test images: `python src/evaluate.py ckpt_path=.../best.ckpt`.

Writes metrics.json, confusion.json and figures to the `reports/` beside the checkpoint's
`checkpoints/` folder, and logs them into the MLflow run that trained it.
"""

from omegaconf import DictConfig

from mnist_pipeline.stages import entry_point


@entry_point("config")
def main(cfg: DictConfig) -> None:
    # Imported once Hydra has composed the config: a typo fails in a second, not after
    # Lightning's ~4 s import.
    from mnist_pipeline import PROJECT_ROOT
    from mnist_pipeline.config import ConfigError, resolve_path, validate
    from mnist_pipeline.stages.evaluate import evaluate

    cfg = validate(cfg)
    if not cfg.ckpt_path:
        raise ConfigError("ckpt_path: which checkpoint? give ckpt_path=<checkpoint to score>")
    evaluate(cfg, resolve_path(PROJECT_ROOT, cfg.ckpt_path))


if __name__ == "__main__":
    main()
