"""Statistics shared by several stages: means with standard errors and line fits.

A leaf module (numpy only, nothing of the package, no torch), so figure and claim code can
use the same fits as the stages that made the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LineFit:
    """Weighted least squares y = slope·x + intercept with standard errors and χ²."""

    slope: float
    slope_se: float
    intercept: float
    intercept_se: float
    chi2: float
    dof: int


def weighted_line_fit(
    x: np.ndarray, y: np.ndarray, y_se: np.ndarray, through_origin: bool = False
) -> LineFit:
    """Fit with per-point standard errors (here: of the mean over independent runs)."""
    x, y, y_se = (np.asarray(v, dtype=float) for v in (x, y, y_se))
    w = 1.0 / y_se**2
    design = x[:, None] if through_origin else np.stack([x, np.ones_like(x)], axis=1)
    normal = design.T @ (w[:, None] * design)
    covariance = np.linalg.inv(normal)
    coefficients = covariance @ (design.T @ (w * y))
    residual = y - design @ coefficients
    chi2 = float(np.sum(w * residual**2))
    dof = len(x) - design.shape[1]
    if through_origin:
        return LineFit(
            float(coefficients[0]), float(np.sqrt(covariance[0, 0])), 0.0, 0.0, chi2, dof
        )
    return LineFit(
        float(coefficients[0]),
        float(np.sqrt(covariance[0, 0])),
        float(coefficients[1]),
        float(np.sqrt(covariance[1, 1])),
        chi2,
        dof,
    )


def mean_sem(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean over independent runs."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    return values.mean(axis=axis), values.std(axis=axis, ddof=1) / math.sqrt(n)


def slope_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y on x and its standard error (nan when undetermined)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan, math.nan
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    if len(x) < 3:
        return float(coef[0]), math.nan
    residual = y - design @ coef
    variance = residual @ residual / (len(x) - 2)
    return float(coef[0]), float(math.sqrt(variance / np.sum((x - x.mean()) ** 2)))
