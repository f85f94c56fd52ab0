"""Networks: plain `torch.nn.Module`s, one file each, picked with `model=<name>`.

The contract every network keeps, so that training, checkpoints, the MLflow model, `predict.py`
and the report work with it unchanged: it maps raw pixels, float32 of shape (N, 28, 28) in
[0, 1], to logits of shape (N, 10). A network normalises its input itself (see `Normalize`), so
no caller ever needs the data set's statistics.

A network's constructor checks its own arguments and raises `ArgumentError` naming the one that
is wrong; the config check reports it as `model.<argument>` before any data is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Mean and standard deviation of the MNIST training pixels in [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
NUM_CLASSES = 10
IMAGE_SIZE = 28


class ArgumentError(ValueError):
    """A network argument with a value the network cannot use."""

    def __init__(self, name: str, value: Any, expected: str) -> None:
        super().__init__(f"{name}={value!r}: {expected}")
        self.name, self.value, self.expected = name, value, expected


class Normalize(nn.Module):
    """(pixels - MNIST mean) / std, with the statistics as buffers: saved, never trained."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MNIST_MEAN))
        self.register_buffer("std", torch.tensor(MNIST_STD))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


class Probabilities(nn.Module):
    """A network's softmax output: the probability that the picture is each digit."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(pixels).softmax(dim=-1)


def first_dense_layer(net: nn.Module) -> tuple[nn.Linear, nn.Module | None] | None:
    """The first `Linear` over the 784 pixels and the activation module right after it, if any.

    The weights and hidden-activation figures and the drawing page need such a layer: the MLP
    has one, a CNN not.
    """
    modules = list(net.modules())
    for index, module in enumerate(modules):
        if isinstance(module, nn.Linear) and module.in_features == IMAGE_SIZE * IMAGE_SIZE:
            after = modules[index + 1] if index + 1 < len(modules) else None
            is_activation = after is not None and type(after).__module__ == nn.ReLU.__module__
            return module, after if is_activation else None
    return None


@torch.inference_mode()
def hidden_and_logits(
    net: nn.Module, hidden_layer: nn.Module, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`hidden_layer`'s output (caught by a forward hook) and the logits for `pixels`."""
    caught: list[torch.Tensor] = []
    hook = hidden_layer.register_forward_hook(lambda module, args, output: caught.append(output))
    try:
        logits = net(pixels)
    finally:
        hook.remove()
    return caught[0], logits


def describe(net: nn.Module) -> str:
    """E.g. "MLP, 101,770 parameters"."""
    return f"{type(net).__name__}, {sum(p.numel() for p in net.parameters()):,} parameters"
