"""The fluctuation-dissipation criterion of Yaida (2019) from per-step series (numpy only).

SGD with momentum μ, dampening ν and learning rate η (torch's update: b ← μ b + (1 − ν) g̃,
θ ← θ − η b, g̃ the mini-batch gradient plus weight decay) keeps |θ|² stationary only if
O_L = ⟨θ_t · g̃_t⟩ equals O_R = η (1 + μ) / (2 (1 − ν)) ⟨|v_{t+1}|²⟩, v_{t+1} = b_{t+1} =
(θ_t − θ_{t+1}) / η. The relation holds for any fixed linear projection P of θ, g̃ and v too
(Wei & Schwab 2020, A.5). Summed over n consecutive steps it is exact up to boundary terms
of the first and last step, so |Ō_L / Ō_R − 1| over a stretch of steps falls like 1/n where
the projected coordinates are stationary and stays large where they drift.

The means here are over contiguous stretches of steps (the FDR stage's windows, with the
projection fixed over each); the standard error comes from batch means over contiguous
sub-blocks and the delta method. A leaf module: the figure and its claim use the same
statistics as the stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def fdr_prefactor(lr: float, momentum: float, dampening: float) -> float:
    """η (1 + μ) / (2 (1 − ν)): O_R per unit |v|²."""
    return lr * (1.0 + momentum) / (2.0 * (1.0 - dampening))


@dataclass(frozen=True)
class Criterion:
    """Means of O_L and O_R over some steps, their ratio and |ratio − 1| with its standard
    error (arrays over any trailing dimensions of the series, e.g. the subspaces)."""

    o_left: np.ndarray
    o_right: np.ndarray
    ratio: np.ndarray
    criterion: np.ndarray
    stderr: np.ndarray
    n_steps: int
    n_blocks: int


def fdr_criterion(segments: Sequence[tuple[np.ndarray, np.ndarray]], blocks: int) -> Criterion:
    """The criterion over the steps of ``segments`` ((o_left, o_right) series of shape
    (n, ...), each a contiguous stretch), pooled: Ō = sum over all steps / their number.

    Each segment is cut into ``blocks`` contiguous sub-blocks (fewer if it is shorter); with
    block means L_i, R_i and weights w_i = n_i / N, the ratio r = Ō_L / Ō_R has the
    delta-method variance B / (B − 1) Σ w_i² ((L_i − r R_i) / Ō_R)² over all B blocks (nan
    for a single block). It is only as good as the blocks are independent: noise correlated
    over more than a block understates the error, while the relation's boundary terms, which
    cancel between neighbouring blocks of one window, overstate it.
    """
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    lefts, rights, sizes = [], [], []
    for left, right in segments:
        left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
        if left.shape != right.shape or len(left) == 0:
            raise ValueError(f"need equal, non-empty series, got {left.shape}, {right.shape}")
        for part in np.array_split(np.arange(len(left)), min(blocks, len(left))):
            lefts.append(left[part].mean(axis=0))
            rights.append(right[part].mean(axis=0))
            sizes.append(len(part))
    if not sizes:
        raise ValueError("no steps to average over")
    weights = np.asarray(sizes, np.float64) / sum(sizes)
    shape = (-1,) + (1,) * np.ndim(lefts[0])
    block_left, block_right = np.stack(lefts), np.stack(rights)
    o_left = np.sum(weights.reshape(shape) * block_left, axis=0)
    o_right = np.sum(weights.reshape(shape) * block_right, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = o_left / o_right
        z = (block_left - ratio * block_right) / o_right
        n = len(sizes)
        variance = np.sum(weights.reshape(shape) ** 2 * z**2, axis=0) * np.divide(n, n - 1)
    return Criterion(
        o_left=o_left,
        o_right=o_right,
        ratio=ratio,
        criterion=np.abs(ratio - 1.0),
        stderr=np.sqrt(variance),
        n_steps=int(sum(sizes)),
        n_blocks=n,
    )


def half_running_criterion(o_left: np.ndarray, o_right: np.ndarray) -> np.ndarray:
    """Yaida's half-running averages: at each index t of a series that starts at step 0,
    |Ō_L / Ō_R − 1| with the means over the steps in [⌊t/2⌋, t]."""
    o_left, o_right = np.asarray(o_left, np.float64), np.asarray(o_right, np.float64)
    left = np.concatenate([[0.0], np.cumsum(o_left)])
    right = np.concatenate([[0.0], np.cumsum(o_right)])
    end = np.arange(1, len(o_left) + 1)
    start = np.arange(len(o_left)) // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs((left[end] - left[start]) / (right[end] - right[start]) - 1.0)


def late_windows(n_windows: int) -> list[int]:
    """The windows that count as "late in training": the last third (at least one)."""
    return list(range(n_windows - max(1, math.ceil(n_windows / 3)), n_windows))
