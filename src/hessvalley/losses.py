"""Losses as ``loss_fn(outputs, labels) -> mean loss`` over the batch.

Wei & Schwab train with label-smoothed cross-entropy ("so that a true minimum exists") and,
in A.4, with MSE on one-hot targets; Sagun and Xing use plain cross-entropy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def smoothed_target_entropy(label_smoothing: float, n_classes: int) -> float:
    """Entropy H(q) of the smoothed target q = (1 - eps) e_y + eps / K: the minimum of the
    label-smoothed cross-entropy."""
    eps, k = label_smoothing, n_classes
    if eps == 0:
        return 0.0
    top = 1 - eps + eps / k
    return -(top * math.log(top) + (k - 1) * (eps / k) * math.log(eps / k))


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    """Cross-entropy; with label smoothing eps, reported as KL(q || p) = CE - H(q).

    Subtracting the constant H(q) changes neither gradients nor Hessians but puts the minimum
    at 0, so a loss threshold like W&S's 0.005 means "close to the true minimum" (label
    smoothing is used "to make a true minimum of the cost function exist", W&S §2.1.1 fn 2).
    """

    def loss_fn(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(outputs, labels, label_smoothing=label_smoothing)
        if label_smoothing:
            loss = loss - smoothed_target_entropy(label_smoothing, outputs.shape[-1])
        return loss

    return loss_fn


def mse_one_hot(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the squared error ||f(x) - e_y||^2 (summed over classes)."""
    targets = F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)  # (B, K)
    return (outputs - targets).pow(2).sum(-1).mean()


def build_loss(spec: Mapping[str, Any]) -> LossFn:
    """Loss function from the run's ``loss`` config (name ce or mse, label_smoothing)."""
    name = spec.get("name", "ce")
    if name == "ce":
        return cross_entropy(float(spec.get("label_smoothing", 0.0)))
    if name == "mse":
        if spec.get("label_smoothing", 0.0):
            raise ValueError("label_smoothing applies to the ce loss only")
        return mse_one_hot
    raise ValueError(f"unknown loss {name!r}; known: ce, mse")
