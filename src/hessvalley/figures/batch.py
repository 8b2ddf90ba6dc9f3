"""Sagun et al. 2017 §3.3-4.1 (Figs 7-10): large vs small batch at the same learning rate and
number of iterations, then the large-batch run continued with a small batch, and the straight
line between the two end points; the figure and the claim tested from the same numbers.

Inputs, per seed (paired by position): the extreme Hessian eigenvalues (Lanczos, the
``curvature_eigen`` store) at the last checkpoint of the small-batch (SB) and large-batch
(LB) runs, the SB, LB and switched trajectories, and one line store (``hessvalley.line``)
from LB's end to the switched run's end. Outliers are counted on the top-k Ritz values by the
gap counter (``hessvalley.outliers``); with only k values the bulk is seen from its top, so a
count that reaches the window's end is not testable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, Claim, Number, Verdict, combine, write_claim
from hessvalley.errors import HessvalleyError
from hessvalley.figures.common import new_figure, save_figure
from hessvalley.outliers import OutlierCount, count_outliers

SOURCE = "Sagun et al. 2017, §3.3-4.1, Figs 7-10"
PAPER_VALUE = (
    "MNIST convnet: LB and SB spectra with the same number of large eigenvalues, larger for "
    "LB, negative ones orders of magnitude smaller; CIFAR-10 AlexNet LB then SB (batch 32): "
    "losses jump, SB ends slightly more accurate, no barrier on the line between the ends"
)
COUNTER = "gap"  # the outlier counter the claim uses (all three are reported)
COUNT_TOLERANCE = 1  # outlier counts "the same" when they differ by at most this
BARRIER_TOLERANCE = 0.05  # no barrier: at most this fraction of the higher end point's loss
METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")
COLORS = {"small": "tab:blue", "large": "tab:red", "switched": "tab:orange"}


@dataclass(frozen=True)
class Spectrum:
    """The extreme eigenvalues of one run at the last measured checkpoint."""

    largest: np.ndarray  # descending
    largest_residual: np.ndarray
    smallest: np.ndarray  # most negative first
    step: int
    counts: dict[str, OutlierCount]

    @property
    def window(self) -> int:
        """Positive Ritz values the counters saw: a count of ``window - 1`` may go on."""
        return int(np.sum(self.largest > 0))


def read_spectrum(path: str) -> Spectrum:
    """The last checkpoint row of a ``curvature_eigen`` store, with its outlier counts."""
    names = ["largest", "largest_residual", "smallest", "step"]
    arrays = store.read_arrays(path, names)
    largest = np.asarray(arrays["largest"][-1], dtype=float)
    return Spectrum(
        largest,
        np.asarray(arrays["largest_residual"][-1], dtype=float),
        np.asarray(arrays["smallest"][-1], dtype=float),
        int(arrays["step"][-1]),
        count_outliers(largest),
    )


def read_run(path: str) -> dict[str, Any]:
    """Steps and metrics per checkpoint of a trajectory, with its batch size and hashes."""
    group = store.open_store(path)
    out: dict[str, Any] = store.read_arrays(path, ["step", *METRICS])
    out["batch_size"] = int(group.attrs["batch_size"])
    out["config_hash"] = group.attrs["config_hash"]
    out["init_hash"] = group.attrs["config"].get("init")
    out["n_checkpoints"] = len(out["step"])
    return out


def check_wiring(large: Sequence[Mapping], switched: Sequence[Mapping], line: Mapping) -> None:
    """Refuse inputs that are not the experiment: a switched run that does not continue the
    LB run of its seed, or a line that does not join an LB end to a switched end."""
    for lb, sw in zip(large, switched, strict=True):
        if sw["init_hash"] != lb["config_hash"]:
            raise HessvalleyError(
                "batch.switched: the switched trajectory does not continue the large-batch "
                "one of its seed (its init_from config hash differs)"
            )
    ends = line["ends"]
    pairs = {(lb["config_hash"], sw["config_hash"]) for lb, sw in zip(large, switched, strict=True)}
    lasts = {lb["config_hash"]: lb["n_checkpoints"] for lb in large}
    lasts.update({sw["config_hash"]: sw["n_checkpoints"] for sw in switched})
    start, end = ends["from"], ends["to"]
    if (start["config_hash"], end["config_hash"]) not in pairs or any(
        e["checkpoint"] != lasts[e["config_hash"]] - 1 for e in (start, end)
    ):
        raise HessvalleyError(
            f"batch.line: line {line['line']!r} runs from {start['run']} checkpoint "
            f"{start['checkpoint']} to {end['run']} checkpoint {end['checkpoint']}, not from "
            "the large-batch run's last checkpoint to the switched run's last one"
        )


def switch_jump(large: Mapping[str, Any], switched: Mapping[str, Any], metric: str) -> float:
    """How far ``metric`` rises after the switch: its highest value over the switched run's
    later checkpoints minus its value at the switch (LB's end, the switched checkpoint 0)."""
    values = np.asarray(switched[metric], dtype=float)
    return float(np.max(values[1:]) - values[0]) if len(values) > 1 else math.nan


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values[0]), math.nan
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def _count_part(small: Sequence[Spectrum], large: Sequence[Spectrum]) -> Verdict:
    """Per seed pair: both counts found before the window's end and within ±1."""
    reasons, verdicts = [], []
    for sb, lb in zip(small, large, strict=True):
        c_sb, c_lb = sb.counts[COUNTER].count, lb.counts[COUNTER].count
        reasons.append(f"SB {c_sb}, LB {c_lb}")
        capped = [s.window for s, c in ((sb, c_sb), (lb, c_lb)) if c == 0 or c >= s.window - 1]
        if capped:
            verdicts.append(UNTESTABLE)
            reasons[-1] += " (a count is 0 or reaches the top-k window's end: raise eigen k)"
        else:
            verdicts.append(HOLDS if abs(c_sb - c_lb) <= COUNT_TOLERANCE else FAILS)
    return _every(verdicts, "; ".join(reasons))


