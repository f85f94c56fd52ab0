"""The networks of the model group keep the contract: raw pixels (N, 28, 28) in [0, 1] -> logits."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_pipeline import PROJECT_ROOT
from mnist_pipeline.networks import ArgumentError, Probabilities
from mnist_pipeline.networks.cnn import CNN
from mnist_pipeline.networks.mlp import MLP

MODEL_CONFIGS = sorted((PROJECT_ROOT / "conf" / "model").glob("*.yaml"))


def test_lecture_network_has_101770_parameters():
    # 784*128 + 128 (hidden) + 128*10 + 10 (output), the count the lecture's Keras summary shows.
    assert sum(p.numel() for p in MLP(hidden=128).parameters()) == 101_770


def test_deeper_network_from_a_list_of_widths():
    net = MLP(hidden=[256, 64], activation="tanh")
    assert (
        sum(p.numel() for p in net.parameters()) == 784 * 256 + 256 + 256 * 64 + 64 + 64 * 10 + 10
    )
    names = [type(m).__name__ for m in net.layers]
    assert names == [
        "Normalize",
        "Flatten",
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
    ]


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_network_maps_pixels_to_logits(path):
    net = instantiate(OmegaConf.load(path)).eval()
    pixels = torch.rand(7, 28, 28)
    assert net(pixels).shape == (7, 10)
    probabilities = Probabilities(net)(pixels)
    assert torch.all(probabilities >= 0)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(7))


def test_normalisation_is_inside_the_network():
    # A blank picture maps to (0 - mean) / std before the first layer, not to 0.
    net = MLP(hidden=8, dropout=0.0)
    normalised = net.layers[0](torch.zeros(1, 28, 28))
    torch.testing.assert_close(normalised, torch.full((1, 28, 28), -0.1307 / 0.3081))
    assert "layers.0.mean" in net.state_dict() and not any(
        "mean" in name for name, _ in net.named_parameters()
    )


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: MLP(hidden=0), "hidden"),
        (lambda: MLP(hidden="abc"), "hidden"),
        (lambda: MLP(activation="swish"), "activation"),
        (lambda: MLP(dropout=1.5), "dropout"),
        (lambda: CNN(channels=[8]), "channels"),
        (lambda: CNN(hidden=-1), "hidden"),
    ],
)
def test_bad_arguments_name_themselves(build, name):
    with pytest.raises(ArgumentError) as error:
        build()
    assert error.value.name == name and str(error.value).startswith(f"{name}=")
