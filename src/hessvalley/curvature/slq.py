"""Spectral density and spectral sums by stochastic Lanczos quadrature (Ubaru, Chen & Saad
2017; Ghorbani, Krishnan & Xiao 2019).

For a Rademacher start z (|z|^2 = P) the m-step Lanczos tridiagonal T gives Gauss quadrature
nodes theta_j (eigenvalues of T) and weights w_j (squared first components of its
eigenvectors), with z^T f(H) z / P ~ sum_j w_j f(theta_j). Averaging over independent starts
estimates the eigenvalue density (1/P) sum_i delta(t - lambda_i) and any tr f(H) with a
standard error across starts. The starts run side by side, sharing data sweeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hessvalley.curvature.lanczos import lanczos_tridiagonal
from hessvalley.curvature.operator import LinearOperator
from hessvalley.curvature.trace import TraceEstimate, rademacher


@dataclass(frozen=True)
class SpectralQuadrature:
    """Nodes and weights (n_starts, n_steps), float64; each row's weights sum to 1."""

    nodes: Tensor
    weights: Tensor
    size: int
    n_matvecs: int

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """Eigenvalue density on ``grid``, each node a Gaussian of width ``sigma``,
        normalised to integrate to 1 (multiply by P for an eigenvalue count density)."""
        grid = grid.to(torch.float64)
        gaussians = torch.exp(-((grid[:, None, None] - self.nodes) ** 2) / (2 * sigma**2))
        per_start = (gaussians * self.weights).sum(-1) / (sigma * math.sqrt(2 * math.pi))
        return per_start.mean(-1)

    def trace_of(self, function: Callable[[Tensor], Tensor]) -> TraceEstimate:
        """tr f(H) with its standard error across starts; f acts elementwise on eigenvalues,
        e.g. ``lambda t: t.clamp(max=0)`` for the sum of negative eigenvalues."""
        samples = self.size * (self.weights * function(self.nodes)).sum(-1)
        n = samples.numel()
        stderr = samples.std(correction=1).item() / math.sqrt(n) if n > 1 else math.inf
        return TraceEstimate(samples.mean().item(), stderr, samples, self.n_matvecs)


def stochastic_lanczos_quadrature(
    op: LinearOperator,
    generator: torch.Generator,
    *,
    n_starts: int = 8,
    n_steps: int = 80,
    reorthogonalise: bool = True,
) -> SpectralQuadrature:
    """Quadrature from ``n_starts`` Rademacher starts of ``n_steps`` Lanczos steps each; the
    starts are the generator's first ``n_starts`` probes (``rademacher``), whatever the
    operator's ``probes_per_sweep``."""
    starts = rademacher(op.size, n_starts, generator, op)
    tridiagonal = lanczos_tridiagonal(op, starts, n_steps, reorthogonalise=reorthogonalise)
    nodes, vectors = torch.linalg.eigh(tridiagonal)
    weights = vectors[:, 0, :] ** 2
    return SpectralQuadrature(nodes, weights, op.size, n_starts * tridiagonal.shape[-1])
