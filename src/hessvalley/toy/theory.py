"""The theory's predictions for the toy models (W&S Eqs. 6-8, Theorems 1-2, Corollary 2.1,
Eq. 38), leading order in η unless stated, from the losses' analytic λ, ∇̂λ and ∇̂g."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hessvalley.toy.noise import Noise
from hessvalley.toy.valleys import DTYPE, ValleyLoss


def stationary_variance(
    loss: ValleyLoss, theta_hat: torch.Tensor, eta: float, noise: Noise, finite_eta: bool = False
) -> torch.Tensor:
    """<θ_i²> = ηC_ii / (2λ_i) (W&S Eq. 8), or ηC_ii / (λ_i(2 − ηλ_i)) with ``finite_eta``."""
    lam = loss.eigenvalues(theta_hat)
    denominator = lam * (2.0 - eta * lam) if finite_eta else 2.0 * lam
    return eta * noise.variances(lam) / denominator


def eigenvalue_rates(
    loss: ValleyLoss, theta_hat: torch.Tensor, eta: float, noise: Noise, finite_eta: bool = False
) -> torch.Tensor:
    """Expected change per step of each λ_i in a stationary θ̄ (W&S Eq. 6-7, tilt included).

    Δλ_i = −η ∇̂λ_i · (½ Σ_j <θ_j²> ∇̂λ_j + ∇̂g); leading order in η unless ``finite_eta``,
    which keeps the exact fixed-λ variance ηC/(λ(2 − ηλ)) (relative correction ηλ/2) but still
    neglects the feedback of θ̄² fluctuations on λ (relative size ~ ηC|∇̂λ|²/λ³, small when
    θ̄ relaxes much faster than λ drifts: W&S's timescale separation).
    """
    hat = torch.as_tensor(theta_hat, dtype=DTYPE)
    grads = loss.eigenvalue_grads(hat)
    variance = stationary_variance(loss, hat, eta, noise, finite_eta)
    drift = 0.5 * torch.einsum("...j,...ja->...a", variance, grads) + loss.tilt_grad(hat)
    return -eta * torch.einsum("...ia,...a->...i", grads, drift)


def theorem2_rate(
    loss: ValleyLoss,
    theta_hat: torch.Tensor,
    eta: float,
    strength: float,
    df_dlambda: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Theorem 2: with noise C_ii = s λ_i ∂f/∂λ_i, <f_{t+1} − f_t> = −(η²/4) s |∇̂f|²,
    ∇̂f = Σ_i (∂f/∂λ_i) ∇̂λ_i (leading order in η)."""
    hat = torch.as_tensor(theta_hat, dtype=DTYPE)
    lam = loss.eigenvalues(hat)
    grad_f = (df_dlambda(lam).unsqueeze(-1) * loss.eigenvalue_grads(hat)).sum(-2)
    return -(eta**2) / 4.0 * strength * (grad_f**2).sum(-1)


def trace_rate(
    loss: ValleyLoss, theta_hat: torch.Tensor, eta: float, strength: float
) -> torch.Tensor:
    """Theorem 1: <T_{t+1} − T_t> = −(η²/4) s |Σ_i ∇̂λ_i|² for SGD-like noise C = s·diag(λ)."""
    return theorem2_rate(loss, theta_hat, eta, strength, torch.ones_like)


def log_determinant_rate(
    loss: ValleyLoss, theta_hat: torch.Tensor, eta: float, strength: float
) -> torch.Tensor:
    """Corollary 2.1 (Theorem 2 with f = log Det): −(η²/4) σ² |∇̂ log Det|² for C = σ²·I."""
    return theorem2_rate(loss, theta_hat, eta, strength, torch.reciprocal)


def mean_field_path(
    loss: ValleyLoss, theta_hat0: torch.Tensor, eta: float, noise: Noise, steps: int
) -> torch.Tensor:
    """Leading-order theory for θ̂: θ̂ ← θ̂ − η(½ Σ_j <θ_j²> ∇̂λ_j + ∇̂g), shape (steps+1, m)."""
    hat = torch.as_tensor(theta_hat0, dtype=DTYPE).clone()
    path = torch.empty((steps + 1, hat.shape[-1]), dtype=DTYPE)
    path[0] = hat
    for step in range(steps):
        variance = stationary_variance(loss, hat, eta, noise)
        drift = 0.5 * variance @ loss.eigenvalue_grads(hat) + loss.tilt_grad(hat)
        hat = hat - eta * drift
        path[step + 1] = hat
    return path


def tilted_equilibrium(alpha: float, eta: float, strength: float) -> float:
    """<θ2> where the entropic force balances the tilt on L = ½(θ2²+1)θ1² + αθ2 (W&S Eq. 38).

    Eq. 38 with ∇̂g = α and Σ∇̂λ = 2θ2 reads 2αθ2 = −(ηs/4)(2θ2)², so <θ2> = −2α/(ηs)
    (the root θ2 = 0 is no equilibrium: there the trace is flat but the tilt still pushes).
    """
    return -2.0 * alpha / (eta * strength)
