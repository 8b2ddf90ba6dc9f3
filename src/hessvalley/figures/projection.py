"""Wei & Schwab Figs 1, 3, 4: losses and Hessian trace along projected paths.

Each figure also writes its claim, tested from the same stores (``projection.claims``), as
``<id>.json`` beside ``<id>.pdf``; the verdict is in the figure's title.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter

from hessvalley import store
from hessvalley.claims import Claim, write_claim
from hessvalley.figures.common import mean_band, new_figure, save_figure
from hessvalley.projection.claims import fig1_claim, fig3_claim, fig4_claim
from hessvalley.projection.outcomes import DIVERGED, STEP_CAP


def _read(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    group = store.open_store(path)
    arrays = {
        name: np.asarray(group[name][...])
        for name in group.array_keys()
        if name not in ("params", "buffers", "trace_samples")
    }
    return arrays, dict(group.attrs)


def _counts_line(attrs: Mapping[str, Any]) -> str:
    return (
        f"{attrs['n_points']} projected points, {attrs['n_failed_connections']} failed "
        f"connections, {attrs['n_not_converged']} not converged"
    )


def draw_path(ax, path: str, trajectory: str) -> None:
    """Train/val loss along one projected path; the raw SGD path in an inset."""
    p, attrs = _read(path)
    threshold = attrs["loss_threshold"]
    epoch = p["epoch"]
    ax.plot(epoch, p["train_loss"], "-", color="C0", lw=1.2, label="train (projected)")
    ax.plot(epoch, p["val_loss"], "-", color="C1", lw=1.2, label="validation (projected)")
    # Highest training loss on the line to the next projected point: a barrier shows up here.
    mid = 0.5 * (epoch[:-1] + epoch[1:])
    barrier = p["interp_train_loss"].max(axis=1)
    ax.plot(
        mid,
        barrier,
        ".",
        color="C2",
        ms=3,
        label="max train loss on line to next",
    )
    failed = ~p["connected"]
    if failed.any():
        ax.plot(
            mid[failed],
            barrier[failed],
            "x",
            color="C3",
            ms=6,
            label="not line connected",
        )
    # Projections that stopped without converging, by outcome (outcomes.STATUS_NAMES).
    for status, marker, label in ((STEP_CAP, "o", "step cap"), (DIVERGED, "^", "diverged")):
        stopped = p["status"] == status
        if stopped.any():
            ax.plot(
                epoch[stopped],
                p["train_loss"][stopped],
                marker,
                mfc="none",
                color="C3",
                ms=5,
                label=f"projection not converged ({label})",
            )
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch of the SGD state projected")
    ax.set_ylabel("loss $L$ (full set)")
    ax.set_title(f"{attrs['setting']} (seed {attrs['seed']})\n{_counts_line(attrs)}", fontsize=9)
    raw = store.read_arrays(trajectory, ["epoch", "train_loss", "val_loss"])
    inset = ax.inset_axes([0.5, 0.5, 0.47, 0.3])
    inset.plot(raw["epoch"], raw["train_loss"], color="C0", lw=1)
    inset.plot(raw["epoch"], raw["val_loss"], color="C1", lw=1)
    inset.set_yscale("log")
    inset.set_title("raw SGD path (checkpoints)", fontsize=7, pad=2)
    inset.set_xlabel("epoch", fontsize=7, labelpad=1)
    inset.set_ylabel("$L$", fontsize=7, labelpad=1)
    inset.tick_params(which="both", labelsize=6)
    inset.yaxis.set_minor_formatter(NullFormatter())
    inset.grid(alpha=0.3)


def _path_legend(fig, axes) -> None:
    """One legend below the figure for the path panels (their markers differ per panel)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.legend(
        list(entries.values()), list(entries), loc="outside lower center", ncol=3, fontsize=8
    )


def _by_setting(traces: Sequence[str]) -> dict[str, list[tuple[dict, dict]]]:
    grouped: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for path in traces:
        arrays, attrs = _read(path)
        grouped[attrs["setting"]].append((arrays, attrs))
    return dict(grouped)


