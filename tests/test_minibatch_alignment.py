"""Xing et al. 2018 eq. 4, Figs 5-6: mini-batch alignment g_B^T H g_B / |g_B|^2 with given
batches against a float64 hand computation, the without-replacement prediction, the stage's
store at chosen epochs, the claim on synthetic means and the figure from a tiny store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

from hessvalley.batch_noise import batch_means, predicted_ratio, spearman, without_replacement
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE
from hessvalley.curvature import (
    HessianOperator,
    draw_batches,
    minibatch_alignment,
    minibatch_prediction,
)
from hessvalley.data import load_dataset
from hessvalley.errors import HessvalleyError
from hessvalley.figures.minibatch_alignment import (
    Panel,
    fig5_claim,
    fig5_figure,
    growth_part,
    read_panels,
)
from hessvalley.hessian_keys import hessian_keys
from hessvalley.minibatch_alignment import minibatch_alignment_along_trajectory
from hessvalley.train import train_run, trainer_for
from hessvalley.trajectory_store import open_trajectory, read_state

from .conftest import make_config, run_spec
from .curvature_nets import (
    LOSSES,
    reference_hessian,
    reference_per_sample_gradients,
    tiny_data,
    tiny_mlp,
)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def hand_ratios(hessian, gradients, batches) -> np.ndarray:
    """g_B^T H g_B / |g_B|^2 with g_B the mean of the batch's per-sample gradient rows."""
    out = []
    for batch in batches:
        g = gradients[batch].mean(0)
        out.append((g @ hessian @ g / (g @ g)).item())
    return np.asarray(out)


def test_given_batches_match_a_hand_computation_and_full_has_no_spread():
    model, (x, y) = tiny_mlp(batch_norm=False, width=5), tiny_data(24)
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, chunk_size=7, probes_per_sweep=3)
    hessian = reference_hessian(model, LOSSES["ce"], x, y)
    gradients = reference_per_sample_gradients(model, LOSSES["ce"], x, y)  # (M, P)
    batches = draw_batches(24, [3, 10, 24], 4, torch.Generator().manual_seed(5))
    assert batches[2] is None and batches[0].shape == (4, 3) and batches[1].shape == (4, 10)
    assert all(len(set(b.tolist())) == len(b) for b in batches[1])  # without replacement
    found = minibatch_alignment(op, [3, 10, 24], 4, batches=batches)
    for i, drawn in enumerate(batches[:2]):
        np.testing.assert_allclose(
            found.values[i].numpy(), hand_ratios(hessian, gradients, drawn), rtol=1e-10
        )
    g = gradients.mean(0)
    full = (g @ hessian @ g / (g @ g)).item()
    assert found.values[2].tolist() == [pytest.approx(full, rel=1e-10)] * 4
    assert found.std[2].item() == 0.0 and found.std[0].item() > 0
    np.testing.assert_allclose(found.curvatures / found.norms_sq, found.values)
    assert found.n_matvecs == 4 + 4 + 1
    # drawn from a generator: the same batches as drawn by hand
    again = minibatch_alignment(op, [3, 10, 24], 4, torch.Generator().manual_seed(5))
    torch.testing.assert_close(again.values, found.values)
    with pytest.raises(ValueError, match=r"outside 1\.\.24"):
        draw_batches(24, [25], 2, torch.Generator())


def test_without_replacement_expectation_is_the_prediction():
    """E[g_B g_B^T] = g g^T + f C for batches without replacement: the mean numerator and
    denominator over many random batches match g^T H g + f tr(HC) and |g|^2 + f tr(C)."""
    generator = np.random.default_rng(0)
    m, p, s = 12, 5, 4
    gradients = generator.normal(size=(m, p)) + 0.5
    a = generator.normal(size=(p, p))
    hessian = a @ a.T
    g = gradients.mean(0)
    c = (gradients - g).T @ (gradients - g) / m
    batches = np.stack([generator.permutation(m)[:s] for _ in range(40000)])
    g_b = gradients[batches].mean(1)  # (n, P)
    numerators, denominators = np.einsum("np,pq,nq->n", g_b, hessian, g_b), (g_b**2).sum(1)
    f = without_replacement(m, s)
    assert f == pytest.approx((m - s) / (s * (m - 1)))
    for values, want in (
        (numerators, g @ hessian @ g + f * np.trace(hessian @ c)),
        (denominators, g @ g + f * np.trace(c)),
    ):
        assert values.mean() == pytest.approx(want, abs=4 * values.std() / math.sqrt(len(values)))
    ratio, _ = predicted_ratio(g @ hessian @ g, g @ g, np.trace(hessian @ c), np.trace(c), m, m)
    assert ratio == pytest.approx(g @ hessian @ g / (g @ g))  # f = 0: the full gradient


