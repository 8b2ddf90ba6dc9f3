"""Curvature along a trajectory: the stores hold what the engine computes at each checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from hessvalley.curvature import HessianOperator, exact_hessian, hutchpp_trace
from hessvalley.curvature.trace import trace_budget
from hessvalley.data import load_dataset
from hessvalley.figures.curvature import curvature_figure
from hessvalley.schedule import every_kth
from hessvalley.train import train_run, trainer_for
from hessvalley.trajectory_curvature import (
    eigen_along_trajectory,
    spectrum_along_trajectory,
    trace_along_trajectory,
)
from hessvalley.trajectory_store import open_trajectory, read_state

from .conftest import make_config, run_spec
from .stores import assert_identical_stores, count_rows

MLP = {"name": "mlp", "widths": [6], "activation": "tanh"}
pytestmark = pytest.mark.usefixtures("one_thread")
BN_CNN = {"name": "vgg11", "batch_norm": True, "width": 4}


def curvature_config(**overrides) -> dict:
    """The validated defaults of the curvature section with the given keys replaced."""
    section = copy.deepcopy(make_config({})["curvature"])
    for key, value in overrides.items():
        if isinstance(value, dict):
            section[key].update(value)
        else:
            section[key] = value
    return section


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, digits_store, digits_spec) -> dict[str, str]:
    """Two short runs, 5 checkpoints each: a tanh MLP and a BatchNorm CNN."""
    directory = tmp_path_factory.mktemp("curvature")
    paths = {}
    for name, model in (("mlp", MLP), ("bn", BN_CNN)):
        spec = run_spec(model=model, epochs=4)
        paths[name] = str(directory / f"{name}.zarr")
        train_run(spec, digits_spec, "r", 0, digits_store, paths[name])
    return paths


def operator_at(trajectory: str, data: str, k: int, **kw) -> HessianOperator:
    """The Hessian operator at checkpoint k, built independently of the module under test."""
    group = open_trajectory(trajectory)
    dataset = load_dataset(data, "cpu")
    trainer = trainer_for(group, "cpu", dataset)
    trainer.load_state(read_state(group, k))
    return HessianOperator(trainer.model, trainer.loss_fn, dataset.x_train, dataset.y_train, **kw)


def test_every_kth_always_ends_with_the_last():
    assert every_kth(5, 2) == [0, 2, 4]
    assert every_kth(6, 2) == [0, 2, 4, 5]
    assert every_kth(3, 10) == [0, 2]
    assert every_kth(1, 3) == [0]


@pytest.mark.parametrize("name", ["mlp", "bn"])
def test_trace_store_matches_the_engine_at_each_checkpoint(
    name, trajectories, digits_store, tmp_path
):
    output = str(tmp_path / "trace.zarr")
    curvature = curvature_config(every=2, trace={"matvecs": 30, "seed": 5})
    trace_along_trajectory(curvature, "r", 0, trajectories[name], digits_store, output)
    ds = xr.open_zarr(output)
    assert ds["checkpoint"].values.tolist() == [0, 2, 4]
    assert ds["trace_samples"].dims == ("checkpoint", "sample")
    assert ds["epoch"].values.tolist() == [0, 2, 4]
    assert ds.attrs["config"]["batch_norm"] == "eval" and ds.attrs["n_samples"] == 256
    for index, k in enumerate(ds["checkpoint"].values):
        op = operator_at(trajectories[name], digits_store, int(k))
        direct = hutchpp_trace(op, torch.Generator().manual_seed(5), **trace_budget("hutchpp", 30))
        assert ds["trace"].values[index] == pytest.approx(direct.estimate, rel=1e-5)
        assert ds["trace_stderr"].values[index] == pytest.approx(direct.stderr, rel=1e-5)
    if name == "mlp":  # and the estimate is of the right matrix
        exact_op = operator_at(
            trajectories[name], digits_store, 4, dtype=torch.float64, probes_per_sweep=1000
        )
        exact = torch.trace(exact_hessian(exact_op)).item()
        assert abs(ds["trace"].values[-1] - exact) < 4 * ds["trace_stderr"].values[-1] + 1e-6


def test_eigen_store_matches_eigh_of_the_exact_hessian(trajectories, digits_store, tmp_path):
    output = str(tmp_path / "eigen.zarr")
    curvature = curvature_config(every=4, dtype="float64", eigen={"k": 2, "tol": 1e-8})
    eigen_along_trajectory(curvature, "r", 0, trajectories["mlp"], digits_store, output)
    ds = xr.open_zarr(output)
    assert ds["largest"].dims == ("checkpoint", "rank") and ds.sizes["rank"] == 2
    assert ds["converged"].values.all()
    for index, k in enumerate(ds["checkpoint"].values):
        op = operator_at(
            trajectories["mlp"], digits_store, int(k), dtype=torch.float64, probes_per_sweep=1000
        )
        eigenvalues = torch.linalg.eigvalsh(exact_hessian(op)).numpy()
        scale = np.abs(eigenvalues).max()
        np.testing.assert_allclose(
            ds["largest"].values[index], eigenvalues[::-1][:2], rtol=1e-4, atol=1e-6 * scale
        )
        np.testing.assert_allclose(
            ds["smallest"].values[index], eigenvalues[:2], rtol=1e-4, atol=1e-6 * scale
        )
        assert eigenvalues[0] < 0  # the test exercises negative eigenvalues


def test_exact_and_slq_spectra(trajectories, digits_store, tmp_path):
    exact_out, slq_out = str(tmp_path / "exact.zarr"), str(tmp_path / "slq.zarr")
    curvature = curvature_config(dtype="float64", spectrum={"every": 4})
    spectrum_along_trajectory(curvature, "r", 0, trajectories["mlp"], digits_store, exact_out)
    exact = xr.open_zarr(exact_out)
    assert exact.attrs["method"] == "exact"
    op = operator_at(
        trajectories["mlp"], digits_store, 4, dtype=torch.float64, probes_per_sweep=1000
    )
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(op)).numpy()
    np.testing.assert_allclose(
        exact["eigenvalues"].values[-1], eigenvalues, atol=1e-10 * np.abs(eigenvalues).max()
    )
    negative = eigenvalues[eigenvalues < 0].sum()
    assert exact["negative_sum"].values[-1] == pytest.approx(negative, rel=1e-8)

    small = curvature_config(
        dtype="float64", spectrum={"every": 4, "max_params": 10, "slq_starts": 20, "slq_steps": 60}
    )
    spectrum_along_trajectory(small, "r", 0, trajectories["mlp"], digits_store, slq_out)
    slq = xr.open_zarr(slq_out)
    assert slq.attrs["method"] == "slq" and "eigenvalues" not in slq
    assert slq["slq_weights"].dims == ("checkpoint", "start", "node")
    np.testing.assert_allclose(slq["slq_weights"].values.sum(-1), 1.0, rtol=1e-8)
    estimate, stderr = slq["negative_sum"].values[-1], slq["negative_sum_stderr"].values[-1]
    assert stderr > 0 and abs(estimate - negative) < 4 * stderr


def test_figure_from_the_stores(trajectories, digits_store, tmp_path):
    curvature = curvature_config(every=2, trace={"matvecs": 12}, spectrum={"every": 2})
    stores = {}
    for name, function in (
        ("trace", trace_along_trajectory),
        ("eigen", eigen_along_trajectory),
        ("spectrum", spectrum_along_trajectory),
    ):
        stores[name] = str(tmp_path / f"{name}.zarr")
        function(curvature, "r", 0, trajectories["mlp"], digits_store, stores[name])
    output = tmp_path / "fig" / "r_curvature.pdf"
    curvature_figure(
        traces=[stores["trace"]],
        eigens=[stores["eigen"]],
        spectra=[stores["spectrum"]],
        setting="r",
        output=str(output),
        figures={"dpi": 50, "band": "std"},
    )
    assert output.read_bytes()[:4] == b"%PDF"
    assert Path(output.with_suffix(".png")).read_bytes()[:4] == b"\x89PNG"


RESUMED_STAGES = {
    "trace": (trace_along_trajectory, {"every": 1, "trace": {"matvecs": 12}}),
    "eigen": (eigen_along_trajectory, {"every": 1, "eigen": {"k": 2}}),
    "exact spectrum": (spectrum_along_trajectory, {"spectrum": {"every": 1}}),
    "slq spectrum": (
        spectrum_along_trajectory,
        {"spectrum": {"every": 1, "max_params": 10, "slq_starts": 3, "slq_steps": 10}},
    ),
}


@pytest.mark.parametrize("stage", list(RESUMED_STAGES))
def test_interrupted_curvature_job_resumes_to_the_identical_store(
    stage, trajectories, digits_store, tmp_path, monkeypatch, capsys
):
    """Stopped after 2 of its 5 checkpoints, the job run again computes only the other 3 and
    writes exactly the store of an uninterrupted run; a partial store of other keys is
    discarded."""
    function, overrides = RESUMED_STAGES[stage]
    curvature = curvature_config(dtype="float64", **overrides)
    args = ("r", 0, trajectories["mlp"], digits_store)
    reference = tmp_path / "reference.zarr"
    function(curvature, *args, str(reference))
    output = tmp_path / "resumed.zarr"
    count_rows(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        function(curvature, *args, str(output))
    assert not output.exists()
    computed = count_rows(monkeypatch)
    function(curvature, *args, str(output))
    assert "resuming: 2 of 5 checkpoints from an earlier attempt" in capsys.readouterr().out
    assert len(computed) == 3 and not Path(f"{output}.checkpoints.partial").exists()
    assert_identical_stores(output, reference)

    # Interrupted with other keys (chunk size), then run with these: nothing is reused.
    count_rows(monkeypatch, stop_after=2)
    other = tmp_path / "other.zarr"
    with pytest.raises(KeyboardInterrupt):
        function({**curvature, "chunk_size": 100}, *args, str(other))
    computed = count_rows(monkeypatch)
    function(curvature, *args, str(other))
    assert "resuming" not in capsys.readouterr().out and len(computed) == 5
