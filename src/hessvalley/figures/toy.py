"""Toy-model figures and their claims: W&S Fig 2b (trace change vs η²), Fig 2c-d (trace and
determinant under SGD-like vs isotropic noise) and Fig 7 (GD vs noisy GD on a tilted valley).

Every number a figure prints comes from its store (the values the run used and measured), and
each figure writes its claim (``results/figures/<id>.json``) tested from the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.claims import (
    UNTESTABLE,
    Claim,
    Number,
    Verdict,
    combine,
    signed,
    within,
    write_claim,
)
from hessvalley.figures.common import new_figure, plot_mean_band, save_figure

NOISE_COLORS = {"sgd": "tab:red", "isotropic": "tab:blue", "none": "tab:gray"}
NOISE_LABELS = {"sgd": "SGD-like noise $C = sH$", "isotropic": r"isotropic noise $C = \sigma^2 I$"}
SOURCE = "Wei & Schwab 2020"
# what the paper reports (its text; the runs compute everything else)
PAPER_FIG2B = "a linear relation, shown by a best-fit line (no slope given; 1000 steps measured)"
PAPER_FIG2CD = "trace down under SGD noise, determinant down under isotropic noise (no numbers)"
PAPER_FIG7 = "<θ2> = −0.02 at α = 1e-4, η = 0.01, 1/S − 1/M = 1, start (0.1, 0.1)"


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


# -- claims --------------------------------------------------------------------------------------


def trace_gradient_squared(eigenvalue_grads: np.ndarray) -> float:
    """|Σ_i ∇̂λ_i|², mean over runs, from ∇̂λ of shape (..., mode, valley)."""
    return float(np.mean(np.sum(np.sum(eigenvalue_grads, axis=-2) ** 2, axis=-1)))


def fig2b_claim(summary: Mapping[str, Any], grad_trace_sq: float) -> Claim:
    """Theorem 1: the fitted slope of ΔT against η², per step, within 3 standard errors of
    −s‖Σ∇̂λ‖²/4; the fit's χ²/dof says how straight the line is."""
    steps = summary["measure_steps"]
    slope, slope_se = summary["fit_slope"] / steps, summary["fit_slope_se"] / steps
    predicted = summary["predicted_slope"] / steps
    dof = summary["fit_dof"]
    return Claim(
        id="wei2020_fig2b",
        source=f"{SOURCE}, Fig 2b (Theorem 1)",
        claim="Under SGD-like noise the trace change per step is linear in η² with Theorem 1's "
        "slope −s‖Σ∇̂λ‖²/4.",
        test="weighted least-squares line of the mean trace change (standard errors over runs) "
        "against η²: fitted slope within 3 standard errors of Theorem 1's",
        numbers=[
            Number("fitted slope of ΔT per step vs η²", slope, slope_se),
            Number("Theorem 1 slope −s‖Σ∇̂λ‖²/4", predicted),
            Number("‖Σ∇̂λ‖² at the start", grad_trace_sq),
            Number("noise strength s", summary["noise_strength"]),
            Number(f"fit χ²/dof ({dof} dof)", summary["fit_chi2"] / dof if dof else math.nan),
        ],
        verdict=within(slope, slope_se, predicted),
        paper_value=PAPER_FIG2B,
    )


def fig2cd_claim(summary: Mapping[str, Any], steps: int) -> Claim:
    """Each noise lowers its own quantity: both changes negative at ≥ 3 standard errors. The
    changes of the other quantity are reported too (the toy makes them rise)."""
    tested = {"sgd": "trace", "isotropic": "determinant"}
    names = {"sgd": "SGD-like", "isotropic": "isotropic"}
    parts = {
        f"{names[kind]} noise lowers the {quantity}": signed(
            summary[f"{kind}_{quantity}_change"], summary[f"{kind}_{quantity}_change_sem"], -1
        )
        for kind, quantity in tested.items()
    }
    numbers = [
        Number(
            f"{names[kind]} noise: {quantity} change over {steps} steps",
            summary[f"{kind}_{quantity}_change"],
            summary[f"{kind}_{quantity}_change_sem"],
        )
        for kind in tested
        for quantity in ("trace", "determinant")
    ]
    return Claim(
        id="wei2020_fig2cd",
        source=f"{SOURCE}, Fig 2c-d (Theorem 1, Corollary 2.1)",
        claim="SGD-like noise lowers the Hessian trace, isotropic noise lowers the determinant.",
        test="mean change over runs (standard error over runs): the SGD-noise trace change and "
        "the isotropic-noise determinant change both negative at ≥ 3 standard errors",
        numbers=numbers,
        verdict=combine(parts),
        paper_value=PAPER_FIG2CD,
        parts=parts,
    )


def fig7_claim(summary: Mapping[str, Any], spec: Mapping[str, Any]) -> Claim:
    """Eq. 38: noisy GD's time-averaged θ2 within 3 standard errors of −2α/(ηs); GD's θ2
    velocity (it never stops) reported beside it."""
    predicted = summary["predicted_theta2"]
    prediction = (
        f"−2α/(ηs) at α = {spec['alpha']:.3g}, η = {spec['eta']:.3g}, "
        f"s = {summary['noise_strength']:.3g}"
    )
    return Claim(
        id="wei2020_fig7",
        source=f"{SOURCE}, Appendix A.6, Fig 7 (Eq. 38)",
        claim="On a tilted valley GD keeps sliding while noisy GD equilibrates at <θ2> = −2α/(ηs).",
        test="time average of θ2 over steps ≥ average_from per run, mean and standard error "
        "over runs, within 3 standard errors of −2α/(ηs); testable when average_from is at "
        f"least {RELAXATION_TIMES} relaxation times 2/(η²s)",
        numbers=[
            Number(
                f"noisy GD <θ2> over steps ≥ {summary['average_from']}",
                summary["noisy_theta2_mean"],
                summary["noisy_theta2_sem"],
            ),
            Number(prediction, predicted),
            Number("GD θ2 velocity", summary["gd_theta2_velocity"], unit="per step"),
        ],
        verdict=_equilibrium_verdict(summary, spec, predicted),
        paper_value=PAPER_FIG7,
    )


RELAXATION_TIMES = 3  # the average must start this many relaxation times 2/(η²s) in


def _equilibrium_verdict(
    summary: Mapping[str, Any], spec: Mapping[str, Any], predicted: float
) -> Verdict:
    """An equilibrium claim is testable only once θ2 has relaxed: the averaging window must
    start at least RELAXATION_TIMES relaxation times 2/(η²s) after the start (the offset from
    the start then decays to e^-3 of its size)."""
    strength = summary["noise_strength"]
    if strength <= 0:
        return Verdict(UNTESTABLE, "no noise (s = 0): there is no equilibrium to test")
    relaxation = 2 / (spec["eta"] ** 2 * strength)
    if summary["average_from"] < RELAXATION_TIMES * relaxation:
        return Verdict(
            UNTESTABLE,
            f"the average starts at step {summary['average_from']}, before "
            f"{RELAXATION_TIMES} relaxation times 2/(η²s) = {RELAXATION_TIMES * relaxation:.4g} "
            "steps: θ2 has not equilibrated (raise toy.fig7.steps and average_from)",
        )
    return within(summary["noisy_theta2_mean"], summary["noisy_theta2_sem"], predicted)
