"""The claims of W&S Figs 1, 3 and 4, tested from the projected-path and trace stores.

- Fig 1, connectedness: the SGD path projected to minima is line connected. A pair of
  neighbouring projected points that is not connected although it sits at adjacent SGD
  steps (right - left = 1) is a barrier no finer bisection can remove: the claim does not
  hold. Pairs left unconnected only because the bisection stopped at ``max_depth`` or
  because an end's projection did not converge cannot decide it: not testable at this
  scale.
- Fig 3, trace: the Hessian trace decreases along the projected path. Each seed's stored
  slope of the trace against epoch (fitted from ``projection.trace.fit_from_epoch``); the
  claim holds when their mean over seeds is negative by at least 3 standard errors over
  seeds (``claims.signed``). One seed has no spread over seeds: not testable.
- Fig 4: both tests for each of its settings, combined with ``claims.combine``.

Torch-free: the figure jobs and the tests read only the stores.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, Claim, Number, Verdict, combine, signed
from hessvalley.projection.outcomes import BARRIER, CONNECTED, NOT_CONVERGED

N_SIGMA = 3.0
# What W&S state (read from the paper, not computed by any run).
PAPER_FIG1 = (
    "CIFAR-10, threshold ~0.005: 2700 projected points (PreAct-ResNet18) and 4020 (VGG16); "
    "consecutive projected points line connected (10 points below the threshold), no "
    "barrier reported"
)
PAPER_FIG3 = (
    "trace decreasing along the projected path for PreAct-ResNet18 and VGG16 on CIFAR-10, "
    "mean ± std over 10 seeds; no slope value stated"
)
PAPER_FIG4 = (
    "DenseNet on CIFAR-100, and SGD from a randomized-label minimum (4-layer ConvNet on "
    "MNIST, PreAct-ResNet18 on CIFAR-10, 40000 clean samples): connected, trace decreasing "
    "on average; no numbers stated"
)
CONNECTED_CLAIM = (
    "SGD moves within a minimal valley: consecutive points of the SGD path projected to "
    "minima are line connected (training loss below the threshold at 10 points between them)."
)
TRACE_CLAIM = (
    "SGD noise lowers the Hessian trace along the valley floor: the trace at the projected "
    "points decreases during training, on average over initialisations."
)
CONNECTED_TEST = (
    "holds if every pair of neighbouring projected points is line connected; does not hold "
    "if a pair at adjacent SGD steps (right - left = 1) is not (a barrier); otherwise (pairs "
    "cut at max_depth, or with an end whose projection did not converge) not testable"
)
TRACE_TEST = (
    "the least-squares slope of trace against epoch, fitted from epoch {fit_from} on, one "
    "per seed: holds if its mean over seeds is negative at >= {n_sigma:g} standard errors "
    "over seeds (std/sqrt(n)); does not hold otherwise; fewer than 2 seeds: not testable"
)


@dataclass(frozen=True)
class Connections:
    """How the neighbouring pairs of one projected path ended."""

    setting: str
    seed: int
    n_points: int
    n_edges: int
    n_connected: int
    barriers: list[tuple[int, int]]  # pairs at adjacent steps that are not connected
    n_cut: int  # not connected when the bisection stopped at max_depth
    n_not_converged: int  # not connected because an end did not converge

    def numbers(self) -> list[Number]:
        name = f"{self.setting} seed {self.seed}"
        return [
            Number(f"{name}: projected points", self.n_points),
            Number(f"{name}: connected pairs", self.n_connected, unit=f"of {self.n_edges}"),
            Number(f"{name}: barriers at adjacent steps", len(self.barriers)),
            Number(f"{name}: pairs cut at max_depth", self.n_cut),
            Number(f"{name}: pairs with an end not converged", self.n_not_converged),
        ]


def connections(path: str) -> Connections:
    """The outcome of every neighbouring pair of the projected path store ``path``."""
    group = store.open_store(path)
    left = np.asarray(group["edge_left_step"][...])
    right = np.asarray(group["edge_right_step"][...])
    cause = np.asarray(group["cause"][...])
    adjacent = right - left == 1
    barrier = (cause == BARRIER) & adjacent
    return Connections(
        setting=str(group.attrs["setting"]),
        seed=int(group.attrs["seed"]),
        n_points=int(group.attrs["n_points"]),
        n_edges=len(cause),
        n_connected=int(np.sum(cause == CONNECTED)),
        barriers=[(int(a), int(b)) for a, b in zip(left[barrier], right[barrier], strict=True)],
        n_cut=int(np.sum((cause == BARRIER) & ~adjacent)),
        n_not_converged=int(np.sum(cause == NOT_CONVERGED)),
    )


def connection_verdict(found: Connections) -> Verdict:
    """Fig 1's test (module docstring) on one path."""
    if found.n_edges == 0:
        return Verdict(UNTESTABLE, "the path has a single point: no pair to connect")
    if found.barriers:
        shown = ", ".join(f"{a}-{b}" for a, b in found.barriers[:5])
        more = f" and {len(found.barriers) - 5} more" if len(found.barriers) > 5 else ""
        return Verdict(
            FAILS,
            f"{len(found.barriers)} of {found.n_edges} pairs at adjacent SGD steps are not "
            f"line connected (steps {shown}{more})",
        )
    if found.n_connected < found.n_edges:
        return Verdict(
            UNTESTABLE,
            f"{found.n_edges - found.n_connected} of {found.n_edges} pairs not connected, "
            f"none at adjacent steps: {found.n_cut} cut at max_depth, {found.n_not_converged} "
            "with an end whose projection did not converge",
        )
    return Verdict(HOLDS, f"all {found.n_edges} pairs of {found.n_points} points connected")


