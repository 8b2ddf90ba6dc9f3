"""W&S Fig 6 (A.5): the FDR criterion |Ō_L / Ō_R − 1| along training, raw and top-k.

The figure draws, per run, the criterion of each window (``hessvalley.fdr``) against the
epoch at the window's end on a log axis: the raw space, each top-k Hessian subspace, Yaida's
threshold and, for reference, the raw criterion from half-running averages over [t/2, t].

Claim: late in training (the last third of each seed's windows) the top-1 criterion is below
the threshold and the raw one at least ten times the top-1 one. Both are measured pooled over
those windows and the run's seeds: Ō_L and Ō_R summed over all their steps, the standard
error from batch means with each window one batch (the projection changes between windows,
so their boundary terms are nearly independent), or from the windows' sub-blocks when there
is a single window. Torch-free: reads only the FDR stores.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.claims import UNTESTABLE, Claim, Number, Verdict, combine, signed, write_claim
from hessvalley.fdr_terms import Criterion, fdr_criterion, late_windows
from hessvalley.figures.common import mean_band, new_figure, save_figure

FACTOR = 10.0  # the raw criterion must exceed the top-1 one this many times
PAPER_FIG6 = (
    "CNN of 3 conv layers (15, 20, 10 channels) on CIFAR-10: the top-1 criterion below 1e-2 "
    "after several epochs; the raw space far from it after 50 epochs (no other numbers)"
)
CLAIM = (
    "Timescale separation: the top-1 Hessian eigenspace reaches stationarity (FDR criterion "
    "below Yaida's threshold) while the raw parameter space is still far from it."
)
TEST = (
    "over the last third of each seed's windows, pooled over seeds (Ō_L, Ō_R over all their "
    "steps; standard error by batch means, one batch per window, delta method): holds if the "
    "top-1 criterion is below the threshold at >= 3 standard errors and the raw criterion "
    "exceeds 10x the top-1 one at >= 3 standard errors (combined as independent); does not "
    "hold otherwise"
)
SERIES = ("o_left_series", "o_right_series", "o_left_series_projected", "o_right_series_projected")
WINDOW = ("end_epoch", "criterion", "criterion_stderr", "criterion_projected")


@dataclass(frozen=True)
class FDRRun:
    """One FDR store: its arrays and attrs."""

    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]

    @property
    def subspaces(self) -> list[int]:
        return [int(k) for k in self.arrays["subspace"]]

    def series(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(O_L, O_R) per step of ``window``, (n, 1 + subspaces): raw first."""
        rows = self.arrays["iteration_window"] == window
        a = self.arrays
        left = np.column_stack([a["o_left_series"][rows], a["o_left_series_projected"][rows]])
        right = np.column_stack([a["o_right_series"][rows], a["o_right_series_projected"][rows]])
        return left, right


def read_fdr(path: str) -> FDRRun:
    group = store.open_store(path)
    return FDRRun(store.read_arrays(path), dict(group.attrs))


def by_setting(fdrs: Sequence[str]) -> dict[str, list[FDRRun]]:
    """The stores grouped by run (attrs ``setting``), seeds in order."""
    groups: dict[str, list[FDRRun]] = defaultdict(list)
    for path in fdrs:
        run = read_fdr(path)
        groups[run.attrs["setting"]].append(run)
    return {s: sorted(runs, key=lambda r: r.attrs["seed"]) for s, runs in sorted(groups.items())}


def late_criterion(runs: Sequence[FDRRun]) -> Criterion:
    """The criterion pooled over the last third of each run's windows (raw, then each k)."""
    segments = [run.series(w) for run in runs for w in late_windows(len(run.arrays["criterion"]))]
    blocks = 1 if len(segments) > 1 else int(runs[0].attrs["blocks"])
    return fdr_criterion(segments, blocks)


def setting_verdicts(late: Criterion, threshold: float) -> dict[str, Verdict]:
    """Both parts of the claim for one run: top-1 below threshold, raw >= 10x top-1."""
    raw, raw_se = float(late.criterion[0]), float(late.stderr[0])
    top, top_se = float(late.criterion[1]), float(late.stderr[1])
    excess_se = math.sqrt(raw_se**2 + (FACTOR * top_se) ** 2)
    return {
        f"top-1 criterion below {threshold:g}": signed(threshold - top, top_se, 1),
        f"raw criterion >= {FACTOR:g}x top-1": signed(raw - FACTOR * top, excess_se, 1),
    }


