"""Packed nets compute what their solo nets compute, and give each one back as a solo module."""

from __future__ import annotations

import pytest
import torch

from mnist_lab.models import CNN, MLP
from mnist_lab.packed.layers import PackedDropout
from mnist_lab.packed.nets import PackedNet

SOLO_NETS = {
    "linear": lambda seed, dropout: MLP(hidden=[]),
    "mlp_bn": lambda seed, dropout: MLP(hidden=[24, 12], batch_norm=True, dropout=dropout, activation="tanh"),
    "cnn": lambda seed, dropout: CNN(
        channels=[3, 4], kernel_sizes=[5, 3], pool_after=[0, 1], fc=[16], conv_dropout=dropout, dropout=dropout
    ),
}


def solo_nets(kind: str, dropouts: list[float]) -> list[torch.nn.Module]:
    nets = []
    for seed, dropout in enumerate(dropouts):
        torch.manual_seed(seed)
        nets.append(SOLO_NETS[kind](seed, dropout))
    return nets


@pytest.mark.parametrize("kind", SOLO_NETS)
def test_a_packed_net_computes_each_solo_nets_logits_and_batch_norm_statistics(kind):
    solos = solo_nets(kind, [0.0, 0.0, 0.0])
    packed = PackedNet(solos)
    x = torch.randn(3, 8, 1, 28, 28)  # each model its own batch
    for mode in ("train", "eval"):  # train: batch statistics and running averages; eval: running averages
        packed.train(mode == "train")
        logits = packed(x)
        assert logits.shape == (3, 8, 10)
        for i, solo in enumerate(solos):
            solo.train(mode == "train")
            torch.testing.assert_close(logits[i], solo(x[i]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "batch"), [*((kind, 8) for kind in SOLO_NETS), ("linear", 1), ("cnn", 1)])
