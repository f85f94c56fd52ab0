"""A small convolutional network: two conv blocks and a dense head, >= 99% test accuracy.

(N, 28, 28) -> [Conv 3x3 -> ReLU -> MaxPool 2] x 2 -> Flatten -> Linear(hidden) -> ReLU ->
Dropout -> Linear(10). Proof that nothing in the pipeline is specific to the MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_pipeline.networks import IMAGE_SIZE, NUM_CLASSES, ArgumentError, Normalize


class CNN(nn.Module):
    """Two 3x3 conv blocks with `channels` filters each, then a `hidden`-wide dense layer."""

    def __init__(
        self, channels: tuple[int, int] = (32, 64), hidden: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        if len(channels) != 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ArgumentError("channels", list(channels), "expected two positive integers")
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden <= 0:
            raise ArgumentError("hidden", hidden, "expected a positive integer")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ArgumentError("dropout", dropout, "expected 0 <= dropout < 1")
        first, second = channels
        side = IMAGE_SIZE // 4  # two 2x2 poolings
        self.layers = nn.Sequential(
            Normalize(),
            nn.Unflatten(1, (1, IMAGE_SIZE)),  # (N, 28, 28) -> (N, 1, 28, 28)
            nn.Conv2d(1, first, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(second * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for pixels (N, 28, 28) in [0, 1]."""
        return self.layers(pixels)
