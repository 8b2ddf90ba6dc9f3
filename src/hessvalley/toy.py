"""Noisy gradient descent on analytic "minimal valley" losses (Wei & Schwab 2020, §2, §4.2, A.6).

Every toy loss has the form of W&S Eq. 1 (plus the tilt g of Eq. 36)::

    L(θ) = ½ Σ_{i≤n} λ_i(θ̂) θ_i² + g(θ̂),    θ = (θ̄, θ̂),  θ̄ = θ_1..θ_n,  θ̂ = θ_{n+1}..θ_N

so λ_i(θ̂) are the Hessian eigenvalues of the non-degenerate block (the Hessian eigenvalue of
``a·θ_1²`` is ``2a``). Knowing λ, ∇̂λ and ∇̂²λ analytically gives the loss, its gradient and its
full Hessian, and the theory's predictions (Theorems 1-2, Eq. 38) in closed form.

The simulator runs θ ← θ − η(∇L(θ) + ξ) with ξ Gaussian in the non-degenerate subspace,
vectorised over conditions (η and noise, leading axis) and independent runs (second axis), in
float64 with a seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hessvalley.errors import HessvalleyError
from hessvalley.progress import progress
from hessvalley.store import provenance, write_store

DTYPE = torch.float64
NOISE_CHUNK = 256  # steps of noise drawn at once; fixed so that results do not depend on it


# --------------------------------------------------------------------------------------------
# Losses


class ValleyLoss:
    """L = ½ Σ λ_i(θ̂) θ_i² + g(θ̂); subclasses give λ, g and their derivatives in θ̂."""

    name: str = "valley"
    n_nondegenerate: int
    n_params: int

    @property
    def n_valley(self) -> int:
        return self.n_params - self.n_nondegenerate

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(θ̄, θ̂): the non-degenerate and the valley (degenerate) coordinates."""
        return theta[..., : self.n_nondegenerate], theta[..., self.n_nondegenerate :]

    # -- what a subclass defines (functions of θ̂ with shape (..., m))
    def eigenvalues(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """λ_i(θ̂), shape (..., n)."""
        raise NotImplementedError

    def eigenvalue_grads(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """∂λ_i/∂θ̂_a, shape (..., n, m)."""
        raise NotImplementedError

    def eigenvalue_hessians(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """∂²λ_i/∂θ̂_a∂θ̂_b, shape (..., n, m, m)."""
        raise NotImplementedError

    def tilt(self, theta_hat: torch.Tensor) -> torch.Tensor:
        """g(θ̂), the slope of the valley floor (W&S Eq. 36); zero for a degenerate valley."""
        return theta_hat.new_zeros(theta_hat.shape[:-1])

    def tilt_grad(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(theta_hat)

    def tilt_hessian(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return theta_hat.new_zeros((*theta_hat.shape, theta_hat.shape[-1]))

    def step_gradient(
        self, theta_bar: torch.Tensor, theta_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(∇̄L, ∇̂L, λ) for the simulator's inner loop (which may overwrite the returned
        tensors); subclasses fuse it for speed."""
        lam = self.eigenvalues(theta_hat)
        grad_hat = 0.5 * torch.einsum(
            "...i,...ia->...a", theta_bar**2, self.eigenvalue_grads(theta_hat)
        )
        return lam * theta_bar, grad_hat + self.tilt_grad(theta_hat), lam

    # -- derived quantities
    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        bar, hat = self.split(theta)
        return 0.5 * (self.eigenvalues(hat) * bar**2).sum(-1) + self.tilt(hat)

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """∇L: (λ_i θ_i, ½ Σ_i θ_i² ∇̂λ_i + ∇̂g)."""
        bar, hat = self.split(theta)
        grad_bar = self.eigenvalues(hat) * bar
        grad_hat = 0.5 * torch.einsum("...i,...ia->...a", bar**2, self.eigenvalue_grads(hat))
        return torch.cat([grad_bar, grad_hat + self.tilt_grad(hat)], dim=-1)

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        """Full N x N Hessian of L at θ (not only the valley-floor eigenvalues)."""
        bar, hat = self.split(theta)
        n = self.n_nondegenerate
        lam = self.eigenvalues(hat)
        dlam = self.eigenvalue_grads(hat)
        d2lam = self.eigenvalue_hessians(hat)
        hess = theta.new_zeros((*theta.shape, theta.shape[-1]))
        hess[..., :n, :n] = torch.diag_embed(lam)
        cross = bar.unsqueeze(-1) * dlam
        hess[..., :n, n:] = cross
        hess[..., n:, :n] = cross.transpose(-1, -2)
        hess[..., n:, n:] = 0.5 * torch.einsum(
            "...i,...iab->...ab", bar**2, d2lam
        ) + self.tilt_hessian(hat)
        return hess

    def trace(self, theta: torch.Tensor) -> torch.Tensor:
        """T = Σ λ_i(θ̂): the Hessian trace at the projected minimum (W&S Theorem 1)."""
        return self.eigenvalues(self.split(theta)[1]).sum(-1)

    def determinant(self, theta: torch.Tensor) -> torch.Tensor:
        """Det = Π λ_i(θ̂): the non-degenerate determinant (W&S Corollary 2.1)."""
        return self.eigenvalues(self.split(theta)[1]).prod(-1)


class AbsValley(ValleyLoss):
    """W&S Fig 2b: L = |θ3+θ4| θ1² + |θ3+2θ4| θ2², so ∇̂λ is constant where the signs hold."""

    name = "abs_valley"
    n_nondegenerate = 2
    n_params = 4
    _directions = ((1.0, 1.0), (1.0, 2.0))

    def _arguments(self, theta_hat: torch.Tensor) -> torch.Tensor:
        directions = theta_hat.new_tensor(self._directions)
        return theta_hat @ directions.T

    def eigenvalues(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return 2.0 * self._arguments(theta_hat).abs()

    def eigenvalue_grads(self, theta_hat: torch.Tensor) -> torch.Tensor:
        directions = theta_hat.new_tensor(self._directions)
        return 2.0 * torch.sign(self._arguments(theta_hat)).unsqueeze(-1) * directions

    def eigenvalue_hessians(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return theta_hat.new_zeros((*theta_hat.shape[:-1], 2, 2, 2))

    def step_gradient(
        self, theta_bar: torch.Tensor, theta_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        directions = theta_hat.new_tensor(self._directions)
        arguments = theta_hat @ directions.T
        lam = arguments.abs().mul_(2.0)
        grad_hat = (theta_bar * theta_bar).mul_(arguments.sign_()) @ directions
        return lam * theta_bar, grad_hat, lam

    def signs(self, theta: torch.Tensor) -> torch.Tensor:
        """Signs of θ3+θ4 and θ3+2θ4; Theorem 1's test needs them fixed over a run."""
        return torch.sign(self._arguments(self.split(theta)[1]))


class GaussianValley(ValleyLoss):
    """W&S Fig 2c-d: L = (4 − 2 e^{−θ3²−θ4²}) θ1² + e^{−(θ3−θ4)²} θ2².

    Trace and determinant are anti-correlated along θ3 = −θ4: SGD-like noise moves towards
    the origin (trace down, determinant up), isotropic noise away from it.
    """

    name = "gaussian_valley"
    n_nondegenerate = 2
    n_params = 4

    def eigenvalues(self, theta_hat: torch.Tensor) -> torch.Tensor:
        r2 = (theta_hat**2).sum(-1)
        d = theta_hat[..., 0] - theta_hat[..., 1]
        return torch.stack([8.0 - 4.0 * torch.exp(-r2), 2.0 * torch.exp(-(d**2))], dim=-1)

    def eigenvalue_grads(self, theta_hat: torch.Tensor) -> torch.Tensor:
        r2 = (theta_hat**2).sum(-1, keepdim=True)
        d = (theta_hat[..., 0] - theta_hat[..., 1]).unsqueeze(-1)
        diff = theta_hat.new_tensor([1.0, -1.0])
        grad1 = 8.0 * torch.exp(-r2) * theta_hat
        grad2 = -4.0 * d * torch.exp(-(d**2)) * diff
        return torch.stack([grad1, grad2], dim=-2)

    def eigenvalue_hessians(self, theta_hat: torch.Tensor) -> torch.Tensor:
        r2 = (theta_hat**2).sum(-1)[..., None, None]
        d = (theta_hat[..., 0] - theta_hat[..., 1])[..., None, None]
        eye = torch.eye(2, dtype=theta_hat.dtype, device=theta_hat.device)
        diff = theta_hat.new_tensor([1.0, -1.0])
        outer = theta_hat.unsqueeze(-1) * theta_hat.unsqueeze(-2)
        hess1 = 8.0 * torch.exp(-r2) * (eye - 2.0 * outer)
        hess2 = -4.0 * torch.exp(-(d**2)) * (1.0 - 2.0 * d**2) * torch.outer(diff, diff)
        return torch.stack([hess1, hess2], dim=-3)

    def step_gradient(
        self, theta_bar: torch.Tensor, theta_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        radial = torch.exp(-(theta_hat * theta_hat).sum(-1, keepdim=True))
        d = theta_hat[..., :1] - theta_hat[..., 1:]
        ridge = torch.exp(-d * d)
        lam = torch.cat([8.0 - 4.0 * radial, 2.0 * ridge], dim=-1)
        squares = theta_bar * theta_bar
        along_diff = (-2.0 * squares[..., 1:]) * d * ridge
        grad_hat = (4.0 * squares[..., :1] * radial) * theta_hat
        grad_hat[..., :1] += along_diff
        grad_hat[..., 1:] -= along_diff
        return lam * theta_bar, grad_hat, lam


class TiltedValley(ValleyLoss):
    """W&S A.6 Fig 7: L = ½ (θ2² + 1) θ1² + α θ2, a valley floor with a small slope α."""

    name = "tilted_valley"
    n_nondegenerate = 1
    n_params = 2

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def eigenvalues(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return theta_hat**2 + 1.0

    def eigenvalue_grads(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return (2.0 * theta_hat).unsqueeze(-2)

    def eigenvalue_hessians(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return torch.full((*theta_hat.shape[:-1], 1, 1, 1), 2.0, dtype=theta_hat.dtype)

    def step_gradient(
        self, theta_bar: torch.Tensor, theta_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lam = torch.addcmul(torch.ones_like(theta_hat), theta_hat, theta_hat)
        grad_hat = (theta_bar * theta_bar).mul_(theta_hat).add_(self.alpha)
        return lam * theta_bar, grad_hat, lam

    def tilt(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return self.alpha * theta_hat[..., 0]

    def tilt_grad(self, theta_hat: torch.Tensor) -> torch.Tensor:
        return torch.full_like(theta_hat, self.alpha)


LOSSES: dict[str, type[ValleyLoss]] = {
    cls.name: cls for cls in (AbsValley, GaussianValley, TiltedValley)
}


# --------------------------------------------------------------------------------------------
# Noise


@dataclass(frozen=True)
class Noise:
    """Gaussian gradient noise in the non-degenerate subspace, diagonal covariance C.

    ``sgd``: C = s·H restricted to θ̄ = s·diag(λ) (W&S Eq. 5/10, s = (1/S)(1 − S/M));
    ``isotropic``: C = s·I on θ̄ (Corollary 2.1); ``diagonal``: C = s·diag(variance(λ)), any
    function of the eigenvalues, e.g. Theorem 2's C_ii = λ_i ∂f/∂λ_i; ``none``: plain GD.
    """

    kind: str
    strength: float = 0.0
    variance: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("sgd", "isotropic", "diagonal", "none"):
            raise ValueError(
                f"noise kind must be sgd, isotropic, diagonal or none, got {self.kind!r}"
            )
        if self.strength < 0:
            raise ValueError(f"noise strength must be >= 0, got {self.strength}")
        if (self.kind == "diagonal") != (self.variance is not None):
            raise ValueError("a variance function is needed by, and only by, kind 'diagonal'")

    @property
    def sgd_coefficient(self) -> float:
        return self.strength if self.kind == "sgd" else 0.0

    @property
    def isotropic_coefficient(self) -> float:
        return self.strength if self.kind == "isotropic" else 0.0

    def variances(self, eigenvalues: torch.Tensor) -> torch.Tensor:
        """Diagonal of C in the non-degenerate subspace at these eigenvalues."""
        if self.variance is not None:
            return self.strength * self.variance(eigenvalues)
        return self.sgd_coefficient * eigenvalues + self.isotropic_coefficient


def sgd_noise_strength(batch_size: int, n_samples: int) -> float:
    """s = (1/S)(1 − S/M) of mini-batch SGD (Hoffer et al. 2017; W&S Eq. 5)."""
    if not 1 <= batch_size <= n_samples:
        raise ValueError(f"need 1 <= batch_size <= n_samples, got {batch_size}, {n_samples}")
    return (1.0 / batch_size) * (1.0 - batch_size / n_samples)


def resolve_strength(value: float | Mapping[str, int]) -> float:
    """A config noise strength: a number s, or {batch_size: S, n_samples: M}."""
    if isinstance(value, Mapping):
        return sgd_noise_strength(int(value["batch_size"]), int(value["n_samples"]))
    return float(value)


def sample_noise(
    noise: Noise, eigenvalues: torch.Tensor, n_samples: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``n_samples`` noise vectors ξ (non-degenerate part) at fixed eigenvalues."""
    std = noise.variances(eigenvalues).sqrt()
    z = torch.randn((n_samples, *std.shape), generator=generator, dtype=std.dtype)
    return z * std


# --------------------------------------------------------------------------------------------
# Simulator


@dataclass
class Trajectory:
    """Recorded states: ``theta`` has shape (condition, record, run, param)."""

    steps: np.ndarray
    theta: torch.Tensor


def _as_conditions(
    eta: float | Sequence[float] | torch.Tensor, noise: Noise | Sequence[Noise]
) -> tuple[torch.Tensor, list[Noise]]:
    eta_t = torch.as_tensor(eta, dtype=DTYPE).reshape(-1)
    noises = [noise] if isinstance(noise, Noise) else list(noise)
    n_conditions = max(len(eta_t), len(noises))
    if len(eta_t) == 1:
        eta_t = eta_t.expand(n_conditions)
    if len(noises) == 1:
        noises = noises * n_conditions
    if len(eta_t) != n_conditions or len(noises) != n_conditions:
        raise ValueError(f"{len(eta_t)} learning rates for {len(noises)} noises")
    if (eta_t <= 0).any():
        raise ValueError("learning rates must be positive")
    return eta_t.clone(), noises


def simulate(
    loss: ValleyLoss,
    theta0: torch.Tensor,
    eta: float | Sequence[float] | torch.Tensor,
    noise: Noise | Sequence[Noise],
    steps: int,
    generator: torch.Generator,
    record_every: int = 1,
    record_at: Sequence[int] = (),
    show_progress: bool = False,
) -> Trajectory:
    """Noisy GD θ ← θ − η(∇L + ξ), ξ ~ N(0, C(θ̂)) on θ̄, for every condition and run at once.

    ``theta0`` has shape (condition, run, N), or (run, N) / (N,) to share it across conditions
    (and runs). Conditions pair ``eta[c]`` with ``noise[c]`` (either may be a single value).
    States are recorded at steps 0, record_every, ..., ``steps`` and ``record_at``. Raises
    HessvalleyError naming the step when a run diverges.
    """
    eta_t, noises = _as_conditions(eta, noise)
    n_conditions = len(eta_t)
    theta = torch.as_tensor(theta0, dtype=DTYPE)
    if theta.shape[-1] != loss.n_params:
        raise ValueError(f"{loss.name} has {loss.n_params} parameters, theta0 has {theta.shape}")
    if theta.dim() == 1:
        theta = theta.unsqueeze(0)
    if theta.dim() == 2:
        theta = theta.unsqueeze(0).expand(n_conditions, -1, -1)
    if theta.shape[0] != n_conditions:
        raise ValueError(f"theta0 has {theta.shape[0]} conditions, expected {n_conditions}")
    theta = theta.clone().to(DTYPE)
    device = theta.device
    n_runs, n = theta.shape[1], loss.n_nondegenerate

    eta_t = eta_t.to(device).view(n_conditions, 1, 1)
    sgd = torch.tensor([z.sgd_coefficient for z in noises], dtype=DTYPE, device=device)
    iso = torch.tensor([z.isotropic_coefficient for z in noises], dtype=DTYPE, device=device)
    sgd, iso = sgd.view(n_conditions, 1, 1), iso.view(n_conditions, 1, 1)
    custom = any(z.variance is not None for z in noises)
    noisy = custom or bool((sgd > 0).any() or (iso > 0).any())
    only_sgd = not custom and not bool((iso > 0).any())
    sgd_std = sgd.sqrt()

    every = np.arange(0, steps + 1, max(int(record_every), 1))
    record_steps = np.unique(np.r_[every, steps, [t for t in record_at if 0 <= t <= steps]])
    records = torch.empty((n_conditions, len(record_steps), n_runs, loss.n_params), dtype=DTYPE)
    bar_part, hat = theta[..., :n].clone(), theta[..., n:].clone()
    record_list = record_steps.tolist()
    next_record, next_record_step = 0, record_list[0]
    noise_draws: Iterator[torch.Tensor] = iter(())
    progress_bar = progress(total=steps, desc=f"{loss.name} noisy GD") if show_progress else None
    for step in range(steps + 1):
        if step == next_record_step:
            records[:, next_record, :, :n] = bar_part.to("cpu")
            records[:, next_record, :, n:] = hat.to("cpu")
            if not torch.isfinite(records[:, next_record]).all():
                raise HessvalleyError(
                    f"toy simulation of {loss.name} diverged by step {step} "
                    f"(non-finite parameters); lower the learning rate or the noise strength"
                )
            next_record += 1
            next_record_step = record_list[next_record] if next_record < len(record_list) else -1
            if progress_bar is not None:
                progress_bar.update(step - progress_bar.n)
        if step == steps:
            break
        grad_bar, grad_hat, lam = loss.step_gradient(bar_part, hat)
        if noisy:
            if step % NOISE_CHUNK == 0:
                shape = (NOISE_CHUNK, n_conditions, n_runs, n)
                chunk = torch.randn(shape, generator=generator, dtype=DTYPE, device=device)
                noise_draws = iter(chunk.unbind(0))
            if custom:
                std = torch.stack([z.variances(lam[c]) for c, z in enumerate(noises)]).sqrt_()
            elif only_sgd:
                std = lam.sqrt_().mul_(sgd_std)
            else:
                std = (sgd * lam + iso).sqrt_()
            grad_bar.addcmul_(std, next(noise_draws))
        bar_part.addcmul_(eta_t, grad_bar, value=-1.0)
        hat.addcmul_(eta_t, grad_hat, value=-1.0)
    if progress_bar is not None:
        progress_bar.close()
    return Trajectory(steps=record_steps, theta=records)


def stationary_start(
    loss: ValleyLoss,
    theta_hat: torch.Tensor,
    eta: float | Sequence[float] | torch.Tensor,
    noise: Noise | Sequence[Noise],
    n_runs: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """States (condition, run, N) at θ̂ with θ̄ drawn from its stationary law at fixed λ(θ̂).

    For θ ← (1 − ηλ)θ − ηξ, Var ξ = C, the stationary variance is ηC / (λ(2 − ηλ)) (W&S Eq. 8
    without dropping the O(η) term). GD (C = 0) starts on the valley floor.
    """
    eta_t, noises = _as_conditions(eta, noise)
    theta_hat = torch.as_tensor(theta_hat, dtype=DTYPE)
    lam = loss.eigenvalues(theta_hat)
    theta = torch.empty((len(eta_t), n_runs, loss.n_params), dtype=DTYPE)
    theta[..., loss.n_nondegenerate :] = theta_hat
    for c, (lr, z) in enumerate(zip(eta_t.tolist(), noises, strict=True)):
        variance = lr * z.variances(lam) / (lam * (2.0 - lr * lam))
        draws = torch.randn((n_runs, loss.n_nondegenerate), generator=generator, dtype=DTYPE)
        theta[c, :, : loss.n_nondegenerate] = draws * variance.sqrt()
    return theta


# --------------------------------------------------------------------------------------------
# Theory


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


# --------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class LineFit:
    """Weighted least squares y = slope·x + intercept with standard errors and χ²."""

    slope: float
    slope_se: float
    intercept: float
    intercept_se: float
    chi2: float
    dof: int


def weighted_line_fit(
    x: np.ndarray, y: np.ndarray, y_se: np.ndarray, through_origin: bool = False
) -> LineFit:
    """Fit with per-point standard errors (here: of the mean over independent runs)."""
    x, y, y_se = (np.asarray(v, dtype=float) for v in (x, y, y_se))
    w = 1.0 / y_se**2
    design = x[:, None] if through_origin else np.stack([x, np.ones_like(x)], axis=1)
    normal = design.T @ (w[:, None] * design)
    covariance = np.linalg.inv(normal)
    coefficients = covariance @ (design.T @ (w * y))
    residual = y - design @ coefficients
    chi2 = float(np.sum(w * residual**2))
    dof = len(x) - design.shape[1]
    if through_origin:
        return LineFit(
            float(coefficients[0]), float(np.sqrt(covariance[0, 0])), 0.0, 0.0, chi2, dof
        )
    return LineFit(
        float(coefficients[0]),
        float(np.sqrt(covariance[0, 0])),
        float(coefficients[1]),
        float(np.sqrt(covariance[1, 1])),
        chi2,
        dof,
    )


def mean_sem(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean over independent runs."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    return values.mean(axis=axis), values.std(axis=axis, ddof=1) / math.sqrt(n)


# --------------------------------------------------------------------------------------------
# Workflow stages (called by workflow/rules/toy.smk)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _initial_state(loss: ValleyLoss, init: Sequence[float]) -> torch.Tensor:
    init_t = torch.as_tensor(init, dtype=DTYPE)
    if init_t.shape != (loss.n_params,):
        raise HessvalleyError(f"init must have {loss.n_params} entries for {loss.name}")
    return init_t


def trace_vs_eta(spec: Mapping[str, Any], output: str) -> dict[str, Any]:
    """W&S Fig 2b: trace change over ``measure_steps`` after ``equilibrate_steps``, per η.

    Writes (eta, run) trace changes, recorded traces and eigenvalues, and Theorem 1's
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
    total = spec["equilibrate_steps"] + spec["measure_steps"]
    trajectory = simulate(
        loss,
        theta0,
        etas,
        noise,
        total,
        generator,
        spec["record_every"],
        record_at=[spec["equilibrate_steps"]],
        show_progress=True,
    )
    steps = trajectory.steps
    start = int(np.searchsorted(steps, spec["equilibrate_steps"]))
    theta = trajectory.theta  # (eta, step, run, param)
    hat = theta[..., loss.n_nondegenerate :]
    eigenvalues = loss.eigenvalues(hat)
    trace = eigenvalues.sum(-1)
    signs = loss.signs(theta)
    sign_kept = (signs == signs[:, :1]).all(dim=-1).all(dim=1)  # (eta, run)
    if not bool(sign_kept.all()):
        lost = int((~sign_kept).sum())
        raise HessvalleyError(
            f"toy.fig2b: in {lost} runs θ3+θ4 or θ3+2θ4 changed sign, leaving the regime of "
            "Theorem 1 (constant ∇̂λ); start further from zero (toy.fig2b.init) or lower "
            "toy.fig2b.etas / noise_strength"
        )
    trace_change = (trace[:, -1] - trace[:, start]).numpy()
    per_step = trace_rate(loss, hat[:, start], 1.0, strength).mean(-1).numpy() * etas.numpy() ** 2
    predicted = per_step * spec["measure_steps"]
    finite = np.array(
        [
            eigenvalue_rates(loss, hat[c, start:], float(eta), noise, finite_eta=True)
            .sum(-1)
            .mean()
            .item()
            for c, eta in enumerate(etas.tolist())
        ]
    )
    mean, sem = mean_sem(trace_change)
    eta2 = etas.numpy() ** 2
    fit = weighted_line_fit(eta2, mean, sem)
    fit0 = weighted_line_fit(eta2, mean, sem, through_origin=True)
    coefficient = float(np.mean(predicted / eta2))
    summary = {
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
        "noise_strength": strength,
        "measure_steps": spec["measure_steps"],
        "simulation_seconds": time.perf_counter() - started,
    }
    attrs = {**provenance(spec, spec["seed"]), "summary": summary, "loss": loss.name}
    write_store(
        output,
        {
            "eta": (["eta"], etas.numpy()),
            "step": (["step"], steps),
            "trace": (["eta", "step", "run"], trace.numpy()),
            "eigenvalues": (["eta", "step", "run", "mode"], eigenvalues.numpy()),
            "trace_change": (["eta", "run"], trace_change),
            "trace_change_mean": (["eta"], mean),
            "trace_change_sem": (["eta"], sem),
            "predicted_trace_change": (["eta"], predicted),
            "predicted_trace_change_finite_eta": (["eta"], finite * spec["measure_steps"]),
        },
        attrs,
    )
    print(f"fig2b summary: {summary}")
    return summary


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
