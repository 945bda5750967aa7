"""M networks of one shape as one module: ``PackedNet``, built from the packed layers of
``layers.py``.

A pack is built from M solo networks (``models.MLP`` or ``models.CNN``, each initialized with
its own seed) and gives each one back as an ordinary solo module (``copy_into``), so a packed
job's checkpoint is a solo checkpoint. Inputs come as ``[M, B, 1, 28, 28]``: each model its own
batch; each model draws its dropout masks from its own random stream (``seed_dropout``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mnist_lab.packed.layers import ELEMENTWISE, PACKED, PackedDropout, Ungroup


def _describe(module: nn.Module) -> str:
    """What must match between the models of a pack at one layer."""
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}, {module.out_features}, bias={module.bias is not None})"
    return repr(module)  # Conv2d, BatchNorm1d, activations and pools print every setting


def _solo_layers(solo: nn.Sequential) -> list[tuple[nn.Module, float]]:
    """The solo net's layers other than dropout, each with the dropout rate that follows it."""
    layers: list[tuple[nn.Module, float]] = []
    for module in solo:
        if isinstance(module, nn.Dropout):
            layers[-1] = (layers[-1][0], module.p)
        else:
            layers.append((module, 0.0))
    return layers


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