def _top_part(small: Sequence[Spectrum], large: Sequence[Spectrum]) -> Verdict:
    """Per seed pair: λ1(LB) − λ1(SB) exceeds the sum of their Ritz residuals (each bounds
    its eigenvalue's error)."""
    reasons, verdicts = [], []
    for sb, lb in zip(small, large, strict=True):
        diff = lb.largest[0] - sb.largest[0]
        bound = lb.largest_residual[0] + sb.largest_residual[0]
        verdicts.append(HOLDS if diff > bound else FAILS)
        reasons.append(
            f"λ1 LB {lb.largest[0]:.4g} − SB {sb.largest[0]:.4g} = {diff:.3g} "
            f"(residuals {bound:.2g})"
        )
    return _every(verdicts, "; ".join(reasons))


def _every(verdicts: Sequence[str], reason: str) -> Verdict:
    if FAILS in verdicts:
        return Verdict(FAILS, reason)
    return Verdict(HOLDS if all(v == HOLDS for v in verdicts) else UNTESTABLE, reason)


def _barrier_part(summary: Mapping[str, Any]) -> Verdict:
    barrier, ends = summary["barrier"], summary["end_losses"]
    if barrier is None or None in ends:
        return Verdict(UNTESTABLE, "a loss on the line is not finite")
    allowed = BARRIER_TOLERANCE * max(ends)
    verdict = HOLDS if barrier <= allowed else FAILS
    return Verdict(
        verdict,
        f"barrier {barrier:.3g} vs tolerance {allowed:.3g} ({BARRIER_TOLERANCE:g} × the "
        f"higher end loss {max(ends):.4g})",
    )


