"""A seed fixes every estimate whatever the operator's performance knobs: probes are drawn one
at a time from the caller's generator, so ``probes_per_sweep``, ``chunk_size`` and the HVP
method change an estimate only by rounding (float64 here: 1e-10 relative), the probes
themselves not at all, and the adaptive stop takes the same number of probes whatever the
block. A different seed gives a different estimate, so the comparisons can fail."""

from __future__ import annotations

import itertools

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor

from hessvalley.curvature import (
    HessianOperator,
    MatrixOperator,
    hessian_noise_alignment,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_extremes,
    stochastic_lanczos_quadrature,
)
from hessvalley.curvature.noise import stochastic_alignment_summary
from hessvalley.curvature.trace import rademacher
from hessvalley.losses import cross_entropy
from hessvalley.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
METHODS = ("double_backward_loop", "double_backward_batched", "forward_over_reverse_vmap")
SETTINGS = list(itertools.product((1, 3, 32), (37, 200), METHODS))
REFERENCE = (32, 200, "double_backward_batched")
RTOL = 0.1  # the adaptive runs stop after 55 (Hutchinson) and 73 (Hutch++) probes


@pytest.fixture(scope="module")
def digits() -> tuple[torch.nn.Module, Tensor, Tensor]:
    """An untrained tanh MLP (1210 parameters) and 200 scikit-learn digits."""
    data = load_digits()
    x = torch.tensor(data.data[:200], dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(data.target[:200])
    torch.manual_seed(0)
    model = build_model({"name": "mlp", "widths": [16], "activation": "tanh"}, (1, 8, 8), 10)
    return model, x, y


def hessian(digits, probes_per_sweep: int, chunk_size: int, method: str) -> HessianOperator:
    model, x, y = digits
    return HessianOperator(
        model,
        cross_entropy(),
        x,
        y,
        dtype=F64,
        probes_per_sweep=probes_per_sweep,
        chunk_size=chunk_size,
        method=method,
    )


def estimates(op: HessianOperator, seed: int) -> dict[str, Tensor]:
    """Every seeded estimator on ``op`` from a generator seeded with ``seed``: per-probe
    samples, quadrature nodes and weights, Ritz values of an unconverged run (converged ones
    would not depend on the seed)."""

    def generator() -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    adaptive = hutchinson_trace(op, generator(), 4, rtol=RTOL, max_probes=300)
    adaptive_pp = hutchpp_trace(op, generator(), 4, sketch_size=4, rtol=RTOL, max_probes=300)
    quadrature = stochastic_lanczos_quadrature(op, generator(), n_starts=3, n_steps=12)
    pairs = lanczos_extremes(op, 2, generator(), block_size=2, max_dim=12)
    alignment = hessian_noise_alignment(op, generator(), 6)
    summary = stochastic_alignment_summary(op, generator(), 4)
    return {
        "hutchinson": hutchinson_trace(op, generator(), 10).samples,
        "hutchinson_adaptive": adaptive.samples,
        "hutchpp": hutchpp_trace(op, generator(), 10, sketch_size=4).samples,
        "hutchpp_adaptive": adaptive_pp.samples,
        "slq_nodes": quadrature.nodes,
        "slq_weights": quadrature.weights,
        "lanczos": torch.cat([pairs.largest, pairs.smallest]),
        "alignment": torch.stack(
            [alignment.hc_samples, alignment.hh_samples, alignment.cc_samples]
        ),
        "alignment_summary": torch.tensor(list(summary.estimates.values()), dtype=F64),
    }


@pytest.fixture(scope="module")
def reference(digits) -> dict[str, Tensor]:
    return estimates(hessian(digits, *REFERENCE), seed=0)


def test_reference_adaptive_runs_stop_between_the_minimum_and_the_cap(reference):
    assert 4 < reference["hutchinson_adaptive"].numel() < 300
    assert 4 < reference["hutchpp_adaptive"].numel() < 300


@pytest.mark.parametrize(
    ("probes_per_sweep", "chunk_size", "method"), [s for s in SETTINGS if s != REFERENCE]
)
def test_same_seed_same_estimates_whatever_sweep_chunk_and_method(
    digits, reference, probes_per_sweep, chunk_size, method
):
    op = hessian(digits, probes_per_sweep, chunk_size, method)
    for name, value in estimates(op, seed=0).items():
        expected = reference[name]
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            value, expected, rtol=1e-10, atol=1e-10 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_different_seed_different_estimates(digits, reference):
    other = estimates(hessian(digits, *REFERENCE), seed=1)
    for name, expected in reference.items():
        value = other[name]
        if value.shape == expected.shape:
            difference = (value - expected).abs().max().item()
            assert difference > 1e-6 * expected.abs().max().item(), name


def test_probes_are_one_sequence_however_grouped():
    """Drawing 5 then 3 probes gives the 8 of one draw, bit for bit, and the signs do not
    depend on the operator's dtype."""
    double = MatrixOperator(torch.eye(1000, dtype=F64))
    single = MatrixOperator(torch.eye(1000, dtype=torch.float32))
    generator = torch.Generator().manual_seed(3)
    grouped = torch.cat(
        [rademacher(1000, 5, generator, double), rademacher(1000, 3, generator, double)], 1
    )
    whole = rademacher(1000, 8, torch.Generator().manual_seed(3), double)
    assert torch.equal(grouped, whole) and whole.shape == (1000, 8) and whole.dtype == F64
    assert set(whole.unique().tolist()) == {-1.0, 1.0}
    as_float32 = rademacher(1000, 8, torch.Generator().manual_seed(3), single)
    assert as_float32.dtype == torch.float32 and torch.equal(as_float32.double(), whole)


def test_adaptive_stop_takes_the_same_probes_whatever_the_block():
    """The stop is the first n >= n_probes meeting the target, not the end of a block; the
    matvecs count the rest of the last block too."""
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(80, 80, generator=generator, dtype=F64))
    op = MatrixOperator(basis @ torch.diag(torch.linspace(-1, 4, 80, dtype=F64)) @ basis.T)
    runs = {
        block: hutchinson_trace(
            op, torch.Generator().manual_seed(1), 3, rtol=0.05, probes_per_block=block
        )
        for block in (1, 2, 5, 7, 32)
    }
    n = runs[1].samples.numel()
    assert 3 < n < 1000 and runs[1].n_matvecs == n
    for block, run in runs.items():
        torch.testing.assert_close(run.samples, runs[1].samples, rtol=1e-12, atol=1e-12)
        assert run.relative_stderr <= 0.05 and n <= run.n_matvecs < n + block, block
        prefix = hutchinson_trace(
            op, torch.Generator().manual_seed(1), n - 1, probes_per_block=block
        )
        assert prefix.relative_stderr > 0.05 or n - 1 < 3
