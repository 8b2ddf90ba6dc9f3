"""Hutchinson and Hutch++ against exact traces of small nets (three losses, with and without
BatchNorm): within 3 standard errors over many seeds, standard errors calibrated."""

from __future__ import annotations

import pytest
import torch

from hessvalley.curvature import HessianOperator, MatrixOperator, hutchinson_trace, hutchpp_trace

from .curvature_nets import (
    LOSSES,
    reference_hessian,
    tiny_data,
    tiny_mlp,
)

pytestmark = pytest.mark.usefixtures("one_thread")
N_SEEDS = 60


def calibration(estimates, exact: float) -> tuple[torch.Tensor, float]:
    """z-scores of the estimates, and the ratio of the estimates' spread across seeds to
    their typical reported standard error (1 when the standard errors are calibrated)."""
    values = torch.tensor([e.estimate for e in estimates], dtype=torch.float64)
    stderrs = torch.tensor([e.stderr for e in estimates], dtype=torch.float64)
    z = (values - exact) / stderrs
    spread = (values - exact).pow(2).mean().sqrt() / stderrs.pow(2).mean().sqrt()
    return z, spread.item()


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_estimators_are_within_three_stderr_and_calibrated(loss_name, batch_norm):
    model, (x, y) = tiny_mlp(batch_norm), tiny_data()
    exact = reference_hessian(model, LOSSES[loss_name], x, y).trace().item()
    op = HessianOperator(model, LOSSES[loss_name], x, y, dtype=torch.float64, probes_per_sweep=32)
    generator = torch.Generator().manual_seed(0)
    runs = {
        "hutchinson": [hutchinson_trace(op, generator, 30) for _ in range(N_SEEDS)],
        "hutch++": [hutchpp_trace(op, generator, 30, sketch_size=6) for _ in range(N_SEEDS)],
    }
    for name, estimates in runs.items():
        z, spread = calibration(estimates, exact)
        assert (z.abs() <= 3).float().mean() >= 0.95, (name, z)
        assert 0.7 <= spread <= 1.4, (name, spread)
        assert estimates[0].samples.shape == (30,)
        assert estimates[0].estimate == pytest.approx(estimates[0].samples.mean().item())
    assert runs["hutchinson"][0].n_matvecs == 30 and runs["hutch++"][0].n_matvecs == 42


def spiked_operator(size: int = 300, n_spikes: int = 10, seed: int = 0) -> MatrixOperator:
    """A trained net's spectrum in caricature: a few large outliers over a small bulk of
    both signs, in a random eigenbasis."""
    generator = torch.Generator().manual_seed(seed)
    bulk = 0.02 * torch.randn(size - n_spikes, generator=generator, dtype=torch.float64)
    spikes = torch.linspace(5.0, 1.0, n_spikes, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return MatrixOperator(basis @ torch.diag(torch.cat([spikes, bulk])) @ basis.T)


def test_hutchpp_calibrated_on_spiked_spectrum_and_needs_3x_fewer_matvecs():
    op = spiked_operator()
    exact = op.matrix.trace().item()
    generator = torch.Generator().manual_seed(1)
    estimates = [hutchpp_trace(op, generator, 20, sketch_size=12) for _ in range(200)]
    z, spread = calibration(estimates, exact)
    assert (z.abs() <= 3).float().mean() >= 0.97 and 0.8 <= spread <= 1.25, (z, spread)

    plain = hutchinson_trace(op, generator, 20, rtol=0.02, max_probes=5000)
    deflated = hutchpp_trace(op, generator, 20, sketch_size=12, rtol=0.02, max_probes=5000)
    assert plain.relative_stderr <= 0.02 and deflated.relative_stderr <= 0.02
    assert 3 * deflated.n_matvecs <= plain.n_matvecs, (plain.n_matvecs, deflated.n_matvecs)


def test_adaptive_stop_reaches_target_with_at_least_the_minimum():
    op = spiked_operator(size=120, seed=2)
    generator = torch.Generator().manual_seed(2)
    estimate = hutchinson_trace(op, generator, 8, rtol=0.05, probes_per_block=4)
    n = estimate.samples.numel()
    assert estimate.relative_stderr <= 0.05 and n >= 8
    # the estimate stops at the first n meeting the target; the matvecs count whole blocks
    assert estimate.n_matvecs % 4 == 0 and n <= estimate.n_matvecs < n + 4
    capped = hutchinson_trace(op, generator, 8, rtol=1e-6, max_probes=20, probes_per_block=8)
    assert capped.samples.numel() == 20 and capped.relative_stderr > 1e-6


def test_same_seed_same_estimate_and_bad_arguments():
    op = spiked_operator(size=50)
    first = hutchpp_trace(op, torch.Generator().manual_seed(5), 10, sketch_size=4)
    second = hutchpp_trace(op, torch.Generator().manual_seed(5), 10, sketch_size=4)
    assert torch.equal(first.samples, second.samples)
    with pytest.raises(ValueError, match="at least 2 probes"):
        hutchinson_trace(op, torch.Generator(), 1)
    with pytest.raises(ValueError, match="sketch_size"):
        hutchpp_trace(op, torch.Generator(), 10, sketch_size=50)
