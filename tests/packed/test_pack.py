"""What may and may not share a pack, and how many jobs share one."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tests.conftest import QUICK, compose_train


def test_jobs_that_must_match_do_not_share_a_pack(synthetic_data_dir):
    from mnist_lab.packed.pack import Pack

    base = [*QUICK, f"data.data_dir={synthetic_data_dir}"]
    with pytest.raises(ValueError, match="must share data.batch_size"):
        Pack([compose_train(*base), compose_train(*base, "data.batch_size=32")])
    with pytest.raises(ValueError, match="differ in shape"):
        Pack([compose_train(*base), compose_train(*base, "model.hidden=[64]")])
    with pytest.raises(ValueError, match="optimizers differ in class"):
        Pack([compose_train(*base), compose_train(*base, "optimizer=sgd")])
    with pytest.raises(ValueError, match="schedulers of a pack differ"):
        Pack([compose_train(*base), compose_train(*base, "scheduler=step")])


def test_the_pack_size_trains_the_most_jobs_per_second_and_packs_only_where_that_beats_one_by_one():
    from mnist_lab.packed.size_probe import choose_pack_size

    solo = 1.0  # seconds per step of one job alone
    assert choose_pack_size({1: solo, 2: 1.0, 4: 1.5, 8: 4.0}.get, [2, 4, 8]) == 4  # 8 is slower per job than 4
    assert choose_pack_size({1: solo, 2: 1.5, 4: 4.5}.get, [2, 4]) == 2
    assert choose_pack_size({1: solo, 2: 2.1, 4: 4.2}.get, [2, 4]) == 1  # 5 % slower than one by one: not packed


def test_the_probe_tries_a_whole_group_that_fits_in_one_pack():
    from mnist_lab.packed.size_probe import sizes_to_probe

    assert sizes_to_probe(5) == [2, 4, 5]  # 5 seeds: one pack of 5, not 4 and one alone
    assert sizes_to_probe(16) == [2, 4, 8, 16]
    assert sizes_to_probe(40) == [2, 4, 8, 16, 32]
    assert sizes_to_probe(1) == []  # one job: nothing to pack


def test_on_the_cpu_the_pack_size_follows_the_operations_of_a_jobs_step():
    from mnist_lab.packed.size_probe import cpu_pack_size, forward_flops

    softmax = compose_train("model=linear", "data.batch_size=64")
    assert forward_flops(softmax) == 2 * 64 * 784 * 10  # one matrix product: a multiply and an add each
    before = torch.random.get_rng_state()
    assert cpu_pack_size(softmax)[0] == 16
    assert cpu_pack_size(compose_train("model=cnn_small", "data.batch_size=32"))[0] == 2
    size, why = cpu_pack_size(compose_train("model=cnn", "data.batch_size=64"))
    assert size == 1 and "trains slower than they do one by one" in why
    assert torch.equal(torch.random.get_rng_state(), before)  # counted on the meta device: no draw


class ReadsItsWeights(nn.Sequential):
    """A user's plain stack whose constructor reads its weights: no net of it on the meta device."""

    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(784, 10))
        self.largest = self[1].weight.detach().abs().max().item()


class NeedsAFile(nn.Sequential):
    def __init__(self):
        raise FileNotFoundError("weights.pt is missing")


def job_of(target: str):
    return OmegaConf.create({"model": {"_target_": f"{__name__}.{target}"}, "data": {"batch_size": 8}})


def test_a_net_that_reads_its_weights_is_counted_on_the_cpu():
    from mnist_lab.packed.size_probe import cpu_pack_size, forward_flops

    before = torch.random.get_rng_state()
    assert forward_flops(job_of("ReadsItsWeights")) == 2 * 8 * 784 * 10
    assert cpu_pack_size(job_of("ReadsItsWeights"))[0] == 16
    assert torch.equal(torch.random.get_rng_state(), before)  # its weights drawn, the state put back


def test_a_net_that_cannot_be_counted_trains_alone_and_says_why():
    from mnist_lab.packed.size_probe import cpu_pack_size

    assert cpu_pack_size(job_of("NeedsAFile")) == (
        1,
        "on the CPU the operations of a job's step could not be counted (FileNotFoundError: weights.pt is missing), "
        "so each trains alone; hydra.launcher.pack_size=N packs them",
    )


def test_the_probe_times_real_packs(synthetic_data_dir):
    from mnist_lab.packed.size_probe import probe_pack_size

    cfgs = [compose_train(*QUICK, f"data.data_dir={synthetic_data_dir}", f"seed={s}") for s in range(4)]
    assert probe_pack_size(cfgs, torch.device("cpu"), sizes=(2, 4, 8), steps=2, warmup=1) in (1, 2, 4)


