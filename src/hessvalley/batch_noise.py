"""Mini-batch noise arithmetic shared by the Xing et al. 2018 stage and figures (eq. 4, Fig 5;
eq. 5, Fig 7): the without-replacement factor, the ratio g, C and H predict, a rank
correlation and batch-means standard errors.

A leaf module (numpy only, nothing of the package, no torch): the stage stores the predicted
ratio at its batch sizes and the figure draws the same formula between them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def without_replacement(n_samples: int, batch_size: float) -> float:
    """f = (M - S) / (S (M - 1)): Cov(g_B) = f C for a batch of S of M samples drawn without
    replacement, C the per-sample covariance (normalised by M); 0 for the full set."""
    if n_samples < 2:
        return 0.0
    return (n_samples - batch_size) / (batch_size * (n_samples - 1))


def predicted_ratio(
    gradient_curvature: float,
    gradient_norm_sq: float,
    trace_hc: float,
    trace_c: float,
    n_samples: int,
    batch_size: float,
    covariance: np.ndarray | None = None,
) -> tuple[float, float]:
    """(E[g_B^T H g_B] / E|g_B|^2, its delta-method standard error) with
    E[g_B^T H g_B] = g^T H g + f tr(HC) and E|g_B|^2 = |g|^2 + f tr(C); ``covariance`` is
    the (2, 2) covariance of the estimates of tr(HC) and tr(C) (nan error when None)."""
    f = without_replacement(n_samples, batch_size)
    denominator = gradient_norm_sq + f * trace_c
    ratio = (gradient_curvature + f * trace_hc) / denominator
    if covariance is None:
        return ratio, math.nan
    jacobian = np.array([f, -ratio * f]) / denominator
    variance = float(jacobian @ np.asarray(covariance, dtype=float) @ jacobian)
    return ratio, math.sqrt(max(variance, 0.0))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's of the average ranks); nan when either is
    constant or there are fewer than two points."""
    if len(x) < 2:
        return math.nan
    a, b = average_ranks(x), average_ranks(y)
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / norm if norm > 0 else math.nan


def batch_means(series: Sequence[np.ndarray], blocks: int) -> tuple[float, float, int]:
    """Mean and standard error of autocorrelated series (e.g. one per seed): each is cut into
    ``blocks`` contiguous blocks (fewer when shorter), and the block means, pooled over the
    series, are treated as independent: (mean of all values, std of the block means / sqrt
    of their number, number of blocks). NaNs are dropped first."""
    means, weights = [], []
    for values in series:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        for block in np.array_split(values, min(blocks, len(values))) if len(values) else []:
            means.append(float(block.mean()))
            weights.append(len(block))
    if not means:
        return math.nan, math.nan, 0
    means_array, weights_array = np.asarray(means), np.asarray(weights, dtype=float)
    mean = float(np.average(means_array, weights=weights_array))
    if len(means) < 2:
        return mean, math.nan, len(means)
    return mean, float(means_array.std(ddof=1) / math.sqrt(len(means))), len(means)
