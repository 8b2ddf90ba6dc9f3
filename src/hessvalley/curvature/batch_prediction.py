"""What the full gradient g, the per-sample covariance C and the Hessian H predict for Xing et
al.'s mini-batch ratio g_B^T H g_B / |g_B|^2 (eq. 4).

Over batches of S drawn without replacement from the M samples, E[g_B] = g and
Cov(g_B) = f C with f = (M - S) / (S (M - 1)), C = (1/M) sum_k (g_k - g)(g_k - g)^T; so
E[g_B^T H g_B] = g^T H g + f tr(HC) and E|g_B|^2 = |g|^2 + f tr(C) (the ratio of these
expectations, in ``hessvalley.batch_noise``, is the prediction drawn beside the measured
means). g^T H g is one H product; tr(HC) and tr(C) come from Rademacher probes z as
(Hz).(Cz) = z^T HC z and z.(Cz), unbiased, with standard errors and the covariance of the two
means (the prediction's delta-method error needs it: both come from the same probes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hessvalley.curvature.noise import CovarianceOperator
from hessvalley.curvature.operator import HessianOperator
from hessvalley.curvature.trace import rademacher


@dataclass(frozen=True)
class MinibatchPrediction:
    """What g, C and H predict for the mini-batch ratio (``hessvalley.batch_noise``):
    g^T H g and |g|^2 exactly; tr(HC) and tr(C), C the centred per-sample covariance, from
    Rademacher probes z ((Hz).(Cz) and z.(Cz), kept in ``samples``, float64), with standard
    errors and their covariance (``covariance``, of the two means)."""

    gradient_curvature: float
    gradient_norm_sq: float
    trace_hc: float
    trace_hc_stderr: float
    trace_c: float
    trace_c_stderr: float
    covariance: Tensor  # (2, 2) of the means of the two probe samples
    samples: Tensor  # (2, n_probes)
    n_matvecs: int


def minibatch_prediction(
    op: HessianOperator,
    generator: torch.Generator,
    n_probes: int = 64,
    *,
    covariance: CovarianceOperator | None = None,
) -> MinibatchPrediction:
    """g^T H g, |g|^2 (one H product of g) and probe estimates of tr(HC) and tr(C)."""
    if n_probes < 2:
        raise ValueError("need at least 2 probes for a standard error")
    covariance = covariance or CovarianceOperator(op)
    gradient = covariance.mean_gradient
    curvature = (gradient @ op.matvec(gradient)).double().item()
    samples = []
    for start in range(0, n_probes, op.probes_per_sweep):
        z = rademacher(op.size, min(op.probes_per_sweep, n_probes - start), generator, op)
        c = covariance.matmat(z)
        samples.append(torch.stack([(op.matmat(z) * c).sum(0), (z * c).sum(0)]))
    values = torch.cat(samples, dim=1).to("cpu", torch.float64)  # (2, n)
    mean, cov = values.mean(1), torch.cov(values) / n_probes
    stderr = cov.diagonal().clamp(min=0).sqrt()
    return MinibatchPrediction(
        curvature,
        gradient.double().pow(2).sum().item(),
        mean[0].item(),
        stderr[0].item(),
        mean[1].item(),
        stderr[1].item(),
        cov,
        values,
        n_matvecs=2 * n_probes + 1,
    )