def batch_claim(
    small: Sequence[Spectrum],
    large: Sequence[Spectrum],
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    summary: Mapping[str, Any],
) -> Claim:
    """The three parts (same count, larger LB top eigenvalue, no barrier) and the measured
    numbers (counts, eigenvalues, the jump at the switch, accuracies, the line's rises)."""
    parts = {
        f"same number of outliers ({COUNTER} counter, ±{COUNT_TOLERANCE})": _count_part(
            small, large
        ),
        "LB's top eigenvalue larger than SB's": _top_part(small, large),
        "no barrier on the line from LB's end to the switched end": _barrier_part(summary),
    }
    numbers = []
    for label, spectra in (("SB", small), ("LB", large)):
        for counter in ("gap", "ratio", "elbow"):
            count = _mean_se([s.counts[counter].count for s in spectra])
            numbers.append(Number(f"{label} outliers ({counter})", *count))
        numbers.append(Number(f"{label} λ1", *_mean_se([s.largest[0] for s in spectra])))
        ratio = [abs(s.smallest[0]) / s.largest[0] for s in spectra]
        numbers.append(Number(f"{label} |λmin| / λ1", *_mean_se(ratio)))
    for metric in ("train_loss", "val_loss"):
        pairs = zip(runs["large"], runs["switched"], strict=True)
        jumps = [switch_jump(lb, sw, metric) for lb, sw in pairs]
        numbers.append(Number(f"{metric} jump after the switch", *_mean_se(jumps)))
    for role, label in (("small", "SB"), ("large", "LB"), ("switched", "LB then SB")):
        for metric in ("train_acc", "val_acc"):
            final = [100 * r[metric][-1] for r in runs[role]]
            numbers.append(Number(f"{label} final {metric}", *_mean_se(final), unit="%"))
    for key, label in (
        ("barrier", "line barrier on (0, 1)"),
        ("rise_before", "line rise at α min"),
        ("rise_beyond", "line rise at α max"),
    ):
        value = summary.get(key)
        numbers.append(Number(label, math.nan if value is None else value))
    return Claim(
        id="sagun2017_batch",
        source=SOURCE,
        claim="At the same learning rate and number of iterations, large- and small-batch SGD "
        "end with the same number of outlier eigenvalues, larger for the large batch; "
        "continuing LB with a small batch makes the losses jump, yet the straight line "
        "from LB's end to where SB takes it has no barrier.",
        test=f"outliers counted by the {COUNTER} counter on the top-k Ritz values of each run's "
        f"last checkpoint: counts within ±{COUNT_TOLERANCE} in every seed (not testable when a "
        "count is 0 or reaches the window's end); λ1(LB) − λ1(SB) above the sum of their Ritz "
        "residuals in every seed; the line's barrier (highest training loss inside (0, 1) "
        f"minus the higher end's) at most {BARRIER_TOLERANCE:g} × the higher end loss",
        numbers=numbers,
        verdict=combine(parts),
        paper_value=PAPER_VALUE,
        parts=parts,
    )


def _spectra_panel(ax, small: Sequence[Spectrum], large: Sequence[Spectrum], runs) -> None:
    for role, spectra in (("small", small), ("large", large)):
        batch = runs[role][0]["batch_size"]
        for i, s in enumerate(spectra):
            rank = np.arange(1, len(s.largest) + 1)
            count = s.counts[COUNTER]
            label = f"batch {batch}: {count.count} outlier(s) ({COUNTER})" if i == 0 else None
            ax.semilogy(
                rank,
                np.where(s.largest > 0, s.largest, np.nan),
                "o-",
                color=COLORS[role],
                ms=3,
                lw=1,
                label=label,
            )
            negative = np.abs(np.where(s.smallest < 0, s.smallest, np.nan))
            ax.semilogy(
                np.arange(1, len(negative) + 1),
                negative,
                "x--",
                color=COLORS[role],
                ms=3,
                lw=0.8,
                label="|negative|" if i == 0 else None,
            )
            ax.axhline(count.cutoff, ls=":", color=COLORS[role], lw=0.8)
    ax.set_xlabel("rank (Lanczos, top k of each end)")
    ax.set_ylabel(r"Hessian eigenvalue $\lambda$ (and $|\lambda|$ of negative ones)")
    ax.set_title(f"spectra at the end ({COUNTER} cut-offs dotted)", fontsize=9)
    ax.legend(fontsize=7)


