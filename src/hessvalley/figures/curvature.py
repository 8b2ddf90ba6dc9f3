"""Curvature along training for one run setting: trace, extreme eigenvalues, spectrum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.figures.common import new_figure, plot_mean_band, save_figure


def stack_seeds(paths: Sequence[str], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays of each seed's store stacked on a leading seed axis (cut to a common length)."""
    runs = [store.read_arrays(p, [*names, "epoch"]) for p in paths]
    n = min(len(r["epoch"]) for r in runs)
    out = {name: np.stack([r[name][:n] for r in runs]) for name in names}
    out["epoch"] = runs[0]["epoch"][:n]
    return out


def _spectrum_panel(ax, spectrum: str) -> None:
    group = store.open_store(spectrum)
    epoch = float(group["epoch"][-1])
    if group.attrs["method"] == "exact":
        eigenvalues = np.asarray(group["eigenvalues"][-1])
        edges = np.linspace(eigenvalues.min(), eigenvalues.max(), 80)
        ax.hist(eigenvalues, bins=edges, color="tab:blue", alpha=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("number of eigenvalues")
        top = np.sort(eigenvalues)[::-1][:10]
        ax.plot(top, np.full_like(top, 0.7), "v", color="tab:red", ms=4, label="10 largest")
        ax.legend()
        what = f"exact, all {len(eigenvalues)} eigenvalues"
    else:
        nodes = np.asarray(group["slq_nodes"][-1])
        weights = np.asarray(group["slq_weights"][-1])
        grid = np.linspace(nodes.min(), nodes.max(), 400)
        sigma = (nodes.max() - nodes.min()) / 200
        gauss = np.exp(-((grid[:, None, None] - nodes) ** 2) / (2 * sigma**2))
        density = (gauss * weights).sum(-1).mean(-1) / (sigma * np.sqrt(2 * np.pi))
        ax.semilogy(grid, np.maximum(density, 1e-12))
        ax.set_ylabel("spectral density (SLQ)")
        what = "stochastic Lanczos quadrature"
    ax.set_xlabel(r"Hessian eigenvalue $\lambda$")
    ax.set_title(
        f"Hessian spectrum, seed {group.attrs['seed']}, epoch {epoch:g}\n({what})", fontsize=9
    )


def _trace_panel(ax, traces: Sequence[str], band: str) -> None:
    trace = stack_seeds(traces, ["trace", "trace_stderr"])
    plot_mean_band(ax, trace["epoch"], trace["trace"], f"mean ± {band} over seeds", band)
    stderr = np.sqrt(np.mean(trace["trace_stderr"] ** 2, axis=0))
    ax.errorbar(trace["epoch"], trace["trace"].mean(0), yerr=stderr, fmt="none", ecolor="k",
                capsize=2, lw=0.8, label="estimator standard error")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"Hessian trace $\mathrm{tr}\,H$")
    ax.legend(fontsize=8)


def _eigen_panel(ax, eigens: Sequence[str], band: str) -> None:
    eigen = stack_seeds(eigens, ["largest", "smallest"])
    plot_mean_band(ax, eigen["epoch"], eigen["largest"][:, :, 0], r"$\lambda_{\max}$", band)
    plot_mean_band(
        ax, eigen["epoch"], np.abs(eigen["smallest"][:, :, 0]), r"$|\lambda_{\min}|$", band
    )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("extreme Hessian eigenvalues")
    ax.legend(fontsize=8)


def _negative_sum_panel(ax, spectra: Sequence[str]) -> None:
    for path in spectra:
        group = store.open_store(path)
        arrays = store.read_arrays(path, ["train_loss", "negative_sum", "negative_sum_stderr"])
        ax.errorbar(arrays["train_loss"], arrays["negative_sum"],
                    yerr=arrays["negative_sum_stderr"], fmt="o-", ms=3, lw=0.8, capsize=2,
                    label=f"seed {group.attrs['seed']}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training loss $L$")
    ax.set_ylabel(r"sum of negative eigenvalues $\sum_{\lambda_i<0} \lambda_i$")
    ax.set_title("negative curvature vs loss\n(cf. W&S Fig 2a)", fontsize=9)
    ax.legend(fontsize=8)


def curvature_figure(
    traces: Sequence[str],
    eigens: Sequence[str],
    spectra: Sequence[str],
    setting: str,
    output: str,
    figures: Mapping[str, Any],
) -> None:
    """Curvature along training of one run setting: trace, extreme eigenvalues, spectrum
    (the panels of the measurements the run gets, ``curvature.runs``)."""
    band = figures.get("band", "std")
    n_panels = bool(traces) + bool(eigens) + 2 * bool(spectra)
    if not n_panels:
        raise ValueError(f"{setting}: no curvature store to draw")
    fig, axes = new_figure(
        1, n_panels, figsize=(4.5 * n_panels, 4.0), layout="constrained", squeeze=False
    )
    panels = iter(axes[0])
    if traces:
        _trace_panel(next(panels), traces, band)
    if eigens:
        _eigen_panel(next(panels), eigens, band)
    if spectra:
        _spectrum_panel(next(panels), spectra[0])
        _negative_sum_panel(next(panels), spectra)
    n_seeds = len(traces or eigens or spectra)
    fig.suptitle(f"{setting}: curvature along training ({n_seeds} seed{'s' * (n_seeds > 1)})")
    save_figure(fig, output, dpi=figures.get("dpi", 150))
