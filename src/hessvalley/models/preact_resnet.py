"""Pre-activation ResNet-18 for CIFAR (He et al. 2016, "Identity mappings in deep residual
networks"), as used by Wei & Schwab 2020 (Figs 1, 3, 4c). Layout follows kuangliu/pytorch-cifar.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(
        self, in_channels: int, n_classes: int, num_blocks: Sequence[int], width: int = 64
    ) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        stages = []
        for i, blocks in enumerate(num_blocks):
            stages.append(self._make_stage(width * 2**i, blocks, stride=1 if i == 0 else 2))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(self.in_planes)
        self.linear = nn.Linear(self.in_planes, n_classes)

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)  # (B, w, H, W)
        out = self.stages(out)  # (B, 8w, H/8, W/8)
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 8w)
        return self.linear(out)  # (B, n_classes)


def preact_resnet18(input_shape: Sequence[int], n_classes: int, width: int = 64) -> PreActResNet:
    """PreAct-ResNet18: four stages of two pre-activation basic blocks (W&S 2020 §2.1.1)."""
    return PreActResNet(input_shape[0], n_classes, [2, 2, 2, 2], width)
