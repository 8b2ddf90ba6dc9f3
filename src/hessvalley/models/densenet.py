"""DenseNet-BC for CIFAR (Huang et al. 2017). Wei & Schwab 2020 A.2.1 train it on CIFAR-100 with
blocks [6, 12, 24, 16] and growth rate 12. Layout follows kuangliu/pytorch-cifar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k), output concatenated to the input."""

    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))  # (B, k, H, W)
        return torch.cat([out, x], 1)  # (B, C + k, H, W)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression) - 2x2 average pool."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.relu(self.bn(x)))
        return F.avg_pool2d(out, 2, ceil_mode=True)  # (B, C', ceil(H/2), ceil(W/2))


class DenseNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        blocks: Sequence[int],
        growth_rate: int,
        reduction: float,
    ) -> None:
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n_layers in enumerate(blocks):
            for _ in range(n_layers):
                stages.append(Bottleneck(planes, growth_rate))
                planes += growth_rate
            if i < len(blocks) - 1:
                out_planes = math.floor(planes * reduction)
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.linear = nn.Linear(planes, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.conv1(x))  # (B, C, H/8, W/8)
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, C)
        return self.linear(out)  # (B, n_classes)


def densenet(
    input_shape: Sequence[int],
    n_classes: int,
    blocks: Sequence[int] = (6, 12, 24, 16),
    growth_rate: int = 12,
    reduction: float = 0.5,
) -> DenseNet:
    """DenseNet-BC; the defaults are W&S 2020 A.2.1 (kuangliu's densenet_cifar)."""
    return DenseNet(input_shape[0], n_classes, blocks, growth_rate, reduction)
