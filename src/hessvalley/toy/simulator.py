"""Noisy gradient descent on the toy losses, vectorised over conditions and runs.

The simulator runs θ ← θ − η(∇L(θ) + ξ) with ξ Gaussian in the non-degenerate subspace,
vectorised over conditions (η and noise, leading axis) and independent runs (second axis), in
float64 with a seeded ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hessvalley.errors import HessvalleyError
from hessvalley.progress import progress
from hessvalley.toy.noise import Noise
from hessvalley.toy.valleys import DTYPE, ValleyLoss

NOISE_CHUNK = 256  # steps of noise drawn at once; fixed so that results do not depend on it


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
    theta = _as_batch(loss, theta0, len(eta_t))
    device, n = theta.device, loss.n_nondegenerate
    eta_t = eta_t.to(device).view(-1, 1, 1)
    noise_std = _noise_std(noises, device)
    record_steps = _record_steps(steps, record_every, record_at)
    records = torch.empty(
        (theta.shape[0], len(record_steps), theta.shape[1], loss.n_params), dtype=DTYPE
    )
    bar_part, hat = theta[..., :n].clone(), theta[..., n:].clone()
    draws = _standard_normals(bar_part.shape, generator, device)
    record_list, next_record = record_steps.tolist(), 0
    progress_bar = progress(total=steps, desc=f"{loss.name} noisy GD") if show_progress else None
    for step in range(steps + 1):
        if next_record < len(record_list) and step == record_list[next_record]:
            _record(records[:, next_record], bar_part, hat, loss, step)
            next_record += 1
            if progress_bar is not None:
                progress_bar.update(step - progress_bar.n)
        if step == steps:
            break
        grad_bar, grad_hat, lam = loss.step_gradient(bar_part, hat)
        if noise_std is not None:
            grad_bar.addcmul_(noise_std(lam), next(draws))
        bar_part.addcmul_(eta_t, grad_bar, value=-1.0)
        hat.addcmul_(eta_t, grad_hat, value=-1.0)
    if progress_bar is not None:
        progress_bar.close()
    return Trajectory(steps=record_steps, theta=records)


def _as_batch(loss: ValleyLoss, theta0: torch.Tensor, n_conditions: int) -> torch.Tensor:
    """``theta0`` as a fresh (condition, run, N) float64 tensor."""
    theta = torch.as_tensor(theta0, dtype=DTYPE)
    if theta.shape[-1] != loss.n_params:
        raise ValueError(f"{loss.name} has {loss.n_params} parameters, theta0 has {theta.shape}")
    if theta.dim() == 1:
        theta = theta.unsqueeze(0)
    if theta.dim() == 2:
        theta = theta.unsqueeze(0).expand(n_conditions, -1, -1)
    if theta.shape[0] != n_conditions:
        raise ValueError(f"theta0 has {theta.shape[0]} conditions, expected {n_conditions}")
    return theta.clone().to(DTYPE)


def _noise_std(
    noises: Sequence[Noise], device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """λ (condition, run, n) -> standard deviation of ξ (may overwrite λ); None without noise.

    SGD-like and isotropic noise use per-condition coefficients, so one fused expression
    serves every condition; a custom variance function is evaluated condition by condition.
    """
    if any(z.variance is not None for z in noises):
        return lambda lam: torch.stack([z.variances(lam[c]) for c, z in enumerate(noises)]).sqrt_()
    sgd = torch.tensor([z.sgd_coefficient for z in noises], dtype=DTYPE, device=device)
    iso = torch.tensor([z.isotropic_coefficient for z in noises], dtype=DTYPE, device=device)
    sgd, iso = sgd.view(-1, 1, 1), iso.view(-1, 1, 1)
    if not bool((iso > 0).any()):
        if not bool((sgd > 0).any()):
            return None
        sgd_std = sgd.sqrt()
        return lambda lam: lam.sqrt_().mul_(sgd_std)
    return lambda lam: (sgd * lam + iso).sqrt_()


def _record_steps(steps: int, record_every: int, record_at: Sequence[int]) -> np.ndarray:
    """Steps 0, record_every, ..., ``steps`` and those of ``record_at`` within the run, sorted."""
    every = np.arange(0, steps + 1, max(int(record_every), 1))
    return np.unique(np.r_[every, steps, [t for t in record_at if 0 <= t <= steps]])


def _standard_normals(
    shape: torch.Size, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """One standard normal draw of ``shape`` per step, generated NOISE_CHUNK steps at a time
    (a fixed chunk, so that the random stream does not depend on how the run is recorded)."""
    while True:
        chunk = torch.randn((NOISE_CHUNK, *shape), generator=generator, dtype=DTYPE, device=device)
        yield from chunk.unbind(0)


def _record(
    record: torch.Tensor, bar_part: torch.Tensor, hat: torch.Tensor, loss: ValleyLoss, step: int
) -> None:
    """Copy the state into ``record`` (condition, run, N); a non-finite state is divergence."""
    n = loss.n_nondegenerate
    record[..., :n] = bar_part.to("cpu")
    record[..., n:] = hat.to("cpu")
    if not torch.isfinite(record).all():
        raise HessvalleyError(
            f"toy simulation of {loss.name} diverged by step {step} "
            f"(non-finite parameters); lower the learning rate or the noise strength"
        )


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