def fig6_claim(groups: Mapping[str, Sequence[FDRRun]], threshold: float) -> Claim:
    """The claim over every run in ``groups``, each tested on its pooled late windows."""
    parts: dict[str, Verdict] = {}
    numbers = []
    for setting, runs in groups.items():
        late = late_criterion(runs)
        subspaces = runs[0].subspaces
        n = len(runs)
        where = f"{setting}, {n} seed{'s' if n > 1 else ''}, last third of windows"
        numbers.append(Number(f"{where}: raw criterion", late.criterion[0], late.stderr[0]))
        for i, k in enumerate(subspaces):
            name = f"{where}: top-{k} criterion"
            numbers.append(Number(name, late.criterion[1 + i], late.stderr[1 + i]))
        if 1 not in subspaces:
            parts[setting] = Verdict(UNTESTABLE, "fdr.k has no 1: no top-1 criterion")
            continue
        for name, verdict in setting_verdicts(late, threshold).items():
            parts[f"{setting}: {name}"] = verdict
    return Claim(
        id="wei2020_fig6",
        source="Wei & Schwab 2020, Fig 6 (A.5)",
        claim=CLAIM,
        test=TEST,
        numbers=numbers,
        verdict=combine(parts),
        paper_value=PAPER_FIG6,
        parts=parts,
    )


COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")


def _draw_line(ax, x: np.ndarray, values: np.ndarray, errors: np.ndarray, band: str, **kw):
    """One criterion against epoch: the seeds' mean with a band, or one seed's error bars."""
    if len(values) == 1:
        lower = np.minimum(errors[0], 0.9 * values[0])  # a log axis: keep the bar above 0
        ax.errorbar(x, values[0], yerr=(lower, errors[0]), capsize=2, ms=4, **kw)
        return
    mean, half = mean_band(values, band)
    (line,) = ax.plot(x, mean, **kw)
    ax.fill_between(
        x, np.maximum(mean - half, mean * 0.1), mean + half, color=line.get_color(), alpha=0.2, lw=0
    )


def draw_setting(ax, setting: str, runs: Sequence[FDRRun], threshold: float, band: str) -> None:
    """One run's panel: raw and top-k criteria per window, half-running raw, threshold."""
    first = runs[0].arrays
    x = first["end_epoch"]
    if any(not np.array_equal(r.arrays["end_epoch"], x) for r in runs):
        runs = runs[:1]  # seeds with other windows cannot share a mean: draw the first
    stack = {name: np.stack([r.arrays[name] for r in runs]) for name in WINDOW}
    stack["criterion_projected_stderr"] = np.stack(
        [r.arrays["criterion_projected_stderr"] for r in runs]
    )
    seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
    _draw_line(
        ax,
        x,
        stack["criterion"],
        stack["criterion_stderr"],
        band,
        color="black",
        marker="o",
        label="raw parameter space",
    )
    for i, k in enumerate(runs[0].subspaces):
        _draw_line(
            ax,
            x,
            stack["criterion_projected"][..., i],
            stack["criterion_projected_stderr"][..., i],
            band,
            color=COLORS[i % len(COLORS)],
            marker="s",
            label=f"top-{k} Hessian eigenspace",
        )
    half = np.stack([r.arrays["criterion_half_running"] for r in runs]).mean(axis=0)
    ax.plot(
        first["iteration_epoch"],
        half,
        color="gray",
        lw=0.8,
        label="raw, half-running average over [t/2, t]",
    )
    ax.axhline(threshold, ls="--", color="tab:red", label=f"threshold {threshold:g} (Yaida)")
    late = late_windows(len(x))
    ax.axvspan(first["epoch"][late[0]], x[-1], color="0.9", zorder=0, label="late: claim tested")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (end of window)")
    ax.set_ylabel(r"$|\bar O_L / \bar O_R - 1|$")
    ax.set_title(
        f"{setting} ({seeds}, windows of {int(runs[0].attrs['config']['every'])} checkpoints)",
        fontsize=9,
    )


def fig6_figure(fdrs: list[str], output: str, figures: Mapping[str, Any], threshold: float) -> None:
    """Criterion vs epoch per run (one panel each) and the claim (wei2020_fig6.json)."""
    groups = by_setting(fdrs)
    if not groups:
        raise ValueError("fig6 needs at least one FDR store (fdr.runs is empty)")
    claim = fig6_claim(groups, threshold)
    band = figures.get("band", "std")
    n = len(groups)
    fig, axes = new_figure(1, n, figsize=(6.0 * n, 4.4), squeeze=False, layout="constrained")
    for ax, (setting, runs) in zip(axes[0], groups.items(), strict=True):
        draw_setting(ax, setting, runs, threshold, band)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside lower center", ncol=3)
    fig.suptitle(
        "W&S Fig 6: fluctuation-dissipation criterion, raw space vs top-k Hessian eigenspace"
        f"\nclaim: {claim.verdict.verdict}",
        fontsize=10,
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
