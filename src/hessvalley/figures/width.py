"""Sagun et al. 2017 §3.2, Figs 4-6: the edges of the exact Hessian spectrum against width.

Reads the exact spectrum stores of a width family (``hessvalley.trajectory_curvature``,
``results/<run>/seed<k>/curvature/spectrum.zarr``, measured at the first and last
checkpoints), grouped by run setting, seeds averaged. Panels: (a) the top eigenvalues against
their rank at the end of training (dashed: at initialisation), Fig 4; (b) the most negative
eigenvalues against their rank, Fig 5; (c) the same against rank / P, Fig 6. The claim
(``width_claims``) is tested from the same numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D

from hessvalley import store
from hessvalley.claims import write_claim
from hessvalley.errors import HessvalleyError
from hessvalley.figures.common import new_figure, plot_mean_band, save_figure
from hessvalley.figures.width_claims import (
    DEFAULTS,
    WidthSpectra,
    coefficient_of_variation,
    compared_ranks,
    dtype_eps,
    relative_spread,
    roundoff_cutoff,
    width_claim,
)


def _read_seed(path: str) -> dict[str, Any]:
    """One exact spectrum store: its setting, size, precision and first and last rows."""
    group = store.open_store(path)
    attrs = group.attrs
    if attrs.get("method") != "exact":
        raise HessvalleyError(
            f"{path}: the spectrum of {attrs.get('n_params')} parameters was estimated by "
            f"stochastic Lanczos quadrature (method {attrs.get('method')!r}), but the width "
            "figure needs every eigenvalue: raise curvature.spectrum.max_params to at least "
            f"{attrs.get('n_params')} or narrow the nets"
        )
    checkpoints = np.asarray(group["checkpoint"][...])
    eigenvalues = np.asarray(group["eigenvalues"][...], dtype=float)
    return {
        "setting": str(attrs["setting"]),
        "n_params": int(attrs["n_params"]),
        "eps": dtype_eps(attrs.get("hessian")),
        "end": eigenvalues[-1],
        "init": eigenvalues[0] if checkpoints[0] == 0 and len(checkpoints) > 1 else None,
        "end_loss": float(np.asarray(group["train_loss"][...])[-1]),
        "end_epoch": float(np.asarray(group["epoch"][...])[-1]),
    }


def read_family(spectra: Sequence[str]) -> list[WidthSpectra]:
    """The stores grouped by run setting (``attrs["setting"]``), seeds stacked, narrowest
    net first. The seeds of one setting must have the same number of parameters."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in spectra:
        seed = _read_seed(path)
        groups[seed["setting"]].append(seed)
    family = []
    for setting, seeds in groups.items():
        sizes = {s["n_params"] for s in seeds}
        if len(sizes) > 1:
            raise HessvalleyError(f"run {setting}: its spectra have {sorted(sizes)} parameters")
        inits = [s["init"] for s in seeds]
        family.append(
            WidthSpectra(
                setting=setting,
                n_params=sizes.pop(),
                eps=max(s["eps"] for s in seeds),
                end=np.stack([s["end"] for s in seeds]),
                init=None if any(i is None for i in inits) else np.stack(inits),
                end_loss=np.asarray([s["end_loss"] for s in seeds]),
                end_epoch=np.asarray([s["end_epoch"] for s in seeds]),
            )
        )
    return sorted(family, key=lambda w: w.n_params)


def _right_edge_panel(ax, family: Sequence[WidthSpectra], colors, top: int, band: str) -> None:
    """Fig 4: λ_i against rank i ≤ top, end of training (markers), start dashed."""
    k = compared_ranks(family, top)
    ranks = np.arange(1, k + 1)
    for w, color in zip(family, colors, strict=True):
        label = f"{w.setting} (P = {w.n_params})"
        plot_mean_band(ax, ranks, w.top(k), label, band, color=color, marker="o", ms=3)
        if w.init is not None:
            ax.plot(ranks, w.top(k, "init").mean(axis=0), "--", color=color, alpha=0.45, lw=1)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], ls="--", color="grey", alpha=0.6))
    labels.append("at initialisation")
    ax.legend(handles, labels, fontsize=7)
    ax.set_xlabel("rank i (largest first)")
    ax.set_ylabel(r"eigenvalue $\lambda_i$")
    ax.set_title(f"(a) right edge: the {k} largest eigenvalues")


