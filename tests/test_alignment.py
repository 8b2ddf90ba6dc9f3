"""Hessian-noise alignment (W&S Fig 5, A.4): the exact and stochastic summaries against
independent float64 references, the stage's store and its resume, and the figure's claim."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from hessvalley import store
from hessvalley.alignment import COLUMNS, alignment_along_trajectory, measure
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE
from hessvalley.curvature import HessianOperator
from hessvalley.curvature.noise import (
    ALIGNMENT_QUANTITIES,
    CovarianceOperator,
    exact_alignment_summary,
    exact_covariance,
    stochastic_alignment_summary,
)
from hessvalley.data import load_dataset
from hessvalley.errors import HessvalleyError
from hessvalley.figures.alignment import fig5_claim, fig5_figure, read_curves
from hessvalley.hessian_keys import hessian_keys
from hessvalley.train import train_run, trainer_for
from hessvalley.trajectory_store import open_trajectory, read_state

from .conftest import make_config, run_spec
from .curvature_nets import LOSSES, flat_params, reference_per_sample_gradients, tiny_data, tiny_mlp
from .stores import assert_identical_stores, count_rows

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
MLP = {"name": "mlp", "widths": [6], "activation": "tanh"}  # 460 parameters on digits


def torch_func_hessian(model, loss_fn, x, y) -> torch.Tensor:
    """Dense Hessian of the mean loss by torch.func.hessian of a float64 functional call."""
    reference = model.double().eval()
    names = [n for n, _ in reference.named_parameters()]
    shapes = [p.shape for _, p in reference.named_parameters()]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = theta.split([s.numel() for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return loss_fn(torch.func.functional_call(reference, params, (x.double(),)), y)

    return torch.func.hessian(loss)(flat_params(reference))


def references(model, loss_fn, x, y) -> dict[str, float]:
    """Every summary quantity from the dense Hessian and an explicit per-sample loop."""
    gradients = reference_per_sample_gradients(model, loss_fn, x, y)  # (M, P), a loop
    mean = gradients.mean(0)
    second_moment = gradients.T @ gradients / len(y)
    covariance = second_moment - torch.outer(mean, mean)
    hessian = torch_func_hessian(model, loss_fn, x, y)

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return (torch.trace(a @ b) / (a.norm() * b.norm())).item()

    return {
        "cosine": cosine(hessian, covariance),
        "cosine_uncentred": cosine(hessian, second_moment),
        "trace_hessian": torch.trace(hessian).item(),
        "trace_covariance": torch.trace(covariance).item(),
        "frobenius_hessian": hessian.norm().item(),
        "frobenius_covariance": covariance.norm().item(),
        "frobenius_second_moment": second_moment.norm().item(),
        "gradient_norm_sq": (mean @ mean).item(),
        "second_moment": second_moment,
    }


@pytest.mark.parametrize("loss_name", ["ls_ce", "mse"])
def test_exact_summary_and_uncentred_covariance_match_float64_references(loss_name):
    model, (x, y) = tiny_mlp(batch_norm=False, width=8), tiny_data(20)
    loss_fn = LOSSES[loss_name]
    op = HessianOperator(model, loss_fn, x, y, dtype=F64, chunk_size=7, probes_per_sweep=16)
    want = references(model, loss_fn, x, y)
    got = exact_alignment_summary(op)
    assert got.method == "exact" and got.n_matvecs == op.size
    for name in ALIGNMENT_QUANTITIES:
        assert got.estimates[name] == pytest.approx(want[name], rel=1e-8, abs=1e-12), name
        assert got.stderrs[name] == 0.0
    assert got.gradient_norm_sq == pytest.approx(want["gradient_norm_sq"], rel=1e-8)
    assert 0.1 < got.estimates["cosine"] < 1  # the references test a non-trivial value
    second_moment = want["second_moment"]
    torch.testing.assert_close(exact_covariance(op, centred=False), second_moment)
    probes = torch.randn(op.size, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    uncentred = CovarianceOperator(op, centred=False).matmat(probes)
    torch.testing.assert_close(uncentred, second_moment @ probes)


@pytest.mark.parametrize("loss_name", ["ls_ce", "mse"])
def test_stochastic_summary_is_within_its_standard_errors_of_exact(loss_name):
    """Over 40 probe seeds each quantity's z-scores against the exact value are O(1): 95%
    within 3, and the spread of the estimates matches the typical reported error."""
    model, (x, y) = tiny_mlp(batch_norm=False, width=8), tiny_data(24)
    op = HessianOperator(model, LOSSES[loss_name], x, y, dtype=F64, probes_per_sweep=64)
    exact = exact_alignment_summary(op)
    covariance = CovarianceOperator(op)
    generator = torch.Generator().manual_seed(0)
    runs = [
        stochastic_alignment_summary(op, generator, 64, covariance=covariance) for _ in range(40)
    ]
    assert runs[0].method == "stochastic" and runs[0].n_matvecs == 128
    assert runs[0].gradient_norm_sq == pytest.approx(exact.gradient_norm_sq, rel=1e-10)
    for name in ALIGNMENT_QUANTITIES:
        errors = torch.tensor([r.estimates[name] - exact.estimates[name] for r in runs])
        stderrs = torch.tensor([r.stderrs[name] for r in runs])
        z = errors / stderrs
        assert (z.abs() <= 3).float().mean() >= 0.95, (name, z)
        ratio = (errors.pow(2).mean().sqrt() / stderrs.pow(2).mean().sqrt()).item()
        assert 0.6 <= ratio <= 1.5, (name, ratio)


def test_summaries_refuse_too_few_probes_and_an_uncentred_covariance():
    model, (x, y) = tiny_mlp(batch_norm=False), tiny_data()
    op = HessianOperator(model, LOSSES["ce"], x, y)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="at least 2 probes"):
        stochastic_alignment_summary(op, generator, 1)
    with pytest.raises(ValueError, match="centred"):
        stochastic_alignment_summary(
            op, generator, 4, covariance=CovarianceOperator(op, centred=False)
        )


# -- the stage ------------------------------------------------------------------------------


def hessian_config(**overrides) -> dict:
    """The validated curvature defaults' Hessian keys, float64, with overrides."""
    return {**hessian_keys(make_config({})["curvature"]), "dtype": "float64", **overrides}


