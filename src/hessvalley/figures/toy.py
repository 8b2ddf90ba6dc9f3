"""Toy-model figures: W&S Fig 2b (trace change vs η²), Fig 2c-d (trace and
determinant under SGD-like vs isotropic noise) and Fig 7 (GD vs noisy GD on a tilted valley).

Every number a figure prints comes from its store (the values the run used and measured), and
each figure writes its claim (``results/figures/<id>.json``, from ``toy_claims``) tested
from the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.claims import write_claim
from hessvalley.figures.common import new_figure, plot_mean_band, save_figure
from hessvalley.figures.toy_claims import (
    fig2b_claim,
    fig2cd_claim,
    fig7_claim,
    trace_gradient_squared,
)

NOISE_COLORS = {"sgd": "tab:red", "isotropic": "tab:blue", "none": "tab:gray"}
NOISE_LABELS = {"sgd": "SGD-like noise $C = sH$", "isotropic": r"isotropic noise $C = \sigma^2 I$"}


def _band_label(band: str, n_runs: int) -> str:
    return f"mean ± {band} over {n_runs} runs"


def fig2b_figure(store_path: str, output: str, figures: Mapping[str, Any]) -> None:
    """ΔT vs η² with per-η standard errors, the weighted fit and Theorem 1's line; ratio panel."""
    data = store.read_arrays(
        store_path,
        [
            "eta",
            "trace_change_mean",
            "trace_change_sem",
            "predicted_trace_change",
            "predicted_trace_change_finite_eta",
            "trace_change",
            "eigenvalue_grads_at_start",
        ],
    )
    summary = store.open_store(store_path).attrs["summary"]
    grad_trace_sq = trace_gradient_squared(data["eigenvalue_grads_at_start"])
    claim = fig2b_claim(summary, grad_trace_sq)
    eta2 = data["eta"] ** 2
    mean, sem = data["trace_change_mean"], data["trace_change_sem"]
    steps = summary["measure_steps"]
    n_runs = data["trace_change"].shape[1]
    fig, (ax, ax_ratio) = new_figure(1, 2, figsize=(10.0, 4.2), layout="constrained")
    grid = np.linspace(0.0, eta2.max() * 1.05, 50)
    ax.errorbar(
        eta2,
        mean,
        yerr=sem,
        fmt="o",
        color="black",
        ms=4,
        capsize=2,
        label=f"measured (mean ± s.e.m., {n_runs} runs)",
    )
    fit_label = f"weighted fit: slope {summary['fit_slope']:.4g} ± {summary['fit_slope_se']:.2g}"
    ax.plot(
        grid,
        summary["fit_slope"] * grid + summary["fit_intercept"],
        color="tab:red",
        label=fit_label,
    )
    ax.plot(
        grid,
        summary["predicted_slope"] * grid,
        "--",
        color="tab:blue",
        label=(
            r"Theorem 1: $-\frac{\eta^2}{4} s \,|\sum_i \hat\nabla\lambda_i|^2 \times$"
            f"{steps}\n"
            rf"$|\sum_i \hat\nabla\lambda_i|^2$ = {grad_trace_sq:.4g}, "
            f"slope {summary['predicted_slope']:.4g}"
        ),
    )
    ax.set_xlabel(r"squared learning rate $\eta^2$")
    ax.set_ylabel(rf"trace change $\Delta T$ over {steps} steps")
    ax.set_title(r"$L = |\theta_3+\theta_4|\,\theta_1^2 + |\theta_3+2\theta_4|\,\theta_2^2$")
    ax.ticklabel_format(axis="both", style="sci", scilimits=(0, 0))
    ax.legend(loc="upper right", fontsize=8)
    ax.text(
        0.03,
        0.03,
        f"(fitted − predicted slope) / σ = {summary['slope_z']:+.2f}\n"
        f"intercept = {summary['fit_intercept']:.2g} ± {summary['fit_intercept_se']:.2g}\n"
        f"χ²/dof = {summary['fit_chi2']:.1f}/{summary['fit_dof']}\n"
        f"claim: {claim.verdict.verdict}",
        transform=ax.transAxes,
        ha="left",
        va="bottom",
        fontsize=8,
    )

    predicted = data["predicted_trace_change"]
    ax_ratio.errorbar(
        data["eta"],
        mean / predicted,
        yerr=sem / np.abs(predicted),
        fmt="o",
        color="black",
        ms=4,
        capsize=2,
        label="measured / Theorem 1",
    )
    ax_ratio.axhline(1.0, ls="--", color="tab:blue", label="Theorem 1 (leading order in η)")
    ax_ratio.plot(
        data["eta"],
        data["predicted_trace_change_finite_eta"] / predicted,
        ":",
        color="tab:green",
        label=r"with exact $\langle\theta_i^2\rangle = "
        r"\eta C_{ii}/(\lambda_i(2-\eta\lambda_i))$",
    )
    ax_ratio.set_xlabel(r"learning rate $\eta$")
    ax_ratio.set_ylabel(r"$\Delta T$ measured / predicted")
    ax_ratio.set_title("agreement per learning rate")
    ax_ratio.legend(loc="lower left", fontsize=8)
    fig.suptitle(
        f"W&S Fig 2b: SGD noise lowers the Hessian trace at a rate ∝ η² "
        f"(noise strength s = {summary['noise_strength']:.3g})"
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)


