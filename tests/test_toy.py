"""Toy models: analytic derivatives, the noise, seeding, and the theory (W&S Theorems 1-2, Eq. 38).

The statistical tests use fixed seeds (deterministic) and compare with the theory in units of
the standard error over independent runs; the settings keep the O(η³) terms Theorem 1 drops
below that error (small ηλ, small noise strength), and one test checks that they do show, and
are the expected ones, where ηλ is not small.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from scipy import stats

from hessvalley import toy
from hessvalley.config import ConfigError, validate_config
from hessvalley.errors import HessvalleyError

F64 = torch.float64
# torch.func's first use warns about torch.jit.script internally; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The rules run toy simulations on one thread; small tensors only lose from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def paper_formula(name: str, theta: torch.Tensor, alpha: float = 3e-3) -> torch.Tensor:
    """The three losses exactly as printed in W&S §4.2 and A.6."""
    t1, t2, t3, t4 = (*theta, None, None)[:4]
    if name == "abs_valley":
        return (t3 + t4).abs() * t1**2 + (t3 + 2 * t4).abs() * t2**2
    if name == "gaussian_valley":
        return (4 - 2 * torch.exp(-(t3**2) - t4**2)) * t1**2 + torch.exp(-((t3 - t4) ** 2)) * t2**2
    return 0.5 * (t2**2 + 1) * t1**2 + alpha * t2


LOSSES = [toy.AbsValley(), toy.GaussianValley(), toy.TiltedValley(3e-3)]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
def test_analytic_loss_gradient_hessian_equal_autograd(loss):
    generator = torch.Generator().manual_seed(0)
    formula = lambda theta: paper_formula(loss.name, theta)  # noqa: E731
    for _ in range(5):
        theta = torch.randn(loss.n_params, generator=generator, dtype=F64)
        torch.testing.assert_close(loss.loss(theta), formula(theta), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(loss.grad(theta), torch.func.grad(formula)(theta))
        torch.testing.assert_close(loss.hessian(theta), torch.func.hessian(formula)(theta))
        bar, hat = loss.split(theta)
        grad_bar, grad_hat, lam = loss.step_gradient(bar, hat)
        torch.testing.assert_close(torch.cat([grad_bar, grad_hat]), loss.grad(theta))
        torch.testing.assert_close(lam, loss.eigenvalues(hat))


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
def test_eigenvalues_are_hessian_eigenvalues_on_the_valley_floor(loss):
    """Convention of W&S Eq. 1: L = ½ Σ λ_i θ_i², so the Hessian eigenvalue of a·θ1² is 2a."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        hat = torch.randn(loss.n_valley, generator=generator, dtype=F64)
        floor = torch.cat([torch.zeros(loss.n_nondegenerate, dtype=F64), hat])
        formula = lambda theta: paper_formula(loss.name, theta)  # noqa: E731
        spectrum = torch.linalg.eigvalsh(torch.func.hessian(formula)(floor))
        lam = loss.eigenvalues(hat)
        expected = torch.sort(torch.cat([lam, torch.zeros(loss.n_valley, dtype=F64)])).values
        torch.testing.assert_close(spectrum, expected, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(loss.trace(floor), lam.sum())
        torch.testing.assert_close(loss.determinant(floor), lam.prod())
        torch.testing.assert_close(
            loss.eigenvalue_grads(hat), torch.func.jacrev(loss.eigenvalues)(hat)
        )
        torch.testing.assert_close(
            loss.eigenvalue_hessians(hat), torch.func.hessian(loss.eigenvalues)(hat)
        )


def test_theorem1_coefficient_of_the_fig2b_toy():
    """λ1 = 2|θ3+θ4|, λ2 = 2|θ3+2θ4| -> Σ∇̂λ = (4, 6), |Σ∇̂λ|² = 52: ΔT/step = −13 η² s."""
    rate = toy.trace_rate(toy.AbsValley(), torch.tensor([0.3, 0.2], dtype=F64), 0.1, 0.5)
    assert rate.item() == pytest.approx(-13 * 0.1**2 * 0.5, rel=1e-14)


def test_fig7_prediction_is_the_papers_value():
    """Eq. 38 with the paper's α = 1e-4, η = 0.01 and 1/S − 1/M = 1 gives <θ2> = −0.02."""
    assert toy.tilted_equilibrium(1e-4, 0.01, 1.0) == pytest.approx(-0.02, rel=1e-14)
    assert toy.sgd_noise_strength(10, 100) == pytest.approx(0.1 * 0.9)


def test_simulated_noise_has_the_intended_covariance():
    """One step from the valley floor (∇L = 0) is θ̄ = −ηξ: its covariance must be C."""
    loss = toy.GaussianValley()
    hat = torch.tensor([0.5, -0.5], dtype=F64)
    lam = loss.eigenvalues(hat)
    noises = [toy.Noise("sgd", 0.3), toy.Noise("isotropic", 0.7), toy.Noise("none")]
    eta, n_runs = 0.1, 40000
    runs = toy.stationary_start(loss, hat, eta, noises, n_runs, torch.Generator())
    runs[..., :2] = 0.0
    trajectory = toy.simulate(loss, runs, eta, noises, 1, torch.Generator().manual_seed(2))
    expected = [torch.diag(0.3 * lam), 0.7 * torch.eye(2, dtype=F64), torch.zeros(2, 2, dtype=F64)]
    for c, covariance in enumerate(expected):
        xi = -trajectory.theta[c, 1, :, :2] / eta
        torch.testing.assert_close(trajectory.theta[c, 1, :, 2:], runs[c, :, 2:])  # ∇̂L = 0
        empirical = torch.cov(xi.T)
        # standard error of a sample covariance entry: sqrt((C_ii C_jj + C_ij²) / n)
        scale = torch.sqrt(
            (torch.outer(covariance.diag(), covariance.diag()) + covariance**2) / n_runs
        )
        assert torch.all((empirical - covariance).abs() <= 5 * scale + 1e-15), (c, empirical)
    sampled = toy.sample_noise(noises[0], lam, n_runs, torch.Generator().manual_seed(3))
    assert torch.allclose(sampled.var(0), 0.3 * lam, rtol=5 * np.sqrt(2 / n_runs))


def test_seeding_reproduces_and_recording_does_not_change_the_path():
    loss = toy.AbsValley()
    start = torch.tensor([0.01, -0.02, 0.3, 0.2], dtype=F64).expand(8, 4)
    args = (loss, start, [0.01, 0.02], toy.Noise("sgd", 0.1), 600)
    first = toy.simulate(*args, torch.Generator().manual_seed(5), record_every=300)
    again = toy.simulate(*args, torch.Generator().manual_seed(5), record_every=1)
    other = toy.simulate(*args, torch.Generator().manual_seed(6), record_every=300)
    assert torch.equal(first.theta, again.theta[:, ::300])
    assert list(first.steps) == [0, 300, 600]
    assert not torch.equal(first.theta[:, -1], other.theta[:, -1])


def test_divergence_names_the_step():
    loss = toy.TiltedValley(0.0)
    with pytest.raises(HessvalleyError, match="diverged by step"):
        toy.simulate(
            loss,
            torch.tensor([1.0, 0.0]),
            2.5,
            toy.Noise("none"),
            2000,
            torch.Generator(),
            record_every=100,
        )


def fig2b_spec(**overrides) -> dict:
    spec = validate_config({})["toy"]["fig2b"]
    return {**spec, **overrides}


def test_theorem1_fitted_slope_agrees_with_prediction(tmp_path):
    """W&S Fig 2b: <ΔT> is linear in η² with Theorem 1's slope, within the fit's error."""
    summary = toy.trace_vs_eta(fig2b_spec(runs=1000, seed=11), str(tmp_path / "fig2b.zarr"))
    assert summary["predicted_slope"] == pytest.approx(-13 * 0.001 * 1000)
    assert abs(summary["slope_z"]) < 3, summary
    assert abs(summary["fit_intercept"]) < 3 * summary["fit_intercept_se"], summary
    assert summary["fit_chi2"] < stats.chi2.ppf(0.999, summary["fit_dof"]), summary
    # the test has power: the slope is measured to better than 1 %
    assert summary["fit_slope_se"] < 0.01 * abs(summary["predicted_slope"])
    ds = xr.open_zarr(tmp_path / "fig2b.zarr")
    assert ds.trace_change.dims == ("eta", "run") and ds.sizes["run"] == 1000
    assert ds.attrs["config"]["runs"] == 1000 and ds.attrs["seed"] == 11


def test_theorem1_misses_the_finite_eta_term_where_eta_lambda_is_not_small(tmp_path):
    """At ηλ ~ 0.05 the O(η³) term is resolved: leading order is rejected, while the exact
    stationary variance ηC/(λ(2 − ηλ)) (the term Theorem 1 drops) accounts for all of it."""
    spec = fig2b_spec(
        etas=[0.004, 0.006, 0.008, 0.010, 0.012],
        noise_strength=0.01,
        init=[0.0, 0.0, 1.0, 1.0],
        runs=1000,
        seed=12,
    )
    summary = toy.trace_vs_eta(spec, str(tmp_path / "fig2b.zarr"))
    ds = xr.open_zarr(tmp_path / "fig2b.zarr")
    mean, sem = ds.trace_change_mean.values, ds.trace_change_sem.values
    leading = ((mean - ds.predicted_trace_change.values) / sem) ** 2
    finite = ((mean - ds.predicted_trace_change_finite_eta.values) / sem) ** 2
    bound = stats.chi2.ppf(0.999, len(mean))
    assert summary["slope_z"] < -5 and leading.sum() > bound, summary
    assert finite.sum() < bound, finite


@pytest.mark.parametrize(
    ("noise", "f", "df_dlambda"),
    [
        # Corollary 2.1: isotropic C = σ² I is Theorem 2's noise for f = σ² log Det
        pytest.param(toy.Noise("isotropic", 1e-3), torch.log, torch.reciprocal, id="log_det"),
        # Theorem 2 with f = Σ λ_i²: C_ii = s λ_i ∂f/∂λ_i = 2 s λ_i²
        pytest.param(toy.Noise("diagonal", 1e-3, lambda lam: 2 * lam**2), torch.square,
                     lambda lam: 2 * lam, id="sum_of_squares"),
    ],
)  # fmt: skip
def test_theorem2_rate_of_the_designed_quantity(noise, f, df_dlambda):
    """<f_{t+1} − f_t> = −(η²/4) s |Σ_i ∂f/∂λ_i ∇̂λ_i|², summed along each run's path."""
    loss, eta, runs, equilibrate, measure, every = toy.AbsValley(), 0.005, 2000, 500, 1000, 10
    hat0 = torch.tensor([0.25, 0.25], dtype=F64)
    generator = torch.Generator().manual_seed(15)
    start = toy.stationary_start(loss, hat0, eta, noise, runs, generator)
    path = toy.simulate(loss, start, eta, noise, equilibrate + measure, generator, every)
    window = path.theta[0, equilibrate // every :, :, 2:]  # (record, run, valley)
    lam = loss.eigenvalues(window)
    measured = (f(lam[-1]).sum(-1) - f(lam[0]).sum(-1)).numpy()
    rates = toy.theorem2_rate(loss, window, eta, noise.strength, df_dlambda)
    predicted = (every * 0.5 * (rates[:-1] + rates[1:])).sum(0).numpy()  # trapezoid in steps
    mean, sem = measured.mean(), measured.std(ddof=1) / np.sqrt(runs)
    assert abs(mean - predicted.mean()) < 3 * sem, (mean, predicted.mean(), sem)
    assert sem < 0.03 * abs(predicted.mean())


def test_sgd_noise_lowers_trace_isotropic_noise_lowers_determinant(tmp_path):
    """W&S Fig 2c-d on the anti-correlated toy: each noise lowers its own quantity and raises
    the other one, significantly over runs."""
    spec = {**validate_config({})["toy"]["fig2cd"], "steps": 1500, "runs": 100, "seed": 13}
    summary = toy.noise_structure(spec, str(tmp_path / "fig2cd.zarr"))
    assert summary["sgd_trace_change_z"] < -5, summary
    assert summary["isotropic_determinant_change_z"] < -5, summary
    assert summary["sgd_determinant_change_z"] > 5, summary
    assert summary["isotropic_trace_change_z"] > 5, summary
    ds = xr.open_zarr(tmp_path / "fig2cd.zarr")
    assert ds.trace.dims == ("noise", "step", "run")
    assert list(ds.noise.values) == ["sgd", "isotropic"]


@pytest.mark.parametrize(("alpha", "eta"), [(5e-4, 0.05), (2e-4, 0.02)])
def test_noisy_gd_equilibrates_at_minus_two_alpha_over_eta_and_gd_does_not_stop(
    tmp_path, alpha, eta
):
    """W&S A.6: <θ2> = −2α/(ηs) with s = 1 (relaxation time 2/(η² s) steps); GD slides on."""
    relaxation = 2 / eta**2
    spec = {
        "alpha": alpha,
        "eta": eta,
        "noise_strength": 1.0,
        "init": [0.1, 0.1],
        "steps": int(14 * relaxation),
        "runs": 100,
        "record_every": 100,
        "average_from": int(8 * relaxation),
        "seed": 14,
    }
    summary = toy.entropic_force(spec, str(tmp_path / "fig7.zarr"))
    predicted = -2 * alpha / eta
    assert summary["predicted_theta2"] == pytest.approx(predicted)
    assert abs(summary["noisy_theta2_mean"] - predicted) < 3 * summary["noisy_theta2_sem"], summary
    assert summary["noisy_theta2_sem"] < 0.02 * abs(predicted)
    assert summary["gd_theta2_velocity"] == pytest.approx(-eta * alpha, rel=1e-6)
    assert summary["gd_theta2_final"] < 0.1 - 0.9 * eta * alpha * spec["steps"] < predicted


def test_toy_config_defaults_are_the_papers_and_validated():
    config = validate_config({})["toy"]
    assert config["fig7"] == {
        "alpha": 1e-4,
        "eta": 0.01,
        "noise_strength": 1.0,
        "init": [0.1, 0.1],
        "steps": 240000,
        "runs": 100,
        "record_every": 200,
        "average_from": 160000,
        "seed": 2,
    }
    assert config["fig2b"]["equilibrate_steps"] == config["fig2b"]["measure_steps"] == 1000
    assert toy.resolve_strength({"batch_size": 50, "n_samples": 500}) == pytest.approx(0.018)
    with pytest.raises(ConfigError, match=r"toy\.fig2b\.init"):
        validate_config({"toy": {"fig2b": {"init": [0.1, 0.1]}}})
    with pytest.raises(ConfigError, match=r"toy\.fig7\.noise_strength"):
        validate_config({"toy": {"fig7": {"noise_strength": -1}}})
