"""VGG for CIFAR (Simonyan & Zisserman 2015), with or without BatchNorm: VGG16 in Wei & Schwab
2020 (Fig 1, 3), VGG-11 in Xing et al. 2018 (Figs 1, 4-7). Layout follows kuangliu/pytorch-cifar.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Channel counts (as multiples of width/64) and "M" for a 2x2 max pool.
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    def __init__(
        self,
        layout: Sequence[int | str],
        in_channels: int,
        n_classes: int,
        batch_norm: bool = True,
        width: int = 64,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for item in layout:
            if item == "M":
                # ceil_mode keeps a 1x1 map 1x1, so small inputs (8x8 digits) pass all five pools.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            channels = int(item) * width // 64
            layers.append(nn.Conv2d(previous, channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(channels))
            layers.append(nn.ReLU())
            previous = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 8w, H/32, W/32)
        x = self.pool(x).flatten(1)  # (B, 8w)
        return self.classifier(x)  # (B, n_classes)


def vgg11(
    input_shape: Sequence[int], n_classes: int, batch_norm: bool = True, width: int = 64
) -> VGG:
    """VGG-11 (Xing et al. 2018 use it on CIFAR-10 with batch 100, lr 0.1)."""
    return VGG(CONFIGS["vgg11"], input_shape[0], n_classes, batch_norm, width)


def vgg16(
    input_shape: Sequence[int], n_classes: int, batch_norm: bool = True, width: int = 64
) -> VGG:
    """VGG16 (Wei & Schwab 2020 Figs 1 and 3 on CIFAR-10)."""
    return VGG(CONFIGS["vgg16"], input_shape[0], n_classes, batch_norm, width)
