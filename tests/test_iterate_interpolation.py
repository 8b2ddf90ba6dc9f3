"""The loss between consecutive iterates (``iterate_interpolation``) against a hand loop on a
tiny net: exact replays (the stored iterates, bit for bit), the profiles, η a, BatchNorm in
both modes; the two figures render and state their claims; the ``barriers`` config checks."""

from __future__ import annotations

import copy
import csv
import json
import shutil

import numpy as np
import pytest
import torch
import zarr

from hessvalley import barriers_config, store
from hessvalley.claims import VERDICTS
from hessvalley.config import ConfigError, validate_config
from hessvalley.data import load_dataset
from hessvalley.errors import HessvalleyError
from hessvalley.evaluation import loss_and_accuracy
from hessvalley.figures.barrier_table import table1_figure
from hessvalley.figures.barriers import fig1_figure
from hessvalley.flat import flatten, unflatten_into
from hessvalley.iterate_interpolation import iterate_interpolation
from hessvalley.projection.interpolation import without_running_statistics
from hessvalley.train import train_run, trainer_for
from hessvalley.trajectory_store import open_trajectory, read_state

from .conftest import make_config, run_spec

pytestmark = pytest.mark.usefixtures("one_thread")
MLP = {"name": "mlp", "widths": [6], "activation": "tanh"}
BN_CNN = {"name": "vgg11", "batch_norm": True, "width": 4}
PLAIN = {"lr": 0.5, "batch_size": 32}  # 256 digits: 8 steps an epoch
STAGE = {
    "points": 4,
    "batch_norm": "eval",
    "chunk_size": None,
    "points_per_call": 7,
    "alignment_every": 3,
}


@pytest.fixture(scope="module")
def hessian() -> dict:
    return make_config({})["curvature"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_store, digits_spec) -> dict[str, str]:
    """A plain-SGD MLP (a checkpoint per epoch), the same every 3 steps, a BatchNorm net."""
    directory = tmp_path_factory.mktemp("xing_runs")
    plans = {
        "mlp": run_spec(model=MLP, loss={"name": "ce"}, optimizer=PLAIN, epochs=3),
        "odd": run_spec(
            model=MLP, loss={"name": "ce"}, optimizer=PLAIN, epochs=3, checkpoint_every=3
        ),
        "bn": run_spec(model=BN_CNN, loss={"name": "ce"}, optimizer=PLAIN, epochs=1),
    }
    paths = {}
    for name, spec in plans.items():
        paths[name] = str(directory / f"{name}.zarr")
        train_run(spec, digits_spec, name, 0, digits_store, paths[name])
    return paths


def interpolate(runs, name, data, tmp_path, hessian, epochs, **keys) -> dict:
    output = str(tmp_path / f"{name}_{'-'.join(map(str, epochs))}.zarr")
    stage = {**STAGE, **keys}
    iterate_interpolation(stage, hessian, name, 0, epochs, runs[name], data, output)
    return {**store.read_arrays(output), "attrs": dict(store.open_store(output).attrs)}


@pytest.fixture(scope="module")
def mlp_out(runs, digits_store, hessian, tmp_path_factory) -> dict:
    return interpolate(runs, "mlp", digits_store, tmp_path_factory.mktemp("o"), hessian, [1, 3])


def hand_epoch(path: str, data, epoch: int, points: int, bn: str = "eval", chunk: int = 2048):
    """Replay ``epoch`` by hand from the checkpoint before it; per step the training loss at
    α = k / points (float64 interpolation rounded once), the batch gradient and the states."""
    group = open_trajectory(path)
    trainer = trainer_for(group, "cpu", data)
    first = (epoch - 1) * trainer.steps_per_epoch
    steps = np.asarray(group["step"][...])
    k = int(np.searchsorted(steps, first, side="right")) - 1
    trainer.load_state(read_state(group, k))
    for step in range(int(steps[k]), first):
        trainer.train_step(step)
    model = copy.deepcopy(trainer.model).eval()
    if bn == "train":
        without_running_statistics(model)
    profiles, gradients, states = [], [], []
    for step in range(first, first + trainer.steps_per_epoch):
        before = (flatten(trainer.params, torch.float32), flatten(trainer.buffers, torch.float64))
        trainer.gradient(step)
        gradients.append(trainer.flat_grad().clone())
        trainer.optimizer.step()
        after = (flatten(trainer.params, torch.float32), flatten(trainer.buffers, torch.float64))
        states.append(before)
        row = []
        for a in np.arange(points + 1) / points:
            params = ((1 - a) * before[0].double() + a * after[0].double()).float()
            unflatten_into(params, model.parameters())
            if bn == "eval":
                unflatten_into((1 - a) * before[1] + a * after[1], model.buffers())
            row.append(
                loss_and_accuracy(model, trainer.loss_fn, data.x_train, data.y_train, chunk)[0]
            )
        profiles.append(row)
    states.append(after)
    return np.array(profiles), gradients, states, trainer


