"""The loss between consecutive SGD iterates, step by step (Xing et al. 2018 §2-3, Table 1).

A step t takes θ_t to θ_{t+1}; its *profile* is the training loss at θ_t^α = (1 − α) θ_t +
α θ_{t+1} for α = 0, 1/n, ..., 1 (``segment_alphas``: the ends and n − 1 points strictly
between them). From a profile alone (torch-free, no package imports):

- the segment minimum and its α;
- an *interior minimum*: some point strictly inside lower than both ends;
- the *barrier margin*: the highest interior loss minus the higher end. A barrier is crossed
  when it is positive, i.e. some interior point is higher than both ends (Xing's definition);
- the *height*: the highest interior loss above the mean of the two ends,
  max_α ℓ(θ_t^α) − (ℓ(θ_t) + ℓ(θ_{t+1})) / 2, symmetric in the ends (Xing's Fig 4 caption,
  whose formula the text garbles, reads as ℓ(θ_t) + ℓ(θ_{t+1}) − 2ℓ(θ_t^α); ours is half of
  its negative, positive for a barrier).

Comparisons are strict: an interior value equal to an end (a float tie, a flat profile) is
neither a minimum below nor a barrier above it. A profile holding a non-finite value (a
diverged point) has no minimum, margin or height (NaN) and counts as neither.

Per epoch (``epoch_summary``): the number of barriers, the fraction of steps with an interior
minimum, and the fraction of consecutive steps whose segment minimum is higher than the one
before (the *floor*, the minima in sequence, going up: Xing's "ups and downs").
"""

from __future__ import annotations

import numpy as np

STEP_FIELDS = ("segment_min", "segment_min_alpha", "interior_min", "barrier_margin", "barrier")
EPOCH_FIELDS = ("n_steps", "barriers", "interior_fraction", "floor_up_fraction", "n_nonfinite")


def segment_alphas(points: int) -> np.ndarray:
    """α = 0, 1/points, ..., 1: ``points`` evaluations per step (the ends shared with the
    neighbouring steps) and ``points`` − 1 strictly inside."""
    if points < 2:
        raise ValueError(f"need at least 2 points per step (one inside), got {points}")
    return np.arange(points + 1) / points


def step_summaries(profiles: np.ndarray, alphas: np.ndarray) -> dict[str, np.ndarray]:
    """Per step (row of the (S, n + 1) ``profiles``): ``STEP_FIELDS`` and ``height``."""
    profiles = np.asarray(profiles, dtype=np.float64)
    if profiles.ndim != 2 or profiles.shape[1] != len(alphas) or len(alphas) < 3:
        raise ValueError(f"profiles {profiles.shape} do not match {len(alphas)} alphas (>= 3)")
    finite = np.all(np.isfinite(profiles), axis=1)
    safe = np.where(finite[:, None], profiles, 0.0)
    start, end, inside = safe[:, 0], safe[:, -1], safe[:, 1:-1]
    lowest = np.argmin(safe, axis=1)
    margin = inside.max(axis=1) - np.maximum(start, end)
    height = inside.max(axis=1) - (start + end) / 2
    nan = np.full(len(profiles), np.nan)
    return {
        "segment_min": np.where(finite, safe[np.arange(len(safe)), lowest], nan),
        "segment_min_alpha": np.where(finite, np.asarray(alphas)[lowest], nan),
        "interior_min": finite & (inside.min(axis=1) < np.minimum(start, end)),
        "barrier_margin": np.where(finite, margin, nan),
        "barrier": finite & (margin > 0),
        "height": np.where(finite, height, nan),
    }


def floor_rises(segment_min: np.ndarray) -> np.ndarray:
    """Whether each step's segment minimum is higher than the previous step's ((S − 1,);
    False where either is NaN)."""
    values = np.asarray(segment_min, dtype=np.float64)
    return values[1:] > values[:-1]


def epoch_summary(steps: dict[str, np.ndarray]) -> dict[str, float]:
    """``EPOCH_FIELDS`` of one epoch's ``step_summaries``."""
    n = len(steps["barrier"])
    rises = floor_rises(steps["segment_min"])
    return {
        "n_steps": n,
        "barriers": int(np.sum(steps["barrier"])),
        "interior_fraction": float(np.mean(steps["interior_min"])) if n else float("nan"),
        "floor_up_fraction": float(np.mean(rises)) if len(rises) else float("nan"),
        "n_nonfinite": int(np.sum(~np.isfinite(steps["segment_min"]))),
    }


def profiles_from_values(values: np.ndarray, points: int) -> np.ndarray:
    """The (S, points + 1) profiles of S consecutive steps from the S · points + 1 losses at
    α = k / points of each step in order (k < points) and the last iterate: step t's α = 1
    is step t + 1's α = 0, evaluated once."""
    values = np.asarray(values, dtype=np.float64)
    n_steps, left = divmod(len(values) - 1, points)
    if left or n_steps < 1:
        raise ValueError(f"{len(values)} losses are not S * {points} + 1 for a whole S >= 1")
    index = np.arange(n_steps)[:, None] * points + np.arange(points + 1)[None, :]
    return values[index]