def test_prediction_terms_against_dense_references():
    model, (x, y) = tiny_mlp(batch_norm=False, width=5), tiny_data(24)
    op = HessianOperator(model, LOSSES["ce"], x, y, dtype=F64, probes_per_sweep=16)
    hessian = reference_hessian(model, LOSSES["ce"], x, y)
    gradients = reference_per_sample_gradients(model, LOSSES["ce"], x, y)
    g = gradients.mean(0)
    c = (gradients - g).T @ (gradients - g) / len(y)
    found = minibatch_prediction(op, torch.Generator().manual_seed(0), 64)
    assert found.gradient_curvature == pytest.approx((g @ hessian @ g).item(), rel=1e-10)
    assert found.gradient_norm_sq == pytest.approx((g @ g).item(), rel=1e-10)
    for value, stderr, exact in (
        (found.trace_hc, found.trace_hc_stderr, torch.trace(hessian @ c)),
        (found.trace_c, found.trace_c_stderr, torch.trace(c)),
    ):
        assert stderr > 0 and abs(value - exact.item()) < 4 * stderr
    assert found.samples.shape == (2, 64) and found.n_matvecs == 129
    assert found.covariance[0, 0].item() == pytest.approx(found.trace_hc_stderr**2)


# -- the stage ------------------------------------------------------------------------------


SECTION = {
    "checkpoints": None,
    "epochs": [1, 3],
    "batch_sizes": [8, 64, "full"],
    "n_batches": 5,
    "seed": 2,
    "prediction": True,
    "probes": 16,
}
REFERENCE = {
    "trace": {"method": "hutchpp", "matvecs": 30, "seed": 0},
    "eigen": {"tol": 1e-6, "max_dim": None, "block_size": 1, "seed": 0},
}


def hessian_config(**overrides) -> dict:
    return {**hessian_keys(make_config({})["curvature"]), "dtype": "float64", **overrides}


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory, digits_store, digits_spec) -> str:
    """3 epochs of a 460-parameter MLP on 256 digits, a checkpoint per epoch."""
    spec = run_spec(
        model={"name": "mlp", "widths": [6], "activation": "tanh"},
        epochs=3,
        optimizer={"lr": 0.1, "batch_size": 32},
    )
    path = str(tmp_path_factory.mktemp("mba") / "trajectory.zarr")
    train_run(spec, digits_spec, "mlp6", 0, digits_store, path)
    return path


@pytest.fixture(scope="module")
def stage_store(trajectory, digits_store, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("mba_stage") / "minibatch_alignment.zarr")
    args = ("mlp6", 0, trajectory, digits_store, output)
    minibatch_alignment_along_trajectory(SECTION, hessian_config(), REFERENCE, *args)
    return output


def test_stage_store_matches_a_hand_computation_at_the_chosen_epochs(
    stage_store, trajectory, digits_store
):
    ds = xr.open_zarr(stage_store)
    assert ds["checkpoint"].values.tolist() == [1, 3] and ds["epoch"].values.tolist() == [1, 3]
    assert ds["batch_size"].values.tolist() == [8, 64, 256]
    assert ds["ratio"].dims == ("checkpoint", "size", "batch") and ds["ratio"].shape == (2, 3, 5)
    assert ds.attrs["n_samples"] == 256 and ds.attrs["batch_sizes_requested"] == [8, 64, "full"]
    group, data = open_trajectory(trajectory), load_dataset(digits_store, "cpu")
    trainer = trainer_for(group, "cpu", data)
    batches = draw_batches(256, [8, 64, 256], 5, torch.Generator().manual_seed(2))
    for index, k in enumerate([1, 3]):
        trainer.load_state(read_state(group, k))
        args = (trainer.model, trainer.loss_fn, data.x_train, data.y_train)
        hessian, gradients = reference_hessian(*args), reference_per_sample_gradients(*args)
        for i, drawn in enumerate(batches[:2]):
            np.testing.assert_allclose(
                ds["ratio"].values[index, i], hand_ratios(hessian, gradients, drawn), rtol=1e-8
            )
        g = gradients.mean(0)
        full = ds["ratio"].values[index, 2]
        np.testing.assert_allclose(full, (g @ hessian @ g / (g @ g)).item(), rtol=1e-8)
        assert np.ptp(full) == 0.0
        eigenvalues = torch.linalg.eigvalsh(hessian)
        assert ds["lambda_max"].values[index] == pytest.approx(eigenvalues[-1].item(), rel=1e-6)
        assert np.all(ds["ratio"].values[index] <= ds["lambda_max"].values[index] * (1 + 1e-9))
        trace, se = ds["trace"].values[index], ds["trace_stderr"].values[index]
        assert abs(trace - eigenvalues.sum().item()) <= 4 * se + 1e-9
        c = (gradients - g).T @ (gradients - g) / len(gradients)
        se_hc = ds["trace_hc_stderr"].values[index]
        assert abs(ds["trace_hc"].values[index] - torch.trace(hessian @ c).item()) < 4 * se_hc
        assert ds["predicted"].values[index, 2] == pytest.approx(full[0], rel=1e-8)