@dataclass(frozen=True)
class TraceSlopes:
    """The per-seed slopes of the trace along one run's projected paths, and the trace at
    the first and last fitted epoch all seeds share (mean and standard error over seeds)."""

    setting: str
    slopes: np.ndarray  # one per seed (nan where a seed's fit is undetermined)
    fit_from_epoch: float
    ends: list[tuple[float, float, float]]  # (epoch, mean, standard error)

    @property
    def finite(self) -> np.ndarray:
        return self.slopes[np.isfinite(self.slopes)]

    def mean_and_stderr(self) -> tuple[float, float]:
        finite = self.finite
        if len(finite) < 2:
            return (float(finite.mean()) if len(finite) else math.nan), math.nan
        return float(finite.mean()), float(finite.std(ddof=1) / math.sqrt(len(finite)))

    def numbers(self) -> list[Number]:
        mean, stderr = self.mean_and_stderr()
        numbers = [
            Number(f"{self.setting}: trace slope", mean, stderr, "per epoch"),
            Number(f"{self.setting}: seeds with a slope", len(self.finite)),
        ]
        for epoch, value, error in self.ends:
            numbers.append(Number(f"{self.setting}: trace at epoch {epoch:g}", value, error))
        return numbers


def _ends(seeds: Sequence[tuple[dict[str, np.ndarray], Mapping[str, Any]]]):
    """(epoch, mean, stderr over seeds) of the trace at the first and last fitted epoch
    every seed traced."""
    common = set.intersection(*(set(a["epoch"][a["in_fit"]].tolist()) for a, _ in seeds))
    out = []
    for epoch in sorted({min(common), max(common)}) if common else []:
        values = np.array([a["trace"][a["epoch"] == epoch][0] for a, _ in seeds])
        stderr = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        out.append((float(epoch), float(values.mean()), float(stderr)))
    return out


