"""W&S Fig 2a: the equilibrium sweep's stores hold what an independent computation gives, a
killed sweep resumes to the same store, and the fit and claim follow the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch.func import functional_call

from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, VERDICTS
from hessvalley.data import build_dataset_store, load_dataset
from hessvalley.equilibrium import equilibrium_sweep
from hessvalley.equilibrium_plan import cell_seed, gd_checkpoints, noise_scale, snapshot_steps
from hessvalley.errors import HessvalleyError
from hessvalley.figures.equilibrium import fig2a_figure
from hessvalley.figures.equilibrium_claims import (
    cell_means,
    effective_se,
    fig2a_claim,
    weighted_fit,
)
from hessvalley.flat import unflatten_into
from hessvalley.train import epoch_order, train_run, trainer_for
from hessvalley.trajectory_store import open_trajectory, read_state

from .conftest import make_config
from .stores import assert_identical_stores, count_rows

pytestmark = pytest.mark.usefixtures("one_thread")

DATASET = {"source": "digits", "n_train": 40, "n_val": 40}
# 64·6 + 6 + 6·10 + 10 = 460 parameters > N(K − 1) = 360: a valley floor at loss 0 exists
RUN = {
    "dataset": "d40",
    "model": {"name": "mlp", "widths": [6], "activation": "tanh"},
    "loss": {"name": "ce", "label_smoothing": 0.1},
    "optimizer": {"lr": 0.5, "batch_size": "full"},
    "epochs": 200,
    "checkpoint_every": 50,
}
SWEEP = {
    "batch_sizes": [5, 20],
    "lrs": [0.1, 0.5],
    "momentum": 0.0,
    "steps": 20,
    "snapshots": 2,
    "gd_points": 2,
    "max_params": 1000,
    "dtype": "float64",
    "seed": 3,
}
HESSIAN = {
    "n_samples": 10,  # the sweep overrides it: its Hessian is over the whole training set
    "subset_seed": 0,
    "batch_norm": "eval",
    "dtype": "float32",  # overridden by equilibrium.dtype
    "chunk_size": 2048,
    "probes_per_sweep": 32,
    "hvp_method": "auto",
}


@pytest.fixture(scope="module")
def gd_run(tmp_path_factory) -> dict[str, str]:
    """A 200-step GD run of a 460-parameter tanh MLP on 40 digits, and its sweep store."""
    directory = tmp_path_factory.mktemp("equilibrium")
    config = make_config({"r": RUN}, {"d40": DATASET})
    spec = config["runs"]["r"]
    spec.pop("seeds")
    paths = {name: str(directory / f"{name}.zarr") for name in ("data", "traj", "sweep")}
    build_dataset_store(config["datasets"]["d40"], "d40", paths["data"])
    train_run(spec, config["datasets"]["d40"], "r", 0, paths["data"], paths["traj"])
    equilibrium_sweep(SWEEP, HESSIAN, "r", 0, paths["traj"], paths["data"], paths["sweep"])
    return paths


def test_schedules():
    assert snapshot_steps(20, 2) == [15, 20]
    assert snapshot_steps(600, 3) == [400, 500, 600]
    with pytest.raises(HessvalleyError, match=r"equilibrium\.snapshots"):
        snapshot_steps(4, 3)
    assert gd_checkpoints(5, 2) == [2, 4]
    assert gd_checkpoints(11, 3) == [3, 7, 10]
    assert gd_checkpoints(3, 10) == [1, 2] and gd_checkpoints(5, 0) == []
    assert noise_scale(0.1, 5, 100) == pytest.approx(0.1 / 20 * 0.95)
    assert noise_scale(0.1, 100, 100) == 0.0
    assert cell_seed(0, 0, 1, 0) != cell_seed(0, 0, 0, 1) != cell_seed(1, 0, 0, 1)


def test_store_layout(gd_run):
    ds = xr.open_zarr(gd_run["sweep"])
    n = 2 + 4 * 2
    assert ds.sizes == {"point": n, "eigen": 460, "param": 460}
    assert ds["eigenvalues"].dims == ("point", "eigen")
    assert [str(s) for s in ds["source"].values] == ["gd"] * 2 + ["sgd"] * 8
    assert ds["step"].values.tolist() == [100, 200] + [15, 20] * 4
    assert ds["batch_size"].values.tolist() == [40, 40, 5, 5, 5, 5, 20, 20, 20, 20]
    assert (ds["C"].values[:2] == 0).all()  # GD: S = M, no noise
    assert ds["C"].values[2] == pytest.approx(0.1 / 20 * (1 - 5 / 40))
    assert not ds["diverged"].values.any()
    attrs = ds.attrs
    assert attrs["n_samples"] == 40 and attrs["hessian"]["dtype"] == "float64"
    assert attrs["hessian"]["n_samples"] is None
    assert attrs["valley"] == {
        "P": 460,
        "N": 40,
        "K": 10,
        "N_times_K_minus_1": 360,
        "overparameterised": True,
    }
    assert attrs["trajectory_config_hash"] == open_trajectory(gd_run["traj"]).attrs["config_hash"]


def _independent_hessian(gd_run: dict[str, str], params: np.ndarray) -> torch.Tensor:
    """torch.func.hessian of the float64 loss over the flat parameters: no HessianOperator."""
    trainer = trainer_for(gd_run["traj"], "cpu", load_dataset(gd_run["data"]))
    model = trainer.model.double()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    x, y = trainer.data.x_train.double(), trainer.data.y_train

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split([s.numel() for s in shapes])
        weights = {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes, strict=True)}
        return trainer.loss_fn(functional_call(model, weights, (x,)), y)

    return torch.func.hessian(loss)(torch.from_numpy(params).double())


def test_spectra_are_eigvalsh_of_an_independent_float64_hessian(gd_run):
    ds = xr.open_zarr(gd_run["sweep"])
    for index in (1, 5, 9):  # the GD minimum and two SGD snapshots
        hessian = _independent_hessian(gd_run, ds["params"].values[index])
        reference = torch.linalg.eigvalsh(hessian).numpy()
        stored = ds["eigenvalues"].values[index]
        np.testing.assert_allclose(stored, reference, rtol=0, atol=1e-10)
        tolerance = 460 * np.finfo(np.float64).eps * np.abs(reference).max()
        negative = reference[reference < -tolerance]
        assert negative.size > 0 and ds["n_negative"].values[index] == negative.size
        assert ds["negative_sum"].values[index] == pytest.approx(negative.sum(), abs=1e-10)
        assert ds["trace"].values[index] == pytest.approx(np.trace(hessian.numpy()), abs=1e-10)
        assert ds["lambda_min"].values[index] == stored[0]
        assert ds["lambda_max"].values[index] == stored[-1]


def test_sgd_cell_is_a_hand_rolled_sgd_loop_from_the_minimum(gd_run):
    """Cell (batch 20, lr 0.5): plain torch SGD from the GD run's last checkpoint, batches
    from epoch_order(cell seed, epoch), reaches the stored states bit for bit."""
    ds = xr.open_zarr(gd_run["sweep"])
    group = open_trajectory(gd_run["traj"])
    trainer = trainer_for(group, "cpu", load_dataset(gd_run["data"]))
    model, loss_fn = trainer.model, trainer.loss_fn
    x, y = trainer.data.x_train, trainer.data.y_train
    unflatten_into(read_state(group, -1).params, list(model.parameters()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    seed, size, per_epoch = cell_seed(3, 0, 1, 1), 20, 40 // 20
    rows = {15: 8, 20: 9}
    for step in range(20):
        epoch, position = divmod(step, per_epoch)
        batch = epoch_order(seed, epoch, 40)[position * size : (position + 1) * size]
        optimizer.zero_grad()
        loss_fn(model(x[batch]), y[batch]).backward()
        optimizer.step()
        if step + 1 in rows:
            row = rows[step + 1]
            assert ds["batch_size"].values[row] == 20 and ds["lr"].values[row] == 0.5
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            assert torch.equal(flat, torch.from_numpy(ds["params"].values[row]))
            with torch.no_grad():
                loss = loss_fn(model.eval()(x), y).item()
            model.train()
            assert ds["train_loss"].values[row] == pytest.approx(loss, rel=1e-6)


def test_killed_sweep_resumes_to_the_same_store(gd_run, tmp_path, monkeypatch, capsys):
    """Stopped inside the first cell: the resumed job replays that cell, checks the kept
    snapshot's state and measures only the rest."""
    output = tmp_path / "resumed.zarr"
    count_rows(monkeypatch, stop_after=3)
    args = (SWEEP, HESSIAN, "r", 0, gd_run["traj"], gd_run["data"])
    with pytest.raises(KeyboardInterrupt):
        equilibrium_sweep(*args, str(output))
    assert not output.exists()
    computed = count_rows(monkeypatch)
    equilibrium_sweep(*args, str(output))
    assert "resuming: 3 of 10 points from an earlier attempt" in capsys.readouterr().out
    assert len(computed) == 7 and not Path(f"{output}.points.partial").exists()
    assert_identical_stores(output, gd_run["sweep"])


