"""The plain PyTorch loop as a command, to time against `python src/train.py` end to end.

    python benchmarks/plain_loop.py --data data/mnist --epochs 8

The same network (the config's default MLP), optimizer (Adam, lr 1e-3), batch size, split and
in-memory batches by slicing as the pipeline; each epoch trains, then scores the validation
split. No logging, no checkpoints: what a training costs at the least.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from mnist_pipeline.data.idx import load_images_and_labels
from mnist_pipeline.networks.mlp import MLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="directory of the IDX files")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(42)
    images, labels = load_images_and_labels(
        args.data / "train-images-idx3-ubyte", args.data / "train-labels-idx1-ubyte"
    )
    # The pipeline's split (data.split_seed=0, data.val_size=5000).
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train_idx, val_idx = order[5000:].sort().values, order[:5000].sort().values
    train, val = (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train[1]))
        x, y = train[0].index_select(0, order), train[1][order]  # as the data module does
        for i in range(0, len(y), args.batch_size):
            loss = F.cross_entropy(
                model(x[i : i + args.batch_size].float() / 255.0), y[i : i + args.batch_size]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(v.float() / 255.0) for v in val[0].split(1000)])
            correct = int((logits.argmax(1) == val[1]).sum())
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}: val acc {correct / len(val[1]):.4f} ({seconds:.2f} s)")


if __name__ == "__main__":
    main()
