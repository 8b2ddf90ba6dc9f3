"""The FDR stage (W&S A.5, Yaida 2019): per-step terms against explicit SGD updates, the
criterion where the answer is known, the store, its resume, refusals, the figure and claim."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from torch.func import functional_call

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, read_claim
from hessvalley.curvature import lanczos_extremes
from hessvalley.data import load_dataset
from hessvalley.errors import HessvalleyError
from hessvalley.fdr import fdr_along_trajectory, sgd_constants, step_terms
from hessvalley.fdr_terms import fdr_criterion, half_running_criterion, late_windows
from hessvalley.figures.fdr import by_setting, fig6_claim, fig6_figure
from hessvalley.train import train_run, trainer_for
from hessvalley.trajectory_curvature import CheckpointHessians
from hessvalley.trajectory_store import open_trajectory, read_state

from .conftest import make_config, run_spec
from .stores import assert_identical_stores, count_rows
from .test_captions import render

pytestmark = pytest.mark.usefixtures("one_thread")
MLP = {"name": "mlp", "widths": [4], "activation": "tanh"}
OPTIMIZERS = {  # 256 digits, batch 32: 8 steps an epoch, a checkpoint per epoch
    "momentum": {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 1e-3},
    "plain": {"lr": 0.1, "momentum": 0.0, "dampening": 0.5, "weight_decay": 1e-3},
}
FDR = {
    "every": 1,
    "k": [1, 3],
    "blocks": 2,
    "threshold": 0.01,
    "lanczos": {"tol": 1e-4, "max_dim": None, "block_size": 1, "seed": 0},
}


@pytest.fixture(scope="module")
def hessian() -> dict:
    return make_config({})["curvature"]


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, digits_store, digits_spec) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("fdr_runs")
    paths = {}
    for name, optimizer in OPTIMIZERS.items():
        spec = run_spec(model=MLP, optimizer={**optimizer, "batch_size": 32}, epochs=3)
        paths[name] = str(directory / f"{name}.zarr")
        train_run(spec, digits_spec, "r", 0, digits_store, paths[name])
    return paths


@pytest.fixture(scope="module")
def fdr_stores(trajectories, digits_store, hessian, tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("fdr")
    outputs = {}
    for name, trajectory in trajectories.items():
        outputs[name] = str(directory / f"{name}.zarr")
        fdr_along_trajectory(FDR, hessian, "r", 0, trajectory, digits_store, outputs[name])
    return outputs


def top_vectors(trajectory: str, data: str, hessian: dict, checkpoint: int) -> torch.Tensor:
    """The window's eigenvectors, computed as the stage documents (same operator, seed)."""
    op = CheckpointHessians(trajectory, data, hessian, "cpu").operator(checkpoint)
    lanczos = FDR["lanczos"]
    pairs = lanczos_extremes(
        op, max(FDR["k"]), torch.Generator().manual_seed(lanczos["seed"]), which="largest",
        tol=lanczos["tol"], block_size=1, return_vectors=True,
    )  # fmt: skip
    return pairs.largest_vectors.double()


