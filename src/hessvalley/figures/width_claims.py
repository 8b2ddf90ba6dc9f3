"""Sagun et al. 2017 §3.2 (Figs 4-6): the edges of the Hessian spectrum against width, and the
claim tested from them.

Pure numpy (no torch, no store): the figure reads the exact spectra of a width family into
``WidthSpectra`` (one per run setting, seeds stacked) and states the claim (``width_claim``);
tests feed synthetic spectra to the same functions. Every number is measured at the end of
training (the last checkpoint of each spectrum store); the start is drawn beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, Claim, Number, Verdict, combine

SOURCE = "Sagun et al. 2017, §3.2, Figs 4-6"
PAPER_VALUE = (
    "no numbers: MNIST 1K samples, nets of growing width trained to a stopping condition; the "
    "right edge keeps its shape, the negative eigenvalues are tiny next to it and their ratio "
    "(rank / P) keeps its shape"
)
# the `width` section's claim keys and their defaults (workflow/schemas/config.schema.yaml)
DEFAULTS: dict[str, Any] = {
    "top": 10,
    "tolerance": 0.25,
    "cv_threshold": 0.5,
    "ratio_threshold": 0.1,
}


def dtype_eps(hessian: Mapping[str, Any] | None) -> float:
    """Machine epsilon of the precision the Hessian was built in (its store's
    ``hessian.dtype``; float64 where a store does not say)."""
    name = (hessian or {}).get("dtype", "float64")
    return float(np.finfo(np.dtype(name)).eps)


def roundoff_cutoff(eigenvalues: np.ndarray, eps: float) -> np.ndarray:
    """P·eps·max|λ| per spectrum (last axis): a dense symmetric eigensolve of a matrix built
    at precision eps moves an eigenvalue by up to about this much, so an exact zero mode (a
    flat direction such as the weights of an always-blank pixel) can land just below 0."""
    eigenvalues = np.asarray(eigenvalues, dtype=float)
    return eigenvalues.shape[-1] * eps * np.max(np.abs(eigenvalues), axis=-1)


def negative_count(eigenvalues: np.ndarray, eps: float) -> np.ndarray:
    """Eigenvalues below −``roundoff_cutoff`` per spectrum: negative beyond round-off."""
    eigenvalues = np.asarray(eigenvalues, dtype=float)
    cutoff = roundoff_cutoff(eigenvalues, eps)
    return np.sum(eigenvalues < -cutoff[..., None], axis=-1)


@dataclass(frozen=True)
class WidthSpectra:
    """One run setting of the family: every seed's spectrum (ascending, seeds stacked) at
    the end of training and, where the store measured checkpoint 0, at initialisation."""

    setting: str
    n_params: int
    eps: float  # of the Hessian's precision (``dtype_eps``)
    end: np.ndarray  # (seed, P)
    init: np.ndarray | None  # (seed, P), or None without checkpoint 0
    end_loss: np.ndarray  # (seed,) training loss at the last checkpoint
    end_epoch: np.ndarray  # (seed,)

    @property
    def n_seeds(self) -> int:
        return int(self.end.shape[0])

    def top(self, k: int, at: str = "end") -> np.ndarray:
        """The k largest eigenvalues of each seed, largest first: (seed, k)."""
        spectra = self.end if at == "end" else self.init
        return np.asarray(spectra)[:, ::-1][:, :k]

    @property
    def n_negative(self) -> np.ndarray:
        """Negative eigenvalues beyond round-off at the end, per seed."""
        return negative_count(self.end, self.eps)

    @property
    def negative_fraction(self) -> np.ndarray:
        """n_negative / P at the end, per seed (Fig 6's ratio)."""
        return self.n_negative / self.n_params

    @property
    def left_right_ratio(self) -> np.ndarray:
        """|λmin| / λmax at the end, per seed (0 where no eigenvalue is below 0)."""
        return np.maximum(-self.end[:, 0], 0.0) / self.end[:, -1]

    def smallest(self, n: int) -> np.ndarray:
        """The n smallest eigenvalues of each seed at the end (most negative first)."""
        return self.end[:, :n]


def mean_se(values: np.ndarray) -> tuple[float, float]:
    """Mean over seeds and its standard error (NaN with one seed)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(np.mean(values)), math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))


def compared_ranks(family: Sequence[WidthSpectra], top: int) -> int:
    """The ranks compared across widths: ``top``, or fewer when a net has fewer parameters."""
    return min([int(top), *(w.n_params for w in family)])


def relative_spread(family: Sequence[WidthSpectra], top: int, at: str = "end") -> np.ndarray:
    """Per rank i ≤ top: (max − min) / mean over widths of the seed-mean λ_i. A right edge
    that does not move with width has spreads near 0; one width's doubled edge gives ≥ 2/3."""
    k = compared_ranks(family, top)
    edges = np.stack([w.top(k, at).mean(axis=0) for w in family])  # (width, rank)
    return np.ptp(edges, axis=0) / np.abs(edges.mean(axis=0))


def coefficient_of_variation(values: np.ndarray) -> float:
    """std (ddof 1) / mean over widths; NaN when the mean is 0 (nothing to compare)."""
    values = np.asarray(values, dtype=float)
    mean = float(np.mean(values))
    return float(np.std(values, ddof=1) / mean) if mean > 0 else math.nan


def _right_edge(family: Sequence[WidthSpectra], top: int, tolerance: float) -> Verdict:
    spread = relative_spread(family, top)
    worst = int(np.argmax(spread))
    verdict = HOLDS if spread[worst] <= tolerance else FAILS
    return Verdict(
        verdict,
        f"largest relative spread {spread[worst]:.3g} (at rank {worst + 1} of "
        f"{len(spread)}) against the tolerance {tolerance:g}",
    )


def _negative_fraction(family: Sequence[WidthSpectra], threshold: float) -> Verdict:
    fractions = np.asarray([w.negative_fraction.mean() for w in family])
    cv = coefficient_of_variation(fractions)
    if not math.isfinite(cv):
        return Verdict(
            UNTESTABLE, "no eigenvalue below the round-off cutoff at any width: no ratio"
        )
    verdict = HOLDS if cv <= threshold else FAILS
    return Verdict(
        verdict, f"coefficient of variation {cv:.3g} against the threshold {threshold:g}"
    )


def _left_edge(family: Sequence[WidthSpectra], threshold: float) -> Verdict:
    ratios = np.asarray([w.left_right_ratio.mean() for w in family])
    worst = int(np.argmax(ratios))
    verdict = HOLDS if ratios[worst] <= threshold else FAILS
    return Verdict(
        verdict,
        f"largest |λmin|/λmax {ratios[worst]:.3g} ({family[worst].setting}) against the "
        f"threshold {threshold:g}",
    )


def _numbers(family: Sequence[WidthSpectra], top: int) -> list[Number]:
    """The statistics over widths (``_statistics``), then per width λ1, n₋/P, |λmin|/λmax
    and the training loss at the end."""
    numbers = _statistics(family, top) if len(family) > 1 else []
    for w in family:
        name = f"{w.setting} (P = {w.n_params})"
        numbers.append(Number(f"{name}: λ1", *mean_se(w.top(1)[:, 0])))
        numbers.append(Number(f"{name}: n₋/P", *mean_se(w.negative_fraction)))
        numbers.append(Number(f"{name}: |λmin|/λmax", *mean_se(w.left_right_ratio)))
        numbers.append(Number(f"{name}: training loss at the end", *mean_se(w.end_loss)))
    return numbers


def _statistics(family: Sequence[WidthSpectra], top: int) -> list[Number]:
    """The three tested statistics over widths; beside them, n₋/P of the widest net over
    that of the narrowest (a trend the coefficient of variation does not show) and the right
    edge's spread at initialisation."""
    k = compared_ranks(family, top)
    fractions = np.asarray([w.negative_fraction.mean() for w in family])
    spread = float(np.max(relative_spread(family, k)))
    trend = fractions[-1] / fractions[0] if fractions[0] > 0 else math.nan
    numbers = [
        Number(f"largest relative spread of λ1..λ{k} over widths", spread),
        Number("coefficient of variation of n₋/P over widths", coefficient_of_variation(fractions)),
        Number("largest |λmin|/λmax", float(max(w.left_right_ratio.mean() for w in family))),
        Number("n₋/P of the widest net over the narrowest", float(trend)),
    ]
    if all(w.init is not None for w in family):
        spread = float(np.max(relative_spread(family, k, at="init")))
        numbers.append(Number(f"largest relative spread of λ1..λ{k} at initialisation", spread))
    return numbers


def width_claim(family: Sequence[WidthSpectra], width: Mapping[str, Any]) -> Claim:
    """Three parts over the widths (end of training, means over seeds): the top eigenvalues
    agree within ``tolerance``; n₋/P varies by at most ``cv_threshold`` (coefficient of
    variation); |λmin|/λmax stays at most ``ratio_threshold``. Fewer than two widths: not
    testable."""
    keys = {**DEFAULTS, **{k: v for k, v in width.items() if k in DEFAULTS}}
    top = int(keys["top"])
    family = sorted(family, key=lambda w: w.n_params)
    parts: dict[str, Verdict] = {}
    if len({w.n_params for w in family}) < 2:
        verdict = Verdict(UNTESTABLE, f"{len(family)} width(s) of distinct size: need 2 or more")
        numbers = _numbers(family, top)
    else:
        parts["the right edge does not move with width"] = _right_edge(
            family, top, float(keys["tolerance"])
        )
        parts["n₋/P is the same at every width"] = _negative_fraction(
            family, float(keys["cv_threshold"])
        )
        parts["the negative eigenvalues are tiny next to the right edge"] = _left_edge(
            family, float(keys["ratio_threshold"])
        )
        verdict, numbers = combine(parts), _numbers(family, top)
    return Claim(
        id="sagun2017_width",
        source=SOURCE,
        claim="Growing the width with the data fixed leaves the right edge of the Hessian "
        "spectrum (its largest eigenvalues) in place; the negative eigenvalues are tiny next to "
        "it and their number grows in proportion to the number of parameters P.",
        test="exact spectra at the end of training, means over seeds per width: (a) for each "
        f"rank i ≤ {top}, (max − min)/mean of λ_i over widths at most {keys['tolerance']:g}; "
        "(b) n₋ counts eigenvalues below −P·eps·max|λ| (eps of the Hessian's precision, so "
        "round-off of exact zero modes is not counted), and the coefficient of variation "
        f"(ddof 1) of n₋/P over widths is at most {keys['cv_threshold']:g}; (c) |λmin|/λmax at "
        f"most {keys['ratio_threshold']:g} at every width; fewer than 2 widths: not testable",
        numbers=numbers,
        verdict=verdict,
        paper_value=PAPER_VALUE,
        parts=parts,
    )
