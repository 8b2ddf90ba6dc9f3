"""W&S Fig 2a's fits and claim: the sum of negative Hessian eigenvalues is linear in the
training loss, through about 0 (Appendix A.3).

Pure numpy (no torch, no store): the figure computes the per-cell means from the equilibrium
stores (``cell_means``), fits them (``weighted_fit``) and states the claim (``fig2a_claim``);
tests feed synthetic cells to the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from hessvalley.claims import UNTESTABLE, Claim, Number, Verdict, combine, signed, within
from hessvalley.stats import weighted_line_fit

SOURCE = "Wei & Schwab 2020, Fig 2a (A.3)"
PAPER_W, PAPER_B = -40.07, -1.22e-5
PAPER_VALUE = (
    f"best-fit line y = w x + b, w = {PAPER_W}, b = {PAPER_B:.3g} (MNIST 500 samples, one hidden "
    "layer, 6220 parameters)"
)
MIN_CELLS = 3  # a line through fewer cells has no standard error
SE_FLOOR = 0.1  # a cell's standard error is at least this fraction of the median one


@dataclass(frozen=True)
class Fit:
    """Weighted least-squares line y = slope·x + intercept; standard errors scaled by the
    reduced χ² (so they reflect the scatter about the line, not only the cells' errors)."""

    slope: float
    slope_se: float
    intercept: float
    intercept_se: float
    r2: float  # weighted coefficient of determination
    chi2: float  # weighted residual sum of squares (with the floored standard errors)
    n: int


NO_FIT = Fit(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, 0)


def effective_se(y_se: np.ndarray, floor: float = SE_FLOOR) -> np.ndarray:
    """Standard errors for the weights: at least ``floor`` times the median positive one (a
    cell that repeats itself exactly would otherwise take all the weight), and the median
    where none is known (one snapshot); all ones when no cell has one."""
    y_se = np.asarray(y_se, dtype=float)
    known = y_se[np.isfinite(y_se) & (y_se > 0)]
    median = float(np.median(known)) if known.size else 1.0
    lowest = floor * median
    return np.where(np.isfinite(y_se), np.maximum(y_se, lowest), median)


def weighted_fit(x: np.ndarray, y: np.ndarray, y_se: np.ndarray, floor: float = SE_FLOOR) -> Fit:
    """Weights 1/se² (``effective_se``); covariance (AᵀWA)⁻¹ times χ²/(n − 2). Only the
    points with finite x and y count; fewer than 3 give no fit (NaN)."""
    x, y, y_se = (np.asarray(v, dtype=float) for v in (x, y, y_se))
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, y_se = x[keep], y[keep], y_se[keep]
    if len(x) < MIN_CELLS or np.ptp(x) == 0:
        return replace(NO_FIT, n=len(x))
    se = effective_se(y_se, floor)
    line = weighted_line_fit(x, y, se)
    scale = math.sqrt(line.chi2 / line.dof)
    w = 1.0 / se**2
    mean = np.sum(w * y) / np.sum(w)
    total = float(np.sum(w * (y - mean) ** 2))
    r2 = 1.0 - line.chi2 / total if total > 0 else math.nan
    return Fit(
        line.slope,
        line.slope_se * scale,
        line.intercept,
        line.intercept_se * scale,
        r2,
        line.chi2,
        len(x),
    )


@dataclass(frozen=True)
class Cells:
    """One entry per SGD cell (sweep store, batch size, lr): means over its snapshots and the
    standard errors of those means (NaN with one snapshot). Snapshots of one run are
    correlated, so these errors are lower bounds; the fit's χ² scaling absorbs the excess."""

    sweep: np.ndarray
    batch_size: np.ndarray
    lr: np.ndarray
    n_snapshots: np.ndarray
    diverged: np.ndarray  # any snapshot diverged: the cell's means are NaN
    loss: np.ndarray
    loss_se: np.ndarray
    negative_sum: np.ndarray
    negative_sum_se: np.ndarray
    noise_trace: np.ndarray  # C·tr H, A.3's prediction of the loss
    noise_trace_se: np.ndarray

    @property
    def finite(self) -> np.ndarray:
        return ~self.diverged & np.isfinite(self.loss) & np.isfinite(self.negative_sum)


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    if len(values) < 2:
        return float(np.mean(values)), math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))


