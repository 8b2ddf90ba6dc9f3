"""Lanczos with full reorthogonalisation: extreme eigenpairs with Ritz residuals, and the
tridiagonal matrices of independent runs for stochastic Lanczos quadrature.

``lanczos_extremes`` grows an orthonormal Krylov basis (optionally in blocks, so that
several vectors share a data sweep) and takes Ritz pairs from the Rayleigh quotient
T = Q^T H Q. Every new block is orthogonalised twice against the whole basis, and T is filled
from those projection coefficients rather than from the three-term recurrence, so T stays the
exact Rayleigh quotient even after a breakdown (an invariant subspace, e.g. a repeated
eigenvalue), where the basis continues with a random direction. Convergence is judged from the
residual estimate |H y - theta y| = |W s_last| (W the orthogonalised remainder of the last
block); at the end the residuals of the returned pairs are measured with one extra sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from hessvalley.curvature.operator import LinearOperator
from hessvalley.curvature.trace import rademacher


@dataclass(frozen=True)
class RitzPairs:
    """The k largest (descending) and k smallest (ascending, most negative first) Ritz values,
    their measured residual norms |H y - theta y| (|y| = 1), optional (P, k) Ritz vectors."""

    largest: Tensor
    smallest: Tensor
    largest_residuals: Tensor
    smallest_residuals: Tensor
    largest_vectors: Tensor | None
    smallest_vectors: Tensor | None
    n_matvecs: int
    krylov_dim: int
    converged: bool


def _orthogonalise(block: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """``block`` minus its projection on the orthonormal ``basis`` columns (classical
    Gram-Schmidt, twice: "twice is enough"), and the projection coefficients."""
    coefficients = basis.T @ block
    block = block - basis @ coefficients
    correction = basis.T @ block
    return block - basis @ correction, coefficients + correction


def _next_block(
    remainder: Tensor, basis: Tensor, size: int, threshold: float, generator: torch.Generator
) -> Tensor:
    """Orthonormal continuation of the basis from the remainder's directions; columns whose
    remainder is negligible (invariant subspace) continue with random directions."""
    q, r = torch.linalg.qr(remainder)
    negligible = r.diagonal().abs() <= threshold
    if negligible.any():
        fresh = remainder.clone()
        fresh[:, negligible] = rademacher(basis.shape[0], int(negligible.sum()), generator, basis)
        fresh, _ = _orthogonalise(fresh, basis)
        q, _ = torch.linalg.qr(fresh)
    return q[:, :size]


def lanczos_extremes(
    op: LinearOperator,
    k: int,
    generator: torch.Generator,
    *,
    which: Literal["both", "largest", "smallest"] = "both",
    block_size: int = 1,
    max_dim: int | None = None,
    tol: float = 1e-6,
    return_vectors: bool = False,
) -> RitzPairs:
    """The k largest and k most negative eigenvalues of the symmetric ``op``.

    Stops when the Ritz pairs named by ``which`` have residual estimates <= tol * |H|_2
    (|H|_2 estimated by the largest |Ritz value|), reported as ``converged``, or at
    ``max_dim`` basis vectors (default min(P, max(100, 20 k))), converged only if that is
    all of R^P. An eigenvalue's error is about min(r, r^2 / gap) for residual r, so small
    negative eigenvalues of a trained net (|lambda| ~ 1e-3 |H|_2) need tol ~ 1e-6. The measured
    residuals also hold the operator's own rounding (float32 HVPs: ~1e-5 |H|_2). Single-vector
    Lanczos finds one copy of a repeated eigenvalue unless it exhausts the space; blocks of
    ``block_size`` find up to that many copies and share each data sweep (fewer sweeps, a few
    more matvecs). The basis takes P x max_dim entries of memory.
    """
    size = op.size
    if not 0 < k <= size:
        raise ValueError(f"k must be in 1..{size}, got {k}")
    if which not in ("both", "largest", "smallest"):
        raise ValueError(f"which must be both, largest or smallest, got {which!r}")
    max_dim = min(size, max_dim or max(100, 20 * k))
    block_size = min(block_size, max_dim)
    eps = torch.finfo(op.dtype).eps
    basis = torch.empty(size, max_dim, dtype=op.dtype, device=op.device)
    rayleigh = torch.zeros(max_dim, max_dim, dtype=torch.float64)
    block, _ = torch.linalg.qr(rademacher(size, block_size, generator, op))
    dim = n_matvecs = 0
    while True:
        width = block.shape[1]
        basis[:, dim : dim + width] = block
        remainder, coefficients = _orthogonalise(op.matmat(block), basis[:, : dim + width])
        n_matvecs += width
        coefficients = coefficients.to("cpu", torch.float64)
        rayleigh[: dim + width, dim : dim + width] = coefficients
        rayleigh[dim : dim + width, : dim + width] = coefficients.T
        diagonal = rayleigh[dim : dim + width, dim : dim + width]
        rayleigh[dim : dim + width, dim : dim + width] = (diagonal + diagonal.T) / 2
        dim += width
        values, vectors = torch.linalg.eigh(rayleigh[:dim, :dim])
        norm = values.abs().max().item()
        last = vectors[dim - width : dim, _wanted(dim, k, which)].to(op.device, op.dtype)
        converged = dim >= 2 * k and bool(((remainder @ last).norm(dim=0) <= tol * norm).all())
        if converged or dim >= max_dim:
            break
        threshold = 100 * eps * max(norm, torch.finfo(op.dtype).tiny) * dim**0.5
        next_width = min(block_size, max_dim - dim)
        block = _next_block(remainder, basis[:, :dim], next_width, threshold, generator)

    top = torch.arange(dim - 1, dim - 1 - min(k, dim), -1)
    bottom = torch.arange(min(k, dim))
    selected = torch.cat([top, bottom])
    ritz_vectors = basis[:, :dim] @ vectors[:, selected].to(op.device, op.dtype)
    ritz_values = values[selected]
    residuals = (
        (op.matmat(ritz_vectors) - ritz_vectors * ritz_values.to(op.device, op.dtype))
        .norm(dim=0)
        .to("cpu", torch.float64)
    )
    n_matvecs += len(selected)
    n_top = len(top)
    return RitzPairs(
        largest=ritz_values[:n_top],
        smallest=ritz_values[n_top:],
        largest_residuals=residuals[:n_top],
        smallest_residuals=residuals[n_top:],
        largest_vectors=ritz_vectors[:, :n_top] if return_vectors else None,
        smallest_vectors=ritz_vectors[:, n_top:] if return_vectors else None,
        n_matvecs=n_matvecs,
        krylov_dim=dim,
        converged=converged or dim == size,
    )


def _wanted(dim: int, k: int, which: str) -> Tensor:
    """Indices (into ascending Ritz values) of the pairs whose convergence is awaited."""
    k = min(k, dim)
    top, bottom = torch.arange(dim - k, dim), torch.arange(k)
    return {"both": torch.cat([top, bottom]), "largest": top, "smallest": bottom}[which]


def lanczos_tridiagonal(
    op: LinearOperator, starts: Tensor, n_steps: int, *, reorthogonalise: bool = True
) -> Tensor:
    """Tridiagonal T (n, m, m) of n independent Lanczos runs from the (P, n) ``starts``; the
    runs share data sweeps (one (P, n) matmat per step). A run whose Krylov space closes
    early pads T with zeros, which adds only zero-weight nodes to its quadrature.
    ``reorthogonalise`` keeps every run's basis (n_steps x P x n memory)."""
    size, n = starts.shape
    n_steps = min(n_steps, size)
    eps = torch.finfo(op.dtype).eps
    current = starts.to(op.device, op.dtype) / starts.norm(dim=0)
    previous = torch.zeros_like(current)
    beta = torch.zeros(n, dtype=op.dtype, device=op.device)
    history: list[Tensor] = []
    alphas, betas = [], []
    for step in range(n_steps):
        history.append(current)
        product = op.matmat(current)
        alpha = (current * product).sum(0)
        product = product - alpha * current - beta * previous
        if reorthogonalise:
            basis = torch.stack(history)  # (j, P, n)
            for _ in range(2):
                product = product - torch.einsum(
                    "jpn,jn->pn", basis, torch.einsum("jpn,pn->jn", basis, product)
                )
        alphas.append(alpha)
        if step == n_steps - 1:
            break
        beta = product.norm(dim=0)
        scale = torch.stack(alphas).abs().max(0).values.clamp_min(torch.finfo(op.dtype).tiny)
        alive = beta > 100 * eps * scale * (step + 1) ** 0.5
        beta = torch.where(alive, beta, torch.zeros_like(beta))
        betas.append(beta)
        previous, current = current, torch.where(alive, product / beta.clamp_min(1e-300), 0.0)
    alpha_matrix = torch.stack(alphas, dim=1).to("cpu", torch.float64)  # (n, m)
    tridiagonal = torch.diag_embed(alpha_matrix)
    if betas:
        beta_matrix = torch.stack(betas, dim=1).to("cpu", torch.float64)  # (n, m - 1)
        tridiagonal = (
            tridiagonal + torch.diag_embed(beta_matrix, 1) + torch.diag_embed(beta_matrix, -1)
        )
    return tridiagonal
