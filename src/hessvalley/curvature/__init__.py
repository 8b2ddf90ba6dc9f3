"""Curvature engine: Hessian operator, trace, eigenvalues, spectral density, gradient noise.

Pure functions over a ``HessianOperator`` (model + loss + data at given parameters) or any
``LinearOperator``; randomness comes only from the caller's ``torch.Generator``; nothing
the caller owns (parameters, BatchNorm buffers, train/eval mode) is modified.
"""

from hessvalley.curvature.batch_prediction import MinibatchPrediction, minibatch_prediction
from hessvalley.curvature.exact import exact_hessian, exact_spectrum, negative_eigenvalue_sum
from hessvalley.curvature.factory import hessian_at, hessian_attrs
from hessvalley.curvature.lanczos import RitzPairs, lanczos_extremes, lanczos_tridiagonal
from hessvalley.curvature.noise import (
    AlignmentEstimate,
    CovarianceOperator,
    MinibatchAlignment,
    draw_batches,
    exact_covariance,
    exact_hessian_noise_alignment,
    flat_gradient,
    frobenius_cosine,
    gradient_cosine,
    hessian_noise_alignment,
    minibatch_alignment,
    per_sample_gradients,
)
from hessvalley.curvature.operator import HessianOperator, LinearOperator, MatrixOperator
from hessvalley.curvature.slq import SpectralQuadrature, stochastic_lanczos_quadrature
from hessvalley.curvature.trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = [
    "AlignmentEstimate",
    "CovarianceOperator",
    "HessianOperator",
    "LinearOperator",
    "MatrixOperator",
    "MinibatchAlignment",
    "MinibatchPrediction",
    "RitzPairs",
    "SpectralQuadrature",
    "TraceEstimate",
    "draw_batches",
    "exact_covariance",
    "exact_hessian",
    "exact_hessian_noise_alignment",
    "exact_spectrum",
    "flat_gradient",
    "frobenius_cosine",
    "gradient_cosine",
    "hessian_at",
    "hessian_attrs",
    "hessian_noise_alignment",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_extremes",
    "lanczos_tridiagonal",
    "minibatch_alignment",
    "minibatch_prediction",
    "negative_eigenvalue_sum",
    "per_sample_gradients",
    "stochastic_lanczos_quadrature",
]
