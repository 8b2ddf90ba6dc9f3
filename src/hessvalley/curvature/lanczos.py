"""Lanczos with full reorthogonalisation: extreme eigenpairs with Ritz residuals, and the
tridiagonal matrices of independent runs for stochastic Lanczos quadrature.

``lanczos_extremes`` grows an orthonormal Krylov basis (optionally in blocks, so that
several vectors share a data sweep) and takes Ritz pairs from the Rayleigh quotient
T = Q^T H Q. Every new block is orthogonalised twice against the whole basis, and T is filled
from those projection coefficients rather than from the three-term recurrence, so T stays the
exact Rayleigh quotient even after a breakdown (an invariant subspace, e.g. a repeated
eigenvalue), where the basis continues with a random direction. Convergence is judged from the
residual estimate |H y - theta y| = |W s_last| (W the orthogonalised remainder of the last
block) at every step, an eigh of T that single-vector runs first screen with T's tridiagonal
part (``_screen``); at the end the residuals of the returned pairs are measured with one extra
sweep. ``lanczos_tridiagonal`` keeps running values and a preallocated basis: O(P n) work per
step beyond the matmat and the reorthogonalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import torch
from torch import Tensor

from hessvalley.curvature.operator import LinearOperator
from hessvalley.curvature.trace import rademacher

# The default Ritz residual tolerance, relative to |H|_2, here and in the workflow's schema
# (curvature.eigen.tol, fdr.lanczos.tol). Measured with float32 HVPs against the float64
# spectrum, k = 3, 5 seeds, on the 1347 digits: the tanh MLP 64-32-10 (P = 2410) after 500
# full-batch GD steps (lr 0.5, momentum 0.9; ``bench/curvature_common.train``): tol 1e-4
# stops at Krylov dim ~97 with the three most negative eigenvalues (about -4e-4 |H|_2,
# 2e-5 |H|_2 apart) up to 18% off; 1e-5 at ~146, 6e-4 off; 1e-6 at ~162, 6e-6 off. The
# ws_cnn (P = 1338, 400 Adam steps): 1e-4 at ~32, 1% off; 1e-6 at ~39, 5e-6 off. The top
# three are right to float32 rounding at any tol; the MLP's top 10 eigenvectors
# (``which="largest"``) are right to 4e-4 from 1e-5 on (9e-3 at 1e-3), for 25 rather than 20
# products at 1e-6.
DEFAULT_TOL = 1e-6

# Single-vector runs screen the convergence test (``_screen``) from Krylov dimension
# max(SCREEN_FROM_DIM, SCREEN_DIM_PER_K * k) on: below it one eigh of T costs less than the
# screen (one thread, float64 T, milliseconds eigh | screen for k = 3 | k = 20; dim 96:
# 0.75 | 1.0 | 3.3; 128: 1.4 | 1.2 | 4.8; 200: 4.2 | 1.9 | 6.9; 300: 14 | 2.6 | 9.4;
# 1000: 239 | 12 | 35).
SCREEN_FROM_DIM = 112
SCREEN_DIM_PER_K = 12


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


def _add_columns(
    rayleigh: Tensor, coefficients: Tensor, dim: int, band: int
) -> tuple[float, float]:
    """Put a new block's projection coefficients (rows :dim + width, columns dim:dim + width)
    into the symmetric Rayleigh quotient; return the squares they add to |T|_F^2 and to the
    |T - B|_F^2 of T's part outside the band |i - j| <= ``band``."""
    width = coefficients.shape[1]
    rayleigh[: dim + width, dim : dim + width] = coefficients
    rayleigh[dim : dim + width, : dim + width] = coefficients.T
    diagonal = rayleigh[dim : dim + width, dim : dim + width]
    rayleigh[dim : dim + width, dim : dim + width] = (diagonal + diagonal.T) / 2
    columns = rayleigh[: dim + width, dim : dim + width]
    squares = columns.square()
    distance = torch.arange(dim, dim + width)[None, :] - torch.arange(dim + width)[:, None]
    frobenius = 2 * squares[:dim].sum() + squares[dim:].sum()
    return frobenius.item(), 2 * squares[distance > band].sum().item()


def _threshold(rayleigh: Tensor, values: Tensor | None, dtype: torch.dtype) -> float:
    """100 eps |T|_2 sqrt(dim): a remainder column below it is rounding (an invariant
    subspace); |T|_2 from ``values`` (T's eigenvalues) or one eigh of T."""
    if values is None:
        values = torch.linalg.eigh(rayleigh)[0]
    norm = values.abs().max().item()
    return 100 * torch.finfo(dtype).eps * max(norm, torch.finfo(dtype).tiny) * len(values) ** 0.5


