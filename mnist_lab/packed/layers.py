"""The layers of ``models.py`` in their packed form: M layers of one shape, their parameters
stacked, the models on the first dimension (``[M, ...]``: the packed optimizer relies on it).
``PackedNet`` (nets.py) assembles them into a pack's network.

Activations travel in one of two layouts: dense ``[M, B, features]`` (a batched matmul,
``baddbmm``, per linear layer), or, in the convolutional part, ``[B, M * C, H, W]`` so that one
grouped convolution (``groups=M``) computes every model's convolution, and activations, max-pool
and batch norm apply per channel as they are. Each packed layer with parameters moves model
``i``'s values out into a solo layer (``copy_into``) and back in (``load_from``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Layers without parameters that act on each element or channel alike, whatever the layout.
ELEMENTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU, nn.MaxPool2d)


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


# The packed form of each solo layer with parameters.
PACKED = {nn.Linear: PackedLinear, nn.Conv2d: PackedConv2d, nn.BatchNorm1d: PackedBatchNorm1d}
