"""How many outlier eigenvalues a spectrum has (Sagun et al. 2017 §3.1, Table 1).

Sagun et al. count the large eigenvalues of a Hessian, and of the data's covariance (PCA),
"according to three different cutoff methods: largest consecutive gap, largest consecutive
ratio, and a heuristic method of determining the threshold by searching for the elbow in the
scree plot". Their code publishes no counter, so each is defined here, on the same window:

* The window: the positive eigenvalues, sorted descending, λ_1 ≥ λ_2 ≥ … ≥ λ_n; with
  ``max_outliers = m`` only the top m + 1 (a count is then at most m: the last gap needs the
  value below it). Zero and negative eigenvalues are never outliers and are left out.
* The floor f = ``floor`` · λ_1 (default 1e-3): values below it are read as f (clipped), so
  the bulk's near-zero values neither make huge ratios nor stretch a log scale.
* gap: the count c maximising λ_c − λ_{c+1}; cut-off (λ_c + λ_{c+1}) / 2.
* ratio: the count c maximising λ'_c / λ'_{c+1} over the clipped values λ' = max(λ, f);
  cut-off √(λ'_c λ'_{c+1}). A bulk entirely below the floor has ratios 1, so the step from
  the last outlier into it is λ'_c / f.
* elbow: where the log scree bends most. With the drops s_i = log λ'_i − log λ'_{i+1} (the
  log ratios), the count c maximising s_c − s_{c+1}: a large drop followed by a flat
  stretch; cut-off as ratio's. It reads one value past the window (λ_{m+2}: whether the
  scree flattens after the m-th drop) and needs 3 values. It is the discrete maximum
  curvature of the scree, a local test; Kneedle (the point farthest below the chord of the
  whole window) was tried and rejected: on synthetic spectra of k outliers over a bulk that
  decays smoothly (exponentially or as a power law) it lands inside the bulk and moves with
  the window's length, where this test gives k.

Every count c satisfies c = #{λ_i > cut-off} over the window. Ties go to the smallest count.
A counter whose statistic shows no break (all gaps zero, all ratios 1, log drops that never
shrink) returns 0 with the cut-off λ_1, as do all three for fewer than 2 positive values (an
eigenvalue is an outlier only against others). NaN or infinite eigenvalues raise.

Pure numpy, a leaf module: the figure stages and other helpers import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COUNTERS = ("gap", "ratio", "elbow")
DEFAULT_FLOOR = 1e-3
_FLAT = 1e-12  # a statistic this close to "no break" (after scaling) counts as none


@dataclass(frozen=True)
class OutlierCount:
    """A counter's number of outliers and the eigenvalue cut-off it implies (the count is
    the number of window eigenvalues above it)."""

    count: int
    cutoff: float


def spectrum_window(
    eigenvalues: np.ndarray, max_outliers: int | None = None, extra: int = 0
) -> np.ndarray:
    """The positive eigenvalues, descending, float64; the top ``max_outliers`` + 1 (+
    ``extra``) if set."""
    values = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no eigenvalues to count outliers in")
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ValueError(f"{bad} of {values.size} eigenvalues are NaN or infinite")
    if max_outliers is not None and max_outliers < 1:
        raise ValueError(f"max_outliers must be at least 1 (or None), got {max_outliers}")
    window = np.sort(values[values > 0])[::-1]
    return window if max_outliers is None else window[: max_outliers + 1 + extra]


def _none(window: np.ndarray) -> OutlierCount:
    return OutlierCount(0, float(window[0]) if window.size else 0.0)


def _clipped(window: np.ndarray, floor: float) -> np.ndarray:
    return np.maximum(window, floor * window[0])


def gap_count(window: np.ndarray) -> OutlierCount:
    """Largest consecutive gap of a descending window (``spectrum_window``)."""
    if window.size < 2:
        return _none(window)
    gaps = window[:-1] - window[1:]
    i = int(np.argmax(gaps))
    if gaps[i] <= _FLAT * window[0]:
        return _none(window)
    return OutlierCount(i + 1, float((window[i] + window[i + 1]) / 2))


def ratio_count(window: np.ndarray, floor: float = DEFAULT_FLOOR) -> OutlierCount:
    """Largest consecutive ratio of the window clipped from below at ``floor`` · λ_1."""
    if window.size < 2:
        return _none(window)
    clipped = _clipped(window, floor)
    ratios = clipped[:-1] / clipped[1:]
    i = int(np.argmax(ratios))
    if ratios[i] <= 1 + _FLAT:
        return _none(window)
    return OutlierCount(i + 1, float(np.sqrt(clipped[i] * clipped[i + 1])))


def elbow_count(values: np.ndarray, floor: float = DEFAULT_FLOOR) -> OutlierCount:
    """Largest bend of the log scree of the clipped values (the window and the value past
    it): the drop log λ'_c − log λ'_{c+1} minus the next one, maximal (a steep step, then
    flat)."""
    if values.size < 3:
        return _none(values)
    clipped = _clipped(values, floor)
    drops = -np.diff(np.log(clipped))
    bends = drops[:-1] - drops[1:]
    i = int(np.argmax(bends))
    if bends[i] <= _FLAT:
        return _none(values)
    return OutlierCount(i + 1, float(np.sqrt(clipped[i] * clipped[i + 1])))


def count_outliers(
    eigenvalues: np.ndarray,
    max_outliers: int | None = None,
    *,
    floor: float = DEFAULT_FLOOR,
) -> dict[str, OutlierCount]:
    """The three counts of a spectrum (any order): {"gap", "ratio", "elbow"}; see the module
    docstring for the window, the floor and each definition."""
    if not 0 < floor < 1:
        raise ValueError(f"floor must lie in (0, 1), got {floor}")
    longer = spectrum_window(eigenvalues, max_outliers, extra=1)
    window = longer if max_outliers is None else longer[: max_outliers + 1]
    return {
        "gap": gap_count(window),
        "ratio": ratio_count(window, floor),
        "elbow": elbow_count(longer, floor),
    }


def pca_spectrum(x: np.ndarray) -> np.ndarray:
    """Descending eigenvalues (float64) of the sample covariance (1/(n − 1)) of the rows of
    ``x`` (samples first; further axes are flattened into features): the data's PCA, to set
    beside the Hessian's outliers."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples as rows of a 2-d array, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if not np.all(np.isfinite(x)):
        raise ValueError("the data hold NaN or infinite values")
    centred = x - x.mean(axis=0)
    covariance = centred.T @ centred / (x.shape[0] - 1)
    return np.linalg.eigvalsh(covariance)[::-1].copy()