def test_profiles_match_a_hand_loop(mlp_out, runs, digits_store):
    data = load_dataset(digits_store)
    assert mlp_out["epochs"].tolist() == [1, 3]
    for epoch in (1, 3):
        profiles, _, states, _ = hand_epoch(runs["mlp"], data, epoch, STAGE["points"])
        rows = mlp_out["epoch"] == epoch
        np.testing.assert_allclose(mlp_out["profile"][rows], profiles, rtol=1e-5, atol=1e-7)
        first = (epoch - 1) * 8
        assert mlp_out["iteration"][rows].tolist() == list(range(first, first + 8))
        # the last iterate replayed by hand is the stored checkpoint, bit for bit
        stored = np.asarray(open_trajectory(runs["mlp"])["params"][epoch])
        assert np.array_equal(states[-1][0].numpy(), stored)
    assert mlp_out["attrs"]["checkpoints_checked"] == 2  # the ends of epochs 1 and 3
    profile = mlp_out["profile"]
    inside = profile[:, 1:-1]
    interior = inside.min(1) < np.minimum(profile[:, 0], profile[:, -1])
    assert mlp_out["interior_min"].tolist() == interior.tolist()
    assert mlp_out["epoch_barriers"].tolist() == [
        int(np.sum(mlp_out["barrier"][mlp_out["epoch"] == e])) for e in (1, 3)
    ]


def test_step_alignment_is_eta_gHg_over_gg_of_the_steps_own_batch(mlp_out, runs, digits_store):
    data = load_dataset(digits_store)
    _, gradients, states, trainer = hand_epoch(runs["mlp"], data, 1, STAGE["points"])
    module = copy.deepcopy(trainer.model)
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    x, y = data.x_train.double(), data.y_train
    module.double()

    def loss(theta):
        parts = dict(
            zip(
                names,
                (
                    t.view(s)
                    for t, s in zip(theta.split([s.numel() for s in shapes]), shapes, strict=True)
                ),
                strict=True,
            )
        )
        return trainer.loss_fn(torch.func.functional_call(module, parts, (x,)), y)

    measured = np.flatnonzero(np.isfinite(mlp_out["alignment"][:8]))
    assert measured.tolist() == [0, 3, 6]  # alignment_every 3
    for i in measured:
        theta = states[i][0].double()
        g = gradients[i].double()
        full, hg = torch.func.jvp(torch.func.grad(loss), (theta,), (g,))  # float64 H g
        a = float(g @ hg / (g @ g))
        assert mlp_out["alignment"][i] == pytest.approx(a, rel=1e-4)
        assert mlp_out["lr_alignment"][i] == pytest.approx(0.5 * a, rel=1e-4)
        assert mlp_out["descent_ratio"][i] == pytest.approx(float(full @ g / (g @ g)), rel=1e-4)


def test_one_point_per_call_and_an_odd_checkpoint_grid(
    runs, digits_store, hessian, tmp_path, mlp_out
):
    """Replays from a checkpoint before the epoch, past checkpoints inside it; the vmapped
    points agree with one point per call to float32 round-off."""
    odd = interpolate(
        runs, "odd", digits_store, tmp_path, hessian, [3], points_per_call=1, alignment_every=None
    )
    assert odd["attrs"]["checkpoints_checked"] == 3  # steps 18 (before), 21, 24
    rows = mlp_out["epoch"] == 3
    np.testing.assert_allclose(odd["profile"], mlp_out["profile"][rows], rtol=1e-5)
    assert np.all(np.isnan(odd["alignment"]))


def test_a_store_that_differs_from_the_replay_stops_the_job(runs, digits_store, hessian, tmp_path):
    copied = tmp_path / "mlp.zarr"
    shutil.copytree(runs["mlp"], copied)
    params = zarr.open_group(copied, mode="r+")["params"]
    params[2] = params[2] + np.float32(1e-3)
    with pytest.raises(HessvalleyError, match="params after step 16 differ from its checkpoint 2"):
        iterate_interpolation(
            STAGE, hessian, "mlp", 0, [2], str(copied), digits_store, str(tmp_path / "o.zarr")
        )
    with pytest.raises(HessvalleyError, match="not run 'odd' seed 0"):
        iterate_interpolation(
            STAGE, hessian, "odd", 0, [1], runs["mlp"], digits_store, str(tmp_path / "p.zarr")
        )
    with pytest.raises(HessvalleyError, match="does not reach step 32"):
        iterate_interpolation(
            STAGE, hessian, "mlp", 0, [4], runs["mlp"], digits_store, str(tmp_path / "q.zarr")
        )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batch_norm_modes(mode, runs, digits_store, hessian, tmp_path):
    out = interpolate(
        runs,
        "bn",
        digits_store,
        tmp_path,
        hessian,
        [1],
        batch_norm=mode,
        chunk_size=100,
        alignment_every=None,
    )
    assert out["attrs"]["has_batch_norm"] and out["attrs"]["batch_norm"] == mode
    profiles, *_ = hand_epoch(runs["bn"], load_dataset(digits_store), 1, STAGE["points"], mode, 100)
    np.testing.assert_allclose(out["profile"], profiles, rtol=2e-5)


