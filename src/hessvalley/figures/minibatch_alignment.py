"""Xing et al. 2018 Figs 5-6: g_B^T H g_B / |g_B|^2 against the batch size, at chosen
checkpoints, from the ``minibatch_alignment`` stores; the figure and the claim tested from the
same numbers.

One panel per (run, seed, checkpoint): the mean ± standard deviation of the ratio over the
``n_batches`` batches of each size (log x; the full set at M, without spread), λmax and
tr(H)/P of the same Hessian as horizontal lines (every ratio is at most λmax; tr(H)/P is its
mean over random directions), and, where the store has it, the ratio g, C and H predict
between the sizes. Claim, per panel: the mean grows with the batch size, by the Spearman
correlation of the means with the sizes and the end-to-end difference in standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.batch_noise import predicted_ratio, spearman
from hessvalley.claims import FAILS, HOLDS, Claim, Number, Verdict, combine, signed, write_claim
from hessvalley.figures.common import new_figure, save_figure

SOURCE = "Xing et al. 2018, §4.2, Figs 5-6"
PAPER_VALUE = (
    "VGG-11 on CIFAR-10 (Fig 5) and ResNet-56 on CIFAR-100 (Fig 6), ends of epochs 5 and 10, "
    "batch sizes 100, 1000, 10000 and 45000 (all), 50 batches each: the mean alignment is "
    "larger for larger batches (read from the plots; no numbers in the text)"
)
MIN_SPEARMAN = 0.8  # the means' rank correlation with the sizes: at most one swap of 4
N_SIGMA = 3.0  # the largest size's mean above the smallest's by this many standard errors


@dataclass(frozen=True)
class Panel:
    """One checkpoint of one (run, seed): the ratios by batch size and the reference lines."""

    setting: str
    seed: int
    checkpoint: int
    epoch: float
    n_samples: int  # M, the samples of the Hessian and the batches
    n_params: int
    sizes: np.ndarray  # (size,) ascending
    ratios: np.ndarray  # (size, batch)
    lambda_max: float
    trace_per_param: float
    trace_per_param_stderr: float
    prediction: Mapping[str, Any] | None  # the g, C, H terms, or None

    @property
    def label(self) -> str:
        return f"{self.setting} seed {self.seed}, epoch {self.epoch:g}"

    @property
    def n_batches(self) -> int:
        return self.ratios.shape[1]

    def means(self) -> np.ndarray:
        return self.ratios.mean(axis=1)

    def stds(self) -> np.ndarray:
        return self.ratios.std(axis=1, ddof=1) if self.n_batches > 1 else np.zeros(len(self.sizes))

    def predicted(self, sizes: np.ndarray) -> np.ndarray:
        p = self.prediction
        terms = (p["gradient_curvature"], p["gradient_norm_sq"], p["trace_hc"], p["trace_c"])
        return np.asarray([predicted_ratio(*terms, self.n_samples, s)[0] for s in sizes])


def read_panels(path: str) -> list[Panel]:
    """The panels of one ``minibatch_alignment`` store, one per checkpoint, sizes ascending."""
    group = store.open_store(path)
    attrs = group.attrs
    names = ["checkpoint", "epoch", "batch_size", "ratio", "lambda_max", "trace"]
    arrays = store.read_arrays(path, names)
    order = np.argsort(arrays["batch_size"], kind="stable")
    has_prediction = "trace_hc" in group
    terms = ("gradient_curvature", "gradient_norm_sq", "trace_hc", "trace_c")
    prediction = store.read_arrays(path, list(terms)) if has_prediction else None
    panels = []
    n_params = int(attrs["n_params"])
    trace_se = np.asarray(group["trace_stderr"][...], dtype=float)
    for i, k in enumerate(arrays["checkpoint"]):
        panels.append(
            Panel(
                setting=str(attrs["setting"]),
                seed=int(attrs["seed"]),
                checkpoint=int(k),
                epoch=float(arrays["epoch"][i]),
                n_samples=int(attrs["n_samples"]),
                n_params=n_params,
                sizes=np.asarray(arrays["batch_size"])[order],
                ratios=np.asarray(arrays["ratio"][i], dtype=float)[order],
                lambda_max=float(arrays["lambda_max"][i]),
                trace_per_param=float(arrays["trace"][i]) / n_params,
                trace_per_param_stderr=float(trace_se[i]) / n_params,
                prediction=None if prediction is None else {t: prediction[t][i] for t in terms},
            )
        )
    return panels


def growth_part(sizes, means, stds, n_batches: int) -> tuple[Verdict, list[Number]]:
    """Spearman ρ of the means with the sizes, and (mean at the largest size − at the
    smallest) over the root sum of their squared standard errors std/sqrt(n). Holds when
    ρ ≥ ``MIN_SPEARMAN`` and the difference is at least ``N_SIGMA`` standard errors."""
    sizes, means, stds = (np.asarray(v, dtype=float) for v in (sizes, means, stds))
    rho = spearman(sizes, means)
    ends = [int(np.argmin(sizes)), int(np.argmax(sizes))]
    errors = stds[ends] / math.sqrt(n_batches)
    difference = float(means[ends[1]] - means[ends[0]])
    stderr = float(math.sqrt(np.sum(errors**2)))
    test = signed(difference, stderr, +1, N_SIGMA)
    ranked = math.isfinite(rho) and rho >= MIN_SPEARMAN
    verdict = test.verdict if test.verdict != HOLDS or ranked else FAILS
    reason = f"Spearman ρ = {rho:.2f} (needs ≥ {MIN_SPEARMAN:g}); end to end {test.reason}"
    numbers = [
        Number("Spearman ρ", rho),
        Number("mean(largest) − mean(smallest)", difference, stderr),
    ]
    return Verdict(verdict, reason), numbers


def fig5_claim(panels: Sequence[Panel]) -> Claim:
    """One part per panel; every part's numbers reported, the verdict over all of them."""
    parts, numbers = {}, []
    for panel in panels:
        verdict, found = growth_part(panel.sizes, panel.means(), panel.stds(), panel.n_batches)
        parts[panel.label] = verdict
        numbers += [Number(f"{panel.label}: {n.name}", n.value, n.stderr) for n in found]
        for size, mean in zip(panel.sizes, panel.means(), strict=True):
            numbers.append(Number(f"{panel.label}: mean ratio at batch {int(size)}", float(mean)))
    return Claim(
        id="xing2018_fig5",
        source=SOURCE,
        claim="The alignment of mini-batch gradients with the Hessian, g_B^T H g_B / |g_B|^2, "
        "is larger for larger mini-batches.",
        test=f"per checkpoint of each run and seed: the Spearman correlation of the mean ratios "
        f"with the batch sizes is at least {MIN_SPEARMAN:g}, and the mean at the largest size "
        f"exceeds the mean at the smallest by at least {N_SIGMA:g} standard errors (the root "
        "sum of the squared std/sqrt(n_batches) of the two)",
        numbers=numbers,
        verdict=combine(parts),
        paper_value=PAPER_VALUE,
        parts=parts,
    )


