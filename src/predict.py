"""Guess the digit in pictures: `python src/predict.py image=digit.png` (or a list, or a folder).

The model: `ckpt_path=best.ckpt`, `model_uri=runs:/<run id>/model`, or by default the best
checkpoint of the newest finished training. `json=true` prints one JSON object per picture.
"""

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnist_pipeline.errors import UserError
from mnist_pipeline.prediction.predict import answer, image_paths, load_model
from mnist_pipeline.stages import entry_point


@entry_point("predict")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "image"):
        raise UserError("which picture? give image=digit.png, image=[a.png,b.png] or image=folder")
    images = OmegaConf.to_object(cfg.image) if OmegaConf.is_list(cfg.image) else cfg.image
    paths = image_paths(images)
    model = load_model(cfg.ckpt_path, cfg.model_uri)
    one_file = isinstance(images, str) and not Path(images).is_dir()
    if answer(model, paths, as_json=cfg.json, chart=one_file):
        sys.exit(2)  # the pictures that could be read are answered; the others said why


if __name__ == "__main__":
    main()
