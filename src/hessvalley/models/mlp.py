"""Fully connected networks (Sagun et al. 2017 §3; W&S 2020 Fig 2a, A.4; Xing et al. 2018 MLP)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


class MLP(nn.Module):
    """Flatten -> [Linear -> activation] * len(widths) -> Linear."""

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        widths: Sequence[int] = (64,),
        activation: str = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width, bias=bias), ACTIVATIONS[activation]()]
            previous = width
        layers.append(nn.Linear(previous, n_classes, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, n_classes)
        return self.net(x)


def mlp(
    input_shape: Sequence[int],
    n_classes: int,
    widths: Sequence[int] = (64,),
    activation: str = "relu",
    bias: bool = True,
) -> MLP:
    """MLP over the flattened input; W&S A.4 uses one hidden layer of 70, Sagun two of 30."""
    return MLP(math.prod(input_shape), n_classes, widths, activation, bias)
