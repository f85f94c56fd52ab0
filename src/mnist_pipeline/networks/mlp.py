"""The lecture's network: Flatten(28x28) -> [Linear -> activation -> Dropout] * k -> Linear(10)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mnist_pipeline.networks import IMAGE_SIZE, NUM_CLASSES, ArgumentError, Normalize

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


class MLP(nn.Module):
    """Flatten -> (Linear -> activation -> Dropout) per hidden layer -> Linear(10) logits.

    `hidden` is one width (the lecture's 128) or a list of widths for a deeper network.
    """

    def __init__(
        self, hidden: int | Sequence[int] = 128, activation: str = "relu", dropout: float = 0.2
    ) -> None:
        super().__init__()
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        if not widths or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
        ):
            raise ArgumentError(
                "hidden",
                hidden,
                "expected a positive integer or a non-empty list of them (e.g. 128 or [256,128])",
            )
        if activation not in ACTIVATIONS:
            raise ArgumentError("activation", activation, f"expected one of {list(ACTIVATIONS)}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ArgumentError("dropout", dropout, "expected 0 <= dropout < 1")
        layers: list[nn.Module] = [Normalize(), nn.Flatten()]
        fan_in = IMAGE_SIZE * IMAGE_SIZE
        for width in widths:
            layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation](), nn.Dropout(dropout)]
            fan_in = width
        layers.append(nn.Linear(fan_in, NUM_CLASSES))
        self.layers = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for pixels (N, 28, 28) in [0, 1]."""
        return self.layers(pixels)