def test_a_net_above_max_params_is_refused(gd_run, tmp_path):
    sweep = {**SWEEP, "max_params": 100}
    with pytest.raises(HessvalleyError, match=r"equilibrium\.max_params = 100"):
        equilibrium_sweep(
            sweep, HESSIAN, "r", 0, gd_run["traj"], gd_run["data"], str(tmp_path / "x.zarr")
        )


def test_a_diverging_cell_is_recorded_not_raised(gd_run, tmp_path):
    sweep = {**SWEEP, "batch_sizes": [5], "lrs": [1e38], "gd_points": 0}
    output = tmp_path / "diverged.zarr"
    equilibrium_sweep(sweep, HESSIAN, "r", 0, gd_run["traj"], gd_run["data"], str(output))
    ds = xr.open_zarr(output)
    assert ds["diverged"].values.all() and np.isnan(ds["negative_sum"].values).all()
    assert np.isnan(ds["eigenvalues"].values).all() and (ds["n_negative"].values == -1).all()
    cells = cell_means(_points(ds))
    assert cells.diverged.tolist() == [True]
    assert fig2a_claim(cells).verdict.verdict == UNTESTABLE


def test_momentum_and_bad_batch_sizes(gd_run, tmp_path):
    sweep = {**SWEEP, "batch_sizes": [10], "lrs": [0.2], "momentum": 0.5, "gd_points": 0}
    output = tmp_path / "momentum.zarr"
    equilibrium_sweep(sweep, HESSIAN, "r", 0, gd_run["traj"], gd_run["data"], str(output))
    ds = xr.open_zarr(output)
    assert ds["C"].values[0] == pytest.approx(0.2 / 0.5 / 40 * (1 - 10 / 40))
    assert np.isfinite(ds["negative_sum"].values).all()
    with pytest.raises(HessvalleyError, match=r"equilibrium\.batch_sizes: 41"):
        equilibrium_sweep(
            {**sweep, "batch_sizes": [41]},
            HESSIAN,
            "r",
            0,
            gd_run["traj"],
            gd_run["data"],
            str(tmp_path / "bad.zarr"),
        )