def explicit_sgd(trajectory: str, data: str, start: int, end: int, vectors: torch.Tensor):
    """θ·g̃ and |v|² per step by the update equations in float64, raw and projected on the
    first k columns of ``vectors`` for each k of FDR["k"]: (n, 1 + len(k)) each."""
    group = open_trajectory(trajectory)
    opt = group.attrs["run"]["optimizer"]
    lr, mu, nu, wd = (opt[key] for key in ("lr", "momentum", "dampening", "weight_decay"))
    trainer = trainer_for(group, "cpu", load_dataset(data, "cpu"))
    model = copy.deepcopy(trainer.model).double()
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    state = read_state(group, start)
    theta = state.params.double()
    velocity = None if state.momentum is None else state.momentum.double()
    steps = group["step"][...]
    lefts, rights = [], []
    for step in range(int(steps[start]), int(steps[end])):
        index = trainer.batch_indices(step)
        x, y = trainer.data.x_train[index].double(), trainer.data.y_train[index]
        point = theta.clone().requires_grad_(True)
        parts = [
            p.view(s) for p, s in zip(point.split([s.numel() for s in shapes]), shapes, strict=True)
        ]
        loss = trainer.loss_fn(
            functional_call(model, dict(zip(names, parts, strict=True)), (x,)), y
        )
        (grad,) = torch.autograd.grad(loss, point)
        grad = grad + wd * theta
        if mu == 0:
            velocity = grad
        elif velocity is None:
            velocity = grad.clone()  # torch's first step: the buffer is the gradient
        else:
            velocity = mu * velocity + (1 - nu) * grad
        new = theta - lr * velocity
        v = (theta - new) / lr  # the velocity by its definition
        left, right = [theta @ grad], [v @ v]
        for k in FDR["k"]:
            u = vectors[:, :k]
            left.append((u.T @ theta) @ (u.T @ grad))
            right.append((u.T @ v) @ (u.T @ v))
        lefts.append(torch.stack(left))
        rights.append(torch.stack(right))
        theta = new
    prefactor = lr * (1 + mu) / (2 * (1 - (nu if mu else 0.0)))
    return torch.stack(lefts).numpy(), prefactor * torch.stack(rights).numpy()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_terms_match_explicit_sgd_updates(name, trajectories, fdr_stores, digits_store, hessian):
    ds = xr.open_zarr(fdr_stores[name])
    assert ds["subspace"].values.tolist() == FDR["k"] and ds.sizes["window"] == 3
    assert ds.attrs["dampening"] == (0.3 if name == "momentum" else 0.0)
    for window in range(ds.sizes["window"]):
        start, end = int(ds["checkpoint"][window]), int(ds["end_checkpoint"][window])
        vectors = top_vectors(trajectories[name], digits_store, hessian, start)
        want_left, want_right = explicit_sgd(trajectories[name], digits_store, start, end, vectors)
        rows = ds["iteration_window"].values == window
        for got, want in (
            (np.column_stack([ds["o_left_series"][rows], ds["o_left_series_projected"][rows]]),
             want_left),
            (np.column_stack([ds["o_right_series"][rows], ds["o_right_series_projected"][rows]]),
             want_right),
        ):  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        mean = fdr_criterion([(want_left, want_right)], FDR["blocks"])
        assert ds["criterion"].values[window] == pytest.approx(mean.criterion[0], rel=1e-4)


