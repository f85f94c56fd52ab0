"""Networks: plain `torch.nn.Module`s, one file each, picked with `model=<name>`.

The contract every network keeps, so that training, checkpoints, the MLflow model, `predict.py`
and the report work with it unchanged: it maps raw pixels, float32 of shape (N, 28, 28) in
[0, 1], to logits of shape (N, 10). A network normalises its input itself (see `Normalize`), so
no caller ever needs the data set's statistics.

A network's constructor checks its own arguments and raises `ArgumentError` naming the one that
is wrong; the config check reports it as `model.<argument>` before any data is loaded.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path
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


class UntrustedNetworkError(ValueError):
    """A network config read from a file that names something other than a network."""


def build_from_file(config: Any, source: str | Path) -> nn.Module:
    """The network of a model config read from a file (a checkpoint, kept MLflow records).

    Such a config is data, not code: anyone can write a `.ckpt`, and its checksum is no
    signature. `hydra.utils.instantiate` calls whatever `_target_` names, and Hydra only blocks
    a few callables like `os.system`. So every `_target_` in it, nested ones too, must name a
    `torch.nn.Module` subclass, checked before anything is built; `UntrustedNetworkError`,
    naming `source` and the target, otherwise.
    """
    from hydra.utils import instantiate

    if not isinstance(config, dict) or "_target_" not in config:
        raise UntrustedNetworkError(f"{source}: the saved model config names no network class")
    for key, value in _walk(config, "model"):
        if key.endswith("._target_"):
            _check_network_class(value, key, source)
        elif key.endswith("._partial_") and value:
            raise UntrustedNetworkError(f"{source}: {key}=true is not allowed in a saved network")
        elif isinstance(value, str) and "${" in value:
            # Saved resolved: an interpolation can only have been written in by hand.
            raise UntrustedNetworkError(f"{source}: {key}={value!r}: no interpolations allowed")
    try:
        return instantiate(config)
    except Exception as error:  # the class's own check of its arguments, wrapped by Hydra
        reason = str(error.__cause__ or error).strip().splitlines()[-1]
        raise UntrustedNetworkError(
            f"{source}: the saved network cannot be built ({reason})"
        ) from None


def _walk(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf and every `_target_` in a nested config."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _walk(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{key}[{index}]")
    else:
        yield key, value


def _check_network_class(target: Any, key: str, source: str | Path) -> None:
    """Refuse `target` unless it is a `torch.nn.Module` subclass that can be imported without
    running code the user did not choose: from a package already loaded (torch, this one) or a
    module of this repository (a user's network in `src/`). Importing any other installed
    module would run its top-level code on the file's say-so."""
    refused = f"{source}: {key}={target!r}"
    if not isinstance(target, str) or not all(part.isidentifier() for part in target.split(".")):
        raise UntrustedNetworkError(f"{refused} is not a class path")
    if not _importable_safely(target.split(".")[0]):
        raise UntrustedNetworkError(
            f"{refused}: module {target.split('.')[0]!r} is neither loaded nor part of this "
            "project; refusing to import it"
        )
    try:
        found = pkgutil.resolve_name(target)  # imports its modules as needed
    except (ImportError, AttributeError):
        found = None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        what = "not found" if found is None else f"a {type(found).__name__}"
        raise UntrustedNetworkError(f"{refused} is {what}, not a torch.nn.Module subclass")


def _importable_safely(top: str) -> bool:
    if top in sys.modules:
        return True
    from mnist_pipeline import installed, repository_root

    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finds, runs nothing
    except (ImportError, ValueError):
        return False
    places = [spec.origin] if spec and spec.origin else []
    places += list(spec.submodule_search_locations or []) if spec else []
    root = repository_root()
    return bool(places) and all(
        Path(place).resolve().is_relative_to(root) and not installed(place) for place in places
    )


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
