"""The data module: splits, device-resident batches, seeded order, batch size 1, sharding."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from mnist_lab.data import mnist_arrays
from mnist_lab.data.datamodule import DeviceBatches, MNISTDataModule, split_indices, split_tensors


def test_split_sizes_are_exact_and_disjoint():
    train, val = split_indices(10_000, split_seed=0)
    assert len(train) == 50_000 and len(val) == 10_000
    assert len(set(train.tolist()) | set(val.tolist())) == 60_000
    train, val = split_indices(0.2, split_seed=0)
    assert len(val) == 12_000


def test_split_is_determined_by_its_seed():
    assert torch.equal(split_indices(100, 1, 1000)[1], split_indices(100, 1, 1000)[1])
    assert not torch.equal(split_indices(100, 1, 1000)[1], split_indices(100, 2, 1000)[1])


@pytest.mark.parametrize("val_size", [0, -5, 60_000, 1.5])
def test_impossible_val_size_is_a_sentence(val_size):
    with pytest.raises(ValueError, match="data.val_size"):
        split_indices(val_size, 0)


def test_batches_cover_every_row_once_per_epoch_with_a_ragged_end():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    epoch = [0]
    batches = DeviceBatches(x, y, batch_size=4, shuffle=True, seed=3, epoch=lambda: epoch[0])
    assert len(batches) == 3
    first = torch.cat([b[1] for b in batches])
    assert sorted(first.tolist()) == list(range(10))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    again = torch.cat([b[1] for b in batches])
    epoch[0] = 1
    second = torch.cat([b[1] for b in batches])
    assert torch.equal(first, again)  # same epoch, same order: resumable
    assert not torch.equal(first, second)  # a new epoch is a new permutation


def test_drop_last_and_batch_size_one():
    x, y = torch.zeros(10, 1), torch.arange(10)
    assert len(DeviceBatches(x, y, 4, drop_last=True)) == 2
    ones = list(DeviceBatches(x, y, 1, shuffle=True))
    assert len(ones) == 10 and all(b[0].shape == (1, 1) for b in ones)


def test_ranks_take_disjoint_equal_shards():
    x, y = torch.zeros(11, 1), torch.arange(11)
    shards = [torch.cat([b[1] for b in DeviceBatches(x, y, 2, shuffle=True, rank=r, world_size=2)]) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_data_module_normalizes_on_the_device(synthetic_data_dir):
    dm = MNISTDataModule(str(synthetic_data_dir), batch_size=32, val_size=500)
    dm.prepare_data()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.tensors["val_y"]) == 500 and len(dm.tensors["train_y"]) == 2500
    assert abs(dm.tensors["train_x"].min().item() - (0 - 0.1307) / 0.3081) < 1e-5


def test_without_normalize_pixels_are_only_scaled_to_0_1(synthetic_data_dir):
    normalized = MNISTDataModule(str(synthetic_data_dir), val_size=500)
    scaled = MNISTDataModule(str(synthetic_data_dir), val_size=500, normalize=False)
    for dm in (normalized, scaled):
        dm.prepare_data()
        dm.setup("fit")
    x = scaled.tensors["train_x"]
    assert x.min().item() >= 0 and x.max().item() <= 1
    assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)  # bytes / 255, nothing else
    assert torch.allclose(normalized.tensors["train_x"], (x - 0.1307) / 0.3081, atol=1e-5)


@pytest.mark.parametrize("drop_last", [False, True])
def test_groups_of_small_batches_hold_the_same_batches_in_the_same_order(drop_last):
    x, y = torch.arange(23.0).view(23, 1), torch.arange(23)
    single = DeviceBatches(x, y, batch_size=2, shuffle=True, seed=5, drop_last=drop_last)
    grouped = DeviceBatches(x, y, batch_size=2, shuffle=True, seed=5, drop_last=drop_last, group=4)
    assert len(grouped) == -(-len(single) // 4)
    split = [part for _, labels in grouped for part in labels.split(2)]
    assert [p.tolist() for p in split] == [labels.tolist() for _, labels in single]


def test_a_run_config_and_the_data_module_get_the_same_split(synthetic_data_dir):
    """``split_tensors`` takes a run's ``cfg.data`` (a pack, the size probe, a packed job's test)
    or the data module's own settings: the same settings give the same rows, and ``normalize``
    is on where the config leaves it out."""
    data = OmegaConf.create({"data_dir": str(synthetic_data_dir), "val_size": 0.25, "split_seed": 3})
    from_config = split_tensors(data, torch.device("cpu"))
    dm = MNISTDataModule(str(synthetic_data_dir), val_size=0.25, split_seed=3)
    dm.setup()
    train_rows, val_rows = split_indices(0.25, 3, 3000)
    arrays = mnist_arrays.load_arrays(str(synthetic_data_dir))  # the rows themselves, not the cache again
    for split, rows in (("train", train_rows), ("val", val_rows)):
        assert torch.equal(from_config[f"{split}_x"], dm.tensors[f"{split}_x"])
        assert torch.equal(from_config[f"{split}_y"], dm.tensors[f"{split}_y"])
        assert torch.equal(from_config[f"{split}_y"], arrays["train_labels"][rows].long())
        pixels = arrays["train_images"][rows].float() / 255
        assert torch.equal(from_config[f"{split}_x"], ((pixels - mnist_arrays.MEAN) / mnist_arrays.STD).unsqueeze(1))
    assert torch.equal(from_config["test_y"], arrays["test_labels"].long())
    normalized = split_tensors(OmegaConf.merge(data, {"normalize": True}), torch.device("cpu"))
    assert torch.equal(from_config["train_x"], normalized["train_x"])
    scaled = split_tensors(OmegaConf.merge(data, {"normalize": False}), torch.device("cpu"))
    assert not torch.equal(from_config["train_x"], scaled["train_x"])