def test_a_packed_nets_gradients_are_each_solo_nets(kind, batch):
    solos = solo_nets(kind, [0.0, 0.0, 0.0])
    packed = PackedNet(solos)
    x = torch.randn(3, batch, 1, 28, 28, requires_grad=True)  # batch 1: the weight gradients are outer products
    y = torch.randint(0, 10, (3, batch))
    loss = sum(torch.nn.functional.cross_entropy(logits, y[i]) for i, logits in enumerate(packed(x)))
    loss.backward()
    for i, solo in enumerate(solos):
        solo_x = x[i].detach().clone().requires_grad_()
        torch.nn.functional.cross_entropy(solo(solo_x), y[i]).backward()
        scratch = solo_nets(kind, [0.0])[0]
        for p in packed.parameters():  # model i's gradients, cut out in the solo layout as its weights are
            p.data = p.grad
        packed.copy_into(i, scratch)
        for name, grad in scratch.named_parameters():
            torch.testing.assert_close(grad, dict(solo.named_parameters())[name].grad, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(x.grad[i], solo_x.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", SOLO_NETS)
def test_each_packed_model_comes_back_as_a_solo_net_whose_state_dict_loads_into_its_class(kind):
    dropouts = [0.0, 0.3] if kind != "linear" else [0.0, 0.0]
    solos = solo_nets(kind, dropouts)
    packed = PackedNet(solos)
    packed.train()
    optimizer = torch.optim.SGD(packed.parameters(), lr=0.1)
    for _ in range(3):  # move every parameter and running average away from the solos' values
        optimizer.zero_grad()
        packed(torch.randn(2, 8, 1, 28, 28)).square().mean().backward()
        optimizer.step()
    packed.eval()
    x = torch.randn(5, 1, 28, 28)
    for i, dropout in enumerate(dropouts):
        solo = packed.copy_into(i, SOLO_NETS[kind](i, dropout))
        fresh = SOLO_NETS[kind](i, dropout)
        fresh.load_state_dict(solo.state_dict())  # the keys and shapes of models.py's class
        fresh.eval()
        assert not torch.equal(fresh(x), solos[i].eval()(x)), "training should have changed the net"
        torch.testing.assert_close(fresh(x), packed(x.expand(2, *x.shape))[i], rtol=1e-5, atol=1e-6)


def test_dropout_rates_are_per_model_in_a_pack():
    solos = solo_nets("mlp_bn", [0.0, 0.5])
    packed = PackedNet(solos).train()
    torch.manual_seed(0)
    x = torch.randn(1, 512, 1, 28, 28).expand(2, -1, -1, -1, -1)
    hidden = packed.layers[:4](x.reshape(2, 512, -1))  # linear, batch norm, tanh, dropout
    zeros = (hidden == 0).float().mean(dim=(1, 2))
    assert zeros[0] == 0
    assert 0.45 < zeros[1] < 0.55


def test_nets_of_different_shapes_do_not_pack():
    with pytest.raises(ValueError, match="differ in shape"):
        PackedNet([MLP(hidden=[16]), MLP(hidden=[32])])
    with pytest.raises(ValueError, match="differ in shape"):
        PackedNet([MLP(hidden=[16]), MLP(hidden=[16], activation="tanh")])


@pytest.mark.parametrize("kind", ["mlp_bn", "cnn"])
def test_each_packed_model_draws_its_solo_nets_dropout_masks(kind):
    """Seeded as its solo run seeds torch, each model's training logits and gradients are its
    solo net's (a model with rate 0 draws nothing), over two steps, in both layouts."""
    dropouts, seeds = [0.3, 0.0, 0.55], [11, 12, 13]
    solos = solo_nets(kind, dropouts)
    packed = PackedNet(solos).train()
    packed.seed_dropout(seeds)
    x = torch.randn(3, 8, 1, 28, 28, requires_grad=True)
    logits = [packed(x) for _ in range(2)]  # the streams go on from where they were
    sum(out.square().sum() for out in logits).backward()
    for i, solo in enumerate(solos):
        solo.train()
        solo_x = x[i].detach().clone().requires_grad_()
        torch.manual_seed(seeds[i])
        solo_logits = [solo(solo_x) for _ in range(2)]
        sum(out.square().sum() for out in solo_logits).backward()
        for step in range(2):
            torch.testing.assert_close(logits[step][i], solo_logits[step], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x.grad[i], solo_x.grad, rtol=1e-5, atol=1e-6, msg=f"model {i}")


def test_dropout_streams_start_on_the_device_the_net_trains_on():
    """Seeded before the net moves (here on the meta device, then built on the CPU), each model
    still draws its solo run's masks: its stream is made where the net trains, not left behind
    where it was seeded (a CPU generator next to a net moved to a GPU)."""
    dropouts, seeds = [0.3, 0.0, 0.55], [11, 12, 13]
    solos = solo_nets("mlp_bn", dropouts)
    weights = PackedNet(solos).state_dict()
    packed = PackedNet(solos).to("meta").train()
    packed.seed_dropout(seeds)
    packed = packed.to_empty(device="cpu")
    packed.load_state_dict(weights)
    x = torch.randn(3, 8, 1, 28, 28)
    logits = [packed(x) for _ in range(2)]
    assert all(g.device == x.device for g in packed.generators)
    for i, solo in enumerate(solos):
        solo.train()
        torch.manual_seed(seeds[i])
        for step in range(2):
            torch.testing.assert_close(logits[step][i], solo(x[i]), rtol=1e-5, atol=1e-6, msg=f"model {i}")


def test_a_reseeded_stream_stays_the_generator_a_captured_step_draws_from():
    """Each epoch reseeds the streams; on the device they are on (named with an index or
    without, as a pack names "cuda") they are reseeded in place: a CUDA graph keeps drawing from
    the generators registered with it, and would not see new ones."""
    packed = PackedNet(solo_nets("mlp_bn", [0.3, 0.5])).train()
    packed.seed_dropout([1, 2])
    packed.start_dropout_streams(torch.device("cpu"))
    streams = list(packed.generators)
    first = packed(torch.randn(2, 8, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    for device in (torch.device("cpu"), torch.device("cpu", 0)):
        packed.seed_dropout([1, 2])
        packed.start_dropout_streams(device)
        assert all(new is old for new, old in zip(packed.generators, streams, strict=True)), device
        again = packed(torch.randn(2, 8, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
        assert torch.equal(again, first), "reseeded: the same masks again"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_dropout_streams_seeded_on_the_cpu_follow_the_net_to_the_gpu():
    solos = solo_nets("mlp_bn", [0.3, 0.5])
    x = torch.randn(2, 8, 1, 28, 28, device="cuda")
    outputs = []
    for _ in range(2):  # two nets seeded alike on the CPU, then moved: the same masks, drawn on the GPU
        packed = PackedNet(solos).train()
        packed.seed_dropout([1, 2])
        packed.cuda()
        outputs.append(packed(x))
        assert all(g.device.type == "cuda" for g in packed.generators)
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("channels", [None, 4])
def test_packed_dropout_is_each_models_nn_dropout_bit_for_bit(channels):
    """The same zeros and the same rounding as ``nn.Dropout`` on each model's solo input:
    ``[M, B, F]`` (model m's input ``[B, F]``), ``[B, M * C, H, W]`` (``[B, C, H, W]``)."""
    rates, seeds = [0.2, 0.8, 0.33], [5, 6, 7]
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    dropout = PackedDropout(rates, generators, channels).train()
    x = torch.randn(3, 16, 30) if channels is None else torch.randn(16, 3 * channels, 5, 6)
    out = dropout(x)
    for m, (rate, seed) in enumerate(zip(rates, seeds, strict=True)):
        torch.manual_seed(seed)
        if channels is None:
            assert torch.equal(out[m], torch.nn.Dropout(rate)(x[m]))
        else:
            part = slice(m * channels, (m + 1) * channels)
            assert torch.equal(out[:, part], torch.nn.Dropout(rate)(x[:, part].contiguous()))
