"""MNIST as in-memory tensors, batched by slicing.

The whole data set is 47 MB of uint8, so it is read once into tensors (on the GPU when training
there) and every batch is a slice of a per-epoch permutation: no per-sample `__getitem__`, no
collate, no worker processes. Pixels stay uint8 until the batch is on its device, where they
become float32 in [0, 1], the input the model expects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from mnist_pipeline.config import ConfigError
from mnist_pipeline.data.download import fetch
from mnist_pipeline.data.idx import load_images_and_labels
from mnist_pipeline.networks import ArgumentError

Batch = tuple[torch.Tensor, torch.Tensor]
# MNIST's training file (`files` pins its content): the validation images come from it.
MNIST_TRAIN_IMAGES = 60_000


class TensorBatches:
    """Iterable of (images, labels) batches sliced from in-memory tensors.

    Under DDP each rank takes every `world_size`-th index of the epoch's permutation, so the
    shards are disjoint and together cover the data once. For training, the permutation is cut
    to a multiple of `world_size` (at most `world_size - 1` samples, a different few each
    epoch) so that every rank runs the same number of steps; DDP hangs otherwise.

    Stateful, as Lightning's loops expect of a resumable loader: a checkpoint saved mid-epoch
    records (epoch, `progress()` batches trained in it), and the iteration of a training
    resumed from it starts after those batches, so none is trained twice or skipped.
    (Lightning asks for the state while it already holds the next batch, so the count comes
    from its progress, not from this iterator.)
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
        progress: Callable[[], int] = lambda: 0,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.rank, self.world_size, self.progress = rank, world_size, progress
        self._resume: dict[str, int] | None = None

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in batch order."""
        n = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch())
            order = torch.randperm(n, generator=generator)
            order = order[: n - n % self.world_size]
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size].to(self.labels.device)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.shuffle:
            per_rank = n // self.world_size
        else:
            per_rank = len(range(self.rank, n, self.world_size))
        return -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self.indices()
        if self.shuffle or self.world_size > 1:
            # One gather per epoch, then contiguous slices: cheaper than a gather per batch.
            # index_select copies whole rows: half the time of `images[order]` on a CPU.
            images, labels = self.images.index_select(0, order), self.labels[order]
        else:
            images, labels = self.images, self.labels
        resume, self._resume = self._resume, None
        done = resume["batches_done"] if resume and resume["epoch"] == self.epoch() else 0
        for start in range(done * self.batch_size, len(labels), self.batch_size):
            end = start + self.batch_size
            yield images[start:end], labels[start:end]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch(), "batches_done": self.progress()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)


class MNISTDataModule(pl.LightningDataModule):
    """Downloads (if needed), verifies and serves MNIST: 55k train / 5k val / 10k test."""

    def __init__(
        self,
        dir: str | Path,
        files: Mapping[str, str],
        mirrors: Sequence[str] = (),
        local_mirror: str | Path | None = None,
        val_size: int = 5000,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        timeout: float = 30.0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ArgumentError(name, value, "expected a positive integer")
        if not isinstance(val_size, int) or not 0 < val_size < MNIST_TRAIN_IMAGES:
            raise ArgumentError(
                "val_size",
                val_size,
                f"expected 1 to {MNIST_TRAIN_IMAGES - 1} (validation images, taken from the "
                f"{MNIST_TRAIN_IMAGES} training images)",
            )
        self.dir = Path(dir)
        self.files = dict(files)
        self.local_mirror = Path(local_mirror) if local_mirror else None
        self.mirrors = ([str(local_mirror)] if local_mirror else []) + list(mirrors)
        self.val_size, self.batch_size, self.eval_batch_size = val_size, batch_size, eval_batch_size
        self.split_seed, self.shuffle_seed, self.timeout = split_seed, shuffle_seed, timeout
        self._prepared = False
        self.train: Batch | None = None
        self.val: Batch | None = None
        self.test: Batch | None = None

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node, so ranks never download concurrently;
        # the train stage calls it first, before opening an MLflow run: once is enough.
        if self._prepared:
            return
        # The local mirror is the folder data.dvc pins: a first download fills it.
        fetch(self.dir, self.files, self.mirrors, timeout=self.timeout, pinned=self.local_mirror)
        self._prepared = True

    def _load(self, split: str) -> Batch:
        prefix = {"train": "train", "test": "t10k"}[split]
        return load_images_and_labels(
            self.dir / f"{prefix}-images-idx3-ubyte", self.dir / f"{prefix}-labels-idx1-ubyte"
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        # On a GPU the data lives there for the whole run: no host-to-device copy per batch.
        keep_on = device if device.type == "cuda" else torch.device("cpu")
        images, labels = self._load("train")
        if not 0 < self.val_size < len(labels):  # data files other than MNIST's (tests)
            raise ConfigError(
                f"data.val_size={self.val_size} must be between 1 and {len(labels) - 1} "
                f"(the training file has {len(labels)} samples)"
            )
        train_idx, val_idx = split_indices(len(labels), self.val_size, self.split_seed)
        self.train = images[train_idx].to(keep_on), labels[train_idx].to(keep_on)
        self.val = images[val_idx].to(keep_on), labels[val_idx].to(keep_on)
        test_images, test_labels = self._load("test")
        self.test = test_images.to(keep_on), test_labels.to(keep_on)

    def _batches(self, data: Batch, batch_size: int, shuffle: bool = False) -> TensorBatches:
        if self.trainer is None:
            return TensorBatches(*data, batch_size, shuffle, self.shuffle_seed)
        trainer = self.trainer
        return TensorBatches(
            *data,
            batch_size,
            shuffle,
            self.shuffle_seed,
            epoch=lambda: trainer.current_epoch,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )

    def train_dataloader(self) -> TensorBatches:
        # Overfitting (trainer.overfit_batches) means the same samples every epoch.
        shuffle = not (self.trainer and self.trainer.overfit_batches)
        batches = self._batches(self.train, self.batch_size, shuffle=shuffle)
        if self.trainer is not None:  # resumable mid-epoch: see TensorBatches
            progress = self.trainer.fit_loop.epoch_loop.batch_progress
            batches.progress = lambda: progress.current.completed
        return batches

    def val_dataloader(self) -> TensorBatches:
        return self._batches(self.val, self.eval_batch_size)

    def test_dataloader(self) -> TensorBatches:
        return self._batches(self.test, self.eval_batch_size)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels = batch  # uint8 pixels -> float32 in [0, 1], on the batch's device
        return images.float().div_(255.0), labels


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic train/val split of `range(n)`: the same seed gives the same split anywhere."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values
