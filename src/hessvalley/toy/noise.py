"""Gaussian gradient noise for the toy models: SGD-like, isotropic or any diagonal covariance."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


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
