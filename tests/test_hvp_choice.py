"""The HVP method chosen by measurement, the gradient graph kept across sweeps, and frozen
parameters left out of the Hessian by default."""

from __future__ import annotations

import pytest
import torch

from hessvalley.curvature import HessianOperator, hutchinson_trace
from hessvalley.curvature import hvp as hvp_module
from hessvalley.curvature import operator as operator_module
from hessvalley.curvature.factory import hessian_attrs
from hessvalley.curvature.hvp import AUTO_CANDIDATES

from .curvature_nets import LOSSES, reference_hessian, tiny_cnn, tiny_data, tiny_mlp

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


@pytest.fixture
def fresh_trials(monkeypatch):
    """No trial or method use from other tests of this process."""
    monkeypatch.setattr(operator_module, "_MEASURED", {})
    monkeypatch.setattr(operator_module, "_USED", {})


def probes(size: int, k: int = 5) -> torch.Tensor:
    return torch.randn(size, k, dtype=F64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fastest", AUTO_CANDIDATES)
@pytest.mark.parametrize("chunk_size", [7, 100])
def test_auto_takes_the_fastest_measured_and_equals_it_bit_for_bit(
    monkeypatch, fresh_trials, fastest, chunk_size
):
    timings = {method: 1.0 for method in AUTO_CANDIDATES} | {fastest: 0.5}
    seen = {}

    def measured(chunk_loss, theta, x, y, rows, reused, width):
        seen.update(n_x=len(x), n_rows=len(rows), reused=reused is not None, width=width)
        return timings

    monkeypatch.setattr(operator_module, "measure_methods", measured)
    model, (x, y) = tiny_cnn(batch_norm=True), tiny_data(conv=True)
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, chunk_size=chunk_size)
    vectors = probes(op.size, 12)
    product = op.matmat(vectors)
    assert op.method == fastest and op.method_timings == timings
    assert seen == {
        "n_x": min(chunk_size, 32),
        "n_rows": 4,
        "reused": chunk_size >= 32,
        "width": 12,  # the graph's share of a row is over the sweep's 12 rows, not the 4 timed
    }
    named = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, chunk_size=chunk_size)
    named.method = fastest
    assert torch.equal(product, named.matmat(vectors))
    assert hessian_attrs(_keys(), 32)["hvp_methods"] == {fastest: timings}


def test_the_plain_loop_stays_unless_another_is_clearly_faster():
    """Within SWITCH_MARGIN (10%) of the fastest, the plain loop is kept: trial noise."""
    near = {"double_backward_loop": 1.09, "double_backward_batched": 1.0}
    assert hvp_module.fastest(near) == "double_backward_loop"
    far = {"double_backward_loop": 1.11, "forward_over_reverse_vmap": 1.0}
    assert hvp_module.fastest(far) == "forward_over_reverse_vmap"
    no_loop = {"double_backward_batched": 1.05, "forward_over_reverse_vmap": 1.0}
    assert hvp_module.fastest(no_loop) == "forward_over_reverse_vmap"


def test_auto_measures_once_per_process_and_setting(monkeypatch, fresh_trials):
    calls = []

    def measured(*args, **kwargs):
        calls.append(1)
        return {"double_backward_loop": 1.0}

    monkeypatch.setattr(operator_module, "measure_methods", measured)
    model, (x, y) = tiny_mlp(batch_norm=False), tiny_data()
    for _ in range(3):
        HessianOperator(model, LOSSES["ce"], x, y, dtype=F64).matmat(probes(123))
    assert len(calls) == 1
    HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, chunk_size=5).matmat(probes(123))
    assert len(calls) == 2


def test_real_measurement_times_every_candidate_and_the_result_is_exact(fresh_trials):
    model, (x, y) = tiny_mlp(batch_norm=True), tiny_data()
    reference = reference_hessian(model, LOSSES["ls_ce"], x, y)
    for chunk_size in (10, 32):
        op = HessianOperator(model, LOSSES["ls_ce"], x, y, dtype=F64, chunk_size=chunk_size)
        vectors = probes(op.size)
        torch.testing.assert_close(op.matmat(vectors), reference @ vectors, rtol=1e-10, atol=1e-12)
        assert set(op.method_timings) == set(AUTO_CANDIDATES)
        assert all(t > 0 for t in op.method_timings.values())
        assert op.method_timings[op.method] == min(op.method_timings.values())


