"""HessianOperator against independent float64 Hessians: every HVP method, all three losses,
with and without BatchNorm (both policies), chunked; a quadratic with a known Hessian; purity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hessvalley.curvature import HessianOperator, exact_hessian
from hessvalley.curvature import hvp as hvp_module
from hessvalley.curvature.hvp import HVP_METHODS
from hessvalley.errors import HessvalleyError
from hessvalley.flat import flatten
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
@pytest.mark.parametrize("conv", [False, True])
def test_every_method_matches_reference_hessian(loss_name, batch_norm, conv):
    model = tiny_cnn(batch_norm) if conv else tiny_mlp(batch_norm)
    x, y = tiny_data(conv=conv)
    loss_fn = LOSSES[loss_name]
    reference = reference_hessian(model, loss_fn, x, y)
    probes = torch.randn(
        reference.shape[0], 5, dtype=F64, generator=torch.Generator().manual_seed(0)
    )
    for method in HVP_METHODS:
        op = HessianOperator(
            model, loss_fn, x, y, dtype=F64, chunk_size=10, probes_per_sweep=3, method=method
        )
        torch.testing.assert_close(op.matmat(probes), reference @ probes, rtol=1e-10, atol=1e-12)
    op = HessianOperator(model, loss_fn, x, y, dtype=F64, chunk_size=10, probes_per_sweep=256)
    torch.testing.assert_close(exact_hessian(op), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("budget", [1, 20, 10_000])
def test_batched_method_in_probe_sub_blocks_matches_reference(monkeypatch, budget):
    """``double_backward_batched`` splits a sweep's probes into vmapped sub-blocks of
    BATCHED_SAMPLE_PROBES // chunk length (here 1, 2 with an odd remainder, all 5)."""
    monkeypatch.setattr(hvp_module, "BATCHED_SAMPLE_PROBES", budget)
    model, (x, y) = tiny_cnn(batch_norm=True), tiny_data(conv=True)
    reference = reference_hessian(model, LOSSES["ls_ce"], x, y)
    probes = torch.randn(reference.shape[0], 5, dtype=F64, generator=torch.Generator())
    op = HessianOperator(
        model,
        LOSSES["ls_ce"],
        x,
        y,
        dtype=F64,
        chunk_size=10,
        method="double_backward_batched",
    )
    torch.testing.assert_close(op.matmat(probes), reference @ probes, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [32, 10])
def test_batchnorm_train_policy_uses_batch_statistics_of_each_chunk(chunk_size):
    model = tiny_mlp(batch_norm=True)
    x, y = tiny_data()
    loss_fn = LOSSES["ls_ce"]
    op = HessianOperator(
        model,
        loss_fn,
        x,
        y,
        dtype=F64,
        chunk_size=chunk_size,
        bn_policy="train",
        probes_per_sweep=256,
    )
    reference = reference_hessian(model, loss_fn, x, y, bn_policy="train", chunk_size=chunk_size)
    torch.testing.assert_close(exact_hessian(op), reference, rtol=1e-10, atol=1e-12)
    eval_hessian = reference_hessian(model, loss_fn, x, y, bn_policy="eval")
    assert (reference - eval_hessian).abs().max() > 1e-3  # the policies are really different


def test_loss_and_gradient_match_reference():
    model, (x, y) = tiny_mlp(batch_norm=True), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, chunk_size=7)
    reference_model = copy.deepcopy(model).double().eval()
    loss = LOSSES["ce"](reference_model(x.double()), y)
    gradient = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(loss, list(reference_model.parameters()))]
    )
    torch.testing.assert_close(op.loss(), loss.detach())
    torch.testing.assert_close(op.gradient(), gradient)
    subset = torch.tensor([3, 17, 5, 30, 11])
    subset_loss = LOSSES["ce"](reference_model(x[subset].double()), y[subset])
    subset_gradient = torch.autograd.grad(subset_loss, list(reference_model.parameters()))
    torch.testing.assert_close(
        op.gradient(subset), torch.cat([g.reshape(-1) for g in subset_gradient])
    )


def test_quadratic_with_known_hessian_is_recovered():
    """Linear model without bias + MSE on one-hot targets: L = (1/M) sum |W x - e_y|^2 has
    H = kron(I_K, (2/M) X^T X) in row-major W order (each eigenvalue K times)."""
    generator = torch.Generator().manual_seed(3)
    n_samples, n_features, n_classes = 40, 5, 3
    x = torch.randn(n_samples, n_features, generator=generator, dtype=F64)
    y = torch.randint(0, n_classes, (n_samples,), generator=generator)
    model = nn.Linear(n_features, n_classes, bias=False).double()
    op = HessianOperator(model, mse_one_hot, x, y, chunk_size=16)
    known = torch.kron(torch.eye(n_classes, dtype=F64), 2 * x.T @ x / n_samples)
    torch.testing.assert_close(exact_hessian(op), known, rtol=1e-12, atol=1e-12)


def test_float32_operator_agrees_with_float64():
    model, (x, y) = tiny_cnn(batch_norm=True), tiny_data(conv=True)
    op64 = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64)
    op32 = HessianOperator(model, LOSSES["ce"], x, y)
    probes = torch.randn(op64.size, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert op32.dtype == torch.float32
    exact = op64.matmat(probes)
    assert (op32.matmat(probes.float()).double() - exact).abs().max() < 1e-5 * exact.abs().max()


def test_params_and_buffers_arguments_evaluate_a_checkpoint():
    """Flat params and buffers (the trajectory layout) replace the model's own."""
    model, (x, y) = tiny_mlp(batch_norm=True), tiny_data()
    checkpoint = copy.deepcopy(model)
    with torch.no_grad():
        for p in checkpoint.parameters():
            p.add_(0.1)
        checkpoint[1].running_mean.add_(0.3)
        checkpoint[1].running_var.mul_(1.5)
    params = flatten(checkpoint.parameters(), torch.float32)
    buffers = flatten(checkpoint.buffers(), torch.float32)
    op = HessianOperator(model, LOSSES["ce"], x, y, params=params, buffers=buffers, dtype=F64)
    torch.testing.assert_close(exact_hessian(op), reference_hessian(checkpoint, LOSSES["ce"], x, y))
    assert not torch.equal(model[1].running_mean, checkpoint[1].running_mean)
    with pytest.raises(ValueError, match="params has shape"):
        HessianOperator(model, LOSSES["ce"], x, y, params=params[:-1])


def test_operator_leaves_model_untouched():
    model, (x, y) = tiny_mlp(batch_norm=True), tiny_data()
    model.train()
    model(x).sum().backward()
    state = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    for policy in ("eval", "train"):
        op = HessianOperator(model, LOSSES["ce"], x, y, bn_policy=policy, chunk_size=10)
        op.matmat(torch.randn(op.size, 3))
        op.gradient()
        op.loss()
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))


def test_size_limit_and_bad_arguments_fail_clearly():
    model, (x, y) = tiny_mlp(batch_norm=False), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y)
    with pytest.raises(HessvalleyError, match="max_params=10"):
        exact_hessian(op, max_params=10)
    with pytest.raises(ValueError, match="bn_policy"):
        HessianOperator(model, LOSSES["ce"], x, y, bn_policy="batch")
    with pytest.raises(ValueError, match="unknown HVP method"):
        HessianOperator(model, LOSSES["ce"], x, y, method="finite_differences")
