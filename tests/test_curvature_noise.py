"""Gradient noise: per-sample gradients, the centred covariance and its action, cos(H, C)
exact and stochastic, mini-batch alignment (Xing eq. 4), consecutive-gradient cosine (eq. 5),
and purity of every estimator."""

from __future__ import annotations

import copy

import pytest
import torch

from hessvalley.curvature import (
    CovarianceOperator,
    HessianOperator,
    exact_covariance,
    exact_hessian,
    exact_hessian_noise_alignment,
    flat_gradient,
    frobenius_cosine,
    gradient_cosine,
    hessian_noise_alignment,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_extremes,
    minibatch_alignment,
    per_sample_gradients,
    stochastic_lanczos_quadrature,
)

from .curvature_nets import (
    LOSSES,
    reference_hessian,
    reference_per_sample_gradients,
    tiny_cnn,
    tiny_data,
    tiny_mlp,
)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_covariance_and_its_action_match_explicit_per_sample_covariance(loss_name, batch_norm):
    model, (x, y) = tiny_mlp(batch_norm, width=8), tiny_data(20)
    loss_fn = LOSSES[loss_name]
    gradients = reference_per_sample_gradients(model, loss_fn, x, y)  # (M, P)
    centred = gradients - gradients.mean(0)
    explicit = centred.T @ centred / len(y)
    op = HessianOperator(model, loss_fn, x, y, dtype=F64, chunk_size=7, probes_per_sweep=4)
    torch.testing.assert_close(per_sample_gradients(op), gradients)
    torch.testing.assert_close(exact_covariance(op), explicit)
    probes = torch.randn(op.size, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(CovarianceOperator(op).matmat(probes), explicit @ probes)
    hessian = reference_hessian(model, loss_fn, x, y)
    assert exact_hessian_noise_alignment(op) == pytest.approx(
        frobenius_cosine(hessian, explicit), rel=1e-10
    )


def test_frobenius_cosine_is_one_exactly_for_positive_multiples():
    a = torch.randn(5, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert frobenius_cosine(a, 3 * a) == pytest.approx(1.0)
    assert frobenius_cosine(a, -3 * a) == pytest.approx(-1.0)
    expected = torch.trace(a @ a) / a.norm() ** 2  # tr(A (A^T)^T) / |A|_F^2
    assert frobenius_cosine(a, a.T) == pytest.approx(expected.item())


@pytest.mark.parametrize("loss_name", ["ls_ce", "mse"])
def test_stochastic_alignment_within_its_error_of_exact(loss_name):
    model, (x, y) = tiny_mlp(batch_norm=False, width=8), tiny_data(24)
    op = HessianOperator(model, LOSSES[loss_name], x, y, dtype=F64, probes_per_sweep=64)
    exact = exact_hessian_noise_alignment(op)
    covariance = CovarianceOperator(op)
    generator = torch.Generator().manual_seed(0)
    runs = [hessian_noise_alignment(op, generator, 64, covariance=covariance) for _ in range(60)]
    z = torch.tensor([(r.estimate - exact) / r.stderr for r in runs])
    spread = torch.tensor([r.estimate - exact for r in runs]).pow(2).mean().sqrt()
    typical = torch.tensor([r.stderr for r in runs]).pow(2).mean().sqrt()
    assert (z.abs() <= 3).float().mean() >= 0.95, z
    assert 0.7 <= (spread / typical).item() <= 1.4
    assert runs[0].n_matvecs == 128 and runs[0].hc_samples.shape == (64,)


def test_minibatch_alignment_matches_direct_computation():
    model, (x, y) = tiny_mlp(batch_norm=True), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, chunk_size=9)
    hessian = exact_hessian(op)
    result = minibatch_alignment(op, [4, 32], 5, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    for i, size in enumerate([4, 32]):
        for j in range(5):
            g = op.gradient(torch.randperm(32, generator=replay)[:size])
            assert result.values[i, j].item() == pytest.approx(
                (g @ hessian @ g / (g @ g)).item(), rel=1e-10
            )
    assert result.std[1] == 0  # the full batch: one gradient and one H product, repeated
    assert result.mean.shape == (2,) and result.n_matvecs == 5 + 1


def test_consecutive_gradient_cosine_for_the_training_loop():
    model, (x, y) = tiny_mlp(batch_norm=False), tiny_data()
    gradients = []
    for batch in (slice(0, 8), slice(8, 16)):
        model.zero_grad()
        LOSSES["ce"](model(x[batch]), y[batch]).backward()
        gradients.append(flat_gradient(model))
    a, b = gradients
    assert a.shape == (sum(p.numel() for p in model.parameters()),)
    assert gradient_cosine(a, b) == pytest.approx((a @ b / (a.norm() * b.norm())).item(), rel=1e-6)
    assert gradient_cosine(a, -2 * a) == pytest.approx(-1.0)
    assert torch.isnan(torch.tensor(gradient_cosine(a, torch.zeros_like(a))))


def test_per_sample_quantities_refuse_batch_statistics():
    model, (x, y) = tiny_mlp(batch_norm=True), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y, bn_policy="train")
    with pytest.raises(ValueError, match="bn_policy='eval'"):
        CovarianceOperator(op)
    with pytest.raises(ValueError, match="bn_policy='eval'"):
        per_sample_gradients(op)


@pytest.mark.parametrize("make_model", [tiny_mlp, tiny_cnn])
def test_estimators_mutate_nothing(make_model):
    """Parameters, buffers, grads, train/eval flags and the global RNG survive every estimator."""
    model = make_model(batch_norm=True)
    x, y = tiny_data(conv=make_model is tiny_cnn)
    model.train()
    LOSSES["ce"](model(x), y).backward()
    state = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    op = HessianOperator(model, LOSSES["ce"], x, y, chunk_size=10)
    generator = torch.Generator().manual_seed(0)
    hutchinson_trace(op, generator, 4)
    hutchpp_trace(op, generator, 4, sketch_size=2)
    lanczos_extremes(op, 1, generator, max_dim=6)
    stochastic_lanczos_quadrature(op, generator, n_starts=2, n_steps=3)
    hessian_noise_alignment(op, generator, 4)
    minibatch_alignment(op, [8], 2, generator)
    exact_covariance(op)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert all(p.requires_grad for p in model.parameters())
