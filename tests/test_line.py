"""The line stage: the loss along (1 − α) θ_from + α θ_to against hand computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hessvalley import store
from hessvalley.data import load_dataset
from hessvalley.errors import HessvalleyError
from hessvalley.line import alpha_grid, barrier_summary, line_between_states
from hessvalley.train import train_run, trainer_for
from hessvalley.trajectory_store import open_trajectory, read_state

from .conftest import run_spec

pytestmark = pytest.mark.usefixtures("one_thread")
MLP = {"name": "mlp", "widths": [6], "activation": "tanh"}
BN_CNN = {"name": "vgg11", "batch_norm": True, "width": 4}
CE = {"name": "ce"}


def line_spec(start: str, end: str, **overrides) -> dict:
    line = {
        "from": {"run": start, "seed": 0, "checkpoint": -1},
        "to": {"run": end, "seed": 0, "checkpoint": -1},
        "alpha": {"start": -0.5, "stop": 1.5, "points": 9},
        "batch_norm": "eval",
    }
    return {**line, **overrides}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_store, digits_spec) -> dict[str, str]:
    """An MLP run, its continuation with a small batch, an MLP of another width, a BN net."""
    directory = tmp_path_factory.mktemp("line")
    plans = {
        "lb": (run_spec(model=MLP, loss=CE, epochs=1), None),
        "sb": (
            run_spec(model=MLP, loss=CE, epochs=1, optimizer={"lr": 0.1, "batch_size": 16}),
            "lb",
        ),
        "other": (run_spec(model={**MLP, "widths": [5]}, loss=CE, epochs=1), None),
        "bn": (run_spec(model=BN_CNN, loss=CE, epochs=1), None),
    }
    paths = {}
    for name, (spec, parent) in plans.items():
        paths[name] = str(directory / f"{name}.zarr")
        init = None if parent is None else paths[parent]
        train_run(spec, digits_spec, name, 0, digits_store, paths[name], init=init)
    return paths


def run_line(runs, tmp_path, digits_store, line: dict, name: str = "l") -> dict:
    output = str(tmp_path / f"{name}.zarr")
    start, end = runs[line["from"]["run"]], runs[line["to"]["run"]]
    line_between_states(line, name, start, end, digits_store, output)
    return {**store.read_arrays(output), "attrs": dict(store.open_store(output).attrs)}


def hand_mlp_loss(flat: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """The 64-6-10 tanh MLP written out: weights sliced from the flat vector by hand."""
    theta = torch.from_numpy(flat)
    w1, b1 = theta[:384].reshape(6, 64), theta[384:390]
    w2, b2 = theta[390:450].reshape(10, 6), theta[450:460]
    logits = torch.tanh(x.flatten(1) @ w1.T + b1) @ w2.T + b2
    loss = F.cross_entropy(logits, y).item()
    return loss, (logits.argmax(1) == y).double().mean().item()


def test_line_matches_a_hand_computation(runs, tmp_path, digits_store):
    out = run_line(runs, tmp_path, digits_store, line_spec("lb", "sb"))
    first = read_state(open_trajectory(runs["lb"]), -1).params.numpy().astype(np.float64)
    second = read_state(open_trajectory(runs["sb"]), -1).params.numpy().astype(np.float64)
    data = load_dataset(digits_store)
    assert first.size == 460
    for i, a in enumerate(out["alpha"]):
        flat = ((1 - a) * first + a * second).astype(np.float32)
        loss, acc = hand_mlp_loss(flat, data.x_train, data.y_train)
        val_loss, val_acc = hand_mlp_loss(flat, data.x_val, data.y_val)
        assert out["train_loss"][i] == pytest.approx(loss, rel=1e-6, abs=1e-7)
        assert out["val_loss"][i] == pytest.approx(val_loss, rel=1e-6, abs=1e-7)
        assert out["train_acc"][i] == acc and out["val_acc"][i] == val_acc


def test_end_points_reproduce_the_stored_losses(runs, tmp_path, digits_store):
    line = line_spec("lb", "sb", alpha={"start": -0.3, "stop": 1.2, "points": 6})
    out = run_line(runs, tmp_path, digits_store, line)
    assert out["alpha"][0] == -0.3 and out["alpha"][-1] == pytest.approx(1.2)
    assert 0.0 in out["alpha"] and 1.0 in out["alpha"]  # added though not on the grid
    ends = out["attrs"]["ends"]
    for a, end, path in ((0.0, "from", runs["lb"]), (1.0, "to", runs["sb"])):
        group = open_trajectory(path)
        k = int(group.attrs["n_checkpoints"]) - 1
        assert ends[end]["checkpoint"] == k and ends[end]["step"] == int(group["step"][k])
        assert ends[end]["config_hash"] == group.attrs["config_hash"]
        for metric in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert out[metric][out["alpha"] == a][0] == float(group[metric][k]), metric
    computed = barrier_summary(out["alpha"], out["train_loss"])
    assert {key: out["attrs"]["summary"][key] for key in computed} == computed
    assert out["attrs"]["batch_norm"] == "eval" and not out["attrs"]["has_batch_norm"]


def test_barrier_on_a_constructed_case():
    alpha = np.array([-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    loss = np.array([3.0, 1.0, 1.5, 2.5, 1.2, 0.5, 0.9])
    summary = barrier_summary(alpha, loss)
    assert summary["barrier"] == pytest.approx(1.5) and summary["barrier_alpha"] == 0.5
    assert summary["end_losses"] == [1.0, 0.5]
    assert summary["rise_before"] == pytest.approx(2.0) and summary["rises_before"]
    assert summary["rise_beyond"] == pytest.approx(0.4) and summary["rises_beyond"]
    convex = barrier_summary(alpha, (alpha - 0.6) ** 2)
    assert convex["barrier"] == pytest.approx(0.35**2 - 0.6**2)  # α = 0.25 vs α = 0: below
    inner = barrier_summary(alpha[1:-1], loss[1:-1])  # no point beyond either end
    assert inner["rise_before"] is None and inner["rises_beyond"] is None
    diverged = barrier_summary(alpha, np.where(alpha == 0.5, np.inf, loss))
    assert diverged["barrier"] is None


def test_alpha_grid_puts_the_ends_in_exactly():
    grid = alpha_grid({"start": -0.5, "stop": 1.5, "points": 41}, "lines.x")
    assert len(grid) == 41 and grid[10] == 0.0 and grid[30] == 1.0
    with pytest.raises(HessvalleyError, match=r"lines\.x\.alpha"):
        alpha_grid({"start": 0.2, "stop": 1.5, "points": 5}, "lines.x")
    with pytest.raises(HessvalleyError, match=r"lines\.x\.alpha: no point strictly between"):
        alpha_grid({"start": -1.0, "stop": 2.0, "points": 2}, "lines.x")


def test_refuses_mismatched_runs_naming_the_entry(runs, tmp_path, digits_store):
    with pytest.raises(HessvalleyError, match=r"lines\.bad: runs 'lb' and 'other' differ in model"):
        run_line(runs, tmp_path, digits_store, line_spec("lb", "other"), name="bad")
    wrong = line_spec("lb", "sb")
    wrong["to"]["seed"] = 3
    with pytest.raises(HessvalleyError, match=r"lines\.seed3\.to: trajectory .* seed 0"):
        run_line(runs, tmp_path, digits_store, wrong, name="seed3")
    far = line_spec("lb", "sb")
    far["from"]["checkpoint"] = 99
    with pytest.raises(HessvalleyError, match=r"lines\.far\.from\.checkpoint: 99 is out of range"):
        run_line(runs, tmp_path, digits_store, far, name="far")


def bn_hand_loss(runs, digits_store, a: float, train_mode: bool, chunk: int) -> float:
    """The BN net's training loss at α along checkpoint 0 -> last, by the Trainer's model:
    eval mode with interpolated running statistics, or train mode over chunks in order."""
    group = open_trajectory(runs["bn"])
    data = load_dataset(digits_store)
    model = copy.deepcopy(trainer_for(group, "cpu", data).model)
    first, second = read_state(group, 0), read_state(group, -1)
    with torch.no_grad():
        flat = ((1 - a) * first.params.double() + a * second.params.double()).float()
        buffers = (1 - a) * first.buffers + a * second.buffers
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
        for tensor, value in zip(
            model.buffers(), buffers.split([b.numel() for b in model.buffers()]), strict=True
        ):
            tensor.copy_(value.reshape(tensor.shape).to(tensor.dtype))
        model.train(train_mode)
        total = 0.0
        for start in range(0, len(data.y_train), chunk):
            x, y = data.x_train[start : start + chunk], data.y_train[start : start + chunk]
            total += F.cross_entropy(model(x), y).double().item() * len(y)
    return total / len(data.y_train)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batch_norm_modes(mode, runs, tmp_path, digits_store):
    line = line_spec("bn", "bn", batch_norm=mode, chunk_size=100)
    line["from"]["checkpoint"] = 0
    line["alpha"] = {"start": 0.0, "stop": 1.0, "points": 3}
    out = run_line(runs, tmp_path, digits_store, line, name=f"bn_{mode}")
    assert out["attrs"]["has_batch_norm"] and out["attrs"]["batch_norm"] == mode
    for i, a in enumerate(out["alpha"]):
        expected = bn_hand_loss(runs, digits_store, float(a), mode == "train", 100)
        assert out["train_loss"][i] == pytest.approx(expected, rel=1e-5), a
    group = open_trajectory(runs["bn"])
    stored = float(group["train_loss"][group.attrs["n_checkpoints"] - 1])
    if mode == "eval":  # the stored loss, summed over other chunks
        assert out["train_loss"][-1] == pytest.approx(stored, rel=1e-6)
    else:  # batch statistics of chunks of 100: another function than the eval-mode loss
        assert abs(out["train_loss"][-1] - stored) > 1e-4


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_points_per_call_vmaps_the_same_line(mode, runs, tmp_path, digits_store):
    """Several points per call (the point evaluator shared with the interpolation between
    iterates) give the one-point line to float32 round-off, BatchNorm in either mode."""
    line = line_spec("bn", "bn", batch_norm=mode, chunk_size=100)
    line["from"]["checkpoint"] = 0
    one = run_line(runs, tmp_path, digits_store, line, name=f"one_{mode}")
    many = run_line(runs, tmp_path, digits_store, {**line, "points_per_call": 4}, f"many_{mode}")
    assert many["attrs"]["points_per_call"] == 4 and one["attrs"]["points_per_call"] == 1
    for metric in ("train_loss", "val_loss", "train_acc", "val_acc"):
        np.testing.assert_allclose(many[metric], one[metric], rtol=1e-5, err_msg=metric)
