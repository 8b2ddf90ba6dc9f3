"""Wei & Schwab Fig 5 (A.4): cos(H, C) and the training loss during training, per run, and
the claim that the Hessian and the noise covariance are aligned after the early phase.

The claim is tested from the alignment stores alone (``fig5_claim``): for each run, every
checkpoint of every seed at epoch >= ``from_epoch`` (``alignment.from_epoch``; null: the
later half of the run's training) must have cos(H, C) - 3 standard errors > 0.9 (the standard
error is 0 when H and C were exact). Torch-free, like every figure job.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, Claim, Number, Verdict, combine, write_claim
from hessvalley.figures.common import new_figure, plot_mean_band, save_figure

THRESHOLD = 0.9  # W&S A.4: "larger than 0.9 after several epochs of initial training"
N_SIGMA = 3.0
CLAIM = (
    "After the early phase of training the Hessian and the gradient-noise covariance are "
    "aligned: cos(H, C) = tr(HC) / (|H|_F |C|_F) > 0.9, with label-smoothed cross-entropy "
    "and with MSE."
)
TEST = (
    "per run, every checkpoint of every seed at epoch >= {start}: cos(H, C) (centred C) minus "
    "{n_sigma:g} standard errors (0 when H and C are exact) > {threshold:g}; holds when it "
    "does for every run, does not hold when it fails for one; a run with no such checkpoint "
    "is not testable"
)
PAPER_VALUE = (
    "cos(H, C) larger than 0.9 after several epochs for both losses (one hidden layer of 70, "
    "CIFAR-10 grey 7x7; LS-CE lr 0.001, MSE lr 0.1, batch 512; no further numbers)"
)


@dataclass(frozen=True)
class Curve:
    """One alignment store: the cosines with standard errors and the loss per checkpoint."""

    setting: str
    seed: int
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]

    @property
    def stochastic(self) -> bool:
        return self.attrs["method"] == "stochastic"


NAMES = (
    "epoch",
    "train_loss",
    "cosine",
    "cosine_stderr",
    "cosine_uncentred",
    "cosine_uncentred_stderr",
)


def read_curves(paths: Sequence[str]) -> dict[str, list[Curve]]:
    """The stores grouped by run setting, runs in the order they first appear."""
    grouped: dict[str, list[Curve]] = defaultdict(list)
    for path in paths:
        attrs = dict(store.open_store(path).attrs)
        arrays = store.read_arrays(path, NAMES)
        grouped[attrs["setting"]].append(Curve(attrs["setting"], int(attrs["seed"]), arrays, attrs))
    return dict(grouped)


def late_start(curves: Sequence[Curve], from_epoch: float | None) -> float:
    """The first epoch of the tested phase: ``from_epoch``, or half the run's last epoch."""
    if from_epoch is not None:
        return float(from_epoch)
    return max(float(c.arrays["epoch"][-1]) for c in curves) / 2


def _stderr_or_nan(curve: Curve, index: int) -> float:
    return float(curve.arrays["cosine_stderr"][index]) if curve.stochastic else math.nan


def run_part(setting: str, curves: Sequence[Curve], start: float) -> tuple[Verdict, list[Number]]:
    """One run's verdict and numbers: the smallest cos - 3 se over its late checkpoints (a
    NaN first), the cosine there, and each seed's last cosine."""
    numbers, late = [], []
    for curve in curves:
        lower = curve.arrays["cosine"] - N_SIGMA * curve.arrays["cosine_stderr"]
        late += [
            (float(lower[i]), curve, int(i)) for i in np.flatnonzero(curve.arrays["epoch"] >= start)
        ]
        last = len(curve.arrays["epoch"]) - 1
        numbers.append(
            Number(
                f"{setting} seed {curve.seed}: cos(H, C) at the last checkpoint "
                f"(epoch {curve.arrays['epoch'][last]:g})",
                float(curve.arrays["cosine"][last]),
                _stderr_or_nan(curve, last),
            )
        )
    if not late:
        return Verdict(UNTESTABLE, f"no checkpoint at epoch >= {start:g}"), numbers
    lower, curve, index = min(late, key=lambda item: (not math.isnan(item[0]), item[0]))
    epoch, value = curve.arrays["epoch"][index], float(curve.arrays["cosine"][index])
    name = (
        f"{setting}: smallest cos(H, C) at epoch >= {start:g} (seed {curve.seed}, epoch {epoch:g})"
    )
    numbers.insert(0, Number(name, value, _stderr_or_nan(curve, index)))
    if not math.isfinite(lower):
        return Verdict(UNTESTABLE, f"cos(H, C) is not finite at epoch {epoch:g}"), numbers
    bound = f"cos - {N_SIGMA:g} se = {lower:.4g}" if curve.stochastic else f"cos = {lower:.4g}"
    where = f"seed {curve.seed}, epoch {epoch:g}"
    if lower > THRESHOLD:
        return Verdict(HOLDS, f"smallest {bound} ({where}) > {THRESHOLD:g}"), numbers
    return Verdict(FAILS, f"{bound} <= {THRESHOLD:g} at {where}"), numbers