def _draw_panel(ax, panel: Panel) -> None:
    sizes, means, stds = panel.sizes, panel.means(), panel.stds()
    ax.errorbar(
        sizes,
        means,
        yerr=stds,
        fmt="o-",
        color="tab:blue",
        capsize=3,
        lw=1.2,
        label=f"mean ± std over {panel.n_batches} batches",
    )
    ax.axhline(panel.lambda_max, color="tab:red", ls="--", lw=1, label=r"$\lambda_{max}$")
    ax.axhline(panel.trace_per_param, color="tab:green", ls=":", lw=1.2, label=r"tr$(H)/P$")
    if panel.prediction is not None:
        grid = np.geomspace(float(sizes.min()), float(panel.n_samples), 60)
        ax.plot(
            grid,
            panel.predicted(grid),
            color="gray",
            lw=1,
            alpha=0.8,
            label=r"$(g^\top Hg + f\,\mathrm{tr}HC)/(|g|^2 + f\,\mathrm{tr}C)$",
        )
    ax.set_xscale("log")
    if np.all(means > 0) and panel.trace_per_param > 0:
        ax.set_yscale("log")
    labels = [("\nall" if s == panel.n_samples else str(int(s))) for s in sizes]  # a line down
    ax.set_xticks(sizes, labels)
    ax.minorticks_off()
    verdict, (rho, difference) = growth_part(sizes, means, stds, panel.n_batches)
    z = difference.value / difference.stderr if difference.stderr > 0 else math.nan
    ax.set_title(
        f"{panel.label} (checkpoint {panel.checkpoint}): {verdict.verdict}\n"
        f"ρ = {rho.value:.2f}, end to end {z:+.1f} se",
        fontsize=8,
    )
    ax.set_xlabel(f"mini-batch size (of M = {panel.n_samples})")
    ax.set_ylabel(r"$g_B^\top H g_B / |g_B|^2$")
    ax.legend(fontsize=6)


def fig5_figure(alignments: list[str], output: str, figures: Mapping[str, Any]) -> None:
    """Xing Figs 5-6 from the stores: a panel per (run, seed, checkpoint), one row per
    (run, seed); writes the claim."""
    rows = [read_panels(path) for path in alignments]
    claim = fig5_claim([panel for row in rows for panel in row])
    n_cols = max(len(row) for row in rows)
    fig, axes = new_figure(
        len(rows),
        n_cols,
        figsize=(4.6 * n_cols, 3.6 * len(rows)),
        squeeze=False,
        layout="constrained",
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            if j < len(row):
                _draw_panel(axes[i, j], row[j])
            else:
                axes[i, j].set_visible(False)
    fig.suptitle(
        "Xing et al. 2018 Figs 5-6: alignment of mini-batch gradients with the Hessian "
        f"against batch size; claim: {claim.verdict.verdict}",
        fontsize=10,
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