def test_stage_refuses_epochs_without_a_checkpoint_and_too_large_batches(
    trajectory, digits_store, tmp_path
):
    args = ("mlp6", 0, trajectory, digits_store, str(tmp_path / "out.zarr"))
    with pytest.raises(HessvalleyError, match=r"minibatch_alignment\.epochs: .* epoch 1\.5"):
        minibatch_alignment_along_trajectory(
            {**SECTION, "epochs": [1.5]}, hessian_config(), REFERENCE, *args
        )
    with pytest.raises(HessvalleyError, match=r"minibatch_alignment\.batch_sizes: \[300\]"):
        minibatch_alignment_along_trajectory(
            {**SECTION, "batch_sizes": [8, 300]}, hessian_config(), REFERENCE, *args
        )
    with pytest.raises(HessvalleyError, match=r"curvature\.batch_norm"):
        minibatch_alignment_along_trajectory(
            SECTION, hessian_config(batch_norm="train"), REFERENCE, *args
        )


# -- the claim and the figure -------------------------------------------------------------


def synthetic_panel(means, spread=0.1, n=50, label_epoch=5.0) -> Panel:
    """A panel whose batches of size i have mean ``means[i]`` and std ``spread`` (0 at the
    full set, the last size)."""
    sizes = np.asarray([10, 100, 1000, 4500][: len(means)])
    offsets = np.tile(np.r_[1.0, -1.0], n // 2)
    ratios = np.stack([m + spread * offsets for m in means])
    ratios[-1] = means[-1]
    return Panel("r", 0, 5, label_epoch, 4500, 100, sizes, ratios, 10.0, 0.5, 0.01, None)


def test_growth_part_on_growing_flat_and_falling_means():
    growing, numbers = growth_part([10, 100, 1000], [1.0, 1.5, 2.0], [0.1, 0.1, 0.1], 50)
    assert growing.verdict == HOLDS and numbers[0].value == 1.0
    assert numbers[1].value == pytest.approx(1.0)
    assert numbers[1].stderr == pytest.approx(math.sqrt(2) * 0.1 / math.sqrt(50))
    flat, _ = growth_part([10, 100, 1000], [1.0, 1.0, 1.0], [0.1, 0.1, 0.1], 50)
    assert flat.verdict == FAILS  # no increase; ρ undefined
    falling, numbers = growth_part([10, 100, 1000], [2.0, 1.5, 1.0], [0.1, 0.1, 0.1], 50)
    assert falling.verdict == FAILS and numbers[0].value == -1.0
    swapped, _ = growth_part([10, 100, 1000, 4500], [1.0, 1.6, 1.5, 2.0], [0.1] * 3 + [0.0], 50)
    assert swapped.verdict == HOLDS  # one adjacent swap: ρ = 0.8
    twice, _ = growth_part([10, 100, 1000, 4500], [1.6, 1.0, 2.0, 1.9], [0.1] * 3 + [0.0], 50)
    assert twice.verdict == FAILS  # ρ = 0.6
    noisy, _ = growth_part([10, 100], [1.0, 1.05], [1.0, 0.0], 50)
    assert noisy.verdict == FAILS and "standard errors" in noisy.reason
    nothing, _ = growth_part([10, 100], [1.0, 1.0], [0.0, 0.0], 50)
    assert nothing.verdict == UNTESTABLE


def test_claim_has_a_part_per_panel_and_fails_if_one_does():
    claim = fig5_claim([synthetic_panel([1.0, 1.4, 1.8, 2.0])])
    assert claim.verdict.verdict == HOLDS and list(claim.parts) == ["r seed 0, epoch 5"]
    later = synthetic_panel([2.0, 1.5, 1.2, 1.0], label_epoch=10.0)
    claim = fig5_claim([synthetic_panel([1.0, 1.4, 1.8, 2.0]), later])
    assert claim.verdict.verdict == FAILS and claim.parts["r seed 0, epoch 5"].verdict == HOLDS
    assert claim.parts["r seed 0, epoch 10"].verdict == FAILS
    names = [n.name for n in claim.numbers]
    assert "r seed 0, epoch 10: mean ratio at batch 4500" in names


def test_rank_correlation_and_batch_means():
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [5, 5, 6]) == pytest.approx(math.sqrt(3) / 2)  # ties averaged
    assert math.isnan(spearman([1, 2], [3, 3]))
    mean, se, blocks = batch_means([np.arange(10.0), np.array([np.nan, 1.0, 3.0])], 5)
    assert blocks == 7 and mean == pytest.approx((45 + 4) / 12)
    means = np.r_[[0.5, 2.5, 4.5, 6.5, 8.5], [1.0, 3.0]]
    assert se == pytest.approx(means.std(ddof=1) / math.sqrt(7))


def test_figure_renders_from_the_stage_store(stage_store, tmp_path):
    output = tmp_path / "figures" / "xing2018_fig5.pdf"
    fig5_figure([stage_store, stage_store], str(output), {"dpi": 40})
    assert output.read_bytes()[:4] == b"%PDF"
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    claim = json.loads(output.with_suffix(".json").read_text())
    assert claim["id"] == "xing2018_fig5" and list(claim["parts"]) == [
        "mlp6 seed 0, epoch 1",
        "mlp6 seed 0, epoch 3",
    ]
    panels = read_panels(stage_store)
    assert panels[0].prediction is not None and panels[0].n_batches == 5
