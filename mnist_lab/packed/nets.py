"""M networks of one shape as one module: the layers of ``models.py`` with stacked parameters.

A pack is built from M solo networks (``models.MLP`` or ``models.CNN``, each initialized with
its own seed) and gives each one back as an ordinary solo module (``copy_into``), so a packed
job's checkpoint is a solo checkpoint. Every parameter has the models on its first dimension
(``[M, ...]``): the packed optimizer relies on it.

Activations travel in one of two layouts: dense ``[M, B, features]`` (a batched matmul,
``baddbmm``, per linear layer), or, in the convolutional part, ``[B, M * C, H, W]`` so that one
grouped convolution (``groups=M``) computes every model's convolution, and activations, max-pool
and batch norm apply per channel as they are. Inputs come as ``[M, B, 1, 28, 28]``: each model
its own batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Layers without parameters that act on each element or channel alike, whatever the layout.
ELEMENTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU, nn.MaxPool2d)


def _describe(module: nn.Module) -> str:
    """What must match between the models of a pack at one layer."""
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}, {module.out_features}, bias={module.bias is not None})"
    return repr(module)  # Conv2d, BatchNorm1d, activations and pools print every setting


class _BatchedLinear(torch.autograd.Function):
    """``x [M, B, in] @ weight[M, out, in]^T + bias [M, 1, out]`` with the gradients computed in
    the layouts that are fast on a CPU. Written by hand because autograd's own backward of
    ``baddbmm`` computes the weight gradient as ``x^T @ grad`` ([M, in, B] @ [M, B, out]), which
    torch 2.14's CPU ``bmm`` runs 3-4x slower than ``grad^T @ x`` ([M, out, B] @ [M, B, in],
    the same numbers in ``nn.Linear``'s weight layout): for 16 models, batch 64, 784 -> 10, 800 us
    against 210 us (the layer's forward and backward: 1.6 ms against 0.7 ms), one thread of a
    2-core AMD EPYC VM, 2026-11-30. The formulas are autograd's; tests/packed/test_packed_models.py
    checks the gradients against ``nn.Linear``'s."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias, x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            # at batch 1 the product has one term: an outer product, the same numbers bit for bit,
            # which a broadcast multiply computes 3x faster than bmm (20 us against 60 us for 5
            # models, 784 -> 128, one thread of the 2-core AMD EPYC VM, 2026-11-30)
            grad_t = grad.transpose(1, 2)
            grad_weight = grad_t * x if x.shape[1] == 1 else torch.bmm(grad_t, x)
        grad_bias = grad.sum(dim=1, keepdim=True) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class PackedLinear(nn.Module):
    """M ``nn.Linear`` layers: ``x [M, B, in] @ weight[M, out, in]^T + bias [M, 1, out]`` (each
    model's weight in ``nn.Linear``'s layout)."""

    def __init__(self, solos: Sequence[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([s.weight.detach() for s in solos]))
        self.bias = nn.Parameter(torch.stack([s.bias.detach() for s in solos]).unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BatchedLinear.apply(x, self.weight, self.bias)

    def copy_into(self, i: int, solo: nn.Linear) -> None:
        solo.weight.data.copy_(self.weight[i])
        solo.bias.data.copy_(self.bias[i, 0])

    def load_from(self, i: int, solo: nn.Linear) -> None:
        self.weight.data[i].copy_(solo.weight)
        self.bias.data[i, 0].copy_(solo.bias)


class PackedConv2d(nn.Module):
    """M ``nn.Conv2d`` layers as one grouped convolution on ``[B, M * C_in, H, W]``."""

    def __init__(self, solos: Sequence[nn.Conv2d]):
        super().__init__()
        first = solos[0]
        self.models, self.stride, self.padding = len(solos), first.stride, first.padding
        self.weight = nn.Parameter(torch.stack([s.weight.detach() for s in solos]))  # [M, out, in, k, k]
        self.bias = nn.Parameter(torch.stack([s.bias.detach() for s in solos]))  # [M, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.weight.flatten(0, 1), self.bias.flatten(), self.stride, self.padding, groups=self.models
        )

    def copy_into(self, i: int, solo: nn.Conv2d) -> None:
        solo.weight.data.copy_(self.weight[i])
        solo.bias.data.copy_(self.bias[i])

    def load_from(self, i: int, solo: nn.Conv2d) -> None:
        self.weight.data[i].copy_(solo.weight)
        self.bias.data[i].copy_(solo.bias)


class PackedBatchNorm1d(nn.Module):
    """M ``nn.BatchNorm1d`` layers on ``[M, B, C]``: torch's batch norm over ``[B, M * C]``
    features, so each model's features get their own batch statistics and running averages."""

    def __init__(self, solos: Sequence[nn.BatchNorm1d]):
        super().__init__()
        first = solos[0]
        self.momentum, self.eps = first.momentum, first.eps
        self.weight = nn.Parameter(torch.stack([s.weight.detach() for s in solos]))  # [M, C]
        self.bias = nn.Parameter(torch.stack([s.bias.detach() for s in solos]))
        self.register_buffer("running_mean", torch.stack([s.running_mean for s in solos]))
        self.register_buffer("running_var", torch.stack([s.running_var for s in solos]))
        self.register_buffer("num_batches_tracked", first.num_batches_tracked.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        models, batch, features = x.shape
        if self.training:
            self.num_batches_tracked.add_(1)
        flat = x.transpose(0, 1).reshape(batch, models * features)
        out = F.batch_norm(
            flat,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.flatten(),
            self.bias.flatten(),
            self.training,
            self.momentum,
            self.eps,
        )
        return out.view(batch, models, features).transpose(0, 1)

    def copy_into(self, i: int, solo: nn.BatchNorm1d) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(solo, name).data.copy_(getattr(self, name)[i])
        solo.num_batches_tracked.copy_(self.num_batches_tracked)

    def load_from(self, i: int, solo: nn.BatchNorm1d) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(self, name).data[i].copy_(getattr(solo, name))
        self.num_batches_tracked.copy_(solo.num_batches_tracked)  # one count: every job made the same steps


class PackedDropout(nn.Module):
    """Each model's ``nn.Dropout`` (its own rate, its own masks), in either layout (``channels``
    per model in the convolutional one).

    Model m draws its mask from its own generator ``generators[m]`` (shared by all of the net's
    dropout layers, as a solo net's layers share the global one) exactly as torch's CPU dropout
    draws it (``at::dropout``: ``noise = empty_like(x).bernoulli_(1 - p)``, ``noise /= 1 - p``,
    ``x * noise``): one ``bernoulli_`` on a tensor of the solo input's shape (``[B, F]``, or
    ``[B, C, H, W]``), the scale ``1 / float32(1 - p)``, one multiplication. So with each
    generator seeded as the solo run seeds the global one, model m gets its solo run's masks and
    the same float rounding, whatever models share the pack. A model with rate 0 has no dropout
    layer in its solo net and draws nothing."""

    def __init__(self, rates: Sequence[float], generators: list[torch.Generator], channels: int | None = None):
        super().__init__()
        self.rates, self.generators, self.channels = [float(p) for p in rates], generators, channels
        keep = torch.tensor([1 - p for p in self.rates], dtype=torch.float32)  # 1 - p in double, as torch
        self.register_buffer("scale", 1 / keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        models = len(self.rates)
        if self.channels is None:  # [M, B, F]: model m's solo input is x[m]
            solo_shape = x.shape[1:]
        else:  # [B, M * C, H, W]: model m's solo input is x[:, m * C:(m + 1) * C]
            solo_shape = (x.shape[0], self.channels, *x.shape[2:])
        # int32: the type torch's MKL bernoulli draws into (no copy); 0 or 1 times the scale is exact.
        keep = torch.empty(models, *solo_shape, dtype=torch.int32, device=x.device)
        for m, (p, generator) in enumerate(zip(self.rates, self.generators, strict=True)):
            if p > 0:
                keep[m].bernoulli_(1 - p, generator=generator)
            else:
                keep[m].fill_(1)
        noise = keep * self.scale.view(-1, *[1] * len(solo_shape))
        if self.channels is None:
            return x * noise
        batch = x.shape[0]
        return (x.view(batch, models, *solo_shape[1:]) * noise.transpose(0, 1)).view(x.shape)


class Ungroup(nn.Module):
    """The solo ``nn.Flatten`` after convolutions: ``[B, M * C, H, W]`` -> ``[M, B, C * H * W]``
    (each model's features in the solo order: channel, row, column)."""

    def __init__(self, models: int):
        super().__init__()
        self.models = models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: the next layer's batched matmuls on the transposed view took up to twice as long
        return x.reshape(x.shape[0], self.models, -1).transpose(0, 1).contiguous()


def _solo_layers(solo: nn.Sequential) -> list[tuple[nn.Module, float]]:
    """The solo net's layers other than dropout, each with the dropout rate that follows it."""
    layers: list[tuple[nn.Module, float]] = []
    for module in solo:
        if isinstance(module, nn.Dropout):
            layers[-1] = (layers[-1][0], module.p)
        else:
            layers.append((module, 0.0))
    return layers


PACKED = {nn.Linear: PackedLinear, nn.Conv2d: PackedConv2d, nn.BatchNorm1d: PackedBatchNorm1d}


def _same_device(generator_device: torch.device, device: torch.device) -> bool:
    """Whether a generator on ``generator_device`` draws on ``device``: a device named without an
    index ("cuda", as a pack's is) means the current one, where a generator always has one."""
    if generator_device.type != device.type:
        return False
    if device.type != "cuda":
        return True  # one CPU, whatever index a name gives it
    index = torch.cuda.current_device() if device.index is None else device.index
    return generator_device.index == index


class PackedNet(nn.Module):
    """M solo ``nn.Sequential`` nets of one shape (``models.MLP``/``models.CNN``) as one module.

    ``forward(x [M, B, 1, 28, 28]) -> logits [M, B, 10]``. Dropout rates may differ between the
    models; every other layer setting must match (ValueError naming the layer otherwise). Each
    model draws its dropout masks from its own stream (``seed_dropout``).
    """

    def __init__(self, solos: Sequence[nn.Sequential]):
        super().__init__()
        self.models = len(solos)
        per_model = [_solo_layers(solo) for solo in solos]
        shapes = {tuple(_describe(layer) for layer, _ in layers) for layers in per_model}
        if len(shapes) > 1:
            raise ValueError(f"the nets of a pack differ in shape: {sorted(shapes)}")
        self.grouped_input = isinstance(per_model[0][0][0], nn.Conv2d)
        # Each model's dropout stream, shared by the dropout layers: seeded by ``seed_dropout``,
        # made at the next training forward (``_start_dropout_streams``).
        self.generators = [torch.Generator() for _ in solos]
        self._dropout_seeds: list[int] | None = None
        layers: list[nn.Module] = []
        channels = 1
        for position, (first, _) in enumerate(per_model[0]):
            solo_layers = [layers_of_one[position][0] for layers_of_one in per_model]
            if type(first) in PACKED:
                layers.append(PACKED[type(first)](solo_layers))
            elif isinstance(first, nn.Flatten):
                if self.grouped_input:
                    layers.append(Ungroup(self.models))
                channels = None
            elif isinstance(first, ELEMENTWISE):
                layers.append(first)
            else:
                raise ValueError(f"{type(first).__name__} layers cannot be packed yet")
            if isinstance(first, nn.Conv2d):
                channels = first.out_channels
            rates = [layers_of_one[position][1] for layers_of_one in per_model]
            if any(rates):
                layers.append(PackedDropout(rates, self.generators, channels))
        self.layers = nn.Sequential(*layers)
        self._solo_layer_types = tuple(PACKED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self._dropout_seeds is not None:
            self._start_dropout_streams(x.device)
        models, batch = x.shape[:2]
        if self.grouped_input:  # [M, B, C, H, W] -> [B, M * C, H, W]
            x = x.transpose(0, 1).reshape(batch, -1, *x.shape[3:])
        else:
            x = x.reshape(models, batch, -1)  # the solo nn.Flatten
        return self.layers(x)

    def seed_dropout(self, seeds: Sequence[int]) -> None:
        """Seed each model's dropout stream as ``torch.manual_seed(seeds[m])`` seeds the stream of
        model m's solo run; the streams start at the next training forward, on its input's device
        (moving the net after that, in the middle of the streams, needs ``seed_dropout`` again)."""
        self._dropout_seeds = [int(seed) for seed in seeds]

    def _start_dropout_streams(self, device: torch.device) -> None:
        # Made here, not in seed_dropout: a torch.Generator belongs to one device and does not
        # follow the module's .to() (it is no parameter or buffer), so a stream made at seeding
        # stays behind when the net moves before it trains, and bernoulli_ then refuses it or
        # draws on the wrong device. A seed is all the state a stream has before its first draw,
        # so making it at its first use, where the input is, gives the same masks; and no stream
        # state has to be carried between device types (a CPU and a CUDA generator's differ).
        # A stream already on that device is reseeded in place: a captured CUDA graph draws from
        # the generators registered with it (``packed.graph``), not from new ones.
        self.generators[:] = [
            generator.manual_seed(seed)
            if _same_device(generator.device, device)
            else torch.Generator(device=device).manual_seed(seed)
            for generator, seed in zip(self.generators, self._dropout_seeds, strict=True)
        ]
        self._dropout_seeds = None

    def start_dropout_streams(self, device: torch.device) -> None:
        """Start the streams seeded since the last training forward now, on ``device`` (a
        captured step needs them made, and saved, before its warm-up)."""
        if self._dropout_seeds is not None:
            self._start_dropout_streams(device)

    def copy_into(self, i: int, solo: nn.Module) -> nn.Module:
        """Write model ``i``'s parameters and buffers into ``solo`` (a fresh net of its config)."""
        with torch.no_grad():
            for packed, layer in self._layer_pairs(solo):
                packed.copy_into(i, layer)
        return solo

    def load_from(self, i: int, solo: nn.Module) -> None:
        """The inverse of ``copy_into``: ``solo``'s parameters and buffers become model ``i``'s
        (a resumed job's net, ``packed.resume``)."""
        with torch.no_grad():
            for packed, layer in self._layer_pairs(solo):
                packed.load_from(i, layer)

    def _layer_pairs(self, solo: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        solo_layers = [m for m in solo.modules() if isinstance(m, self._solo_layer_types)]
        packed_layers = [m for m in self.layers if hasattr(m, "copy_into")]
        if len(solo_layers) != len(packed_layers):
            raise ValueError(
                f"{type(solo).__name__} has {len(solo_layers)} layers with parameters, the pack {len(packed_layers)}"
            )
        return list(zip(packed_layers, solo_layers, strict=True))
