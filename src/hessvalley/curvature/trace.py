"""Stochastic trace estimators with standard errors: Hutchinson and Hutch++.

Both draw Rademacher probes from the caller's generator (on the generator's device, then moved
to the operator's) one probe at a time, so the i-th probe depends only on the seed and i: a seed
fixes the estimate on any compute device, whatever the operator's ``probes_per_sweep``,
``chunk_size`` or HVP method (to rounding) and the block size. Both return the per-probe
samples so that downstream statistics can be recomputed.

Hutch++ (Meyer, Musco, Musco & Woodruff 2021) sketches the top of the spectrum with
``sketch_size`` probes (Q = orth(H S)), takes tr(Q^T H Q) exactly, and estimates the rest,
tr((I - QQ^T) H (I - QQ^T)), with Hutchinson on deflated probes. Given the sketch, the
estimate is unbiased and its error is exactly that of the residual Hutchinson average, so the
reported standard error is the residual samples' standard error. The expectation of the
estimate given Q is tr(H) for every Q, so this conditional standard error is also calibrated
over seeds (tests check the z-scores). Adaptive stopping adds residual probes only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hessvalley.curvature.operator import LinearOperator


@dataclass(frozen=True)
class TraceEstimate:
    """``estimate`` = mean of ``samples`` (float64, CPU); ``stderr`` = their sample standard
    deviation / sqrt(n); ``n_matvecs`` counts operator applications to single vectors, the
    cost: after an adaptive stop it includes the rest of the last block, applied but unused."""

    estimate: float
    stderr: float
    samples: Tensor
    n_matvecs: int

    @property
    def relative_stderr(self) -> float:
        return self.stderr / abs(self.estimate) if self.estimate else math.inf


def rademacher(size: int, n: int, generator: torch.Generator, like: LinearOperator) -> Tensor:
    """(size, n) random signs on the operator's device and dtype, drawn on ``generator``'s
    device probe by probe: column j is one ``randint`` call of ``size`` values, so drawing 5
    then 3 columns gives the 8 columns of one call (a block of probes is the next columns of
    one sequence). On the CPU each call takes the next ``size`` words of the mt19937 stream.
    On CUDA each call takes the Philox offset the generator holds and advances it by an
    amount that depends only on the call's element count (and the device), and its values
    depend only on the seed, that offset and the element's index: equal-sized calls in the
    same order give the same probes however they are grouped. The signs are drawn as int8
    whatever the operator's dtype, so float32 and float64 operators get the same probes.
    Returned as the transpose of a contiguous (n, size) block: each probe is contiguous."""
    rows = torch.empty(n, size, dtype=like.dtype, device=like.device)
    for row in rows:
        row.copy_(
            torch.randint(
                0, 2, (size,), generator=generator, device=generator.device, dtype=torch.int8
            )
        )
    return rows.mul_(2).sub_(1).T


def _summary(samples: Tensor, n_matvecs: int, offset: float = 0.0) -> TraceEstimate:
    samples = samples.detach().to("cpu", torch.float64) + offset
    n = samples.numel()
    stderr = samples.std(correction=1).item() / math.sqrt(n) if n > 1 else math.inf
    return TraceEstimate(samples.mean().item(), stderr, samples, n_matvecs)


def _first_stop(samples: Tensor, start: int, rtol: float, offset: float) -> int | None:
    """The first n >= ``start`` at which offset + samples[:n] has stderr <= rtol * |mean|
    (the criterion of the reported estimate itself), or None."""
    for n in range(start, samples.numel() + 1):
        estimate = _summary(samples[:n], 0, offset)
        if estimate.stderr <= rtol * abs(estimate.estimate):
            return n
    return None


def _quadratic_form_samples(
    op: LinearOperator,
    generator: torch.Generator,
    n_probes: int,
    rtol: float | None,
    max_probes: int,
    block: int,
    deflation: Tensor | None = None,
    offset: float = 0.0,
) -> tuple[Tensor, int]:
    """z^T H z (float64, CPU) for Rademacher z (projected off the orthonormal ``deflation``
    columns), in blocks of ``block`` probes: ``n_probes`` of them, or with ``rtol`` the first
    n >= ``n_probes`` at which the standard error of offset + samples[:n] is below rtol times
    their mean (or ``max_probes``), and the matvecs applied. The stop is checked probe by
    probe within each block, so it does not depend on ``block``: the rest of the block is
    applied (counted) but not used."""
    if n_probes < 2:
        raise ValueError("need at least 2 probes for a standard error")
    if rtol is not None and max_probes < n_probes:
        raise ValueError(f"max_probes ({max_probes}) is below n_probes ({n_probes})")
    limit = n_probes if rtol is None else max_probes
    samples = torch.empty(0, dtype=torch.float64)
    while (drawn := samples.numel()) < limit:
        size = min(block, (n_probes if drawn < n_probes else limit) - drawn)
        probes = rademacher(op.size, size, generator, op)
        if deflation is not None:
            probes = probes - deflation @ (deflation.T @ probes)
        block_samples = (probes * op.matmat(probes)).sum(0).to("cpu", torch.float64)
        samples = torch.cat([samples, block_samples])
        if rtol is not None and samples.numel() >= n_probes:
            stop = _first_stop(samples, max(n_probes, drawn + 1), rtol, offset)
            if stop is not None:
                return samples[:stop], samples.numel()
    return samples, samples.numel()


def hutchinson_trace(
    op: LinearOperator,
    generator: torch.Generator,
    n_probes: int = 32,
    *,
    rtol: float | None = None,
    max_probes: int = 1000,
    probes_per_block: int | None = None,
) -> TraceEstimate:
    """tr(H) ~ mean_i z_i^T H z_i over Rademacher z_i. With ``rtol``, the estimate takes the
    first n >= ``n_probes`` probes at which stderr <= rtol * |estimate| (or ``max_probes``),
    the same n whatever the block. Probes are applied in blocks (default: the operator's
    ``probes_per_sweep``) that share one data sweep."""
    block = probes_per_block or getattr(op, "probes_per_sweep", n_probes)
    samples, n_matvecs = _quadratic_form_samples(op, generator, n_probes, rtol, max_probes, block)
    return _summary(samples, n_matvecs)


def hutchpp_trace(
    op: LinearOperator,
    generator: torch.Generator,
    n_probes: int = 32,
    *,
    sketch_size: int = 16,
    rtol: float | None = None,
    max_probes: int = 1000,
    probes_per_block: int | None = None,
) -> TraceEstimate:
    """Hutch++: tr(Q^T H Q) for Q = orth(H S), S of ``sketch_size`` Rademacher columns, plus
    Hutchinson with ``n_probes`` deflated probes (I - QQ^T) z on the rest. Costs
    2 * sketch_size + n_probes matvecs; ``samples`` are tr(Q^T H Q) + residual samples, so
    their mean is the estimate and their spread the residual's. ``rtol`` adds residual probes
    as in ``hutchinson_trace``. The original algorithm splits a budget m as m/3 each."""
    if not 0 < sketch_size < op.size:
        raise ValueError(f"sketch_size must be in 1..{op.size - 1}, got {sketch_size}")
    block = probes_per_block or getattr(op, "probes_per_sweep", n_probes)
    sketch = op.matmat(rademacher(op.size, sketch_size, generator, op))
    basis, _ = torch.linalg.qr(sketch)  # (P, s) orthonormal
    low_rank = (basis * op.matmat(basis)).double().sum().item()
    residual, n_residual = _quadratic_form_samples(
        op, generator, n_probes, rtol, max_probes, block, deflation=basis, offset=low_rank
    )
    return _summary(residual, 2 * sketch_size + n_residual, offset=low_rank)


def trace_budget(method: str, matvecs: int, size: int | None = None) -> dict[str, int]:
    """Keyword arguments spending ``matvecs`` Hessian-vector products on ``method``:
    Hutchinson uses them all as probes; Hutch++ puts a third into the sketch H S (at most
    ``size - 1`` columns), a third into tr(Q^T H Q) and the rest into residual probes."""
    if method == "hutchinson":
        return {"n_probes": matvecs}
    sketch = matvecs // 3 if size is None else min(matvecs // 3, size - 1)
    return {"n_probes": matvecs - 2 * sketch, "sketch_size": sketch}
