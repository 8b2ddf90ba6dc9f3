"""Tiny nets, data and independent float64 references for the curvature tests.

The references do not use ``HessianOperator``: they differentiate a plain closure over a flat
parameter vector with ``torch.autograd.functional`` (a float64 copy of the model, the whole
chunk at once), so they check the operator's chunking, HVP methods and BatchNorm handling.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hessvalley.losses import cross_entropy, mse_one_hot

LOSSES = {"ce": cross_entropy(), "ls_ce": cross_entropy(0.1), "mse": mse_one_hot}
N_CLASSES = 3


def tiny_mlp(batch_norm: bool, seed: int = 0, width: int = 12, in_features: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(in_features, width)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(width))
    layers += [nn.Tanh(), nn.Linear(width, N_CLASSES)]
    return _with_running_stats(nn.Sequential(*layers))


def tiny_cnn(batch_norm: bool, seed: int = 0) -> nn.Module:
    """(B, 1, 5, 5) images -> 3 conv channels -> mean pool -> 3 logits."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 3, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(3))
    layers += [nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, N_CLASSES)]
    return _with_running_stats(nn.Sequential(*layers))


def _with_running_stats(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm running statistics, so eval and train policies differ."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model


def tiny_data(n: int = 32, conv: bool = False, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (n, 1, 5, 5) if conv else (n, 6)
    x = torch.randn(shape, generator=generator)
    return x, torch.randint(0, N_CLASSES, (n,), generator=generator)


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()


def _closure(model: nn.Module, loss_fn, x, y, bn_policy: str, chunk_size: int | None):
    """Mean loss as a function of the flat float64 parameters."""
    reference = copy.deepcopy(model).double()
    reference.train(bn_policy == "train")
    names = [n for n, _ in reference.named_parameters()]
    shapes = [p.shape for _, p in reference.named_parameters()]
    x = x.double()
    chunk_size = chunk_size or len(y)
    chunks = [(x[s : s + chunk_size], y[s : s + chunk_size]) for s in range(0, len(y), chunk_size)]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = shape.numel()
            params[name] = theta[offset : offset + size].view(shape)
            offset += size
        return sum(
            len(yc) / len(y) * loss_fn(torch.func.functional_call(reference, params, (xc,)), yc)
            for xc, yc in chunks
        )

    return loss


def reference_hessian(
    model: nn.Module, loss_fn, x, y, bn_policy: str = "eval", chunk_size: int | None = None
) -> torch.Tensor:
    loss = _closure(model, loss_fn, x, y, bn_policy, chunk_size)
    return torch.autograd.functional.hessian(loss, flat_params(model), vectorize=True)


def reference_per_sample_gradients(model: nn.Module, loss_fn, x, y) -> torch.Tensor:
    """(M, P) by one autograd call per sample on a float64 eval-mode copy."""
    rows = []
    for k in range(len(y)):
        loss = _closure(model, loss_fn, x[k : k + 1], y[k : k + 1], "eval", None)
        rows.append(torch.autograd.functional.jacobian(loss, flat_params(model)))
    return torch.stack(rows)
