"""Lanczos extreme eigenvalues (incl. negative) against eigh of exact Hessians; repeated
eigenvalues; block Lanczos; stochastic Lanczos quadrature against exact spectral sums."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from hessvalley.curvature import (
    HessianOperator,
    MatrixOperator,
    exact_hessian,
    exact_spectrum,
    lanczos_extremes,
    negative_eigenvalue_sum,
    stochastic_lanczos_quadrature,
)
from hessvalley.curvature.lanczos import DEFAULT_TOL
from hessvalley.curvature.trace import rademacher
from hessvalley.losses import mse_one_hot

from .curvature_nets import (
    LOSSES,
    reference_hessian,
    tiny_cnn,
    tiny_data,
    tiny_mlp,
)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_extreme_eigenvalues_match_eigh_including_negative(loss_name, batch_norm):
    model, (x, y) = tiny_mlp(batch_norm, width=24), tiny_data(48)
    eigenvalues = torch.linalg.eigvalsh(reference_hessian(model, LOSSES[loss_name], x, y))
    assert eigenvalues[0] < -1e-3 * eigenvalues[-1]  # there are negative ones to find
    op = HessianOperator(model, LOSSES[loss_name], x, y, dtype=F64)
    k = 3
    pairs = lanczos_extremes(op, k, torch.Generator().manual_seed(0), tol=1e-9, return_vectors=True)
    assert pairs.converged and pairs.krylov_dim < op.size
    torch.testing.assert_close(pairs.largest, eigenvalues[-k:].flip(0), rtol=1e-4, atol=0)
    torch.testing.assert_close(pairs.smallest, eigenvalues[:k], rtol=1e-4, atol=0)
    scale = eigenvalues.abs().max()
    assert (pairs.largest_residuals <= 1e-8 * scale).all()
    assert (pairs.smallest_residuals <= 1e-8 * scale).all()
    vectors = pairs.largest_vectors
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(k, dtype=F64), atol=1e-10, rtol=0)


def test_repeated_eigenvalues_of_a_quadratic():
    """kron(I_3, A) has every eigenvalue of A three times. A single Krylov space holds one copy
    of each: block Lanczos with blocks of 3 finds all copies; single-vector Lanczos continues
    past each invariant subspace with a random direction and, run to the full dimension,
    finds them too (the Rayleigh quotient stays exact across the restarts)."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(30, 6, generator=generator, dtype=F64)
    y = torch.randint(0, 3, (30,), generator=generator)
    op = HessianOperator(nn.Linear(6, 3, bias=False).double(), mse_one_hot, x, y)
    eigenvalues = torch.linalg.eigvalsh(2 * x.T @ x / 30).repeat_interleave(3)
    for block_size, tol in ((3, 1e-10), (1, 0.0)):
        pairs = lanczos_extremes(
            op, 4, torch.Generator().manual_seed(0), block_size=block_size, tol=tol
        )
        torch.testing.assert_close(pairs.largest, eigenvalues[-4:].flip(0), rtol=1e-8, atol=0)
        torch.testing.assert_close(pairs.smallest, eigenvalues[:4], rtol=1e-8, atol=0)
    assert pairs.krylov_dim == op.size == 18


def test_block_lanczos_on_a_cnn_with_batchnorm():
    model, (x, y) = tiny_cnn(batch_norm=True), tiny_data(conv=True)
    op = HessianOperator(model, LOSSES["ls_ce"], x, y, dtype=F64, method="double_backward_batched")
    eigenvalues = exact_spectrum(op)
    pairs = lanczos_extremes(op, 2, torch.Generator().manual_seed(1), block_size=4, tol=1e-9)
    assert pairs.converged and pairs.n_matvecs % 4 == 0
    torch.testing.assert_close(pairs.largest, eigenvalues[-2:].flip(0), rtol=1e-4, atol=0)
    torch.testing.assert_close(pairs.smallest, eigenvalues[:2], rtol=1e-4, atol=0)


def test_unconverged_run_says_so():
    op = MatrixOperator(torch.diag(torch.linspace(-1, 1, 400, dtype=F64)))
    pairs = lanczos_extremes(op, 2, torch.Generator().manual_seed(0), max_dim=10, tol=1e-10)
    assert not pairs.converged and pairs.krylov_dim == 10
    assert pairs.largest_residuals.max() > 1e-10


def test_slq_with_full_krylov_space_is_exact_quadrature_per_start():
    """With n_steps = P, each start's quadrature is z^T f(H) z / P exactly."""
    model, (x, y) = tiny_mlp(batch_norm=False, width=5), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64)
    values, vectors = exact_spectrum(op, eigenvectors=True)
    quadrature = stochastic_lanczos_quadrature(
        op, torch.Generator().manual_seed(3), n_starts=6, n_steps=op.size
    )
    starts = rademacher(op.size, 6, torch.Generator().manual_seed(3), op)
    negative_part = vectors @ torch.diag(values.clamp(max=0)) @ vectors.T
    expected = (starts * (negative_part @ starts)).sum(0)
    estimate = quadrature.trace_of(lambda t: t.clamp(max=0))
    torch.testing.assert_close(estimate.samples, expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(quadrature.weights.sum(1), torch.ones(6, dtype=F64))


def test_slq_density_and_negative_sum_with_few_steps():
    model, (x, y) = tiny_mlp(batch_norm=True, width=24), tiny_data(48)
    op = HessianOperator(model, LOSSES["mse"], x, y, dtype=F64)
    values = exact_spectrum(op)
    quadrature = stochastic_lanczos_quadrature(
        op, torch.Generator().manual_seed(0), n_starts=64, n_steps=30
    )
    assert quadrature.n_matvecs == 64 * 30
    trace = quadrature.trace_of(lambda t: t)
    assert abs(trace.estimate - values.sum().item()) <= 3 * trace.stderr
    grid = torch.linspace(values[0] - 1, values[-1] + 1, 4001, dtype=F64)
    density = quadrature.density(grid, sigma=0.05)
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-3)
    negative = quadrature.trace_of(lambda t: t.clamp(max=0))
    exact_negative = negative_eigenvalue_sum(values)
    assert exact_negative < 0 and abs(negative.estimate - exact_negative) <= 3 * negative.stderr


def test_exact_spectrum_matches_eigh_of_hessian():
    model, (x, y) = tiny_mlp(batch_norm=True), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64)
    torch.testing.assert_close(exact_spectrum(op), torch.linalg.eigvalsh(exact_hessian(op)))


def _lanczos_sections(node):
    """Every schema object with both ``tol`` and ``max_dim`` properties (a Lanczos section)."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict) and {"tol", "max_dim"} <= properties.keys():
            yield properties
        for value in node.values():
            yield from _lanczos_sections(value)
    elif isinstance(node, list):
        for value in node:
            yield from _lanczos_sections(value)


def test_one_default_tolerance_in_library_and_schema():
    """The workflow's Lanczos sections (curvature.eigen, fdr.lanczos) default to the
    library's DEFAULT_TOL, which is lanczos_extremes' default."""
    schema_path = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"
    sections = list(_lanczos_sections(yaml.safe_load(schema_path.read_text())))
    assert len(sections) >= 2
    assert [section["tol"]["default"] for section in sections] == [DEFAULT_TOL] * len(sections)
    assert inspect.signature(lanczos_extremes).parameters["tol"].default == DEFAULT_TOL