BARRIERS = {
    "runs": ["mlp", "odd"],
    "seed": 0,
    "table_epochs": [1, 3, 9],
    "panel_epochs": [1, 3],
    "iterations": 5,
    "every_epoch_to": 3,
    "max_barrier_fraction": 0.1,
    "min_interior_fraction": 0.5,
    "early_epochs": 1,
}


def test_the_figures_render_and_state_their_claims(runs, mlp_out, digits_store, hessian, tmp_path):
    stores = [
        str(tmp_path / "mlp_1-3.zarr"),
        str(tmp_path / "mlp_2.zarr"),
        str(tmp_path / "odd_1-3.zarr"),
    ]
    for path, (name, epochs) in zip(
        stores, [("mlp", [1, 3]), ("mlp", [2]), ("odd", [1, 3])], strict=True
    ):
        iterate_interpolation(STAGE, hessian, name, 0, epochs, runs[name], digits_store, path)
    figures = {"dpi": 40}
    fig1_figure(stores[:2], str(tmp_path / "fig1.pdf"), figures, BARRIERS)
    table1_figure(
        stores, str(tmp_path / "table.pdf"), str(tmp_path / "table.csv"), figures, BARRIERS
    )
    for name in ("fig1", "table"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        claim = json.loads((tmp_path / f"{name}.json").read_text())
        assert claim["verdict"] in VERDICTS and claim["numbers"]
    with open(tmp_path / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["run"], r["epoch"]) for r in rows] == [
        (r, e) for r in ("mlp", "odd") for e in ("1", "3", "9")
    ]
    assert rows[2]["steps"] == "-" and rows[0]["steps"] == "8"
    barriers = sum(int(r["barriers"]) for r in rows if r["barriers"] != "-")
    assert barriers == int(np.sum(mlp_out["barrier"])) * 2  # the two runs are the same run
    table = json.loads((tmp_path / "table.json").read_text())
    assert set(table["parts"]) == {f"{r} epoch {e}" for r in ("mlp", "odd") for e in (1, 3)}


def barriers_config_of(**barriers) -> dict:
    run = {"dataset": "digits", "model": MLP, "optimizer": PLAIN, "epochs": 4, "seeds": [0]}
    return {
        "datasets": {"digits": {"source": "digits", "n_train": 256, "n_val": 128}},
        "runs": {"a": run, "b": {**run, "epochs": 2}},
        "barriers": {
            "runs": ["a", "b"],
            "table_epochs": [1, 3],
            "panel_epochs": [1, 4],
            "every_epoch_to": 2,
            **barriers,
        },
    }


def test_epochs_and_jobs_follow_the_config():
    config = validate_config(barriers_config_of(early_epochs=3))
    assert barriers_config.run_epochs(config, "a") == [1, 2, 3, 4]
    assert barriers_config.run_epochs(config, "b") == [1]  # epoch 3 is beyond its 2
    assert barriers_config.interpolation_jobs(config) == [
        ("a", "epochs_1-4", [1, 2, 3, 4]),
        ("b", "epoch_1", [1]),
    ]
    config["barriers"]["epochs_per_job"] = 3
    assert barriers_config.epoch_groups(config, "a") == {"epochs_1-3": [1, 2, 3], "epoch_4": [4]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runs": ["a", "nope"]}, "barriers.runs: unknown run 'nope'"),
        ({"seed": 3}, "barriers.seed: 3 is not a seed of run 'a'"),
        (
            {"panel_epochs": [1, 5]},
            "barriers.panel_epochs: epoch(s) 5 beyond the 4 epochs of run 'a'",
        ),
        ({"every_epoch_to": 6}, "barriers.every_epoch_to: epoch(s) 6 beyond the 4 epochs"),
        (
            {"table_epochs": [3]},
            "barriers.table_epochs: run 'b' has 2 epochs, fewer than any of [3]",
        ),
        ({"batch_norm": "running"}, "barriers.batch_norm: 'running' is not one of"),
        ({"points": 1}, "barriers.points: 1 is less than the minimum of 2"),
    ],
)
def test_config_errors_name_the_key(change, message):
    with pytest.raises(ConfigError) as err:
        validate_config(barriers_config_of(**change))
    assert message in str(err.value)