def _points(ds: xr.Dataset) -> dict[str, np.ndarray]:
    names = ("source", "batch_size", "lr", "C", "train_loss", "negative_sum", "trace", "diverged")
    out = {name: ds[name].values for name in names}
    return out | {"sweep": np.zeros(ds.sizes["point"], dtype=int)}


def test_weighted_fit_matches_numpy_polyfit():
    rng = np.random.default_rng(0)
    x = np.linspace(0.001, 0.01, 8)
    se = rng.uniform(0.5e-3, 2e-3, 8)
    se[3] = 0.0  # an exactly repeating cell: floored, not infinitely heavy
    y = -7.0 * x + 1e-4 + rng.normal(0, 1e-3, 8)
    fit = weighted_fit(x, y, se)
    used = effective_se(se)
    assert used[3] == pytest.approx(0.1 * np.median(se[se > 0])) and np.all(
        used[se > 0] == se[se > 0]
    )
    (slope, intercept), cov = np.polyfit(x, y, 1, w=1 / used, cov=True)
    assert fit.slope == pytest.approx(slope, rel=1e-9)
    assert fit.intercept == pytest.approx(intercept, rel=1e-9, abs=1e-15)
    assert fit.slope_se == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-9)
    assert fit.intercept_se == pytest.approx(np.sqrt(cov[1, 1]), rel=1e-9)
    w = 1 / used**2
    residual = y - (slope * x + intercept)
    mean = np.sum(w * y) / np.sum(w)
    assert fit.r2 == pytest.approx(1 - np.sum(w * residual**2) / np.sum(w * (y - mean) ** 2))
    # NaN points are left out; fewer than 3 give no fit
    assert weighted_fit(np.r_[x, np.nan], np.r_[y, 1.0], np.r_[se, 1.0]).slope == fit.slope
    assert np.isnan(weighted_fit(x[:2], y[:2], se[:2]).slope)
    # no standard errors at all (one snapshot per cell): an unweighted fit
    plain = weighted_fit(x, y, np.full(8, np.nan))
    assert plain.slope == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)