def quadratic_sgd(stiffness: float, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Momentum SGD with dampening on L = stiffness Σ λ_i (θ_i − 1)² / 2 with Gaussian gradient
    noise, from θ = 1: per step θ·g and O_R. Stationary once θ has relaxed if stiffness > 0;
    free diffusion (never stationary, ⟨θ·g⟩ = 0 so the criterion is 1) if it is 0."""
    rng = np.random.default_rng(seed)
    curvature = stiffness * np.linspace(0.5, 5.0, 50)
    lr, mu, nu = 0.05, 0.9, 0.2
    theta, velocity = np.ones(50), np.zeros(50)
    left, square = np.empty(steps), np.empty(steps)
    for t in range(steps):
        grad = curvature * (theta - 1.0) + rng.standard_normal(50)
        velocity = mu * velocity + (1 - nu) * grad
        left[t] = theta @ grad
        theta = theta - lr * velocity
        square[t] = velocity @ velocity
    return left, lr * (1 + mu) / (2 * (1 - nu)) * square


def test_criterion_vanishes_at_stationarity_and_is_one_for_free_diffusion():
    left, right = quadratic_sgd(stiffness=1.0, steps=12000, seed=0)
    stationary = fdr_criterion([(left[2000:], right[2000:])], blocks=20)
    assert stationary.stderr < 0.01 and stationary.criterion < 3 * stationary.stderr
    left, right = quadratic_sgd(stiffness=0.0, steps=2000, seed=1)
    diffusing = fdr_criterion([(left, right)], blocks=10)
    assert abs(diffusing.criterion - 1) < 3 * diffusing.stderr and diffusing.stderr < 0.2


def test_batch_means_standard_error_and_half_running_average():
    rng = np.random.default_rng(3)
    left = rng.normal(2.0, 1.0, size=(12, 2))
    result = fdr_criterion([(left, np.ones_like(left))], blocks=4)
    means = left.reshape(4, 3, 2).mean(axis=1)
    np.testing.assert_allclose(result.stderr, means.std(axis=0, ddof=1) / 2)
    np.testing.assert_allclose(result.criterion, np.abs(left.mean(axis=0) - 1))
    pooled = fdr_criterion([(left[:5], np.ones((5, 2))), (left[5:], np.ones((7, 2)))], 1)
    np.testing.assert_allclose(pooled.ratio, left.mean(axis=0))
    assert pooled.n_blocks == 2
    assert np.isnan(fdr_criterion([(left, np.ones_like(left))], blocks=1).stderr).all()
    o_left, o_right = rng.normal(size=9), rng.uniform(1, 2, size=9)
    brute = [
        abs(o_left[t // 2 : t + 1].mean() / o_right[t // 2 : t + 1].mean() - 1) for t in range(9)
    ]
    np.testing.assert_allclose(half_running_criterion(o_left, o_right), brute)
    assert late_windows(10) == [6, 7, 8, 9] and late_windows(2) == [1] and late_windows(1) == [0]


def test_projection_on_every_direction_is_the_raw_space():
    generator = torch.Generator().manual_seed(0)
    theta, grad, velocity = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(7, 7, generator=generator, dtype=torch.float64))
    left, right = step_terms(theta, grad, velocity, basis)
    assert left[-1].item() == pytest.approx(left[0].item(), rel=1e-12)
    assert right[-1].item() == pytest.approx(right[0].item(), rel=1e-12)
    projector = basis[:, :3] @ basis[:, :3].T
    assert left[3].item() == pytest.approx(((projector @ theta) @ (projector @ grad)).item())
    assert right[3].item() == pytest.approx((projector @ velocity).norm().item() ** 2)


def test_nesterov_and_full_dampening_are_refused(tmp_path, digits_store, digits_spec, hessian):
    spec = run_spec(model=MLP, optimizer={"lr": 0.1, "momentum": 0.9, "nesterov": True,
                                          "batch_size": 32}, epochs=1)  # fmt: skip
    trajectory = str(tmp_path / "nesterov.zarr")
    train_run(spec, digits_spec, "nest", 0, digits_store, trajectory)
    with pytest.raises(HessvalleyError, match=r"runs\.nest\.optimizer\.nesterov"):
        fdr_along_trajectory(FDR, hessian, "nest", 0, trajectory, digits_store, str(tmp_path / "o"))
    with pytest.raises(HessvalleyError, match=r"runs\.x\.optimizer\.dampening = 1"):
        sgd_constants({"optimizer": {"lr": 0.1, "momentum": 0.5, "dampening": 1.0}}, "x")
    assert sgd_constants({"optimizer": {"lr": 0.1, "dampening": 0.5}}, "x").dampening == 0.0


def test_a_replay_that_differs_from_the_stored_checkpoint_stops(
    trajectories, digits_store, hessian, tmp_path
):
    changed = tmp_path / "changed.zarr"
    shutil.copytree(trajectories["momentum"], changed)
    params = zarr.open_group(changed, mode="r+")["params"]
    row = params[2]
    row[0] += 1e-3
    params[2] = row
    with pytest.raises(HessvalleyError, match=f"{changed}: the parameters after step 16 differ"):
        fdr_along_trajectory(FDR, hessian, "r", 0, str(changed), digits_store, str(tmp_path / "o"))


def test_store_layout_and_resume_to_the_identical_store(
    trajectories, fdr_stores, digits_store, hessian, tmp_path, monkeypatch
):
    ds = xr.open_zarr(fdr_stores["momentum"])
    assert ds["criterion_projected"].dims == ("window", "subspace")
    assert ds["o_left_series_projected"].dims == ("iteration", "subspace")
    assert ds["eigenvalue"].dims == ("window", "rank") and ds.sizes["rank"] == 3
    assert ds["iteration"].values.tolist() == list(range(24))
    assert ds["epoch"].values.tolist() == [0, 1, 2] and ds["end_step"].values.tolist() == [
        8,
        16,
        24,
    ]
    assert (ds["eigenvalue"].values[:, 0] >= ds["eigenvalue"].values[:, 1]).all()
    for key in ("lr", "momentum", "dampening", "weight_decay", "averaging", "hessian"):
        assert key in ds.attrs
    assert ds.attrs["prefactor"] == pytest.approx(0.1 * 1.9 / (2 * 0.7))
    output = tmp_path / "resumed.zarr"
    args = (FDR, hessian, "r", 0, trajectories["momentum"], digits_store)
    count_rows(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        fdr_along_trajectory(*args, str(output))
    assert not output.exists()
    computed = count_rows(monkeypatch)
    fdr_along_trajectory(*args, str(output))
    assert len(computed) == 1
    assert_identical_stores(output, fdr_stores["momentum"])


def synthetic(path: Path, setting: str, seed: int, top: float, raw: float, k=(1, 10)) -> str:
    """An FDR store with 6 windows of 20 steps, O_R = 1 and O_L = the given ratios + noise."""
    rng = np.random.default_rng(seed)
    n = 120
    ratios = np.array([raw, top, *(top * 2 for _ in k[1:])])
    left = ratios + 1e-4 * rng.standard_normal((n, len(ratios)))
    window = np.repeat(np.arange(6), 20)
    crit = np.stack([np.abs(left[window == w].mean(0) - 1) for w in range(6)])
    arrays = {
        "subspace": (("subspace",), np.asarray(k)),
        "epoch": (("window",), np.arange(6.0)),
        "end_epoch": (("window",), np.arange(1.0, 7.0)),
        "criterion": (("window",), crit[:, 0]),
        "criterion_stderr": (("window",), np.full(6, 1e-3)),
        "criterion_projected": (("window", "subspace"), crit[:, 1:]),
        "criterion_projected_stderr": (("window", "subspace"), np.full((6, len(k)), 1e-3)),
        "iteration_window": (("iteration",), window),
        "iteration_epoch": (("iteration",), np.arange(1, n + 1) / 20),
        "criterion_half_running": (("iteration",), half_running_criterion(left[:, 0], np.ones(n))),
        "o_left_series": (("iteration",), left[:, 0]),
        "o_right_series": (("iteration",), np.ones(n)),
        "o_left_series_projected": (("iteration", "subspace"), left[:, 1:]),
        "o_right_series_projected": (("iteration", "subspace"), np.ones((n, len(k)))),
    }
    attrs = {"setting": setting, "seed": seed, "blocks": 4, "config": {"every": 1}}
    store.write_store(path, arrays, attrs)
    return str(path)


def test_claim_verdicts_from_synthetic_stores(tmp_path):
    def claim(*stores):
        return fig6_claim(
            by_setting([synthetic(tmp_path / f"{i}.zarr", *s) for i, s in enumerate(stores)]), 0.01
        )

    assert claim(("a", 0, 1.001, 3.0), ("a", 1, 0.999, 3.0)).verdict.verdict == HOLDS
    failing = claim(("a", 0, 1.05, 3.0), ("b", 0, 1.001, 1.005))
    assert failing.verdict.verdict == FAILS
    assert failing.parts["a: top-1 criterion below 0.01"].verdict == FAILS
    assert failing.parts["a: raw criterion >= 10x top-1"].verdict == HOLDS
    assert failing.parts["b: raw criterion >= 10x top-1"].verdict == FAILS
    assert claim(("a", 0, 1.001, 3.0, (2, 10))).verdict.verdict == UNTESTABLE


def test_figure_and_caption(fdr_stores, tmp_path):
    output = tmp_path / "figures" / "wei2020_fig6.pdf"
    fig6_figure(list(fdr_stores.values()), str(output), {"dpi": 40, "band": "std"}, 0.01)
    assert output.read_bytes()[:4] == b"%PDF"
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    claim = read_claim(output.with_suffix(".json"))
    assert claim.id == "wei2020_fig6" and len(claim.numbers) == 3
    assert json.loads(output.with_suffix(".json").read_text())["source"].startswith("Wei")
    run = {"dataset": "digits", "model": MLP, "optimizer": {"lr": 0.1, "batch_size": 8}}
    config = make_config({"c": {**run, "epochs": 1}})
    config["fdr"] = {**config.get("fdr", {}), **FDR, "runs": ["c"], "seeds": None}
    config["fdr"].update(every=7, threshold=0.0123)
    text = render("wei2020_fig6", config)
    assert "from every 7-th checkpoint" in text and "threshold 0.0123" in text
    assert "``c`` (lr 0.1, momentum 0.0, dampening 0.0)." in text
