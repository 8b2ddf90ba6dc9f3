"""The full-data evaluation every stage reports: eval-mode mean loss and accuracy, chunked.

One loop, so the training curves, the projection's stopping test and the losses it stores
are the same number computed the same way (float64 sums of per-chunk means times sizes).
"""

from __future__ import annotations

import torch
from torch import nn

from hessvalley.losses import LossFn


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, chunk_size: int
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over (x, y) in eval mode, ``chunk_size`` samples at
    a time; the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    n = y.shape[0]
    loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
    correct = torch.zeros((), dtype=torch.int64, device=y.device)
    for start in range(0, n, chunk_size):
        xs, ys = x[start : start + chunk_size], y[start : start + chunk_size]
        logits = model(xs)  # (B, n_classes)
        loss_sum += loss_fn(logits, ys).double() * ys.shape[0]
        correct += (logits.argmax(-1) == ys).sum()
    model.train(was_training)
    return (loss_sum / max(n, 1)).item(), (correct.double() / max(n, 1)).item()