def _synthetic(slope: float, intercept: float, n_cells: int = 6, seed: int = 0) -> dict:
    """Cells of 3 snapshots each around y = slope·L + intercept, with scatter 2 % of y."""
    rng = np.random.default_rng(seed)
    loss = np.repeat(np.geomspace(0.002, 0.02, n_cells), 3) * rng.uniform(0.97, 1.03, 3 * n_cells)
    line = slope * loss + intercept
    return {
        "source": np.array(["sgd"] * 3 * n_cells),
        "sweep": np.zeros(3 * n_cells, dtype=int),
        "batch_size": np.repeat(np.arange(n_cells) + 1, 3),
        "lr": np.full(3 * n_cells, 0.1),
        "C": np.full(3 * n_cells, 0.01),
        "train_loss": loss,
        "negative_sum": line + rng.normal(0, 0.02 * np.abs(slope * 0.01), 3 * n_cells),
        "trace": np.full(3 * n_cells, 10.0),
        "diverged": np.zeros(3 * n_cells, dtype=bool),
    }


def test_claim_verdicts_follow_the_data():
    through_zero = fig2a_claim(cell_means(_synthetic(-7.0, 0.0)))
    assert through_zero.verdict.verdict == HOLDS
    assert all(part.verdict == HOLDS for part in through_zero.parts.values())
    numbers = {n.name: n for n in through_zero.numbers}
    assert numbers["slope w of Σλ<0 against L"].value == pytest.approx(-7.0, rel=0.05)
    assert numbers["log-log slope of |Σλ<0| against L"].value == pytest.approx(1.0, abs=0.05)

    offset = fig2a_claim(cell_means(_synthetic(-7.0, -0.02)))
    assert offset.verdict.verdict == FAILS
    assert offset.parts["the line passes through 0"].verdict == FAILS
    assert offset.parts["Σλ<0 falls linearly with L"].verdict == HOLDS

    rising = fig2a_claim(cell_means(_synthetic(+7.0, 0.0)))
    assert rising.verdict.verdict == FAILS
    assert rising.parts["Σλ<0 falls linearly with L"].verdict == FAILS

    few = fig2a_claim(cell_means(_synthetic(-7.0, 0.0, n_cells=2)))
    assert few.verdict.verdict == UNTESTABLE and not few.parts


def test_figure_renders_with_its_claim(gd_run, tmp_path):
    output = tmp_path / "figures" / "wei2020_fig2a.pdf"
    fig2a_figure([gd_run["sweep"], gd_run["sweep"]], str(output), {"dpi": 40, "band": "std"})
    assert output.exists() and output.with_suffix(".png").exists()
    claim = json.loads(output.with_suffix(".json").read_text())
    assert claim["id"] == "wei2020_fig2a" and claim["verdict"] in VERDICTS
    assert claim["source"] == "Wei & Schwab 2020, Fig 2a (A.3)"
    cells = {n["name"]: n["value"] for n in claim["numbers"]}
    assert cells["finite SGD cells"] == 8  # 4 cells from each of the two stores
