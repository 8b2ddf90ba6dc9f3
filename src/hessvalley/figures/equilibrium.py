"""W&S Fig 2a: the sum of the negative Hessian eigenvalues against the training loss at SGD
equilibria near a GD minimum (stores of ``hessvalley.equilibrium``), with A.3's checks.

Panels: (a) Σλ<0 against L, one point per SGD cell (mean ± standard error over its
snapshots; colour = learning rate, marker = batch size), the GD run's own checkpoints apart,
and the weighted line fit; (b) the same on log-log axes with the fitted power (1: ∝ L, 1/2:
∝ √L); (c) L against A.3's prediction C·tr H (a line of slope 1 through 0 if it holds). All
cells of all stores are pooled; the claim (``equilibrium_claims``) is tested from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.lines import Line2D

from hessvalley import store
from hessvalley.claims import write_claim
from hessvalley.figures.common import new_figure, save_figure
from hessvalley.figures.equilibrium_claims import (
    PAPER_W,
    Cells,
    Fig2aFits,
    Fit,
    cell_means,
    fig2a_claim,
    fig2a_fits,
)

POINT_ARRAYS = (
    "source",
    "batch_size",
    "lr",
    "C",
    "step",
    "train_loss",
    "negative_sum",
    "trace",
    "diverged",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def read_points(sweeps: Sequence[str]) -> dict[str, np.ndarray]:
    """The points of all stores, concatenated, with ``sweep`` = the store's index."""
    tables = [store.read_arrays(path, POINT_ARRAYS) for path in sweeps]
    out = {name: np.concatenate([np.asarray(t[name]) for t in tables]) for name in POINT_ARRAYS}
    out["source"] = np.asarray([str(s) for s in out["source"]])  # plain str, not StringDType
    out["sweep"] = np.concatenate(
        [np.full(len(t["lr"]), i, dtype=np.int64) for i, t in enumerate(tables)]
    )
    return out


def _styles(cells: Cells) -> tuple[dict[float, Any], dict[int, str]]:
    """Colour per learning rate (viridis, in order) and marker per batch size."""
    lrs = sorted(set(cells.lr.tolist()))
    cmap = colormaps["viridis"]
    colours = {lr: cmap(i / max(len(lrs) - 1, 1) * 0.9) for i, lr in enumerate(lrs)}
    sizes = sorted(set(cells.batch_size.tolist()))
    return colours, {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(sizes)}


def _cells_and_gd(ax, cells: Cells, gd: Mapping[str, np.ndarray], x: str, y: str) -> None:
    """Cell means with error bars in both directions, and the GD checkpoints."""
    colours, markers = _styles(cells)
    ok = cells.finite
    for k in np.flatnonzero(ok):
        ax.errorbar(
            getattr(cells, x)[k],
            np.abs(getattr(cells, y)[k]) if ax.get_yscale() == "log" else getattr(cells, y)[k],
            xerr=np.nan_to_num(getattr(cells, f"{x}_se")[k]),
            yerr=np.nan_to_num(getattr(cells, f"{y}_se")[k]),
            fmt=markers[int(cells.batch_size[k])],
            color=colours[float(cells.lr[k])],
            ms=5,
            capsize=2,
            lw=0.8,
        )
    if len(gd["x"]):
        gy = np.abs(gd[y]) if ax.get_yscale() == "log" else gd[y]
        ax.plot(gd["x"], gy, "x--", color="black", lw=0.8, ms=6)


def _legend(ax, cells: Cells, fit_label: str) -> None:
    colours, markers = _styles(cells)
    handles = [
        Line2D([], [], color=c, marker="o", ls="", label=f"η = {lr:g}") for lr, c in colours.items()
    ]
    handles += [
        Line2D([], [], color="grey", marker=m, ls="", label=f"S = {s}") for s, m in markers.items()
    ]
    handles.append(Line2D([], [], color="black", marker="x", ls="--", label="GD checkpoints"))
    handles.append(Line2D([], [], color="tab:red", label=fit_label))
    ax.legend(handles=handles, fontsize=7, loc="best")


def _fit_text(fit: Fit) -> str:
    return (
        f"fit w = {fit.slope:.4g} ± {fit.slope_se:.2g}\n"
        f"b = {fit.intercept:.2g} ± {fit.intercept_se:.2g}, R² = {fit.r2:.3f}"
    )


