"""The one speed trick of the pipeline: training batches handed to Lightning in chunks.

Lightning spends about 0.5 ms of hooks and loop bookkeeping per batch, as long as a whole
optimizer step of the lecture's MLP on a CPU. So the data module hands Lightning lists of
consecutive batches (`Chunks`, about `data.chunk_size` samples each) and `train_on_chunk` takes
one optimizer step per batch through Lightning's manual optimization (so AMP, DDP gradient
sync and optimizer hooks still go through Lightning). The result is the same as batch by batch,
bit for bit; only the per-batch overhead is paid once per chunk. Works for any network.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import pytorch_lightning as pl
import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class Chunks:
    """The batches of `batches`, `size` consecutive ones per list.

    Stateful for Lightning: a checkpoint saved mid-epoch records `progress()`, (epoch, chunks
    trained in it), and a training resumed from it starts that epoch's iteration after those
    chunks, so no batch is trained twice or skipped. (Lightning asks for the state while it
    already holds the next chunk, so the count must come from its progress, not from here.)
    """

    def __init__(
        self,
        batches: Iterable[Batch],
        size: int,
        epoch: Callable[[], int] = lambda: 0,
        progress: Callable[[], int] = lambda: 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"chunk size must be at least one batch, got {size}")
        self.batches, self.size, self.epoch, self.progress = batches, size, epoch, progress
        self._resume: dict[str, int] | None = None

    def __len__(self) -> int:
        return -(-len(self.batches) // self.size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[Batch]]:
        batches = iter(self.batches)
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] == self.epoch():
            for _ in itertools.islice(batches, resume["chunks_done"] * self.size):
                pass  # slices of tensors: skipping costs next to nothing
        while chunk := list(itertools.islice(batches, self.size)):
            yield chunk

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch(), "chunks_done": self.progress()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)


def train_on_chunk(
    module: pl.LightningModule,
    chunk: list[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    on_step: Callable[[int, torch.Tensor, int], None],
) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """One optimizer step per batch of `chunk`; (samples, correct answers, summed loss).

    `on_step(step, loss, batch_size)` is called after each optimizer step, `step` counting
    optimizer steps as Lightning's `global_step` does. None when `trainer.max_steps` was
    already reached (Lightning checks it between chunks only).
    """
    optimizer = module.optimizers()
    # Read once per chunk: each walks Lightning's loop objects, and a step can take ~1 ms.
    step, max_steps = module.global_step, module.trainer.max_steps
    losses, correct, sizes = [], [], []
    for pixels, labels in chunk:
        if 0 <= max_steps <= step:
            break
        logits = module(pixels)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        module.manual_backward(loss)
        optimizer.step()
        step += 1
        losses.append(loss.detach())
        correct.append((logits.argmax(dim=-1) == labels).sum())
        sizes.append(len(labels))
        on_step(step, losses[-1], len(labels))
    if not losses:
        return None
    # Sums once per chunk on the device: no host sync per step.
    weights = torch.tensor(sizes, device=losses[0].device, dtype=losses[0].dtype)
    return sum(sizes), torch.stack(correct).sum(), (torch.stack(losses) * weights).sum()
