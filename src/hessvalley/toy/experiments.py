"""The toy stages (workflow/rules/toy.smk): W&S Fig 2b (trace change vs η²), Fig 2c-d
(trace and determinant under SGD-like vs isotropic noise) and Fig 7 (the entropic force)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hessvalley.errors import HessvalleyError
from hessvalley.stats import mean_sem, weighted_line_fit
from hessvalley.store import provenance, write_store
from hessvalley.toy.noise import Noise, resolve_strength
from hessvalley.toy.simulator import simulate, stationary_start
from hessvalley.toy.theory import (
    eigenvalue_rates,
    mean_field_path,
    tilted_equilibrium,
    trace_rate,
)
from hessvalley.toy.valleys import DTYPE, AbsValley, GaussianValley, TiltedValley, ValleyLoss


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _initial_state(loss: ValleyLoss, init: Sequence[float]) -> torch.Tensor:
    init_t = torch.as_tensor(init, dtype=DTYPE)
    if init_t.shape != (loss.n_params,):
        raise HessvalleyError(f"init must have {loss.n_params} entries for {loss.name}")
    return init_t


def trace_vs_eta(spec: Mapping[str, Any], output: str) -> dict[str, Any]:
    """W&S Fig 2b: trace change over ``measure_steps`` after ``equilibrate_steps``, per η.

    Writes (eta, run) trace changes, recorded traces and eigenvalues, the eigenvalue
    gradients ∇̂λ at the start of the measurement (Theorem 1's |Σ∇̂λ|²) and Theorem 1's
    prediction; attrs hold the weighted fit of <ΔT> against η².
    """
    started = time.perf_counter()
    loss = AbsValley()
    etas = torch.as_tensor(spec["etas"], dtype=DTYPE)
    strength = resolve_strength(spec["noise_strength"])
    noise = Noise("sgd", strength)
    generator = _generator(spec["seed"])
    init = _initial_state(loss, spec["init"])
    hat0 = init[loss.n_nondegenerate :]
    if spec["stationary_start"]:
        theta0 = stationary_start(loss, hat0, etas, noise, spec["runs"], generator)
    else:
        theta0 = init.expand(len(etas), spec["runs"], -1)
    equilibrate, measure = spec["equilibrate_steps"], spec["measure_steps"]
    trajectory = simulate(
        loss,
        theta0,
        etas,
        noise,
        equilibrate + measure,
        generator,
        spec["record_every"],
        record_at=[equilibrate],
        show_progress=True,
    )
    start = int(np.searchsorted(trajectory.steps, equilibrate))
    theta = trajectory.theta  # (eta, step, run, param)
    _check_signs_kept(loss, theta)
    hat = theta[..., loss.n_nondegenerate :]
    eigenvalues = loss.eigenvalues(hat)
    trace = eigenvalues.sum(-1)
    trace_change = (trace[:, -1] - trace[:, start]).numpy()
    predicted, predicted_finite = _theorem1_trace_changes(
        loss, hat[:, start:], etas, noise, measure
    )
    mean, sem = mean_sem(trace_change)
    summary = {
        **_slope_fits(etas.numpy() ** 2, mean, sem, predicted),
        "noise_strength": strength,
        "measure_steps": measure,
        "simulation_seconds": time.perf_counter() - started,
    }
    attrs = {**provenance(spec, spec["seed"]), "summary": summary, "loss": loss.name}
    write_store(
        output,
        {
            "eta": (["eta"], etas.numpy()),
            "step": (["step"], trajectory.steps),
            "trace": (["eta", "step", "run"], trace.numpy()),
            "eigenvalues": (["eta", "step", "run", "mode"], eigenvalues.numpy()),
            "trace_change": (["eta", "run"], trace_change),
            "trace_change_mean": (["eta"], mean),
            "trace_change_sem": (["eta"], sem),
            "predicted_trace_change": (["eta"], predicted),
            "predicted_trace_change_finite_eta": (["eta"], predicted_finite),
            "eigenvalue_grads_at_start": (
                ["eta", "run", "mode", "valley"],
                loss.eigenvalue_grads(hat[:, start]).numpy(),
            ),
        },
        attrs,
    )
    print(f"fig2b summary: {summary}")
    return summary


def _check_signs_kept(loss: AbsValley, theta: torch.Tensor) -> None:
    """Theorem 1's test needs constant ∇̂λ: the signs of θ3+θ4 and θ3+2θ4 fixed in every run."""
    signs = loss.signs(theta)  # (eta, step, run, mode)
    sign_kept = (signs == signs[:, :1]).all(dim=-1).all(dim=1)  # (eta, run)
    if not bool(sign_kept.all()):
        lost = int((~sign_kept).sum())
        raise HessvalleyError(
            f"toy.fig2b: in {lost} runs θ3+θ4 or θ3+2θ4 changed sign, leaving the regime of "
            "Theorem 1 (constant ∇̂λ); start further from zero (toy.fig2b.init) or lower "
            "toy.fig2b.etas / noise_strength"
        )


def _theorem1_trace_changes(
    loss: ValleyLoss, hat: torch.Tensor, etas: torch.Tensor, noise: Noise, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted ΔT over ``steps`` per η, from the measured θ̂ (eta, step, run, m) onwards.

    Theorem 1 (leading order) at the measurement start, and the rate with the exact
    stationary variance ηC/(λ(2 − ηλ)) averaged along the measured path (finite η).
    """
    eta2 = etas.numpy() ** 2
    per_step = trace_rate(loss, hat[:, 0], 1.0, noise.strength).mean(-1).numpy() * eta2
    finite = np.array(
        [
            eigenvalue_rates(loss, hat[c], float(eta), noise, finite_eta=True).sum(-1).mean().item()
            for c, eta in enumerate(etas.tolist())
        ]
    )
    return per_step * steps, finite * steps


def _slope_fits(
    eta2: np.ndarray, mean: np.ndarray, sem: np.ndarray, predicted: np.ndarray
) -> dict[str, float]:
    """Weighted fits of <ΔT> against η² (free and through the origin) and Theorem 1's slope."""
    fit = weighted_line_fit(eta2, mean, sem)
    fit0 = weighted_line_fit(eta2, mean, sem, through_origin=True)
    coefficient = float(np.mean(predicted / eta2))
    return {
        "fit_slope": fit.slope,
        "fit_slope_se": fit.slope_se,
        "fit_intercept": fit.intercept,
        "fit_intercept_se": fit.intercept_se,
        "fit_chi2": fit.chi2,
        "fit_dof": fit.dof,
        "fit_origin_slope": fit0.slope,
        "fit_origin_slope_se": fit0.slope_se,
        "fit_origin_chi2": fit0.chi2,
        "predicted_slope": coefficient,
        "slope_z": (fit.slope - coefficient) / fit.slope_se,
    }


def noise_structure(spec: Mapping[str, Any], output: str) -> dict[str, Any]:
    """W&S Fig 2c-d: trace and determinant under SGD-like vs isotropic noise from one start."""
    started = time.perf_counter()
    loss = GaussianValley()
    noises = [
        Noise("sgd", resolve_strength(spec["sgd_strength"])),
        Noise("isotropic", float(spec["isotropic_strength"])),
    ]
    eta = float(spec["eta"])
    generator = _generator(spec["seed"])
    init = _initial_state(loss, spec["init"])
    hat0 = init[loss.n_nondegenerate :]
    if spec["stationary_start"]:
        theta0 = stationary_start(loss, hat0, eta, noises, spec["runs"], generator)
    else:
        theta0 = init.expand(len(noises), spec["runs"], -1)
    trajectory = simulate(
        loss,
        theta0,
        eta,
        noises,
        spec["steps"],
        generator,
        spec["record_every"],
        show_progress=True,
    )
    theta = trajectory.theta
    hat = theta[..., loss.n_nondegenerate :]
    eigenvalues = loss.eigenvalues(hat)
    theory = torch.stack(
        [mean_field_path(loss, hat0, eta, z, spec["steps"])[trajectory.steps] for z in noises]
    )
    theory_eigenvalues = loss.eigenvalues(theory)
    trace = eigenvalues.sum(-1)
    determinant = eigenvalues.prod(-1)
    summary: dict[str, Any] = {"simulation_seconds": time.perf_counter() - started}
    for c, z in enumerate(noises):
        for name, values in (("trace", trace[c]), ("determinant", determinant[c])):
            change = (values[-1] - values[0]).numpy()
            mean, sem = mean_sem(change)
            summary[f"{z.kind}_{name}_change"] = float(mean)
            summary[f"{z.kind}_{name}_change_sem"] = float(sem)
            summary[f"{z.kind}_{name}_change_z"] = float(mean / sem)
    attrs = {**provenance(spec, spec["seed"]), "summary": summary, "loss": loss.name}
    write_store(
        output,
        {
            "noise": (["noise"], np.array([z.kind for z in noises])),
            "noise_strength": (["noise"], np.array([z.strength for z in noises])),
            "step": (["step"], trajectory.steps),
            "theta_hat": (["noise", "step", "run", "valley"], hat.numpy()),
            "eigenvalues": (["noise", "step", "run", "mode"], eigenvalues.numpy()),
            "trace": (["noise", "step", "run"], trace.numpy()),
            "determinant": (["noise", "step", "run"], determinant.numpy()),
            "theory_trace": (["noise", "step"], theory_eigenvalues.sum(-1).numpy()),
            "theory_determinant": (["noise", "step"], theory_eigenvalues.prod(-1).numpy()),
        },
        attrs,
    )
    print(f"fig2cd summary: {summary}")
    return summary


def entropic_force(spec: Mapping[str, Any], output: str) -> dict[str, Any]:
    """W&S A.6 Fig 7: GD keeps sliding down the tilted valley, noisy GD stops at −2α/(ηs)."""
    started = time.perf_counter()
    loss = TiltedValley(spec["alpha"])
    strength = resolve_strength(spec["noise_strength"])
    noises = [Noise("none"), Noise("sgd", strength)]
    eta = float(spec["eta"])
    generator = _generator(spec["seed"])
    init = _initial_state(loss, spec["init"])
    theta0 = init.expand(len(noises), spec["runs"], -1)
    trajectory = simulate(
        loss,
        theta0,
        eta,
        noises,
        spec["steps"],
        generator,
        spec["record_every"],
        show_progress=True,
    )
    theta = trajectory.theta.numpy()
    steps = trajectory.steps
    tail = steps >= spec["average_from"]
    if not tail.any():
        raise HessvalleyError(
            f"toy.fig7.average_from ({spec['average_from']}) must be below toy.fig7.steps"
        )
    run_means = theta[1, tail, :, 1].mean(axis=0)  # noisy GD, time average per run
    mean, sem = mean_sem(run_means)
    predicted = tilted_equilibrium(spec["alpha"], eta, strength)
    summary = {
        "noisy_theta2_mean": float(mean),
        "noisy_theta2_sem": float(sem),
        "predicted_theta2": predicted,
        "noise_strength": strength,
        "gd_theta2_final": float(theta[0, -1, :, 1].mean()),
        "gd_theta2_velocity": float(
            (theta[0, -1, :, 1] - theta[0, -2, :, 1]).mean() / (steps[-1] - steps[-2])
        ),
        "average_from": spec["average_from"],
        "simulation_seconds": time.perf_counter() - started,
    }
    attrs = {**provenance(spec, spec["seed"]), "summary": summary, "loss": loss.name}
    write_store(
        output,
        {
            "optimizer": (["optimizer"], np.array(["gd", "noisy_gd"])),
            "step": (["step"], steps),
            "theta": (["optimizer", "step", "run", "param"], theta),
            "theta2_time_average": (["run"], run_means),
        },
        attrs,
    )
    print(f"fig7 summary: {summary}")
    return summary
