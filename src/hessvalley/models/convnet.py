"""Small convolutional networks: the W&S A.5 CNN and a 4-layer ConvNet for MNIST (W&S A.2.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hessvalley.models.mlp import ACTIVATIONS


class WSCNN(nn.Module):
    """Three 3x3 conv layers (15, 20, 10 channels in W&S A.5), global average pool, linear."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        channels: Sequence[int] = (15, 20, 10),
        kernel_size: int = 3,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, kernel_size, padding=kernel_size // 2),
                ACTIVATIONS[activation](),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C_last, H, W)
        x = self.pool(x).flatten(1)  # (B, C_last)
        return self.classifier(x)  # (B, n_classes)


def _pooled_twice(size: int) -> int:
    """Side length after two ceil-mode 2x2 max pools."""
    return ((size + 1) // 2 + 1) // 2


class ConvNet4(nn.Module):
    """conv-pool-conv-pool-fc-fc: the classic 4-layer MNIST ConvNet."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        act = ACTIVATIONS[activation]
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 3, padding=1),
            act(),
            nn.MaxPool2d(2, ceil_mode=True),  # (B, C0, ceil(H/2), ceil(W/2))
            nn.Conv2d(channels[0], channels[1], 3, padding=1),
            act(),
            nn.MaxPool2d(2, ceil_mode=True),  # (B, C1, ceil(H/4), ceil(W/4))
        )
        spatial = _pooled_twice(h) * _pooled_twice(w)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[1] * spatial, hidden),
            act(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # (B, n_classes)


def ws_cnn(
    input_shape: Sequence[int],
    n_classes: int,
    channels: Sequence[int] = (15, 20, 10),
    kernel_size: int = 3,
    activation: str = "relu",
) -> WSCNN:
    """The small CNN of Wei & Schwab 2020, appendix A.5 (timescale separation, Fig 6)."""
    return WSCNN(input_shape[0], n_classes, channels, kernel_size, activation)


def convnet4(
    input_shape: Sequence[int],
    n_classes: int,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    activation: str = "relu",
) -> ConvNet4:
    """The 4-layer ConvNet of Wei & Schwab 2020, appendix A.2.2 (randomized labels, MNIST)."""
    if len(channels) != 2:
        raise ValueError(f"convnet4 takes two conv widths, got channels={list(channels)}")
    return ConvNet4(input_shape, n_classes, channels, hidden, activation)
