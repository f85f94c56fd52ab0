import pytest
import torch

from mnist_pipeline.config import ConfigError
from mnist_pipeline.data.datamodule import MNISTDataModule, TensorBatches, split_indices


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_indices(1000, 100, seed=0)
    again_train, again_val = split_indices(1000, 100, seed=0)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert len(val) == 100 and len(train) == 900
    assert sorted(torch.cat([train, val]).tolist()) == list(range(1000))
    _, other_val = split_indices(1000, 100, seed=1)
    assert not torch.equal(val, other_val)


def _batches(n=103, batch_size=10, **kwargs):
    images = torch.arange(n, dtype=torch.uint8).repeat_interleave(784).view(n, 28, 28)
    return TensorBatches(images, torch.arange(n), batch_size, **kwargs)


def test_each_epoch_is_a_fresh_permutation_of_every_sample():
    epoch = [0]
    batches = _batches(shuffle=True, epoch=lambda: epoch[0])
    first = torch.cat([labels for _, labels in batches])
    assert sorted(first.tolist()) == list(range(103))
    assert len(list(batches)) == len(batches) == 11
    epoch[0] = 1
    second = torch.cat([labels for _, labels in batches])
    assert sorted(second.tolist()) == list(range(103)) and not torch.equal(first, second)
    epoch[0] = 0
    assert torch.equal(torch.cat([labels for _, labels in batches]), first)


def test_images_stay_with_their_labels():
    for images, labels in _batches(shuffle=True):
        assert torch.equal(images[:, 0, 0].long(), labels % 256)


def test_ranks_get_disjoint_equal_shards_covering_the_epoch():
    shards = [
        torch.cat([labels for _, labels in _batches(n=100, shuffle=True, rank=r, world_size=4)])
        for r in range(4)
    ]
    assert [len(s) for s in shards] == [25] * 4
    assert sorted(torch.cat(shards).tolist()) == list(range(100))
    # Uneven sizes: training shards are cut to equal length (DDP needs equal step counts).
    uneven = [_batches(n=103, shuffle=True, rank=r, world_size=2) for r in range(2)]
    assert len(uneven[0]) == len(uneven[1])
    assert sum(len(torch.cat([lb for _, lb in b])) for b in uneven) == 102


def test_evaluation_shards_count_every_sample_once():
    shards = [torch.cat([lb for _, lb in _batches(n=103, rank=r, world_size=2)]) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(103))


def test_datamodule_fetches_splits_and_scales(tmp_path, tiny_mnist, monkeypatch):
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))
    datamodule = MNISTDataModule(tmp_path / "mnist", sha256s, val_size=100, batch_size=32)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert [len(part[1]) for part in (datamodule.train, datamodule.val, datamodule.test)] == [
        500,
        100,
        200,
    ]
    assert datamodule.train[0].dtype == torch.uint8
    # 500 samples = 16 batches of 32, the last one 20.
    batches = list(datamodule.train_dataloader())
    assert len(batches) == len(datamodule.train_dataloader()) == 16
    assert [len(labels) for _, labels in batches] == [32] * 15 + [20]
    images, labels = datamodule.on_after_batch_transfer(batches[0], 0)
    assert images.dtype == torch.float32 and images.shape == (32, 28, 28)
    assert 0.0 <= images.min() and images.max() <= 1.0 and labels.dtype == torch.int64
    images, labels = datamodule.on_after_batch_transfer(next(iter(datamodule.val_dataloader())), 0)
    assert images.dtype == torch.float32 and images.shape == (100, 28, 28)


def test_a_resumed_epoch_starts_after_the_batches_it_had_trained():
    done = 4
    batches = _batches(n=103, batch_size=10, shuffle=True)
    batches.progress = lambda: done  # Lightning's count of the epoch's trained batches
    whole = [labels for _, labels in batches]
    state = batches.state_dict()
    assert state == {"epoch": 0, "batches_done": 4}
    batches.load_state_dict(state)
    rest = [labels for _, labels in batches]
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[4:], strict=True))
    assert len(rest) == 7
    # Once only; and a state of another epoch (saved at an epoch's end) skips nothing.
    assert len(list(batches)) == 11
    batches.load_state_dict({"epoch": 1, "batches_done": 11})
    assert len(list(batches)) == 11


def test_a_validation_split_larger_than_other_data_files_is_a_config_error(
    tmp_path, tiny_mnist, monkeypatch
):
    # The config check knows MNIST's 60000 training images; files of another size are checked
    # when they are read: the tiny data set has 600.
    source, sha256s = tiny_mnist
    monkeypatch.setenv("MNIST_MIRROR", str(source))
    datamodule = MNISTDataModule(tmp_path / "mnist", sha256s, val_size=600)
    datamodule.prepare_data()
    with pytest.raises(ConfigError, match=r"data.val_size=600 must be between 1 and 599"):
        datamodule.setup("fit")
