"""Guess the digit in a picture: `python src/predict.py ckpt_path=best.ckpt image=digit.png`.

Or with a logged MLflow model: `python src/predict.py model_uri=runs:/<run id>/model image=...`.
"""

import sys

from omegaconf import DictConfig, OmegaConf

from mnist_pipeline.prediction.images import load_digit
from mnist_pipeline.prediction.predict import load_predictor, render_probabilities
from mnist_pipeline.stages import entry_point


@entry_point("predict")
def main(cfg: DictConfig) -> None:
    try:
        if OmegaConf.is_missing(cfg, "image"):
            raise ValueError("which picture? give image=path/to/digit.png")
        pixels = load_digit(cfg.image)
        predict = load_predictor(cfg.ckpt_path, cfg.model_uri)
    except (FileNotFoundError, ValueError) as error:  # ImageError is a ValueError
        # The user's input is wrong, not the program: a sentence, not a traceback.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(render_probabilities(predict(pixels[None])[0]))


if __name__ == "__main__":
    main()