def test_the_probe_runs_only_on_a_gpu(synthetic_data_dir, monkeypatch):
    """One job: nothing to probe. On the CPU a group packs by the work of a job's step, untimed,
    however long it trains (so one command packs alike each time); on a GPU it is probed."""
    from mnist_lab.packed import size_probe as pack_size

    probed = []
    monkeypatch.setattr(pack_size, "probe_pack_size", lambda cfgs, device, **_: probed.append(len(cfgs)) or 3)
    cpu = torch.device("cpu")

    def group(jobs: int, *overrides: str) -> list:
        base = [*QUICK, f"data.data_dir={synthetic_data_dir}", *overrides]
        return [compose_train(*base, f"seed={s}") for s in range(jobs)]

    assert pack_size.pack_size(group(1), cpu) == (1, "one job")
    size, how = pack_size.pack_size(group(2), cpu)
    assert size == 2 and how.startswith("on the CPU: up to 16 jobs a pack, for ")
    assert pack_size.pack_size(group(20), cpu)[0] == 16
    assert pack_size.pack_size(group(2, "data.batch_size=4", "trainer.max_epochs=5"), cpu)[0] == 2
    assert probed == []
    assert pack_size.pack_size(group(2), torch.device("cuda")) == (3, "timing probe")
    assert probed == [2]


def test_a_pack_trains_on_the_pixels_its_jobs_ask_for(synthetic_data_dir):
    """data.normalize=false (lab 003's x / 255) must reach the pack, and jobs differing in it do not share one."""
    from mnist_lab.packed.pack import Pack

    base = [*QUICK, f"data.data_dir={synthetic_data_dir}"]
    scaled = Pack(
        [compose_train(*base, "data.normalize=false"), compose_train(*base, "data.normalize=false", "seed=1")]
    )
    assert 0 <= float(scaled.val_x.min()) and float(scaled.val_x.max()) <= 1
    with pytest.raises(ValueError, match="must share data.normalize"):
        Pack([compose_train(*base), compose_train(*base, "data.normalize=false")])


def test_a_weights_only_packed_checkpoint_of_an_earlier_version_is_refused_in_one_sentence(tmp_path):
    from omegaconf import OmegaConf

    from mnist_lab.cli.config_error import ConfigError
    from mnist_lab.records.checkpoint_checks import check_checkpoint

    cfg = compose_train(*QUICK, "ckpt_path=last")
    config = OmegaConf.to_container(cfg, resolve=True)
    weights_only = {"state_dict": {}, "hyper_parameters": {"config": config}, "epoch": 0, "packed": 2}
    path = tmp_path / "last.ckpt"
    torch.save(weights_only, path)
    with pytest.raises(ConfigError, match=r"packed sweep of an earlier version.*start a new run without ckpt_path\.$"):
        check_checkpoint(cfg, path)
    torch.save({**weights_only, "optimizer_states": [{}]}, path)  # a packed checkpoint in full resumes
    check_checkpoint(cfg, path)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"),
    ],
)
def test_a_pack_size_that_runs_out_of_memory_ends_the_probe_not_the_sweep(error):
    from mnist_lab.packed.size_probe import choose_pack_size

    def seconds_per_step(size: int) -> float:
        if size >= 8:
            raise error
        return {1: 1.0, 2: 1.0, 4: 1.5}[size]

    assert choose_pack_size(seconds_per_step, [2, 4, 8, 16]) == 4


@pytest.mark.parametrize("error", [RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("BatchNorm")])
def test_a_probe_error_that_is_not_out_of_memory_ends_the_probe_and_is_named(error):
    from mnist_lab.packed.size_probe import choose_pack_size

    def seconds_per_step(size: int) -> float:
        if size >= 2:
            raise error
        return 1.0

    failures = []
    assert choose_pack_size(seconds_per_step, [2, 4], failures) == 1
    assert failures == [f"a pack of 2 failed ({type(error).__name__}: {error})"]


def test_a_pack_size_that_cannot_be_chosen_leaves_the_jobs_alone_saying_what_to_set(monkeypatch):
    from types import SimpleNamespace

    from mnist_lab.packed import launch

    def fails(cfgs, device):
        raise RuntimeError("the probe's pack could not be built")

    monkeypatch.setattr(launch, "pack_size", fails)
    cfgs = [compose_train("model=linear", f"seed={s}") for s in range(2)]
    assert launch.PackedLaunch._pack_size(SimpleNamespace(pack_size="auto"), cfgs) == (
        1,
        "their pack size could not be chosen (RuntimeError: the probe's pack could not be built), so each trains "
        "alone; hydra.launcher.pack_size=N packs them",
    )
