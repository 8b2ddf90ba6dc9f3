"""Xing et al. 2018 §4.2, eq. 5, Fig 7: the cosine of consecutive mini-batch gradients,
cos(g_{t-1}, g_t), is smaller for larger batches at one learning rate; the figure and the
claim tested from the same numbers.

Reads the trajectories of a batch family (runs with ``log_grad_cosine``: the training loop
stores the cosine of the gradients it actually used at every iteration, ``grad_cosine``) and
their checkpoints. Panels: (a) the cosine over iterations per batch size (a moving average of
``smooth`` iterations); (b) its mean over the later iterations (from ``from_fraction`` of the
run on) against the batch size, with batch-means standard errors (the series is
autocorrelated: ``blocks`` contiguous blocks per seed); (c) the distance from the
initialisation |θ_t − θ_0| at the stored checkpoints (Hoffer et al.'s observation the paper
pairs with the cosine). Claim: the mean cosine decreases with the batch size, per adjacent
pair of batch sizes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.batch_noise import batch_means
from hessvalley.claims import Claim, Number, Verdict, combine, signed, write_claim
from hessvalley.errors import HessvalleyError
from hessvalley.figures.common import new_figure, save_figure

SOURCE = "Xing et al. 2018, §4.2, Fig 7"
PAPER_VALUE = (
    "ResNet-56 on CIFAR-10 and WResNet on CIFAR-100, one learning rate, batch sizes 500, 5000 "
    "and 45000 (all): the cosine stays smaller for larger batches (read from the plots)"
)
N_SIGMA = 3.0
DEFAULTS = {"from_fraction": 0.5, "smooth": None, "blocks": 10}


@dataclass(frozen=True)
class CosineRun:
    """One run of the family: its batch size, and per seed the cosine per iteration and the
    distance from the initialisation at each checkpoint."""

    setting: str
    batch_size: int
    full: bool
    cosines: list[np.ndarray]  # per seed, (iterations,); the first is nan
    steps: np.ndarray  # (checkpoint,) of the first seed
    distances: list[np.ndarray]  # per seed, (checkpoint,)

    @property
    def label(self) -> str:
        return f"batch {self.batch_size}" + (" (all)" if self.full else "")

    def later(self, from_fraction: float) -> list[np.ndarray]:
        """Each seed's cosines from iteration ``from_fraction`` x its length on."""
        return [c[math.floor(from_fraction * len(c)) :] for c in self.cosines]


def _distances(group: Any) -> np.ndarray:
    """|θ_k − θ_0| at every checkpoint, in float64 (a row at a time: big nets)."""
    first = np.asarray(group["params"][0], dtype=np.float64)
    n = int(group.attrs["n_checkpoints"])
    return np.asarray(
        [np.linalg.norm(np.asarray(group["params"][k], np.float64) - first) for k in range(n)]
    )


def read_runs(trajectories: Sequence[str]) -> list[CosineRun]:
    """The trajectories grouped by run setting, smallest batch first."""
    found: dict[str, list[Any]] = defaultdict(list)
    for path in trajectories:
        group = store.open_store(path)
        setting = str(group.attrs["setting"])
        if "grad_cosine" not in group:
            raise HessvalleyError(
                f"{path}: run {setting!r} did not log the gradient cosine: set "
                f"runs.{setting}.log_grad_cosine: true (it re-trains the run)"
            )
        found[setting].append(group)
    runs = []
    for setting, groups in found.items():
        attrs = groups[0].attrs
        runs.append(
            CosineRun(
                setting,
                int(attrs["batch_size"]),
                int(attrs["batch_size"]) >= int(attrs["n_train"]),
                [np.asarray(g["grad_cosine"][...], dtype=np.float64) for g in groups],
                np.asarray(groups[0]["step"][...]),
                [_distances(g) for g in groups],
            )
        )
    return sorted(runs, key=lambda r: r.batch_size)


def later_means(
    runs: Sequence[CosineRun], spec: Mapping[str, Any]
) -> list[tuple[float, float, int]]:
    """(mean, batch-means standard error, blocks) of each run's later cosines."""
    spec = {**DEFAULTS, **spec}
    return [batch_means(r.later(float(spec["from_fraction"])), int(spec["blocks"])) for r in runs]