def _line_panel(ax, cells: Cells, gd: Mapping[str, np.ndarray], fits: Fig2aFits) -> None:
    _cells_and_gd(ax, cells, {**gd, "x": gd["loss"]}, "loss", "negative_sum")
    line = fits.line
    top = np.nanmax(np.concatenate([cells.loss[cells.finite], gd["loss"], [0.0]]))
    grid = np.linspace(0.0, 1.05 * top, 50)
    if np.isfinite(line.slope):
        ax.plot(grid, line.slope * grid + line.intercept, color="tab:red", lw=1.2)
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("training loss $L$ (KL form, minimum 0)")
    ax.set_ylabel(r"sum of negative eigenvalues $\sum_{\lambda_i<0}\lambda_i$")
    ax.set_title(f"(a) paper: w = {PAPER_W}, b ≈ 0", fontsize=9)
    _legend(ax, cells, _fit_text(line))


def _loglog_panel(ax, cells: Cells, gd: Mapping[str, np.ndarray], fits: Fig2aFits) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.tick_params(which="minor", labelsize=6)  # labelled minor ticks crowd a short decade
    _cells_and_gd(ax, cells, {**gd, "x": gd["loss"]}, "loss", "negative_sum")
    fit = fits.loglog
    ok = cells.finite & (cells.loss > 0)
    if np.isfinite(fit.slope) and ok.any():
        grid = np.geomspace(cells.loss[ok].min(), cells.loss[ok].max(), 20)
        label = f"fit: |Σλ<0| ∝ L^{fit.slope:.3f} ± {fit.slope_se:.2g}"
        ax.plot(grid, np.exp(fit.intercept) * grid**fit.slope, color="tab:red", label=label)
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("training loss $L$")
    ax.set_ylabel(r"$|\sum_{\lambda_i<0}\lambda_i|$")
    ax.set_title("(b) power: 1 means ∝ L, 1/2 means ∝ √L", fontsize=9)


def _noise_panel(ax, cells: Cells, fits: Fig2aFits) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.tick_params(which="minor", labelsize=6)  # labelled minor ticks crowd a short decade
    empty = {"x": np.zeros(0), "loss": np.zeros(0)}
    _cells_and_gd(ax, cells, empty, "noise_trace", "loss")
    ok = cells.finite & (cells.noise_trace > 0)
    if ok.any():
        values = np.concatenate([cells.noise_trace[ok], cells.loss[ok]])
        grid = np.geomspace(values.min(), values.max(), 20)
        ax.plot(grid, grid, "--", color="tab:blue", label="A.3: L = C tr H")
        fit = fits.noise
        if np.isfinite(fit.slope):
            line = fit.slope * grid + fit.intercept
            label = f"fit L = s·C tr H + L*: s = {fit.slope:.3g} ± {fit.slope_se:.2g}"
            ax.plot(grid[line > 0], line[line > 0], color="tab:red", label=label)
        ax.legend(fontsize=7, loc="best")
    ax.set_xlabel(r"$C\,\mathrm{tr}\,H$,  $C = \frac{\eta}{4S}(1 - \frac{S}{M})$")
    ax.set_ylabel("training loss $L$")
    ax.set_title("(c) A.3: equilibrium loss against the noise scale", fontsize=9)


def fig2a_figure(sweeps: list[str], output: str, figures: Mapping[str, Any]) -> None:
    """The three panels from all equilibrium stores, and the claim beside the figure."""
    points = read_points(sweeps)
    cells = cell_means(points)
    fits = fig2a_fits(cells)
    claim = fig2a_claim(cells, fits)
    is_gd = points["source"] == "gd"
    gd = {"loss": points["train_loss"][is_gd], "negative_sum": points["negative_sum"][is_gd]}
    fig, axes = new_figure(1, 3, figsize=(15.0, 4.6), layout="constrained")
    _line_panel(axes[0], cells, gd, fits)
    _loglog_panel(axes[1], cells, gd, fits)
    _noise_panel(axes[2], cells, fits)
    group = store.open_store(sweeps[0]) if sweeps else None
    scale = ""
    if group is not None:
        valley = group.attrs["valley"]
        scale = f"P = {valley['P']}, N(K−1) = {valley['N_times_K_minus_1']}; "
    fig.suptitle(
        "W&S Fig 2a: sum of negative Hessian eigenvalues against the training loss at SGD "
        f"equilibria near a GD minimum\n{scale}{int(cells.finite.sum())} SGD cells from "
        f"{len(sweeps)} store(s), mean ± s.e. over snapshots; claim: {claim.verdict.verdict}"
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
