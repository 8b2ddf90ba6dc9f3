"""The benchmark suite's models and data: nets the curvature engine was not tuned on, at
realistic sample counts (bench_engine.py, bench_accuracy.py).

Each builder returns a freshly initialised float32 model (seeded) and each data function
seeded synthetic data, so both sides of a comparison (ours, PyHessian) see the same tensors
and a run needs no download. The data are class-dependent means plus noise: learnable, so a
trained net has the spiked spectrum of a real classifier (one outlier group per class).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hessvalley.models import preact_resnet18

N_CLASSES = 10
IMAGE = (3, 32, 32)
RESNET_WIDTH = 4


def gaussian_clusters(n: int, dim: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` points in R^dim, labels cycling over 10 classes: x = mu_y + noise with coordinate
    j scaled by 1/j (a power-law spectrum, as natural images have), class means 0.3 times
    the noise scale, the whole rescaled to E|x|^2 = dim. A few input directions carry most
    of the variance, so a trained MLP's Hessian is spiked (with isotropic noise its trace
    spreads over the 784 x 256 first-layer weights and Hutchinson needs few probes)."""
    generator = torch.Generator().manual_seed(seed)
    scale = 1.0 / torch.arange(1, dim + 1)
    means = 0.3 * scale * torch.randn(N_CLASSES, dim, generator=generator)
    y = torch.arange(n) % N_CLASSES
    x = means[y] + scale * torch.randn(n, dim, generator=generator)
    return x * (dim / x.pow(2).sum(1).mean()).sqrt(), y


def class_images(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` CIFAR-shaped images (3x32x32): a smooth per-class template plus a smooth noise
    field (both 8x8 Gaussian patterns upsampled, so the convolutions see spatial structure;
    the template at 0.3 of the noise's scale) plus unit white pixel noise."""
    generator = torch.Generator().manual_seed(seed)

    def smooth(count: int) -> Tensor:
        coarse = torch.randn(count, IMAGE[0], 8, 8, generator=generator)
        return nn.functional.interpolate(coarse, size=IMAGE[1:], mode="bilinear")

    templates = 0.3 * smooth(N_CLASSES)
    y = torch.arange(n) % N_CLASSES
    x = templates[y] + smooth(n) + torch.randn(n, *IMAGE, generator=generator)
    return x, y


def mlp() -> nn.Module:
    """MLP 784-256-10, tanh: P = 784*256 + 256 + 256*10 + 10 = 203,530."""
    return nn.Sequential(nn.Linear(784, 256), nn.Tanh(), nn.Linear(256, N_CLASSES))


def cnn(batch_norm: bool = False) -> nn.Module:
    """Three 3x3 convolutions (16, 32, 32 channels, padding 1), each followed by ReLU and 2x2
    max-pooling, then a linear layer 32*4*4 = 512 -> 10: P = 448 + 4,640 + 9,248 + 5,130 =
    19,466. With ``batch_norm``, a BatchNorm2d after each convolution (+160 = 19,626)."""
    layers: list[nn.Module] = []
    channels = [IMAGE[0], 16, 32, 32]
    for c_in, c_out in itertools.pairwise(channels):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, N_CLASSES))


def with_running_statistics(net: nn.Module, x: Tensor, batch_size: int = 256) -> nn.Module:
    """Give the BatchNorm layers running statistics of ``x`` (one pass in train mode without
    gradients, momentum None = cumulative average), so eval mode normalises like a trained
    net does rather than with the initial mean 0, variance 1."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        for batch in x.split(batch_size):
            net(batch)
    return net.eval()


@dataclass(frozen=True)
class SuiteModel:
    """One suite entry: what it is, its builder, its data and sample count."""

    description: str
    build: Callable[[], nn.Module]
    data: Callable[[int], tuple[Tensor, Tensor]]
    n_samples: int
    batch_norm: bool = False


SUITE = {
    "mlp": SuiteModel(
        "MLP 784-256-10 tanh, P = 203,530; 2048 power-law Gaussian-cluster points",
        mlp,
        lambda n: gaussian_clusters(n, 784),
        2048,
    ),
    "cnn": SuiteModel(
        "CNN conv 16-32-32 + linear 512-10, P = 19,466; 512 images 3x32x32",
        cnn,
        class_images,
        512,
    ),
    "resnet": SuiteModel(
        f"PreAct-ResNet18 width {RESNET_WIDTH} (CIFAR-shaped), BatchNorm eval, P = 44,510; "
        "512 images 3x32x32",
        lambda: preact_resnet18(IMAGE, N_CLASSES, width=RESNET_WIDTH),
        class_images,
        512,
        batch_norm=True,
    ),
    "bn": SuiteModel(
        "CNN 16-32-32 with BatchNorm2d after each conv, eval, P = 19,626; 512 images 3x32x32",
        lambda: cnn(batch_norm=True),
        class_images,
        512,
        batch_norm=True,
    ),
}


def suite_model(
    name: str, seed: int = 0, n_samples: int | None = None
) -> tuple[nn.Module, Tensor, Tensor]:
    """The named suite model (seeded init; BatchNorm nets with running statistics of their
    data, in eval mode) and its data (``n_samples``, default the suite's count)."""
    entry = SUITE[name]
    x, y = entry.data(n_samples or entry.n_samples)
    torch.manual_seed(seed)
    net = entry.build()
    if entry.batch_norm:
        net = with_running_statistics(net, x)
    return net, x, y
