"""Noisy gradient descent on analytic "minimal valley" losses (Wei & Schwab 2020, §2, §4.2, A.6).

One module per job, read in this order:

- ``valleys``: the losses L = ½ Σ λ_i(θ̂) θ_i² + g(θ̂) with analytic λ, ∇̂λ, ∇̂²λ (W&S Eq. 1);
- ``noise``: the gradient-noise covariance (SGD-like C = s·H, isotropic, any diagonal);
- ``simulator``: noisy GD vectorised over conditions and runs, seeded, float64;
- ``theory``: Theorems 1-2, the mean-field path of θ̂ and the tilted equilibrium (Eq. 38);
- ``experiments``: the three workflow stages (W&S Figs 2b, 2c-d, 7).

The names below are the package's public interface (``from hessvalley import toy``).
"""

from hessvalley.toy.experiments import entropic_force, noise_structure, trace_vs_eta
from hessvalley.toy.noise import Noise, resolve_strength, sample_noise, sgd_noise_strength
from hessvalley.toy.simulator import NOISE_CHUNK, Trajectory, simulate, stationary_start
from hessvalley.toy.theory import (
    eigenvalue_rates,
    log_determinant_rate,
    mean_field_path,
    stationary_variance,
    theorem2_rate,
    tilted_equilibrium,
    trace_rate,
)
from hessvalley.toy.valleys import (
    DTYPE,
    LOSSES,
    AbsValley,
    GaussianValley,
    TiltedValley,
    ValleyLoss,
)

__all__ = [
    "DTYPE",
    "LOSSES",
    "NOISE_CHUNK",
    "AbsValley",
    "GaussianValley",
    "Noise",
    "TiltedValley",
    "Trajectory",
    "ValleyLoss",
    "eigenvalue_rates",
    "entropic_force",
    "log_determinant_rate",
    "mean_field_path",
    "noise_structure",
    "resolve_strength",
    "sample_noise",
    "sgd_noise_strength",
    "simulate",
    "stationary_start",
    "stationary_variance",
    "theorem2_rate",
    "tilted_equilibrium",
    "trace_rate",
    "trace_vs_eta",
]
