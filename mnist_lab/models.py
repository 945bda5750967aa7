"""The networks a study compares. Each takes images (B, 1, 28, 28) and returns logits (B, 10).

- ``MLP``: fully connected; ``hidden=[]`` is softmax regression (``model=linear``).
- ``CNN``: conv blocks, max-pool, then fully connected layers. Its defaults are the
  pytorch/examples MNIST net; ``model=cnn_small`` and the 2-conv variant are the same class
  with other arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from mnist_lab import NUM_CLASSES

ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


def dense_stack(widths: Sequence[int], act: str, dropout: float, batch_norm: bool) -> list[nn.Module]:
    """Linear layers between consecutive ``widths``, each followed by [BN], activation, [dropout]."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        layers.append(nn.Linear(n_in, n_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(make_activation(act))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return layers


class MLP(nn.Sequential):
    """Flatten, then ``len(hidden)`` hidden layers, then a linear layer to 10 classes."""

    def __init__(
        self,
        hidden: Sequence[int] = (128,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        widths = [28 * 28, *hidden]
        super().__init__(
            nn.Flatten(),
            *dense_stack(widths, activation, dropout, batch_norm),
            nn.Linear(widths[-1], NUM_CLASSES),
        )


class CNN(nn.Sequential):
    """Conv layers (each conv + activation, a max-pool after those listed in ``pool_after``),
    dropout, then fully connected layers of widths ``fc`` and a linear layer to 10 classes.

    Defaults are the pytorch/examples MNIST net: conv 32 k3, conv 64 k3, max-pool 2,
    dropout 0.25, fc 128, dropout 0.5.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        kernel_sizes: Sequence[int] = (3, 3),
        pool_after: Sequence[int] = (1,),
        fc: Sequence[int] = (128,),
        conv_dropout: float = 0.25,
        dropout: float = 0.5,
        activation: str = "relu",
    ):
        if len(channels) != len(kernel_sizes):
            raise ValueError(
                f"model.channels has {len(channels)} entries but model.kernel_sizes has "
                f"{len(kernel_sizes)}; give one kernel size per conv layer."
            )
        layers: list[nn.Module] = []
        n_in, side = 1, 28
        for i, (n_out, k) in enumerate(zip(channels, kernel_sizes, strict=True)):
            layers += [nn.Conv2d(n_in, n_out, k), make_activation(activation)]
            n_in, side = n_out, side - k + 1
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
                side //= 2
            if side < 1:
                raise ValueError(
                    "model.kernel_sizes and model.pool_after shrink the 28x28 image to nothing; "
                    "use smaller kernels or fewer pools."
                )
        if conv_dropout > 0:
            layers.append(nn.Dropout(conv_dropout))
        layers.append(nn.Flatten())
        widths = [n_in * side * side, *fc]
        layers += dense_stack(widths, activation, dropout, batch_norm=False)
        layers.append(nn.Linear(widths[-1], NUM_CLASSES))
        super().__init__(*layers)