def alignment_config(**overrides) -> dict:
    return {
        "every": 2,
        "max_params": 10_000,
        "probes": 16,
        "seed": 3,
        "from_epoch": None,
    } | overrides


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, digits_store, digits_spec) -> dict[str, str]:
    """Two short runs of a 460-parameter MLP, 5 checkpoints each: LS-CE and MSE."""
    directory = tmp_path_factory.mktemp("alignment")
    paths = {}
    for name, loss, lr in (
        ("ce", {"name": "ce", "label_smoothing": 0.1}, 0.1),
        ("mse", {"name": "mse"}, 0.05),
    ):
        spec = run_spec(model=MLP, loss=loss, epochs=4, optimizer={"lr": lr, "batch_size": 32})
        paths[name] = str(directory / f"{name}.zarr")
        train_run(spec, digits_spec, f"digits_{name}", 0, digits_store, paths[name])
    return paths


def operator_at(trajectory: str, data: str, k: int) -> HessianOperator:
    """The Hessian operator at checkpoint k, built independently of the stage."""
    group = open_trajectory(trajectory)
    dataset = load_dataset(data, "cpu")
    trainer = trainer_for(group, "cpu", dataset)
    trainer.load_state(read_state(group, k))
    return HessianOperator(
        trainer.model, trainer.loss_fn, dataset.x_train, dataset.y_train, dtype=F64
    )