def trace_slopes(traces: Sequence[str]) -> dict[str, TraceSlopes]:
    """The trace stores (any runs, any seeds) grouped by run, in the order first seen."""
    grouped: dict[str, list] = defaultdict(list)
    for path in traces:
        group = store.open_store(path)
        arrays = {name: np.asarray(group[name][...]) for name in ("epoch", "trace", "in_fit")}
        grouped[str(group.attrs["setting"])].append((arrays, dict(group.attrs)))
    return {
        setting: TraceSlopes(
            setting,
            np.array([attrs["slope_per_epoch"] for _, attrs in seeds], dtype=float),
            float(seeds[0][1]["fit_from_epoch"]),
            _ends(seeds),
        )
        for setting, seeds in grouped.items()
    }


def slope_verdict(found: TraceSlopes) -> Verdict:
    """Fig 3's test (module docstring) on one run's seeds."""
    mean, stderr = found.mean_and_stderr()
    if len(found.finite) < 2:
        return Verdict(
            UNTESTABLE,
            f"{len(found.finite)} seed(s) with a fitted slope: no spread over seeds to test "
            "the mean against",
        )
    return signed(mean, stderr, -1, N_SIGMA)


def _trace_test(slopes: Mapping[str, TraceSlopes]) -> str:
    fit_from = sorted({f"{s.fit_from_epoch:g}" for s in slopes.values()})
    return TRACE_TEST.format(fit_from=" / ".join(fit_from) or "?", n_sigma=N_SIGMA)


def fig1_claim(paths: Sequence[str]) -> Claim:
    """W&S Fig 1's claim from the projected paths drawn (one seed per run)."""
    found = [connections(path) for path in paths]
    parts = {f"{c.setting} seed {c.seed}": connection_verdict(c) for c in found}
    return Claim(
        id="wei2020_fig1",
        source="Wei & Schwab 2020, Fig 1 (§2.1.1)",
        claim=CONNECTED_CLAIM,
        test=f"per projected path: {CONNECTED_TEST}; paths combined (any fails: fails)",
        numbers=[number for c in found for number in c.numbers()],
        verdict=combine(parts),
        paper_value=PAPER_FIG1,
        parts=parts,
    )


def fig3_claim(traces: Sequence[str]) -> Claim:
    """W&S Fig 3's claim from the trace stores (every seed of every run drawn)."""
    slopes = trace_slopes(traces)
    parts = {setting: slope_verdict(s) for setting, s in slopes.items()}
    return Claim(
        id="wei2020_fig3",
        source="Wei & Schwab 2020, Fig 3 (§4.3)",
        claim=TRACE_CLAIM,
        test=f"per run: {_trace_test(slopes)}; runs combined (any fails: fails)",
        numbers=[number for s in slopes.values() for number in s.numbers()],
        verdict=combine(parts),
        paper_value=PAPER_FIG3,
        parts=parts,
    )


def fig4_claim(paths: Sequence[str], traces: Sequence[str]) -> Claim:
    """W&S Fig 4's claim: Fig 1's and Fig 3's tests for each of its runs, combined."""
    found = [connections(path) for path in paths]
    slopes = trace_slopes(traces)
    parts: dict[str, Verdict] = {}
    numbers: list[Number] = []
    for c in found:
        parts[f"{c.setting}: connected"] = connection_verdict(c)
        parts[f"{c.setting}: trace decreasing"] = slope_verdict(slopes[c.setting])
        numbers += c.numbers() + slopes[c.setting].numbers()
    return Claim(
        id="wei2020_fig4",
        source="Wei & Schwab 2020, Fig 4 (A.2)",
        claim=(
            "In further settings (DenseNet on CIFAR-100; SGD from a badly generalising "
            "minimum found with randomized labels) the projected path is line connected and "
            "the Hessian trace along it decreases on average."
        ),
        test=(
            f"per run, connectedness of the path drawn: {CONNECTED_TEST}; and trace: "
            f"{_trace_test(slopes)}; all combined (any fails: fails)"
        ),
        numbers=numbers,
        verdict=combine(parts),
        paper_value=PAPER_FIG4,
        parts=parts,
    )
