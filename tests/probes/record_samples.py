"""A callback recording which training samples each rank sees per epoch, added from the
command line as any callback is (no code of the pipeline changes):

    PYTHONPATH=tests/probes python src/train.py \
        '+callbacks.record_samples={_target_:record_samples.RecordSamples,dirpath:null}'

Writes `<output dir>/seen/rank<r>-epoch<e>.txt` (one hash per sample), `seen/train-split.txt`,
`seen/rank<r>-weights.txt` (a hash of the rank's trained weights) and `seen/rank<r>-metrics.json`
(the epoch metrics the rank holds after fit and after test). `dirpath: null` is the run's
`checkpoints/` folder; the files go beside it.
"""

import hashlib
import json
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
        self._write_metrics(trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        self._write_metrics(trainer)

    def _write_metrics(self, trainer) -> None:
        path = self.directory / f"rank{trainer.global_rank}-metrics.json"
        metrics = json.loads(path.read_text()) if trainer.testing and path.exists() else {}
        metrics.update({key: float(value) for key, value in trainer.callback_metrics.items()})
        path.write_text(json.dumps(metrics))