def fig5_claim(curves: Mapping[str, Sequence[Curve]], from_epoch: float | None) -> Claim:
    """The claim over every run (module docstring)."""
    parts, numbers, starts = {}, [], []
    for setting, seeds in curves.items():
        start = late_start(seeds, from_epoch)
        starts.append(f"{start:g} ({setting})")
        parts[setting], found = run_part(setting, seeds, start)
        numbers.extend(found)
    if from_epoch is None:
        start_text = "the later half of training: " + ", ".join(starts)
    else:
        start_text = f"{from_epoch:g} (alignment.from_epoch)"
    return Claim(
        id="wei2020_fig5",
        source="Wei & Schwab 2020, Fig 5 (A.4)",
        claim=CLAIM,
        test=TEST.format(start=start_text, n_sigma=N_SIGMA, threshold=THRESHOLD),
        numbers=numbers,
        verdict=combine(parts),
        paper_value=PAPER_VALUE,
        parts=parts,
    )


def loss_label(attrs: Mapping[str, Any]) -> str:
    """E.g. "label-smoothed CE (0.1), lr 0.001, batch 512" from the run's loss and optimizer."""
    loss = attrs["loss_config"]
    smoothing = loss.get("label_smoothing", 0.0)
    if attrs["loss"] == "ce":
        name = f"label-smoothed CE ({smoothing:g})" if smoothing else "cross-entropy"
    else:
        name = attrs["loss"].upper()
    optimizer = attrs["optimizer"]
    return f"{name}, lr {optimizer['lr']:g}, batch {optimizer['batch_size']}"


def _draw_cosine(ax, curves: Sequence[Curve], start: float, band: str) -> None:
    many = len(curves) > 1
    for i, curve in enumerate(curves):
        a, color = curve.arrays, f"C{i}"
        seed = f" seed {curve.seed}" if many else ""
        for name, style, what, face in (
            ("cosine", "o-", "C", color),
            ("cosine_uncentred", "s--", r"C + gg^\top", "none"),
        ):
            error = a[f"{name}_stderr"] if curve.stochastic else None
            ax.errorbar(a["epoch"], a[name], yerr=error, fmt=style, color=color, mfc=face, ms=3,
                        lw=1, capsize=2, alpha=0.6 if many else 1.0,
                        label=rf"$\cos(H, {what})${seed}")  # fmt: skip
    if many:
        common = min(len(c.arrays["epoch"]) for c in curves)
        values = np.stack([c.arrays["cosine"][:common] for c in curves])
        plot_mean_band(ax, curves[0].arrays["epoch"][:common], values,
                       f"mean ± {band} over seeds", band, color="black", lw=1.5)  # fmt: skip
    ax.axhline(THRESHOLD, ls=":", color="tab:red", label=f"{THRESHOLD:g} (W&S A.4)")
    end = max(c.arrays["epoch"][-1] for c in curves)
    ax.axvspan(start, end, color="tab:green", alpha=0.07, label=f"tested: epoch ≥ {start:g}")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
    ax.set_ylabel(r"$\cos(H, C) = \mathrm{tr}(HC) / (\|H\|_F \|C\|_F)$")
    ax.legend(fontsize=7, loc="lower right")


def _draw_loss(ax, curves: Sequence[Curve]) -> None:
    for i, curve in enumerate(curves):
        label = f"seed {curve.seed}" if len(curves) > 1 else "training loss"
        ax.plot(curve.arrays["epoch"], curve.arrays["train_loss"], "o-", ms=3, color=f"C{i}",
                label=label)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)


def fig5_figure(
    alignments: list[str], output: str, figures: Mapping[str, Any], from_epoch: float | None
) -> None:
    """W&S Fig 5: one column per run, cos(H, C) on top (centred solid, uncentred dashed,
    the tested phase shaded), the training loss below; the claim goes to <id>.json."""
    curves = read_curves(alignments)
    claim = fig5_claim(curves, from_epoch)
    n = len(curves)
    fig, axes = new_figure(2, n, figsize=(5.2 * n, 6.4), squeeze=False, sharex="col",
                           height_ratios=[2, 1], layout="constrained")  # fmt: skip
    for column, (setting, seeds) in enumerate(curves.items()):
        start = late_start(seeds, from_epoch)
        _draw_cosine(axes[0][column], seeds, start, figures.get("band", "std"))
        _draw_loss(axes[1][column], seeds)
        attrs = seeds[0].attrs
        axes[0][column].set_title(
            f"{setting}: {loss_label(attrs)}\n{attrs['n_params']} parameters, "
            f"{attrs['method']} H and C; {claim.parts[setting].verdict}",
            fontsize=9,
        )
    fig.suptitle(
        "Hessian-noise alignment during training (Wei & Schwab Fig 5, A.4); tested phase "
        f"shaded\nclaim: {claim.verdict.verdict}"
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