def _left_edge_panels(axes, family: Sequence[WidthSpectra], colors, band: str) -> None:
    """Figs 5 and 6: the negative eigenvalues (beyond round-off) against rank and rank / P;
    dotted: each width's round-off cutoff −P·eps·max|λ|."""
    for w, color in zip(family, colors, strict=True):
        n = int(w.n_negative.max())
        fraction = w.negative_fraction.mean()
        label = f"{w.setting}: n₋/P = {fraction:.3g}"
        cutoff = float(roundoff_cutoff(w.end, w.eps).mean())
        for ax, scale in zip(axes, (1.0, w.n_params), strict=True):
            if n:
                ranks = np.arange(1, n + 1) / scale
                plot_mean_band(ax, ranks, w.smallest(n), label, band, color=color, lw=1.2)
            else:
                ax.plot([], [], color=color, label=f"{w.setting}: no negative eigenvalue")
            ax.axhline(-cutoff, ls=":", lw=0.8, color=color)
    axes[0].set_xlabel("rank i (most negative first)")
    axes[0].set_title("(b) left edge: the negative eigenvalues")
    axes[1].set_xlabel("rank i / P")
    axes[1].set_title("(c) left edge against the fraction of P")
    for ax in axes:
        ax.set_ylabel(r"eigenvalue $\lambda$")
        ax.legend(fontsize=7, loc="lower right")


def width_figure(
    spectra: list[str],
    output: str,
    figures: Mapping[str, Any],
    width: Mapping[str, Any],
) -> None:
    """Figs 4-6 from the exact spectra of the width family, and the claim beside them."""
    family = read_family(spectra)
    if not family:
        raise HessvalleyError("no spectrum stores: list the width family in width.runs")
    keys = {**DEFAULTS, **{k: v for k, v in width.items() if k in DEFAULTS}}
    band = figures.get("band", "std")
    claim = width_claim(family, keys)
    colors = colormaps["viridis"](np.linspace(0.0, 0.85, len(family)))
    fig, axes = new_figure(1, 3, figsize=(15.0, 4.6), layout="constrained")
    _right_edge_panel(axes[0], family, colors, int(keys["top"]), band)
    _left_edge_panels(axes[1:], family, colors, band)
    _annotate(axes, family, keys)
    seeds = sorted({w.n_seeds for w in family})
    fig.suptitle(
        "Sagun et al. 2017 Figs 4-6: the Hessian's edges against width (exact spectra at the "
        f"end of training; mean ± {band} over {'/'.join(map(str, seeds))} seed(s)); "
        f"claim: {claim.verdict.verdict}"
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)


def _annotate(axes, family: Sequence[WidthSpectra], keys: Mapping[str, Any]) -> None:
    """The tested statistics in the panels they are read from."""
    if len(family) < 2:
        return
    spread = float(np.max(relative_spread(family, int(keys["top"]))))
    fractions = [w.negative_fraction.mean() for w in family]
    ratio = max(w.left_right_ratio.mean() for w in family)
    texts = (
        f"largest relative spread over widths {spread:.3g}\n(tolerance {keys['tolerance']:g})",
        f"largest |λmin|/λmax {ratio:.3g}\n(threshold {keys['ratio_threshold']:g})",
        f"CV of n₋/P over widths {coefficient_of_variation(fractions):.3g}\n"
        f"(threshold {keys['cv_threshold']:g})",
    )
    for ax, text, y in zip(axes, texts, (0.97, 0.5, 0.5), strict=True):  # clear of the curves
        ax.text(0.97, y, text, transform=ax.transAxes, ha="right", va="top", fontsize=8)
