"""A callback recording which training samples each rank sees per epoch, added from the
command line as any callback is (no code of the pipeline changes):

    PYTHONPATH=tests/probes python src/train.py \
        '+callbacks.record_samples={_target_:record_samples.RecordSamples,dirpath:null}'

Writes `<output dir>/seen/rank<r>-epoch<e>.txt` (one hash per sample), `seen/train-split.txt`
and `seen/rank<r>-weights.txt` (a hash of the rank's trained weights). `dirpath: null` is the
run's `checkpoints/` folder; the files go beside it.
"""

import hashlib
from pathlib import Path

import pytorch_lightning as pl


def sample_hashes(images) -> list[str]:
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images.cpu()]


class RecordSamples(pl.Callback):
    def __init__(self, dirpath: str) -> None:
        self.directory, self.seen = Path(dirpath).parent / "seen", []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images, _ = batch
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
