"""The toy figures' claims (W&S Figs 2b, 2c-d, 7): each a verdict computed from the numbers
the figure's store holds, by the test it states."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hessvalley.claims import UNTESTABLE, Claim, Number, Verdict, combine, signed, within

SOURCE = "Wei & Schwab 2020"
# what the paper reports (its text; the runs compute everything else)
PAPER_FIG2B = "a linear relation, shown by a best-fit line (no slope given; 1000 steps measured)"
PAPER_FIG2CD = "trace down under SGD noise, determinant down under isotropic noise (no numbers)"
PAPER_FIG7 = "<θ2> = −0.02 at α = 1e-4, η = 0.01, 1/S − 1/M = 1, start (0.1, 0.1)"


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
        f"least {RELAXATION_TIMES} relaxation times 2/(η²s) and what is left of the start's "
        "offset in the average is within one standard error",
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
    start at least RELAXATION_TIMES relaxation times τ = 2/(η²s) after the start, and what is
    left of the start's offset in the window's average, |θ2(0) − θ2*| τ (e^(−t0/τ) −
    e^(−T/τ)) / (T − t0), must be within one standard error (else a precise average fails
    the 3-standard-error test on the transient alone)."""
    strength = summary["noise_strength"]
    if strength <= 0:
        return Verdict(UNTESTABLE, "no noise (s = 0): there is no equilibrium to test")
    relaxation = 2 / (spec["eta"] ** 2 * strength)
    start, end = summary["average_from"], spec["steps"]
    if start < RELAXATION_TIMES * relaxation:
        return Verdict(
            UNTESTABLE,
            f"the average starts at step {start}, before "
            f"{RELAXATION_TIMES} relaxation times 2/(η²s) = {RELAXATION_TIMES * relaxation:.4g} "
            "steps: θ2 has not equilibrated (raise toy.fig7.steps and average_from)",
        )
    decay = math.exp(-start / relaxation) - math.exp(-end / relaxation)
    transient = abs(spec["init"][1] - predicted) * relaxation * decay / (end - start)
    if transient > summary["noisy_theta2_sem"]:
        return Verdict(
            UNTESTABLE,
            f"the start's offset can still shift the average by {transient:.2g}, more than its "
            f"standard error {summary['noisy_theta2_sem']:.2g}: θ2 has not equilibrated to "
            "this precision (raise toy.fig7.steps and average_from)",
        )
    return within(summary["noisy_theta2_mean"], summary["noisy_theta2_sem"], predicted)