def draw_trace(ax, seeds: list[tuple[dict, dict]], band: str) -> None:
    """Trace along the projected path: mean ± band over seeds on the epochs all seeds
    share, the estimator's standard error as error bars, each seed as a thin line."""
    common = set(seeds[0][0]["epoch"].tolist())
    for arrays, _ in seeds[1:]:
        common &= set(arrays["epoch"].tolist())
    grid = np.array(sorted(common))
    values, errors = [], []
    for arrays, _ in seeds:
        keep = np.isin(arrays["epoch"], grid)
        values.append(arrays["trace"][keep])
        errors.append(arrays["trace_stderr"][keep])
        ax.plot(arrays["epoch"], arrays["trace"], color="0.6", lw=0.6, alpha=0.7)
    values, errors = np.array(values), np.array(errors)
    mean, half = mean_band(values, band)
    n = len(seeds)
    estimator_error = np.sqrt(np.sum(errors**2, axis=0)) / n  # of the mean over seeds
    slopes = np.array([attrs["slope_per_epoch"] for _, attrs in seeds])
    first = seeds[0][1]
    slope_text = (
        f"slope from epoch {first['fit_from_epoch']:g}: {np.nanmean(slopes):.3g}"
        + (f" ± {np.nanstd(slopes, ddof=1):.2g}" if n > 1 else "")
        + " per epoch"
    )
    (line,) = ax.plot(grid, mean, "-", color="C0", lw=1.5, label=f"mean over {n} seeds")
    if n > 1:
        ax.fill_between(grid, mean - half, mean + half, color="C0", alpha=0.2, lw=0)
    ax.errorbar(
        grid,
        mean,
        yerr=estimator_error,
        fmt="none",
        ecolor="k",
        elinewidth=0.8,
        capsize=2,
        label=f"{first['method']} standard error ({first['matvecs']} Hessian-vector products)",
    )
    ax.plot([], [], color="0.6", lw=0.6, label="single seeds")
    ax.fill_between([], [], [], color="C0", alpha=0.2, label=f"± {band} over seeds")
    ax.axvline(first["fit_from_epoch"], color="k", ls=":", lw=0.8)
    ax.set_xlabel("epoch of the SGD state projected")
    ax.set_ylabel(r"Hessian trace $\mathrm{tr}\,H$ at the projected point")
    ax.set_title(f"{first['setting']}\n{slope_text}", fontsize=9)
    line.set_zorder(3)


def _claim_title(title: str, claim: Claim) -> str:
    return f"{title}\nclaim: {claim.verdict.verdict}"


def fig1_figure(
    paths: Sequence[str], trajectories: Sequence[str], output: str, figures: Mapping[str, Any]
) -> None:
    """W&S Fig 1: train/val loss along projected paths (raw SGD path inset), and its claim.

    The claim (consecutive projected points line connected) goes to <id>.json."""
    fig, axes = new_figure(
        1, len(paths), figsize=(5.2 * len(paths), 4.4), squeeze=False, layout="constrained"
    )
    for ax, path, trajectory in zip(axes[0], paths, trajectories, strict=True):
        draw_path(ax, path, trajectory)
    _path_legend(fig, axes[0])
    claim = fig1_claim(paths)
    fig.suptitle(_claim_title("Loss along the projected path (Wei & Schwab Fig 1)", claim))
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)


def fig3_figure(traces: Sequence[str], output: str, figures: Mapping[str, Any]) -> None:
    """W&S Fig 3: Hessian trace along the projected paths over seeds, and its claim.

    The claim (the trace decreases) goes to <id>.json."""
    grouped = _by_setting(traces)
    fig, axes = new_figure(
        1, len(grouped), figsize=(5.2 * len(grouped), 4.2), squeeze=False, layout="constrained"
    )
    for ax, seeds in zip(axes[0], grouped.values(), strict=True):
        draw_trace(ax, seeds, figures.get("band", "std"))
    axes[0][0].legend(fontsize=7, loc="upper right")
    claim = fig3_claim(traces)
    fig.suptitle(_claim_title("Hessian trace along the projected path (Wei & Schwab Fig 3)", claim))
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)


def fig4_figure(
    paths: Sequence[str],
    trajectories: Sequence[str],
    traces: Sequence[str],
    output: str,
    figures: Mapping[str, Any],
) -> None:
    """W&S Fig 4 (A.2): loss along the projected path and trace per setting, and its claim.

    The claim (connected, trace decreasing) goes to <id>.json."""
    grouped = _by_setting(traces)
    n = len(paths)
    fig, axes = new_figure(2, n, figsize=(5.2 * n, 8.0), squeeze=False, layout="constrained")
    for column, (path, trajectory) in enumerate(zip(paths, trajectories, strict=True)):
        draw_path(axes[0][column], path, trajectory)
        setting = store.open_store(path).attrs["setting"]
        draw_trace(axes[1][column], grouped[setting], figures.get("band", "std"))
    _path_legend(fig, axes[0])
    axes[1][0].legend(fontsize=7, loc="upper right")
    claim = fig4_claim(paths, traces)
    title = "Projected paths and trace, further settings (Wei & Schwab Fig 4, A.2)"
    fig.suptitle(_claim_title(title, claim))
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