def _curves_panel(ax, runs, metric: str, ylabel: str) -> None:
    """LB, then the switched run continuing from LB's last step; SB over the same steps."""
    seeds = zip(runs["small"], runs["large"], runs["switched"], strict=True)
    for i, (sb, lb, sw) in enumerate(seeds):
        offset = lb["step"][-1]
        for split, style in (("train", "-"), ("val", "--")):
            for role, run, shift in (("small", sb, 0), ("large", lb, 0), ("switched", sw, offset)):
                name = f"{role} batch {run['batch_size']}" if role != "switched" else "LB then SB"
                label = f"{name}, {split}" if i == 0 else None
                ax.plot(
                    run["step"] + shift,
                    run[f"{split}_{metric}"],
                    style,
                    color=COLORS[role],
                    lw=1,
                    label=label,
                )
        ax.axvline(offset, color="gray", lw=0.8, ls=":")
    if metric == "loss" and all(np.all(r["train_loss"] > 0) for r in runs["small"]):
        ax.set_yscale("log")
    if metric == "acc":  # from the first checkpoint after the start: the end is what differs
        later = [r[f"{s}_acc"][1:] for rs in runs.values() for r in rs for s in ("train", "val")]
        low = min((float(np.min(v)) for v in later if len(v)), default=0.0)
        ax.set_ylim(max(0.0, low - 0.02), 1.005)
    ax.set_xlabel("SGD step (the switch dotted)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)


def _line_panel(ax, line: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Loss along α, log y: the far ends of the extension would flatten a bump inside."""
    alpha, summary = line["alpha"], attrs["summary"]
    ax.axvspan(0, 1, color="gray", alpha=0.08)
    ax.plot(alpha, line["train_loss"], "-", color="black", lw=1.2, label="train")
    ax.plot(alpha, line["val_loss"], "--", color="tab:green", lw=1.2, label="validation")
    for a, role, name in ((0.0, "large", "LB end"), (1.0, "switched", "switched end")):
        value = line["train_loss"][alpha == a][0]
        ax.plot([a], [value], "o", color=COLORS[role], ms=6, label=name)
    if np.all(line["train_loss"] > 0) and np.all(line["val_loss"] > 0):
        ax.set_yscale("log")
    barrier = summary["barrier"]
    text = "non-finite" if barrier is None else f"{barrier:.3g}"
    ax.set_title(f"straight line LB end → switched end: barrier on (0, 1) = {text}", fontsize=9)
    ax.set_xlabel(r"$\alpha$ in $(1-\alpha)\,\theta_{LB} + \alpha\,\theta_{switched}$")
    mode = f", BatchNorm {attrs['batch_norm']}" if attrs.get("has_batch_norm") else ""
    ax.set_ylabel(f"loss (full set{mode})")
    ax.legend(fontsize=7)


def batch_figure(
    small_eigen: list[str],
    large_eigen: list[str],
    small: list[str],
    large: list[str],
    switched: list[str],
    line: str,
    output: str,
    figures: Mapping[str, Any],
) -> None:
    """Spectra of SB and LB, losses and accuracies of SB, LB and LB continued with SB, and
    the loss along the line between LB's end and the switched end; writes the claim."""
    if not (len(small_eigen) == len(large_eigen) == len(small) == len(large) == len(switched)):
        raise HessvalleyError("batch figure: one eigen store and trajectory per seed and role")
    spectra = {"small": [read_spectrum(p) for p in small_eigen]}
    spectra["large"] = [read_spectrum(p) for p in large_eigen]
    runs = {
        role: [read_run(p) for p in paths]
        for role, paths in (("small", small), ("large", large), ("switched", switched))
    }
    attrs = store.open_store(line).attrs
    check_wiring(runs["large"], runs["switched"], attrs)
    claim = batch_claim(spectra["small"], spectra["large"], runs, attrs["summary"])
    fig, axes = new_figure(2, 2, figsize=(11.0, 8.0), layout="constrained")
    _spectra_panel(axes[0, 0], spectra["small"], spectra["large"], runs)
    _curves_panel(axes[0, 1], runs, "loss", "loss (full set, eval mode)")
    _curves_panel(axes[1, 0], runs, "acc", "accuracy")
    _line_panel(axes[1, 1], store.read_arrays(line, ["alpha", "train_loss", "val_loss"]), attrs)
    fig.suptitle(
        "Sagun et al. 2017 Figs 7-10: small vs large batch at one learning rate, then LB "
        f"continued with a small batch; claim: {claim.verdict.verdict}"
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
