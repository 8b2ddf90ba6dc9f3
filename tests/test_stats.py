"""The shared statistics leaf: weighted line fits and means with standard errors, checked
against closed forms and numpy's own least squares; torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hessvalley.stats import mean_sem, weighted_line_fit


def test_weighted_fit_equals_numpy_least_squares_with_its_covariance():
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 1.0, 7)
    se = rng.uniform(0.5, 2.0, x.size)
    y = 3.0 * x - 1.0 + se * rng.standard_normal(x.size)
    fit = weighted_line_fit(x, y, se)
    # np.polyfit weights residuals by w (so w = 1/se); cov="unscaled" is (A^T W A)^-1
    coefficients, covariance = np.polyfit(x, y, 1, w=1.0 / se, cov="unscaled")
    assert (fit.slope, fit.intercept) == pytest.approx(tuple(coefficients), rel=1e-12)
    assert fit.slope_se == pytest.approx(np.sqrt(covariance[0, 0]), rel=1e-12)
    assert fit.intercept_se == pytest.approx(np.sqrt(covariance[1, 1]), rel=1e-12)
    residual = y - np.polyval(coefficients, x)
    assert fit.chi2 == pytest.approx(np.sum((residual / se) ** 2), rel=1e-12)
    assert fit.dof == x.size - 2


def test_fit_through_the_origin_in_closed_form():
    """Weighted slope through 0: Σ w x y / Σ w x², standard error 1/sqrt(Σ w x²)."""
    x, y, se = np.array([1.0, 2.0, 4.0]), np.array([2.5, 3.5, 9.0]), np.array([0.5, 1.0, 2.0])
    w = 1.0 / se**2
    fit = weighted_line_fit(x, y, se, through_origin=True)
    slope = np.sum(w * x * y) / np.sum(w * x**2)
    assert fit.slope == pytest.approx(slope, rel=1e-14)
    assert fit.slope_se == pytest.approx(1.0 / np.sqrt(np.sum(w * x**2)), rel=1e-14)
    assert fit.chi2 == pytest.approx(np.sum(w * (y - slope * x) ** 2), rel=1e-14)
    assert (fit.intercept, fit.intercept_se, fit.dof) == (0.0, 0.0, 2)


def test_mean_sem_over_the_chosen_axis():
    values = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])
    mean, sem = mean_sem(values)
    np.testing.assert_allclose(mean, [3.0, 1.0])
    np.testing.assert_allclose(sem, [np.sqrt(14.0 / 3.0) / 2.0, 1.0])
    mean0, sem0 = mean_sem(values, axis=0)
    np.testing.assert_allclose(mean0, [0.5, 1.0, 1.5, 5.0])
    np.testing.assert_allclose(sem0, [0.5, 1.0, 1.5, 1.0])


def test_stats_does_not_import_torch():
    code = "import sys, hessvalley.stats; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