def test_a_candidate_out_of_memory_is_left_out(monkeypatch):
    real = hvp_module.forward_over_reverse

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(hvp_module, "forward_over_reverse", out_of_memory)
    model, (x, y) = tiny_mlp(batch_norm=False), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64)
    timings = hvp_module.measure_methods(
        op.chunk_loss, op.theta, x.double(), y, probes(123).T, None
    )
    assert set(timings) == {"double_backward_loop", "double_backward_batched"}
    monkeypatch.setattr(hvp_module, "double_backward", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        hvp_module.measure_methods(op.chunk_loss, op.theta, x.double(), y, probes(123).T, None)
    monkeypatch.setattr(hvp_module, "forward_over_reverse", real)


def test_the_graph_is_charged_per_sweep_row_and_vmap_per_timed_call(monkeypatch):
    """The trial times ROWS_PER_CALL rows, one call of each grouped method; the gradient graph,
    built once per chunk, is spread over the sweep's ``width`` rows (with 4 timed rows a 16-row
    sweep's graph was charged 4x over, and a 16-row vmap ran 40% slower per row than timed)."""
    seconds = iter([1.0, 0.4, 0.8, 0.2])  # graph, then loop, batched, vmap on 4 rows

    def fake_seconds(function, device):
        function()
        return next(seconds)

    monkeypatch.setattr(hvp_module, "seconds_of", fake_seconds)
    model, (x, y) = tiny_mlp(batch_norm=False), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64)
    rows = probes(op.size, hvp_module.ROWS_PER_CALL).T
    timings = hvp_module.measure_methods(op.chunk_loss, op.theta, x.double(), y, rows, None, 16)
    assert timings == pytest.approx(
        {
            "double_backward_loop": 0.1 + 1 / 16,
            "double_backward_batched": 0.2 + 1 / 16,
            "forward_over_reverse_vmap": 0.05,
        }
    )
    calls = []
    monkeypatch.setattr(hvp_module, "vmap", lambda f: lambda g: calls.append(len(g)) or g)
    hvp_module.forward_over_reverse(op.chunk_loss, op.theta, x, y, probes(op.size, 10).T, True)
    assert calls == [4, 4, 2] and hvp_module.batched_group("double_backward_batched", 32) == 4


@pytest.mark.parametrize("method", ["double_backward_loop", "double_backward_batched"])
def test_graph_kept_across_sweeps_gives_the_same_products(method):
    """One chunk: the gradient graph is built once and differentiated again by every later
    sweep; the products equal those of an operator that rebuilds it, bit for bit."""
    model, (x, y) = tiny_cnn(batch_norm=True), tiny_data(conv=True)
    kept = HessianOperator(model, LOSSES["mse"], x, y, dtype=F64, method=method)
    rebuilt = HessianOperator(
        model, LOSSES["mse"], x, y, dtype=F64, method=method, reuse_graph=False
    )
    assert kept.reuse_graph and not rebuilt.reuse_graph
    vectors = probes(kept.size, 7)
    for _ in range(3):
        assert torch.equal(kept.matmat(vectors), rebuilt.matmat(vectors))
    assert kept._graph is not None and rebuilt._graph is None
    kept.release()
    assert kept._graph is None and torch.equal(kept.matmat(vectors), rebuilt.matmat(vectors))
    chunked = HessianOperator(model, LOSSES["mse"], x, y, dtype=F64, method=method, chunk_size=31)
    assert not chunked.reuse_graph


def test_frozen_parameters_are_left_out_unless_included():
    model, (x, y) = tiny_mlp(batch_norm=True), tiny_data()
    full = reference_hessian(model, LOSSES["ce"], x, y)
    model[0].weight.requires_grad_(False)  # the first layer's weight (6 x 12), frozen
    frozen = set(range(72))
    keep = torch.tensor([i for i in range(full.shape[0]) if i not in frozen])
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, method="double_backward_loop")
    assert op.size == full.shape[0] - 72 and "0.weight" not in op.names
    vectors = probes(op.size)
    torch.testing.assert_close(
        op.matmat(vectors), full[keep][:, keep] @ vectors, rtol=1e-10, atol=1e-12
    )
    every = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, include_frozen=True)
    assert every.size == full.shape[0]
    torch.testing.assert_close(every.matmat(probes(every.size)), full @ probes(every.size))
    assert model[0].weight.requires_grad is False  # the caller's model is untouched


def test_frozen_values_come_from_a_full_layout_params_vector():
    model, (x, y) = tiny_mlp(batch_norm=False), tiny_data()
    model[2].bias.requires_grad_(False)
    every = [p.detach().reshape(-1) for p in model.parameters()]
    shifted = torch.cat([*every[:-1], every[-1] + 0.7]).double()
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, params=shifted)
    model[2].bias.data += 0.7
    reference = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64)
    assert op.size == shifted.numel() - 3
    vectors = probes(op.size)
    torch.testing.assert_close(op.matmat(vectors), reference.matmat(vectors), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"needs \(120,\) \(or \(123,\) with its frozen"):
        HessianOperator(model, LOSSES["ce"], x, y, params=shifted[:50])
    model.requires_grad_(False)
    with pytest.raises(ValueError, match=r"no trainable parameters.*include_frozen=True"):
        HessianOperator(model, LOSSES["ce"], x, y)


def test_auto_trace_equals_the_named_methods_trace(fresh_trials):
    model, (x, y) = tiny_cnn(batch_norm=False), tiny_data(conv=True)
    auto = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, chunk_size=10)
    estimate = hutchinson_trace(auto, torch.Generator().manual_seed(3), 16).estimate
    named = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, chunk_size=10, method=auto.method)
    assert estimate == hutchinson_trace(named, torch.Generator().manual_seed(3), 16).estimate


def _keys() -> dict:
    return {
        "n_samples": None,
        "subset_seed": 0,
        "batch_norm": "eval",
        "dtype": "float64",
        "chunk_size": 32,
        "probes_per_sweep": 32,
        "hvp_method": "auto",
    }