def fig7_claim(runs: Sequence[CosineRun], spec: Mapping[str, Any]) -> Claim:
    """A part per adjacent pair of batch sizes: the smaller batch's mean cosine minus the
    larger's is positive by ``N_SIGMA`` standard errors."""
    spec = {**DEFAULTS, **spec}
    means = later_means(runs, spec)
    measured = list(zip(runs, means, strict=True))
    numbers = [Number(f"mean cos, {run.label}", mean, se) for run, (mean, se, _) in measured]
    parts: dict[str, Verdict] = {}
    for (small, a), (large, b) in pairwise(measured):
        difference, stderr = a[0] - b[0], math.hypot(a[1], b[1])
        name = f"{small.label} above {large.label}"
        parts[name] = signed(difference, stderr, +1, N_SIGMA)
        numbers.append(Number(f"cos({small.label}) − cos({large.label})", difference, stderr))
    for run in runs:
        final = [float(d[-1]) for d in run.distances]
        numbers.append(Number(f"|θ_end − θ_0|, {run.label}", float(np.mean(final))))
    return Claim(
        id="xing2018_fig7",
        source=SOURCE,
        claim="At the same learning rate, the cosine of consecutive mini-batch gradients is "
        "smaller for larger batches: they point more in opposite directions (more oscillation).",
        test=f"the mean of cos(g_t-1, g_t) over the iterations from {spec['from_fraction']:g} of "
        f"each run on, with batch-means standard errors ({spec['blocks']} contiguous blocks per "
        f"seed); for each adjacent pair of batch sizes the smaller batch's mean minus the "
        f"larger's is positive by at least {N_SIGMA:g} standard errors",
        numbers=numbers,
        verdict=combine(parts),
        paper_value=PAPER_VALUE,
        parts=parts,
    )


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` iterations, NaNs left out (nan where a window has none)."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    half = window // 2
    lo = np.clip(np.arange(len(values)) - half, 0, len(values))
    hi = np.clip(np.arange(len(values)) + window - half, 0, len(values))
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def _window(runs: Sequence[CosineRun], smooth: int | None) -> int:
    longest = max(len(c) for r in runs for c in r.cosines)
    return int(smooth) if smooth else max(1, longest // 20)


def fig7_figure(
    trajectories: list[str], output: str, figures: Mapping[str, Any], gradient_cosine: Mapping
) -> None:
    """Cosine over iterations, its later mean against batch size, distance from the start;
    writes the claim."""
    spec = {**DEFAULTS, **gradient_cosine}
    runs = read_runs(trajectories)
    claim = fig7_claim(runs, spec)
    means = later_means(runs, spec)
    window = _window(runs, spec["smooth"])
    colors = [f"C{i}" for i in range(len(runs))]
    fig, (ax_t, ax_b, ax_d) = new_figure(1, 3, figsize=(14.0, 4.0), layout="constrained")
    for run, color in zip(runs, colors, strict=True):
        for i, cosine in enumerate(run.cosines):
            ax_t.plot(
                np.arange(len(cosine)),
                moving_average(cosine, window),
                color=color,
                lw=1,
                label=run.label if i == 0 else None,
            )
        for i, distance in enumerate(run.distances):
            ax_d.plot(
                run.steps[: len(distance)],
                distance,
                "o-",
                color=color,
                ms=3,
                lw=1,
                label=run.label if i == 0 else None,
            )
    start = min(math.floor(spec["from_fraction"] * len(c)) for r in runs for c in r.cosines)
    ax_t.axvspan(start, max(len(c) for r in runs for c in r.cosines), color="gray", alpha=0.1)
    ax_t.axhline(0, color="black", lw=0.6)
    ax_t.set(xlabel="iteration", ylabel=r"$\cos(g_{t-1}, g_t)$")
    ax_t.set_title(f"moving average of {window} iterations (mean over the shaded part)", fontsize=9)
    ax_t.legend(fontsize=7)
    sizes = [r.batch_size for r in runs]
    ax_b.errorbar(
        sizes, [m[0] for m in means], yerr=[m[1] for m in means], fmt="o-", color="black", capsize=3
    )
    for size, color in zip(sizes, colors, strict=True):
        ax_b.plot([size], [means[sizes.index(size)][0]], "o", color=color, ms=7)
    ax_b.set_xscale("log")
    ax_b.set_xticks(sizes, [r.label.replace("batch ", "") for r in runs])
    ax_b.minorticks_off()
    ax_b.set(xlabel="batch size", ylabel="mean cosine (later iterations) ± batch-means se")
    ax_b.set_title(f"claim: {claim.verdict.verdict}", fontsize=9)
    ax_d.set(xlabel="iteration", ylabel=r"$|\theta_t - \theta_0|$")
    ax_d.set_title("distance from the initialisation (checkpoints)", fontsize=9)
    ax_d.legend(fontsize=7)
    fig.suptitle(
        "Xing et al. 2018 Fig 7: cosine of consecutive mini-batch gradients at one learning rate",
        fontsize=10,
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