@pytest.fixture(scope="module")
def stage_stores(trajectories, digits_store, tmp_path_factory) -> dict[str, str]:
    """The MSE run's alignment at checkpoints 0, 2, 4, exact and stochastic."""
    directory = tmp_path_factory.mktemp("stage")
    outputs = {}
    for method, max_params in (("exact", 10_000), ("stochastic", 100)):
        outputs[method] = str(directory / f"{method}.zarr")
        args = ("digits_mse", 0, trajectories["mse"], digits_store, outputs[method])
        alignment_along_trajectory(alignment_config(max_params=max_params), hessian_config(), *args)
    return outputs


@pytest.mark.parametrize("method", ["exact", "stochastic"])
def test_stage_store_holds_the_summary_at_each_chosen_checkpoint(
    method, stage_stores, trajectories, digits_store
):
    alignment = alignment_config(max_params=10_000 if method == "exact" else 100)
    ds = xr.open_zarr(stage_stores[method])
    assert ds["checkpoint"].values.tolist() == [0, 2, 4]
    assert ds["epoch"].values.tolist() == [0, 2, 4]
    assert all(ds[name].dims == ("checkpoint",) for name in [*COLUMNS, "step", "train_loss"])
    trajectory = open_trajectory(trajectories["mse"])
    np.testing.assert_array_equal(ds["train_loss"].values, trajectory["train_loss"][[0, 2, 4]])
    attrs = ds.attrs
    assert attrs["method"] == method and attrs["loss"] == "mse" and attrs["n_params"] == 460
    assert attrs["setting"] == "digits_mse" and attrs["seed"] == 0 and attrs["n_samples"] == 256
    assert attrs["config"]["alignment"] == {
        k: alignment[k] for k in ("every", "max_params", "probes", "seed")
    }
    assert attrs["hessian"]["batch_norm"] == "eval" and attrs["paper_left_open"]
    assert attrs["trajectory_config_hash"] == trajectory.attrs["config_hash"]
    for index, k in enumerate([0, 2, 4]):
        direct = measure(operator_at(trajectories["mse"], digits_store, k), alignment)
        for name in ALIGNMENT_QUANTITIES:
            assert ds[name].values[index] == pytest.approx(direct.estimates[name], rel=1e-10)
            assert ds[f"{name}_stderr"].values[index] == pytest.approx(
                direct.stderrs[name], rel=1e-10
            )
    stderr = ds["cosine_stderr"].values
    assert (stderr == 0).all() if method == "exact" else (stderr > 0).all()