def cell_means(points: Mapping[str, np.ndarray]) -> Cells:
    """Group the SGD points (``source == "sgd"``) of the stores by (sweep, batch size, lr)."""
    sgd = np.asarray([str(s) == "sgd" for s in points["source"]], dtype=bool)
    keys = np.stack([points[k][sgd] for k in ("sweep", "batch_size", "lr")], axis=1)
    cells, inverse = np.unique(keys.astype(float), axis=0, return_inverse=True)
    columns = {
        "loss": points["train_loss"][sgd],
        "negative_sum": points["negative_sum"][sgd],
        "noise_trace": points["C"][sgd] * points["trace"][sgd],
    }
    diverged = np.asarray(points["diverged"][sgd], dtype=bool)
    out: dict[str, list[float]] = {f"{k}{s}": [] for k in columns for s in ("", "_se")}
    n_snapshots, bad = [], []
    for index in range(len(cells)):
        member = inverse.ravel() == index
        n_snapshots.append(int(member.sum()))
        bad.append(bool(diverged[member].any()))
        for name, values in columns.items():
            mean, se = _mean_se(values[member]) if not bad[-1] else (math.nan, math.nan)
            out[name].append(mean)
            out[f"{name}_se"].append(se)
    return Cells(
        sweep=cells[:, 0].astype(int),
        batch_size=cells[:, 1].astype(int),
        lr=cells[:, 2],
        n_snapshots=np.asarray(n_snapshots),
        diverged=np.asarray(bad, dtype=bool),
        **{name: np.asarray(values) for name, values in out.items()},
    )


@dataclass(frozen=True)
class Fig2aFits:
    """The three fits of the figure, over the finite SGD cells."""

    line: Fit  # Σλ<0 = w L + b
    loglog: Fit  # log|Σλ<0| = slope log L + c: 1 means ∝ L, 1/2 means ∝ √L
    noise: Fit  # L = slope · C tr H + L*: A.3 predicts slope 1


def fig2a_fits(cells: Cells) -> Fig2aFits:
    """Each fit weights a cell by the standard error of its mean y (``weighted_fit``)."""
    ok = cells.finite
    loss, negative = cells.loss[ok], cells.negative_sum[ok]
    line = weighted_fit(loss, negative, cells.negative_sum_se[ok])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_se = cells.negative_sum_se[ok] / np.abs(negative)
        loglog = weighted_fit(np.log(loss), np.log(np.abs(negative)), log_se)
    noise = weighted_fit(cells.noise_trace[ok], loss, cells.loss_se[ok])
    return Fig2aFits(line, loglog, noise)


def fig2a_claim(cells: Cells, fits: Fig2aFits | None = None) -> Claim:
    """Σλ<0 = w L + b over the SGD cells: w negative at ≥ 3 standard errors and b within 3
    standard errors of 0; R², the log-log slope and A.3's noise slope are reported beside."""
    fits = fits or fig2a_fits(cells)
    line, n = fits.line, int(cells.finite.sum())
    numbers = [
        Number("slope w of Σλ<0 against L", line.slope, line.slope_se),
        Number("intercept b", line.intercept, line.intercept_se),
        Number("R² (weighted)", line.r2),
        Number("log-log slope of |Σλ<0| against L", fits.loglog.slope, fits.loglog.slope_se),
        Number("slope of L against C·tr H (A.3: 1)", fits.noise.slope, fits.noise.slope_se),
        Number("finite SGD cells", n),
        Number("diverged SGD cells", int(cells.diverged.sum())),
    ]
    if n:
        numbers.append(Number("smallest cell loss", float(np.min(cells.loss[cells.finite]))))
        numbers.append(Number("largest cell loss", float(np.max(cells.loss[cells.finite]))))
    parts: dict[str, Verdict] = {}
    if n < MIN_CELLS:
        verdict = Verdict(UNTESTABLE, f"{n} finite SGD cell(s): a line needs {MIN_CELLS}")
    else:
        slope = signed(line.slope, line.slope_se, -1)
        parts["Σλ<0 falls linearly with L"] = Verdict(
            slope.verdict, f"{slope.reason}; R² = {line.r2:.3f}"
        )
        parts["the line passes through 0"] = within(line.intercept, line.intercept_se, 0.0)
        verdict = combine(parts)
    return Claim(
        id="wei2020_fig2a",
        source=SOURCE,
        claim="The sum of the negative Hessian eigenvalues is proportional to the training "
        "loss at SGD equilibria near a minimum: a line of negative slope through about 0.",
        test="weighted least-squares line Σλ<0 = w L + b over the SGD cells (means over each "
        "cell's snapshots, weights 1/se² of the mean Σλ<0 with se floored at "
        f"{SE_FLOOR:g} × the median, standard errors scaled by the reduced χ²): w negative at "
        "≥ 3 standard errors and b within 3 standard errors of 0; R² stated; fewer than "
        f"{MIN_CELLS} finite cells: not testable",
        numbers=numbers,
        verdict=verdict,
        paper_value=PAPER_VALUE,
        parts=parts,
    )
