"""Score a checkpoint on the 10k test images: `python src/evaluate.py ckpt_path=.../best.ckpt`.

Writes metrics.json, confusion.json and figures to the `reports/` beside the checkpoint's
`checkpoints/` folder, and logs them into the MLflow run that trained it.
"""

import hydra
from omegaconf import DictConfig

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.config import resolve_path, validate
from mnist_pipeline.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    cfg = validate(cfg)
    if not cfg.ckpt_path:
        raise SystemExit("evaluate.py needs ckpt_path=<checkpoint to score>")
    evaluate(cfg, resolve_path(PROJECT_ROOT, cfg.ckpt_path))


if __name__ == "__main__":
    main()
