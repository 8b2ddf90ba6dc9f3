"""Exact (dense) Hessian and spectrum for nets small enough, as references and for the
experiments that need every eigenvalue (W&S Fig 2a negative-eigenvalue sums, Sagun spectra).

The dense Hessian is assembled from Hessian-vector products with blocks of unit vectors
(reverse-over-reverse, i.e. jacrev of the gradient, column block by column block), so it
shares the operator's chunking and probe batching; it is symmetrised before ``eigh``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hessvalley.curvature.operator import LinearOperator
from hessvalley.errors import HessvalleyError

DEFAULT_MAX_PARAMS = 10_000  # a 10k x 10k float64 matrix is 0.8 GB; eigh of it takes minutes


def check_size(size: int, max_params: int, what: str = "exact Hessian") -> None:
    """Refuse dense P x P work beyond ``max_params`` with the memory it would take."""
    if size > max_params:
        gib = size * size * 8 / 2**30
        raise HessvalleyError(
            f"{what} of {size} parameters needs a {size}x{size} float64 matrix ({gib:.1f} GiB), "
            f"above the size limit max_params={max_params}: raise the limit or use the "
            "stochastic estimators (Lanczos, Hutchinson, SLQ)"
        )


def exact_hessian(op: LinearOperator, max_params: int = DEFAULT_MAX_PARAMS) -> Tensor:
    """Dense symmetric (P, P) float64 matrix of the operator, on the CPU. Build the operator
    with ``dtype=torch.float64`` for an exact reference (float32 gives float32 accuracy)."""
    check_size(op.size, max_params)
    block = getattr(op, "probes_per_sweep", 64)
    columns = []
    for start in range(0, op.size, block):
        stop = min(start + block, op.size)
        units = torch.zeros(op.size, stop - start, dtype=op.dtype, device=op.device)
        units[torch.arange(start, stop), torch.arange(stop - start)] = 1
        columns.append(op.matmat(units).to("cpu", torch.float64))
    matrix = torch.cat(columns, dim=1)
    return (matrix + matrix.T) / 2


def exact_spectrum(
    op: LinearOperator, max_params: int = DEFAULT_MAX_PARAMS, *, eigenvectors: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """All eigenvalues (ascending, float64), and the (P, P) eigenvectors if asked."""
    matrix = exact_hessian(op, max_params)
    if eigenvectors:
        return torch.linalg.eigh(matrix)
    return torch.linalg.eigvalsh(matrix)


def negative_eigenvalue_sum(eigenvalues: Tensor) -> float:
    """Sum of the negative eigenvalues (W&S Fig 2a's measure of non-convexity)."""
    return eigenvalues.clamp(max=0).sum().item()
