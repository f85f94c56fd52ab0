import pytest
import torch

from mnist_pipeline.model import MLP, Classifier, Probabilities


def test_lecture_network_has_101770_parameters():
    # 784*128 + 128 (hidden) + 128*10 + 10 (output), the count the lecture's Keras summary shows.
    assert sum(p.numel() for p in MLP(hidden=128).parameters()) == 101_770
    assert sum(p.numel() for p in Classifier().parameters()) == 101_770


def test_deeper_network_from_a_list_of_widths():
    net = MLP(hidden=[256, 64], activation="tanh")
    assert (
        sum(p.numel() for p in net.parameters()) == 784 * 256 + 256 + 256 * 64 + 64 + 64 * 10 + 10
    )
    assert [type(m).__name__ for m in net.layers] == [
        "Flatten",
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
        "Tanh",
        "Dropout",
        "Linear",
    ]


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "gelu"])
def test_probabilities_sum_to_one(activation):
    model = Classifier(hidden=32, activation=activation)
    pixels = torch.rand(7, 28, 28)
    probabilities = model.predict_proba(pixels)
    assert probabilities.shape == (7, 10)
    assert torch.all(probabilities >= 0)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(7))
    torch.testing.assert_close(Probabilities(model.net).eval()(pixels), probabilities)


def test_predict_proba_is_deterministic_and_keeps_training_mode():
    model = Classifier(hidden=32, dropout=0.5).train()
    pixels = torch.rand(4, 28, 28)
    torch.testing.assert_close(model.predict_proba(pixels), model.predict_proba(pixels))
    assert model.training


def test_normalisation_is_inside_the_model():
    # A blank picture maps to (0 - mean) / std before the first layer, not to 0.
    net = MLP(hidden=8, dropout=0.0)
    with torch.no_grad():
        net.layers[1].weight.fill_(1.0)
        net.layers[1].bias.zero_()
        hidden = net.layers[1](net.layers[0]((torch.zeros(1, 28, 28) - net.mean) / net.std))
    torch.testing.assert_close(hidden, torch.full((1, 8), -784 * 0.1307 / 0.3081))
    assert "mean" in net.state_dict() and "mean" not in dict(net.named_parameters())


def test_optimizer_choice():
    adam = Classifier(optimizer="adam", scheduler="none").configure_optimizers()
    assert isinstance(adam, torch.optim.Adam)
    sgd = Classifier(optimizer="sgd", lr=0.1, momentum=0.9, scheduler="none").configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
