"""Gradient noise and its alignment with the Hessian.

- Per-sample gradients g_k (``torch.func.vmap`` of ``grad`` over samples) and the centred
  noise covariance C = (1/M) sum_k (g_k - g)(g_k - g)^T with g = (1/M) sum_k g_k
  (W&S section 2: the covariance of one-sample gradients; the mean of a mini-batch of S drawn
  without replacement has (M - S) / (S (M - 1)) times it, a scale that cancels in every cosine
  here). Its uncentred variant, the second moment C_u = C + g g^T = (1/M) sum_k g_k g_k^T,
  is what the noise of a mini-batch gradient measured from 0 rather than from g has.
- ``CovarianceOperator``: C applied to (P, k) blocks without forming C or any g_k:
  C V = (1/M) (G - 1 g^T)^T (G - 1 g^T) V for the (M, P) per-sample gradients G, where G V is
  a forward-mode jvp and G^T W a reverse-mode vjp through the model (one sweep per block).
- cos(H, C) = tr(HC) / (|H|_F |C|_F) (W&S A.4 eq. 35): exact from dense matrices, or
  stochastic from the same Rademacher probes z: z^T H C z, |Hz|^2 and |Cz|^2 are unbiased for
  tr(HC), |H|_F^2 and |C|_F^2; the ratio's standard error is by the delta method.
  ``exact_alignment_summary`` / ``stochastic_alignment_summary`` add, from the same matrices
  or probes, both cosines (centred and uncentred), tr H, tr C and the Frobenius norms.
- Xing et al. eq. 4: g_B^T H g_B / |g_B|^2 over sampled (or given) mini-batches, H of the
  full data (its prediction from g, C and H: ``hessvalley.curvature.batch_prediction``).
- Xing et al. eq. 5: cosine of consecutive mini-batch gradients, for the training loop.

Per-sample quantities need the ``"eval"`` BatchNorm policy (batch statistics couple samples)
and, like the whole project, a loss that is the mean of per-sample terms: g_k = J_k^T d_k with
d_k = d loss_k / d output_k read off one batched loss evaluation (the loss function itself is
never vmapped, so losses with data-dependent checks such as ``F.one_hot`` work).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vjp, vmap

from hessvalley.curvature.exact import DEFAULT_MAX_PARAMS, check_size, exact_hessian
from hessvalley.curvature.operator import HessianOperator, LinearOperator, in_sweeps
from hessvalley.curvature.trace import rademacher


def _require_per_sample(op: HessianOperator) -> None:
    if op.bn_policy != "eval":
        raise ValueError(
            "per-sample gradients need bn_policy='eval': with batch statistics the loss of a "
            "sample depends on the others in its batch"
        )


def _output_gradients(op: HessianOperator, x: Tensor, y: Tensor) -> Tensor:
    """(B, n_classes) rows d_k = d loss_k / d output_k: B times the gradient of the chunk's
    mean loss with respect to the outputs (the loss is a mean of per-sample terms)."""
    outputs = op.outputs(op.theta, x).detach().requires_grad_(True)
    with torch.enable_grad():
        (rows,) = torch.autograd.grad(op.loss_fn(outputs, y) * len(y), outputs)
    return rows


def _per_sample_gradient_chunks(op: HessianOperator, indices: Tensor | None) -> Iterator[Tensor]:
    """g_k = J_k^T d_k per chunk, vmapped over samples (the loss itself is not vmapped)."""
    _require_per_sample(op)

    def contracted_output(theta: Tensor, x: Tensor, row: Tensor) -> Tensor:
        return (op.outputs(theta, x[None])[0] * row).sum()

    per_sample = vmap(grad(contracted_output), in_dims=(None, 0, 0))
    for x, y, _ in op.chunks(indices):
        yield per_sample(op.theta, x, _output_gradients(op, x, y))  # (chunk, P)


def per_sample_gradients(op: HessianOperator, indices: Tensor | None = None) -> Tensor:
    """(n, P) gradients of the per-sample losses at the operator's parameters, over all
    samples or ``indices`` (memory n x P)."""
    return torch.cat(list(_per_sample_gradient_chunks(op, indices)))


class CovarianceOperator:
    """The centred per-sample gradient covariance C of ``op``'s loss and data, as a
    ``LinearOperator``. With D the rows d_k and J the output Jacobian of a chunk,
    (g_k - g)^T v = (J_k v) . d_k - g^T v (a jvp) and sum_k c_k g_k = J^T (c * D) (a vjp):
    one forward, k jvps and k vjps per chunk, no per-sample gradients. With
    ``centred=False`` the second moment C + g g^T (g_k^T v without the - g^T v)."""

    def __init__(self, op: HessianOperator, centred: bool = True) -> None:
        _require_per_sample(op)
        self.op = op
        self.centred = centred
        self.size, self.dtype, self.device = op.size, op.dtype, op.device
        self.probes_per_sweep = op.probes_per_sweep
        self.mean_gradient = op.gradient()

    def matmat(self, vectors: Tensor) -> Tensor:
        return in_sweeps(self.op, vectors, self._sweep)

    def _sweep(self, rows: Tensor) -> Tensor:
        op, theta = self.op, self.op.theta
        total = torch.zeros_like(rows)
        mean_projection = rows @ self.mean_gradient  # (k,) g^T v
        if not self.centred:
            mean_projection = torch.zeros_like(mean_projection)
        for x, y, _ in op.chunks():
            output_gradients = _output_gradients(op, x, y)  # (B, n_classes)

            def outputs(th: Tensor, x: Tensor = x) -> Tensor:
                return op.outputs(th, x)

            tangents = vmap(lambda v, f=outputs: jvp(f, (theta,), (v,))[1])(rows)  # (k, B, n_cl.)
            centred = (tangents * output_gradients).sum(-1) - mean_projection[:, None]  # (k, B)
            _, pullback = vjp(outputs, theta)
            (weighted,) = vmap(pullback)(centred[:, :, None] * output_gradients)  # (k, P)
            total += weighted
            if self.centred:
                total -= centred.sum(1, keepdim=True) * self.mean_gradient
        return total / op.n_samples


def _second_moment_and_mean(op: HessianOperator, max_params: int) -> tuple[Tensor, Tensor]:
    """(1/M) sum_k g_k g_k^T (P, P) and g (P,), float64 on the CPU, accumulated from
    per-sample gradients chunk by chunk."""
    check_size(op.size, max_params, "exact noise covariance")
    second_moment = torch.zeros(op.size, op.size, dtype=torch.float64)
    total = torch.zeros(op.size, dtype=torch.float64)
    for chunk in _per_sample_gradient_chunks(op, None):
        chunk = chunk.to("cpu", torch.float64)
        second_moment += chunk.T @ chunk
        total += chunk.sum(0)
    return second_moment / op.n_samples, total / op.n_samples


def exact_covariance(
    op: HessianOperator, max_params: int = DEFAULT_MAX_PARAMS, *, centred: bool = True
) -> Tensor:
    """Dense C (P, P), float64 on the CPU (second moment minus mean outer product, in
    float64); with ``centred=False`` the second moment C + g g^T."""
    second_moment, mean = _second_moment_and_mean(op, max_params)
    return second_moment - torch.outer(mean, mean) if centred else second_moment


def frobenius_cosine(a: Tensor, b: Tensor) -> float:
    """tr(A B^T) / (|A|_F |B|_F): 1 iff A = kB with k > 0 (W&S eq. 35)."""
    a, b = a.double(), b.double()
    return ((a * b).sum() / (a.norm() * b.norm())).item()


def exact_hessian_noise_alignment(
    op: HessianOperator, max_params: int = DEFAULT_MAX_PARAMS
) -> float:
    """cos(H, C) from the dense Hessian and covariance."""
    return frobenius_cosine(exact_hessian(op, max_params), exact_covariance(op, max_params))


@dataclass(frozen=True)
class AlignmentEstimate:
    """cos(H, C) estimate and delta-method standard error, with the per-probe samples of
    z^T H C z, |Hz|^2 and |Cz|^2 (float64, CPU) and the matvecs spent (H and C together)."""

    estimate: float
    stderr: float
    hc_samples: Tensor
    hh_samples: Tensor
    cc_samples: Tensor
    n_matvecs: int


def hessian_noise_alignment(
    op: HessianOperator,
    generator: torch.Generator,
    n_probes: int = 64,
    *,
    covariance: LinearOperator | None = None,
) -> AlignmentEstimate:
    """Stochastic cos(H, C) = mean(z^T H C z) / sqrt(mean|Hz|^2 mean|Cz|^2)."""
    if n_probes < 2:
        raise ValueError("need at least 2 probes for a standard error")
    covariance = covariance or CovarianceOperator(op)
    samples = []
    for start in range(0, n_probes, op.probes_per_sweep):
        probes = rademacher(op.size, min(op.probes_per_sweep, n_probes - start), generator, op)
        h, c = op.matmat(probes), covariance.matmat(probes)
        samples.append(torch.stack([(h * c).sum(0), (h * h).sum(0), (c * c).sum(0)]))
    values = torch.cat(samples, dim=1).to("cpu", torch.float64)  # (3, n)
    hc, hh, cc = values.mean(1)
    estimate = hc / torch.sqrt(hh * cc)
    jacobian = estimate * torch.stack([1 / hc, -0.5 / hh, -0.5 / cc])
    variance = jacobian @ torch.cov(values) @ jacobian / n_probes
    return AlignmentEstimate(
        estimate.item(), math.sqrt(variance.item()), *values, n_matvecs=2 * n_probes
    )


# What ``*_alignment_summary`` report, each with a standard error: cos(H, C) with the centred
# C and with the second moment C_u = C + g g^T, tr H, tr C and the Frobenius norms.
ALIGNMENT_QUANTITIES = (
    "cosine",
    "cosine_uncentred",
    "trace_hessian",
    "trace_covariance",
    "frobenius_hessian",
    "frobenius_covariance",
    "frobenius_second_moment",
)


@dataclass(frozen=True)
class AlignmentSummary:
    """``ALIGNMENT_QUANTITIES`` (``estimates``) with ``stderrs`` (0 when exact), |g|^2 (always
    exact), the ``method`` ("exact" or "stochastic") and the H and C products spent
    (exact: the P Hessian columns; C there comes from per-sample gradients)."""

    estimates: dict[str, float]
    stderrs: dict[str, float]
    gradient_norm_sq: float
    method: str
    n_matvecs: int


def exact_alignment_summary(
    op: HessianOperator, max_params: int = DEFAULT_MAX_PARAMS
) -> AlignmentSummary:
    """Every quantity from the dense H, C and C_u (float64, one pass of per-sample gradients
    for C and C_u together)."""
    hessian = exact_hessian(op, max_params)
    second_moment, mean = _second_moment_and_mean(op, max_params)
    covariance = second_moment - torch.outer(mean, mean)
    estimates = {
        "cosine": frobenius_cosine(hessian, covariance),
        "cosine_uncentred": frobenius_cosine(hessian, second_moment),
        "trace_hessian": torch.trace(hessian).item(),
        "trace_covariance": torch.trace(covariance).item(),
        "frobenius_hessian": hessian.norm().item(),
        "frobenius_covariance": covariance.norm().item(),
        "frobenius_second_moment": second_moment.norm().item(),
    }
    stderrs = dict.fromkeys(estimates, 0.0)
    return AlignmentSummary(estimates, stderrs, (mean @ mean).item(), "exact", op.size)


# Each quantity as a function of the probe means m of (z^T H z, z^T C z, |Hz|^2, |Cz|^2,
# |C_u z|^2, z^T H C z, z^T H C_u z), rows of ``stochastic_alignment_summary``'s samples.
_OF_MEANS = {
    "cosine": lambda m: m[5] / torch.sqrt(m[2] * m[3]),
    "cosine_uncentred": lambda m: m[6] / torch.sqrt(m[2] * m[4]),
    "trace_hessian": lambda m: m[0],
    "trace_covariance": lambda m: m[1],
    "frobenius_hessian": lambda m: torch.sqrt(m[2]),
    "frobenius_covariance": lambda m: torch.sqrt(m[3]),
    "frobenius_second_moment": lambda m: torch.sqrt(m[4]),
}


def _delta_method(function, samples: Tensor) -> tuple[float, float]:
    """f(mean) and its standard error, sqrt(J Cov J^T / n), for (k, n) float64 samples."""
    mean = samples.mean(1)
    jacobian = torch.autograd.functional.jacobian(function, mean)
    variance = jacobian @ torch.cov(samples) @ jacobian / samples.shape[1]
    return function(mean).item(), math.sqrt(max(variance.item(), 0.0))


def stochastic_alignment_summary(
    op: HessianOperator,
    generator: torch.Generator,
    n_probes: int = 64,
    *,
    covariance: CovarianceOperator | None = None,
) -> AlignmentSummary:
    """Every quantity from the same Rademacher probes z: h = Hz, c = Cz and
    C_u z = c + g (g^T z) (no extra sweep), ratios and roots by the delta method."""
    if n_probes < 2:
        raise ValueError("need at least 2 probes for a standard error")
    covariance = covariance or CovarianceOperator(op)
    if not covariance.centred:
        raise ValueError("pass the centred covariance; the second moment is derived from it")
    gradient = covariance.mean_gradient
    samples = []
    for start in range(0, n_probes, op.probes_per_sweep):
        z = rademacher(op.size, min(op.probes_per_sweep, n_probes - start), generator, op)
        h, c = op.matmat(z), covariance.matmat(z)
        u = c + gradient[:, None] * (gradient @ z)
        rows = [(z * h), (z * c), (h * h), (c * c), (u * u), (h * c), (h * u)]
        samples.append(torch.stack([row.sum(0) for row in rows]))
    values = torch.cat(samples, dim=1).to("cpu", torch.float64)  # (7, n)
    estimates, stderrs = {}, {}
    for name in ALIGNMENT_QUANTITIES:
        estimates[name], stderrs[name] = _delta_method(_OF_MEANS[name], values)
    norm_sq = gradient.double().pow(2).sum().item()
    return AlignmentSummary(estimates, stderrs, norm_sq, "stochastic", 2 * n_probes)


@dataclass(frozen=True)
class MinibatchAlignment:
    """g_B^T H g_B / |g_B|^2 for ``values[i, j]``: batch size ``batch_sizes[i]``, batch j,
    with its numerator (``curvatures``) and denominator (``norms_sq``), float64."""

    batch_sizes: tuple[int, ...]
    values: Tensor
    n_matvecs: int
    curvatures: Tensor | None = None
    norms_sq: Tensor | None = None

    @property
    def mean(self) -> Tensor:
        return self.values.mean(1)

    @property
    def std(self) -> Tensor:
        return self.values.std(1, correction=1)


def draw_batches(
    n_samples: int, batch_sizes: Sequence[int], n_batches: int, generator: torch.Generator
) -> list[Tensor | None]:
    """Per batch size, (n_batches, size) sample indices, each batch drawn without replacement
    (``torch.randperm`` on the generator's device, sizes in order); None for the full set
    (size ``n_samples``: every batch is all of it, so nothing is drawn)."""
    batches: list[Tensor | None] = []
    for size in batch_sizes:
        if not 0 < size <= n_samples:
            raise ValueError(f"batch size {size} outside 1..{n_samples}")
        if size == n_samples:
            batches.append(None)
            continue
        draws = [
            torch.randperm(n_samples, generator=generator, device=generator.device)[:size]
            for _ in range(n_batches)
        ]
        batches.append(torch.stack(draws))
    return batches


def minibatch_alignment(
    op: HessianOperator,
    batch_sizes: Sequence[int],
    n_batches: int,
    generator: torch.Generator | None = None,
    *,
    batches: Sequence[Tensor | None] | None = None,
) -> MinibatchAlignment:
    """Xing et al. eq. 4 for ``n_batches`` batches per size, drawn by ``draw_batches`` from
    ``generator`` or given as ``batches`` (its layout); the batch gradients of one size share
    the H sweeps. The full set is one gradient and one H product, repeated: no spread."""
    if batches is None:
        if generator is None:
            raise ValueError("pass a generator to draw the batches, or the batches")
        batches = draw_batches(op.n_samples, batch_sizes, n_batches, generator)
    if len(batches) != len(batch_sizes):
        raise ValueError(f"{len(batches)} batch sets for {len(batch_sizes)} batch sizes")
    curvatures = torch.empty(len(batch_sizes), n_batches, dtype=torch.float64)
    norms_sq = torch.empty_like(curvatures)
    n_matvecs = 0
    for i, (size, drawn) in enumerate(zip(batch_sizes, batches, strict=True)):
        if drawn is None and size != op.n_samples:
            raise ValueError(f"batch size {size}: no batches given (None is the full set)")
        if drawn is None:
            gradients = op.gradient()[:, None]
        else:
            if tuple(drawn.shape) != (n_batches, size):
                raise ValueError(f"batch size {size}: batches of shape {tuple(drawn.shape)}")
            gradients = torch.stack([op.gradient(batch) for batch in drawn], dim=1)
        curvatures[i] = (gradients * op.matmat(gradients)).sum(0).to("cpu", torch.float64)
        norms_sq[i] = gradients.pow(2).sum(0).to("cpu", torch.float64)
        n_matvecs += gradients.shape[1]
    values = curvatures / norms_sq
    return MinibatchAlignment(tuple(batch_sizes), values, n_matvecs, curvatures, norms_sq)


def flat_gradient(model: nn.Module) -> Tensor:
    """The model's current ``.grad``s as one flat vector (zeros where a grad is None)."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
            for p in model.parameters()
        ]
    )


def gradient_cosine(previous: Tensor, current: Tensor) -> float:
    """cos(g_{t-1}, g_t) (Xing et al. eq. 5), in float64; NaN if either gradient is zero."""
    previous, current = previous.double(), current.double()
    norms = previous.norm() * current.norm()
    return (previous @ current / norms).item() if norms > 0 else math.nan
