"""`src/train.py` plus a callback recording which training samples each rank sees per epoch.

Run like src/train.py (Lightning's DDP launcher re-runs this script for the other ranks). Writes
`<output dir>/seen/rank<r>-epoch<e>.txt` (one hash per sample), `seen/train-split.txt` and
`seen/rank<r>-weights.txt` (a hash of the rank's trained weights).
"""

import hashlib
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from mnist_pipeline import training  # noqa: E402


def sample_hashes(images) -> list[str]:
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images.cpu()]


class RecordSamples(pl.Callback):
    def __init__(self, directory: Path) -> None:
        self.directory, self.seen = directory, []

    def on_train_batch_start(self, trainer, pl_module, chunk, chunk_idx) -> None:
        for images, _ in chunk:
            self.seen += sample_hashes((images * 255).round().byte())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.txt"
        (self.directory / name).write_text("\n".join(self.seen))
        self.seen = []
        if trainer.global_rank == 0:
            split = sample_hashes(trainer.datamodule.train[0])
            (self.directory / "train-split.txt").write_text("\n".join(split))

    def on_train_end(self, trainer, pl_module) -> None:
        weights = hashlib.sha1()
        for tensor in pl_module.state_dict().values():
            weights.update(tensor.cpu().numpy().tobytes())
        (self.directory / f"rank{trainer.global_rank}-weights.txt").write_text(weights.hexdigest())


build_callbacks = training.build_callbacks


def build_callbacks_recording(cfg, out):
    callbacks, checkpoint = build_callbacks(cfg, out)
    return [*callbacks, RecordSamples(out / "seen")], checkpoint


training.build_callbacks = build_callbacks_recording


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg) -> float:
    return training.train(cfg)


if __name__ == "__main__":
    main()