def test_interrupted_alignment_job_resumes_to_the_identical_store(
    trajectories, digits_store, tmp_path, monkeypatch, capsys
):
    """Stopped after 2 of its 5 checkpoints, the job run again computes the other 3 and writes
    exactly the store of an uninterrupted run (stochastic: the probes are drawn again)."""
    alignment = alignment_config(every=1, max_params=100)
    hessian = hessian_config(dtype="float32")
    args = ("digits_ce", 0, trajectories["ce"], digits_store)
    reference = tmp_path / "reference.zarr"
    alignment_along_trajectory(alignment, hessian, *args, str(reference))
    output = tmp_path / "resumed.zarr"
    count_rows(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        alignment_along_trajectory(alignment, hessian, *args, str(output))
    assert not output.exists()
    computed = count_rows(monkeypatch)
    alignment_along_trajectory(alignment, hessian, *args, str(output))
    assert "resuming: 2 of 5 checkpoints from an earlier attempt" in capsys.readouterr().out
    assert len(computed) == 3 and not Path(f"{output}.checkpoints.partial").exists()
    assert_identical_stores(output, reference)


def test_stage_refuses_batch_statistics_naming_the_key(tmp_path):
    with pytest.raises(HessvalleyError, match=r"curvature\.batch_norm"):
        alignment_along_trajectory(
            alignment_config(),
            hessian_config(batch_norm="train"),
            "r",
            0,
            str(tmp_path / "missing_trajectory.zarr"),
            str(tmp_path / "missing_data.zarr"),
            str(tmp_path / "alignment.zarr"),
        )


# -- the figure and its claim ---------------------------------------------------------------


def synthetic_store(path: Path, setting: str, seed: int, cosine, stderr=None, loss="ce") -> str:
    """An alignment store with the given cosines at epochs 0, 1, ... (stochastic when
    ``stderr`` is given, else exact)."""
    cosine = np.asarray(cosine, dtype=np.float64)
    n = len(cosine)
    errors = np.zeros(n) if stderr is None else np.full(n, float(stderr))
    arrays = {
        "checkpoint": (("checkpoint",), np.arange(n)),
        "step": (("checkpoint",), 2 * np.arange(n)),
        "epoch": (("checkpoint",), np.arange(n, dtype=np.float64)),
        "train_loss": (("checkpoint",), np.linspace(2.0, 0.5, n)),
        "cosine": (("checkpoint",), cosine),
        "cosine_stderr": (("checkpoint",), errors),
        "cosine_uncentred": (("checkpoint",), cosine - 0.01),
        "cosine_uncentred_stderr": (("checkpoint",), errors),
    }
    attrs = {
        "setting": setting,
        "seed": seed,
        "method": "exact" if stderr is None else "stochastic",
        "loss": loss,
        "loss_config": {"name": loss, "label_smoothing": 0.1 if loss == "ce" else 0.0},
        "optimizer": {"lr": 0.001, "batch_size": 512},
        "n_params": 460,
    }
    store.write_store(path, arrays, attrs)
    return str(path)


def test_claim_verdicts_on_synthetic_stores(tmp_path):
    early_then_aligned = [0.3, 0.6, 0.92, 0.95, 0.96, 0.97]
    ce = synthetic_store(tmp_path / "ce.zarr", "ce", 0, early_then_aligned)
    mse = synthetic_store(tmp_path / "mse.zarr", "mse", 0, early_then_aligned, loss="mse")
    claim = fig5_claim(read_curves([ce, mse]), None)
    assert claim.verdict.verdict == HOLDS and set(claim.parts) == {"ce", "mse"}
    assert claim.numbers[0].value == pytest.approx(0.95) and math.isnan(claim.numbers[0].stderr)
    assert fig5_claim(read_curves([ce]), 2).verdict.verdict == HOLDS  # 0.92 from epoch 2 on
    assert fig5_claim(read_curves([ce]), 1).verdict.verdict == FAILS  # 0.6 at epoch 1

    dip = synthetic_store(tmp_path / "dip.zarr", "mse", 1, [0.3, 0.6, 0.92, 0.95, 0.5, 0.97])
    claim = fig5_claim(read_curves([ce, mse, dip]), None)
    assert claim.verdict.verdict == FAILS and claim.parts["ce"].verdict == HOLDS
    assert "seed 1, epoch 4" in claim.parts["mse"].reason
    assert claim.numbers[2].value == pytest.approx(0.5)

    noisy = synthetic_store(tmp_path / "noisy.zarr", "ce", 0, early_then_aligned, stderr=0.02)
    assert fig5_claim(read_curves([noisy]), None).verdict.verdict == FAILS  # 0.95 - 0.06 < 0.9
    assert fig5_claim(read_curves([ce]), 10).verdict.verdict == UNTESTABLE


def test_figure_renders_from_stores(stage_stores, tmp_path):
    stores = [
        synthetic_store(tmp_path / f"ce{seed}.zarr", "ce", seed, [0.3, 0.8, 0.9 + seed / 50], 0.01)
        for seed in (0, 1)
    ]
    output = tmp_path / "figures" / "wei2020_fig5.pdf"
    fig5_figure(
        [*stores, stage_stores["stochastic"]], str(output), {"dpi": 40, "band": "std"}, None
    )
    assert output.read_bytes()[:4] == b"%PDF"
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    claim = json.loads(output.with_suffix(".json").read_text())
    assert claim["id"] == "wei2020_fig5" and list(claim["parts"]) == ["ce", "digits_mse"]