def fig2cd_figure(store_path: str, output: str, figures: Mapping[str, Any]) -> None:
    """Trace (c) and determinant (d) vs step for both noise types, theory dashed."""
    data = store.read_arrays(
        store_path,
        [
            "noise",
            "noise_strength",
            "step",
            "trace",
            "determinant",
            "theory_trace",
            "theory_determinant",
        ],
    )
    summary = store.open_store(store_path).attrs["summary"]
    band = figures.get("band", "std")
    step = data["step"]
    claim = fig2cd_claim(summary, int(step[-1] - step[0]))
    n_runs = data["trace"].shape[-1]
    fig, axes = new_figure(1, 2, figsize=(10.0, 4.4), layout="constrained")
    panels = (
        ("trace", r"Hessian trace $T = \lambda_1 + \lambda_2$", "(c)"),
        ("determinant", r"determinant $\mathrm{Det} = \lambda_1 \lambda_2$", "(d)"),
    )
    for ax, (name, ylabel, letter) in zip(axes, panels, strict=True):
        for c, kind in enumerate(data["noise"]):
            kind = str(kind)
            color = NOISE_COLORS[kind]
            strength = data["noise_strength"][c]
            label = f"{NOISE_LABELS[kind]}, {'s' if kind == 'sgd' else 'σ²'} = {strength:.3g}"
            plot_mean_band(ax, step, data[name][c].T, label, band, color=color)
            ax.plot(
                step,
                data[f"theory_{name}"][c],
                "--",
                color=color,
                lw=1.2,
                label="    leading-order theory (mean field, Eq. 7-8)",
            )
        ax.set_xlabel("training step $t$")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{letter} {name}")
        ax.legend(fontsize=8)
    fig.suptitle(
        "W&S Fig 2c-d: SGD-like noise lowers the trace, isotropic noise the determinant\n"
        r"$L = (4 - 2e^{-\theta_3^2-\theta_4^2})\,\theta_1^2 + e^{-(\theta_3-\theta_4)^2}\,"
        rf"\theta_2^2$; {_band_label(band, n_runs)}; claim: {claim.verdict.verdict}"
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)