def _next_block(
    remainder: Tensor,
    basis: Tensor,
    size: int,
    rayleigh: Tensor,
    values: Tensor | None,
    frobenius: float,
    generator: torch.Generator,
) -> Tensor:
    """Orthonormal continuation of the basis from the remainder's directions; columns whose
    remainder is negligible (invariant subspace, ``_threshold``) continue with random
    directions. The threshold needs |T|_2 (an eigh of T when ``values`` is None), so it is
    computed only when a column is below its bound from |T|_2 <= |T|_F = ``frobenius``."""
    q, r = torch.linalg.qr(remainder)
    diagonal = r.diagonal().abs()
    tiny = torch.finfo(remainder.dtype).tiny
    bound = 100 * torch.finfo(remainder.dtype).eps * max(frobenius * (1 + 1e-6), tiny)
    if not (diagonal <= bound * rayleigh.shape[0] ** 0.5).any():
        return q[:, :size]
    negligible = diagonal <= _threshold(rayleigh, values, remainder.dtype)
    if negligible.any():
        fresh = remainder.clone()
        fresh[:, negligible] = rademacher(basis.shape[0], int(negligible.sum()), generator, basis)
        fresh, _ = _orthogonalise(fresh, basis)
        q, _ = torch.linalg.qr(fresh)
    return q[:, :size]


def _corrections(matrix: np.ndarray, values: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Directions that turn B's eigenvectors into T's: for each eigenpair (mu, u) of T's
    tridiagonal part B, (B - mu)^-1 applied to T u - mu u projected off u (first-order
    perturbation theory; a tridiagonal solve, O(dim) per vector after T U)."""
    diagonal, offdiagonal = np.diagonal(matrix), np.diagonal(matrix, 1)
    rights = matrix @ vectors - vectors * values
    rights -= vectors * (vectors * rights).sum(0)
    corrections = np.empty_like(vectors)
    for column, value in enumerate(values):
        *_, solution, info = scipy.linalg.lapack.dgtsv(
            offdiagonal, diagonal - value, offdiagonal, rights[:, column]
        )
        corrections[:, column] = solution if info == 0 else rights[:, column]
    return corrections


def _refined_extremes(
    matrix: np.ndarray, k: int, which: str
) -> tuple[dict[int, float], dict[int, tuple[float, float, float]]]:
    """The extreme eigenvalues mu (by index) of the tridiagonal part B of the symmetric
    ``matrix`` T (k + 1 at each wanted end, and both extremes), by bisection and inverse
    iteration (O(dim k)); and for each index, from a Rayleigh-Ritz step of T in the span of
    B's eigenvectors at that end and their ``_corrections`` (O(dim^2 k)): a unit vector y,
    theta and |T y - theta y| (with a bound on its rounding), as (theta, |y_last|, residual)."""
    dim = matrix.shape[0]
    diagonal, offdiagonal = np.diagonal(matrix).copy(), np.diagonal(matrix, 1).copy()
    bottom = min(k, dim - 1) if which in ("both", "smallest") else 0
    top = max(dim - k - 1, 0) if which in ("both", "largest") else dim - 1
    rounding = 4 * dim * np.finfo(np.float64).eps * np.linalg.norm(matrix)
    mu, refined = {}, {}
    for first, final in ((0, bottom), (top, dim - 1)):
        values, vectors = scipy.linalg.eigh_tridiagonal(
            diagonal, offdiagonal, select="i", select_range=(first, final)
        )
        indices = range(first, final + 1)
        mu |= dict(zip(indices, values.tolist(), strict=True))
        directions = [vectors, _corrections(matrix, values, vectors)]
        basis, _ = np.linalg.qr(np.concatenate(directions, axis=1))
        product = matrix @ basis
        theta, small = np.linalg.eigh(basis.T @ product)
        lengths = np.linalg.norm(basis @ small, axis=0)
        y, image = basis @ small / lengths, product @ small / lengths
        residuals = np.linalg.norm(image - y * theta, axis=0) + rounding
        keep = slice(0, len(indices)) if first == 0 else slice(len(theta) - len(indices), None)
        pairs = zip(theta[keep], np.abs(y[-1, keep]), residuals[keep], strict=True)
        refined |= dict(zip(indices, pairs, strict=True))
    return mu, refined


def _screen(
    rayleigh: Tensor, off_band_sq: float, residual_scale: float, k: int, which: str, tol: float
) -> tuple[bool, bool]:
    """Whether a wanted Ritz pair of T = ``rayleigh`` (dim x dim, single-vector steps) is
    certain to fail the convergence test, from ``_refined_extremes`` (O(dim^2 k)) instead of
    T's eigh (O(dim^3)). T - B, T's part off the tridiagonal band (rounding of the
    operator, or a restart), has norm <= g = ``off_band_sq`` ** 0.5, so T's j-th eigenvalue
    is within g + e of mu_j (Weyl; e >= bisection's error), and a unit y with
    |T y - theta y| = r is within sin(angle) <= r / delta of T's i-th eigenvector, delta the
    distance of theta to T's other eigenvalues, >= that to mu_{i +- 1} less g + e
    (Davis-Kahan). T's pair then has the residual estimate |w| |s_last| >=
    |w| (|y_last| - sqrt(2) sin(angle)) (|w| = ``residual_scale``, the remainder's norm),
    against tol (|B|_2 + g + e); a 1e-3 relative margin covers the rounding of the test
    itself (in the operator's dtype). Also whether the estimates |w| |y_last| all pass: if
    T's then fail, they are at the floor of the operator's rounding, and the screen can no
    longer rule out."""
    dim = rayleigh.shape[0]
    matrix = rayleigh.numpy()
    mu, refined = _refined_extremes(matrix, min(k, dim), which)
    e = 10 * np.finfo(np.float64).eps * np.abs(matrix).sum(0).max()
    slack = off_band_sq**0.5 + e
    norm = max(abs(mu[0]), abs(mu[dim - 1]))
    wanted = _wanted(dim, k, which).tolist()
    for i in wanted:
        theta, last, residual = refined[i]
        below = theta - mu[i - 1] if i > 0 else math.inf
        above = mu[i + 1] - theta if i < dim - 1 else math.inf
        separation = min(below, above) - slack
        sine = min(1.0, residual / separation) if separation > 0 else 1.0
        if residual_scale * (last - 2**0.5 * sine) * (1 - 1e-3) > tol * (norm + slack):
            return True, False
    return False, all(residual_scale * refined[i][1] <= tol * norm for i in wanted)


def lanczos_extremes(
    op: LinearOperator,
    k: int,
    generator: torch.Generator,
    *,
    which: Literal["both", "largest", "smallest"] = "both",
    block_size: int = 1,
    max_dim: int | None = None,
    tol: float = DEFAULT_TOL,
    return_vectors: bool = False,
) -> RitzPairs:
    """The k largest and k most negative eigenvalues of the symmetric ``op``.

    Stops when the Ritz pairs named by ``which`` have residual estimates <= tol * |H|_2
    (|H|_2 estimated by the largest |Ritz value|), reported as ``converged``, or at
    ``max_dim`` basis vectors (default min(P, max(100, 20 k))), converged only if that is
    all of R^P. An eigenvalue's error is about min(r, r^2 / gap) for residual r, so the small,
    closely packed negative eigenvalues of a trained net need tol ~ 1e-6 (``DEFAULT_TOL``,
    measured there); the top ones converge at any tol. That can take more than the default
    max_dim for k <= 5 (the digits MLP: ~160), then ``converged`` is False: raise max_dim.
    The residuals also hold the operator's own rounding (float32 HVPs: below 1e-6 |H|_2 on
    the digits nets), a floor under which no tol converges. Single-vector Lanczos finds one
    copy of a repeated eigenvalue unless it exhausts the space; blocks of ``block_size`` find
    up to that many copies and share each data sweep (fewer sweeps, a few more matvecs). The
    basis takes P x max_dim entries of memory. The test's eigh of T (O(dim^3)) runs from
    dim 2k on, and in long single-vector runs only when ``_screen`` (O(dim^2 k)) cannot
    rule the test out: the same stopping point and results.
    """
    size = op.size
    if not 0 < k <= size:
        raise ValueError(f"k must be in 1..{size}, got {k}")
    if which not in ("both", "largest", "smallest"):
        raise ValueError(f"which must be both, largest or smallest, got {which!r}")
    max_dim = min(size, max_dim or max(100, 20 * k))
    block_size = min(block_size, max_dim)
    basis = torch.empty(size, max_dim, dtype=op.dtype, device=op.device)
    rayleigh = torch.zeros(max_dim, max_dim, dtype=torch.float64)
    block, _ = torch.linalg.qr(rademacher(size, block_size, generator, op))
    dim = n_matvecs = 0
    frobenius_sq = off_band_sq = 0.0
    screening = block_size == 1
    while True:
        width = block.shape[1]
        basis[:, dim : dim + width] = block
        remainder, coefficients = _orthogonalise(op.matmat(block), basis[:, : dim + width])
        n_matvecs += width
        coefficients = coefficients.to("cpu", torch.float64)
        added, added_off_band = _add_columns(rayleigh, coefficients, dim, block_size)
        frobenius_sq, off_band_sq = frobenius_sq + added, off_band_sq + added_off_band
        dim += width
        pairs, converged, ruled_out, floor = None, False, False, False
        if screening and dim >= max(2 * k, SCREEN_FROM_DIM, SCREEN_DIM_PER_K * k):
            residual_scale = remainder.norm().item()
            ruled_out, floor = _screen(
                rayleigh[:dim, :dim], off_band_sq, residual_scale, k, which, tol
            )
        if dim >= 2 * k and not ruled_out:
            pairs = torch.linalg.eigh(rayleigh[:dim, :dim])
            converged = _converged(*pairs, remainder, _wanted(dim, k, which), tol)
            screening = screening and not floor
        if converged or dim >= max_dim:
            break
        block = _next_block(
            remainder,
            basis[:, :dim],
            min(block_size, max_dim - dim),
            rayleigh[:dim, :dim],
            None if pairs is None else pairs[0],
            frobenius_sq**0.5,
            generator,
        )

    if pairs is None:
        pairs = torch.linalg.eigh(rayleigh[:dim, :dim])
    ritz = _ritz_pairs(op, basis[:, :dim], *pairs, k, return_vectors)
    return replace(
        ritz,
        n_matvecs=n_matvecs + ritz.n_matvecs,
        converged=converged or dim == size,
    )


def _converged(
    values: Tensor, vectors: Tensor, remainder: Tensor, wanted: Tensor, tol: float
) -> bool:
    """The test: residual estimates |W s_last| of T's ``wanted`` eigenpairs (W = the last
    block's ``remainder``) all <= tol times the largest |Ritz value|."""
    norm = values.abs().max().item()
    last = vectors[-remainder.shape[1] :, wanted].to(remainder.device, remainder.dtype)
    return bool(((remainder @ last).norm(dim=0) <= tol * norm).all())


def _ritz_pairs(
    op: LinearOperator, basis: Tensor, values: Tensor, vectors: Tensor, k: int, keep: bool
) -> RitzPairs:
    """The k largest and k smallest Ritz pairs of the (P, dim) ``basis`` with T's eigenpairs
    ``values``, ``vectors``, their residuals measured with one more matmat (the only matvecs
    counted here; ``converged`` left False), the vectors if ``keep``."""
    dim = basis.shape[1]
    top = torch.arange(dim - 1, dim - 1 - min(k, dim), -1)
    bottom = torch.arange(min(k, dim))
    selected = torch.cat([top, bottom])
    ritz_vectors = basis @ vectors[:, selected].to(op.device, op.dtype)
    ritz_values = values[selected]
    residuals = (
        (op.matmat(ritz_vectors) - ritz_vectors * ritz_values.to(op.device, op.dtype))
        .norm(dim=0)
        .to("cpu", torch.float64)
    )
    n_top = len(top)
    return RitzPairs(
        largest=ritz_values[:n_top],
        smallest=ritz_values[n_top:],
        largest_residuals=residuals[:n_top],
        smallest_residuals=residuals[n_top:],
        largest_vectors=ritz_vectors[:, :n_top] if keep else None,
        smallest_vectors=ritz_vectors[:, n_top:] if keep else None,
        n_matvecs=len(selected),
        krylov_dim=dim,
        converged=False,
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
    ``reorthogonalise`` keeps every run's basis (n_steps x P x n memory, allocated at the
    start); without it only two vectors per run are kept. Beyond the matmat and the
    reorthogonalisation each step costs O(P n)."""
    size, n = starts.shape
    n_steps = min(n_steps, size)
    eps = torch.finfo(op.dtype).eps
    current = starts.to(op.device, op.dtype)
    current = current / current.norm(dim=0)
    previous = torch.zeros_like(current)
    beta = torch.zeros(n, dtype=op.dtype, device=op.device)
    scale = torch.full_like(beta, torch.finfo(op.dtype).tiny)  # running max |alpha| per run
    basis = torch.empty(
        n_steps if reorthogonalise else 0, size, n, dtype=op.dtype, device=op.device
    )
    alphas, betas = [], []
    for step in range(n_steps):
        product = op.matmat(current)
        alpha = (current * product).sum(0)
        product = product - alpha * current - beta * previous
        if reorthogonalise:
            basis[step] = current
            done = basis[: step + 1]  # (j, P, n)
            for _ in range(2):
                product = product - torch.einsum(
                    "jpn,jn->pn", done, torch.einsum("jpn,pn->jn", done, product)
                )
        alphas.append(alpha)
        if step == n_steps - 1:
            break
        beta = product.norm(dim=0)
        scale = torch.maximum(scale, alpha.abs())
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