def fig7_figure(store_path: str, output: str, figures: Mapping[str, Any]) -> None:
    """θ1 and θ2 vs step for GD (left) and noisy GD (right), with <θ2> = −2α/(ηs)."""
    data = store.read_arrays(store_path, ["step", "theta"])
    group = store.open_store(store_path)
    summary, spec = group.attrs["summary"], group.attrs["config"]
    band = figures.get("band", "std")
    step = data["step"]
    theta = data["theta"]  # (optimizer, step, run, param)
    n_runs = theta.shape[2]
    predicted = summary["predicted_theta2"]
    claim = fig7_claim(summary, spec)
    fig, axes = new_figure(2, 2, figsize=(10.0, 6.4), sharex=True, layout="constrained")
    titles = (
        "gradient descent",
        f"noisy GD (SGD-like, s = {summary['noise_strength']:.3g})",
    )
    for col, title in enumerate(titles):
        color = "tab:gray" if col == 0 else "tab:red"
        ax1, ax2 = axes[0, col], axes[1, col]
        plot_mean_band(
            ax1, step, theta[col, :, :, 0].T, _band_label(band, n_runs), band, color=color
        )
        ax1.plot(step, theta[col, :, 0, 0], lw=0.4, color="black", alpha=0.6, label="one run")
        ax1.set_ylabel(r"$\theta_1$")
        ax1.set_title(title)
        ax1.legend(fontsize=8, loc="upper right")
        plot_mean_band(
            ax2, step, theta[col, :, :, 1].T, _band_label(band, n_runs), band, color=color
        )
        predicted_label = (
            rf"predicted $\langle\theta_2\rangle = -2\alpha/(\eta s)$ = {predicted:.4g}"
        )
        ax2.axhline(predicted, ls="--", color="tab:blue", label=predicted_label)
        ax2.set_xlabel("training step $t$")
        ax2.set_ylabel(r"$\theta_2$")
        if col == 1:
            ax2.axvspan(spec["average_from"], step[-1], color="tab:green", alpha=0.08)
            ax2.axhline(
                summary["noisy_theta2_mean"],
                ls=":",
                color="tab:green",
                label=(
                    rf"measured $\langle\theta_2\rangle$ (shaded steps) = "
                    f"{summary['noisy_theta2_mean']:.4g} ± "
                    f"{summary['noisy_theta2_sem']:.1g}"
                ),
            )
        else:
            ax2.text(
                0.03,
                0.05,
                f"still sliding: θ₂ changes by {summary['gd_theta2_velocity']:.2g}"
                f" per step (−ηα = {-spec['eta'] * spec['alpha']:.2g})",
                transform=ax2.transAxes,
                fontsize=8,
            )
        ax2.legend(fontsize=8, loc="upper right")
        if col == 1:  # after the legend: the inset's unlabelled lines stay out of it
            _zoom_inset(
                ax2, step, theta[1, :, :, 1], spec["average_from"], predicted, summary, band
            )
    theta2_min = min(theta[:, :, :, 1].min(), predicted)
    for ax in axes[1]:
        ax.set_ylim(theta2_min - 0.01, theta[:, :, :, 1].max() + 0.01)
    fig.suptitle(
        r"W&S Fig 7: $L = \frac{1}{2}(\theta_2^2+1)\,\theta_1^2 + \alpha\theta_2$, "
        rf"$\alpha$ = {spec['alpha']:.3g}, $\eta$ = {spec['eta']:.3g}: "
        f"noise stops the slide (entropic force); claim: {claim.verdict.verdict}"
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)


def _zoom_inset(ax, step, theta2, average_from: int, predicted: float, summary, band: str) -> None:
    """Inset magnifying θ2 over the averaging window, where the band and the lines separate."""
    inset = ax.inset_axes([0.42, 0.06, 0.55, 0.34])
    window = step >= average_from
    plot_mean_band(inset, step[window], theta2[window].T, "", band, color="tab:red")
    inset.axhline(predicted, ls="--", color="tab:blue")
    inset.axhline(summary["noisy_theta2_mean"], ls=":", color="tab:green")
    inset.set_ylabel(r"$\theta_2$ (zoom)", fontsize=7)
    inset.tick_params(labelsize=6)
    inset.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    inset.xaxis.get_offset_text().set_fontsize(6)
