"""Projected paths: GD projection, batched interpolation, exact bisection replays, a constructed
barrier, the gathered path, the trace along it, and the config-derived segment plan."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
import zarr

from hessvalley import store
from hessvalley.claims import UNTESTABLE, read_claim
from hessvalley.config import ConfigError, validate_config
from hessvalley.curvature import HessianOperator, exact_hessian, hutchpp_trace
from hessvalley.curvature.trace import trace_budget
from hessvalley.data import load_dataset
from hessvalley.flat import Layout, unflatten_into
from hessvalley.hessian_keys import hessian_keys
from hessvalley.models import build_model
from hessvalley.projection.bisection import PathProjector
from hessvalley.projection.cache import ProjectionCache
from hessvalley.projection.claims import connection_verdict, connections
from hessvalley.projection.gather import gather_path
from hessvalley.projection.gd import Projection, gd_trainer, project
from hessvalley.projection.interpolation import PointLosses, interpolation_alphas, line_points
from hessvalley.projection.outcomes import BARRIER, CONNECTED, CONVERGED, STEP_CAP
from hessvalley.projection.plan import n_segments, problems, projection_grid, segment_grid
from hessvalley.projection.replay import SGDStates, bisection_midpoints
from hessvalley.projection.segment import project_segment
from hessvalley.projection.trace import path_trace
from hessvalley.schedule import checkpoint_steps, run_checkpoint_steps
from hessvalley.stats import slope_fit
from hessvalley.train import train_run, trainer_for
from hessvalley.trajectory_curvature import trace_along_trajectory
from hessvalley.trajectory_store import METRICS, TrainState, read_state

from .conftest import REPO, make_config, run_spec
from .snakemake_runner import planned_jobs, snakemake
from .stores import assert_identical_stores, count_rows

pytestmark = pytest.mark.usefixtures("one_thread")
MLP = {"name": "mlp", "widths": [8], "activation": "tanh"}
BN_MODEL = {"name": "vgg11", "batch_norm": True, "width": 8}
HESSIAN = hessian_keys(make_config({})["curvature"])  # the defaults of the curvature keys


def train(directory: Path, name: str, spec: dict, digits_spec: dict, data: str, **kw) -> str:
    output = str(directory / f"{name}.zarr")
    train_run(spec, digits_spec, "r", 0, data, output, **kw)
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_store, digits_spec) -> dict[str, str]:
    """A parent trained towards a minimum, then two 16-step SGD continuations of it that
    differ only in checkpointing: every 16 steps (coarse) and every step (fine)."""
    directory = tmp_path_factory.mktemp("projection")
    parent = train(
        directory,
        "parent",
        run_spec(model=MLP, epochs=6, optimizer={"lr": 0.2, "momentum": 0.9, "batch_size": 32}),
        digits_spec,
        digits_store,
    )
    paths = {"parent": parent}
    for name, every in (("coarse", 16), ("fine", 1)):
        spec = run_spec(model=MLP, epochs=2, checkpoint_every=every)
        paths[name] = train(directory, name, spec, digits_spec, digits_store, init=parent)
    return paths


@pytest.fixture(scope="module")
def data(digits_store):
    return load_dataset(digits_store, "cpu")


def settings(**overrides) -> dict:
    base = {
        "loss_threshold": 1.0,
        "n_points": 10,
        "max_gd_steps": 300,
        "max_depth": None,
        "checkpoint_stride": 1,
        "intervals_per_segment": 1,
        "reset_momentum": True,
        "max_loss_rise": 10,
        "store_params": "all",
        "interpolation_batch": 4,
        "replay_cache_mb": 64,
    }
    return {**base, **overrides}


def generous_threshold(fine: str) -> float:
    """Above every training loss of the fine trajectory: projections take no step and the
    lines between nearby SGD states stay below it."""
    return 1.5 * float(np.max(store.read_arrays(fine, ["train_loss"])["train_loss"]))


def test_projection_is_gd_to_the_first_step_below_threshold(runs, data):
    group = zarr.open_group(runs["coarse"], mode="r")
    gd = gd_trainer(group, "cpu", data)
    state = read_state(group, 1)
    threshold = 0.7 * float(group["train_loss"][1])
    first = project(gd, state, threshold, 500)
    again = project(gd, state, threshold, 500)
    assert first.converged and 3 < first.gd_steps < 500
    assert first.metrics["train_loss"] < threshold <= first.start_loss
    assert torch.equal(first.params, again.params) and first.gd_steps == again.gd_steps

    # Reference: plain full-batch SGD with the run's lr and momentum from zero momentum;
    # the step before the last is still above the threshold.
    spec = group.attrs["run"]
    model = build_model(spec["model"], data.input_shape, data.n_classes)
    unflatten_into(state.params, model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = gd.loss_fn
    for step in range(first.gd_steps):
        optimizer.zero_grad()
        loss = loss_fn(model(data.x_train), data.y_train)
        assert loss.item() >= threshold, f"GD would have stopped at step {step}"
        loss.backward()
        optimizer.step()
    manual = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(first.params, manual, rtol=0, atol=1e-6)

    capped = project(gd, state, 1e-6, 3)
    assert capped.status == STEP_CAP and capped.gd_steps == 3 and not capped.converged


@pytest.mark.parametrize("model", [MLP, BN_MODEL], ids=["mlp", "vgg11-bn"])
def test_interpolation_and_projection_losses_are_eval_mode_losses_of_the_states(
    tmp_path, digits_store, digits_spec, data, model
):
    spec = run_spec(model=model, epochs=1, checkpoint_every=4)
    group = zarr.open_group(train(tmp_path, "t", spec, digits_spec, digits_store), mode="r")
    a, b = read_state(group, 0), read_state(group, 2)
    alphas = np.array([0.0, 0.3, 0.5, 1.0])
    params, buffers = line_points((a.params, a.buffers), (b.params, b.buffers), alphas)
    trainer = trainer_for(group, "cpu", data)
    batched = PointLosses(trainer.model, trainer.loss_fn, batch=3, chunk=100)
    single = PointLosses(trainer.model, trainer.loss_fn, batch=1, chunk=2048)
    losses = batched(params, buffers, data.x_train, data.y_train)
    np.testing.assert_allclose(
        single(params, buffers, data.x_train, data.y_train), losses, rtol=1e-5
    )
    for i in range(len(alphas)):
        trainer.load_state(TrainState(params[i], None, buffers[i], 0))
        assert losses[i] == pytest.approx(trainer.evaluate()["train_loss"], rel=1e-5)
    assert losses[0] == pytest.approx(group["train_loss"][0], rel=1e-5)
    np.testing.assert_allclose(interpolation_alphas(4), [0.2, 0.4, 0.6, 0.8])

    # The projected state (parameters and BatchNorm running statistics) has the loss recorded.
    threshold = 0.9 * float(group["train_loss"][2])
    projected = project(gd_trainer(group, "cpu", data), b, threshold, 300)
    assert projected.converged and projected.gd_steps > 0
    trainer.load_state(TrainState(projected.params, None, projected.buffers, 0))
    assert trainer.evaluate()["train_loss"] == projected.metrics["train_loss"] < threshold


def test_sgd_states_replay_exactly_and_once(runs, data):
    """Bisection order with the keep sets the projector passes: every state equals the stored
    one bit for bit, and the whole tree costs one replay pass over the 16 steps."""
    fine = zarr.open_group(runs["fine"], mode="r")
    states = SGDStates(fine, trainer_for(fine, "cpu", data), [0, 16], cache_bytes=1 << 24)
    order = [8, 4, 2, 1, 3, 6, 5, 7, 12, 10, 9, 11, 14, 13, 15]
    for step in order:
        keep = bisection_midpoints(*_left_interval(step, order), 4)
        state = states.state_at(step, keep)
        stored = read_state(fine, step)  # checkpoint index = step: one checkpoint per step
        assert state.step == stored.step == step
        assert torch.equal(state.params, stored.params)
        assert torch.equal(state.momentum, stored.momentum)
        assert torch.equal(state.buffers, stored.buffers)
    assert states.replayed_steps <= 16

    # Without a cache each state is replayed from the closest earlier known one, in any order.
    uncached = SGDStates(fine, trainer_for(fine, "cpu", data), [0, 16], cache_bytes=0)
    shuffled = list(range(1, 16))
    random.Random(0).shuffle(shuffled)
    for step in shuffled:
        assert torch.equal(uncached.state_at(step).params, read_state(fine, step).params)


def _left_interval(step: int, order: list[int]) -> tuple[int, int]:
    """The left half (lo, step) of the bisection interval that produced midpoint ``step``."""
    lo, hi = 0, 16
    while True:
        mid = (lo + hi) // 2
        if mid == step:
            return lo, step
        lo, hi = (lo, mid) if step < mid else (mid, hi)


def permuted_copy(source: str, target: Path, checkpoints: list[int]) -> str:
    """Copy a trajectory store and permute the hidden units at some checkpoints: minima with
    the same loss as the unpermuted net, and a barrier on the line to it."""
    shutil.copytree(source, target)
    group = zarr.open_group(target, mode="r+")
    layout = Layout.from_attrs(group.attrs["param_layout"])
    where = {
        name: slice(offset, offset + size)
        for name, offset, size in zip(layout.names, layout.offsets, layout.sizes, strict=True)
    }
    order = np.random.default_rng(0).permutation(MLP["widths"][0])
    for checkpoint in checkpoints:
        for name in ("params", "momentum"):
            flat = np.asarray(group[name][checkpoint]).copy()
            w1 = flat[where["net.1.weight"]].reshape(-1, 64)[order]
            b1 = flat[where["net.1.bias"]][order]
            w2 = flat[where["net.3.weight"]].reshape(10, -1)[:, order]
            for key, value in (("net.1.weight", w1), ("net.1.bias", b1), ("net.3.weight", w2)):
                flat[where[key]] = value.reshape(-1)
            group[name][checkpoint] = flat
    return str(target)


def test_bisection_finds_the_barrier_and_replays_exactly(runs, data, tmp_path):
    threshold = generous_threshold(runs["fine"])
    jump = store.open_store(permuted_copy(runs["coarse"], tmp_path / "jump.zarr", [1]))
    fine = zarr.open_group(runs["fine"], mode="r")
    projector = PathProjector(jump, data, settings(loss_threshold=threshold))
    end = read_state(jump, 1)
    pa, pb = projector.project(read_state(jump, 0)), projector.project(end)
    assert pa.converged and pb.converged and pb.gd_steps == 0
    assert np.max(projector.line(pa, pb)[0]) > threshold, "the constructed barrier must exist"

    result = projector.bisect([0, 1])
    steps = [p.step for p in result.points]
    assert steps == [0, 8, 12, 14, 15, 16]
    assert result.n_bisections == 4
    assert [e.cause for e in result.edges] == [CONNECTED] * 4 + [BARRIER]
    assert [(e.left, e.right) for e in result.edges] == list(itertools.pairwise(steps))
    assert result.edges[-1].depth == 4
    # Each midpoint is the projection of the exact SGD state at its step (the fine trajectory
    # stores every step of the same run).
    gd = gd_trainer(fine, "cpu", data)
    for point in result.points[1:-1]:
        reference = project(gd, read_state(fine, point.step), threshold, 300)
        assert torch.equal(point.projection.params, reference.params), point.step
    assert torch.equal(result.points[-1].projection.params, end.params)

    shallow = PathProjector(jump, data, settings(loss_threshold=threshold, max_depth=2))
    result = shallow.bisect([0, 1])
    assert [p.step for p in result.points] == [0, 8, 12, 16]
    assert result.edges[-1].cause == BARRIER and result.edges[-1].depth == 2


@pytest.fixture(scope="module")
def gathered(runs, digits_store, tmp_path_factory) -> dict:
    """The fine run (16 checkpoints) on a grid of stride 4, two intervals per segment job,
    with a jump (permuted net) at checkpoint 10, inside the second segment."""
    directory = tmp_path_factory.mktemp("gathered")
    jump = permuted_copy(runs["fine"], directory / "jump.zarr", list(range(10, 17)))
    chosen = settings(
        loss_threshold=generous_threshold(runs["fine"]),
        checkpoint_stride=4,
        intervals_per_segment=2,
        store_params="grid",
    )
    segments = []
    for segment in range(2):
        path = str(directory / f"segment_{segment}.zarr")
        project_segment(chosen, segment, "r", 0, jump, digits_store, path)
        segments.append(path)
    output = str(directory / "projected_path.zarr")
    gather_path("r", 0, segments, output)
    return {"path": output, "trajectory": jump, "segments": segments, "dir": directory}


def test_gathered_path_is_ordered_complete_and_counted(gathered):
    path = store.read_arrays(gathered["path"])
    attrs = zarr.open_group(gathered["path"], mode="r").attrs
    steps = path["step"].tolist()
    # Grid 0, 4, 8, 12, 16; the jump between steps 9 and 10 is bisected down to it.
    assert steps == [0, 4, 8, 9, 10, 12, 16]
    np.testing.assert_array_equal(path["edge_left_step"], steps[:-1])
    np.testing.assert_array_equal(path["edge_right_step"], steps[1:])
    assert path["on_grid"].tolist() == [s in (0, 4, 8, 12, 16) for s in steps]
    assert path["cause"].tolist() == [CONNECTED] * 3 + [BARRIER] + [CONNECTED] * 2
    assert attrs["n_points"] == 7 and attrs["n_failed_connections"] == 1
    assert attrs["n_not_converged"] == 0 and attrs["n_segments"] == 2
    assert attrs["max_endpoint_mismatch"] == 0.0
    # store_params: grid keeps the parameters of the grid points only, in path order.
    assert [steps[i] for i in path["state_point"]] == [0, 4, 8, 12, 16]
    fine = zarr.open_group(gathered["trajectory"], mode="r")
    for row, k in zip(path["params"], (0, 4, 8, 12, 16), strict=True):
        np.testing.assert_array_equal(row, fine["params"][k])  # projections took no step
    first = store.read_arrays(gathered["segments"][0], ["step", "state_point"])
    assert first["step"][first["state_point"]].tolist() == [0, 4]  # step 8: kept by segment 1
    per_segment = [zarr.open_group(s, mode="r").attrs["n_points"] for s in gathered["segments"]]
    assert sum(per_segment) - 1 == attrs["n_points"]  # the shared checkpoint counted once


def test_trace_along_the_path_uses_the_projected_states(gathered, runs, digits_store, data):
    output = str(gathered["dir"] / "trace.zarr")
    trace = {"method": "hutchpp", "probes": 30, "seed": 3, "at": "grid", "fit_from_epoch": 0}
    path_trace(
        trace, HESSIAN, "r", 0, gathered["path"], gathered["trajectory"], digits_store, output
    )
    result = store.read_arrays(output)
    attrs = zarr.open_group(output, mode="r").attrs
    assert result["step"].tolist() == [0, 4, 8, 12, 16]
    projected = store.read_arrays(gathered["path"], ["params"])["params"]
    model = build_model(MLP, data.input_shape, data.n_classes)
    spec = zarr.open_group(gathered["trajectory"], mode="r").attrs["run"]
    from hessvalley.losses import build_loss

    loss_fn = build_loss(spec["loss"])
    unflatten_into(torch.from_numpy(projected[2]), model.parameters())
    op = HessianOperator(model, loss_fn, data.x_train, data.y_train)
    direct = hutchpp_trace(op, torch.Generator().manual_seed(3), **trace_budget("hutchpp", 30))
    assert result["trace"][2] == pytest.approx(direct.estimate, rel=1e-6)
    assert result["trace_stderr"][2] == pytest.approx(direct.stderr, rel=1e-6)
    exact_op = HessianOperator(  # one sweep of all unit vectors
        model, loss_fn, data.x_train, data.y_train, dtype=torch.float64, probes_per_sweep=10_000
    )
    exact = torch.trace(exact_hessian(exact_op)).item()
    assert abs(result["trace"][2] - exact) < 5 * result["trace_stderr"][2] + 1e-3 * exact
    slope, _ = slope_fit(result["epoch"], result["trace"])
    assert attrs["slope_per_epoch"] == pytest.approx(slope)
    assert trace_budget("hutchpp", 30) == {"n_probes": 10, "sketch_size": 10}


def test_path_trace_is_the_curvature_stage_trace_at_the_same_parameters(gathered, digits_store):
    """The projections took no GD step, so the path's grid states are the trajectory's
    checkpoints 0, 4, ..., 16. With the same curvature keys (here none at their defaults),
    method, budget and probe seed (and a named HVP method: ``auto`` may time another
    fastest in each stage's process) the two stages agree bit for bit; with other probes,
    within 3 combined standard errors."""
    hessian = {"n_samples": 200, "subset_seed": 1, "batch_norm": "eval", "dtype": "float64",
               "chunk_size": 64, "probes_per_sweep": 5,
               "hvp_method": "double_backward_batched"}  # fmt: skip
    curvature = {**make_config({})["curvature"], **hessian, "every": 4}
    curvature["trace"] = {"method": "hutchpp", "matvecs": 30, "seed": 7}
    along_trajectory = str(gathered["dir"] / "curvature_trace.zarr")
    trace_along_trajectory(
        curvature, "r", 0, gathered["trajectory"], digits_store, along_trajectory
    )
    reference = xr.open_zarr(along_trajectory)
    for probe_seed in (7, 8):
        output = str(gathered["dir"] / f"path_trace_{probe_seed}.zarr")
        trace = {"method": "hutchpp", "probes": 30, "seed": probe_seed, "at": "grid",
                 "fit_from_epoch": 0}  # fmt: skip
        path_trace(
            trace, hessian, "r", 0, gathered["path"], gathered["trajectory"], digits_store, output
        )
        along_path = xr.open_zarr(output)
        assert along_path.step.values.tolist() == reference.step.values.tolist()
        assert along_path.attrs["hessian"] == reference.attrs["hessian"] == hessian
        assert along_path.attrs["n_samples"] == reference.attrs["n_samples"] == 200
        a, b = along_path.trace.values, reference.trace.values
        se_a, se_b = along_path.trace_stderr.values, reference.trace_stderr.values
        if probe_seed == 7:
            assert np.array_equal(a, b) and np.array_equal(se_a, se_b)
            assert np.array_equal(along_path.trace_samples.values, reference.trace_samples.values)
        else:
            assert not np.array_equal(a, b)
            assert np.all(np.abs(a - b) <= 3 * np.sqrt(se_a**2 + se_b**2)), (a, b, se_a, se_b)


# The hessvalley CLI SIGKILLing itself once the trace has persisted a given number of points
# (argv: that number, then the CLI's arguments): a kill at a known point however fast the job.
KILLED_TRACE_CLI = """
import os, signal, sys
from hessvalley import cli
from hessvalley.projection import trace
after, add = int(sys.argv[1]), trace.PartialRows.add
def add_then_die(self, row):
    add(self, row)
    if len(self) == after:
        os.kill(os.getpid(), signal.SIGKILL)
trace.PartialRows.add = add_then_die
sys.exit(cli.main(sys.argv[2:]))
"""


def trace_args(trace: dict, gathered: dict, data: str, output: Path, log: Path) -> list[str]:
    """The projected_trace rule's arguments (one torch thread, as the tests)."""
    kwargs = {"trace": trace, "curvature": HESSIAN, "setting": "r", "seed": 0}
    io = {"path": gathered["path"], "trajectory": gathered["trajectory"], "data": data,
          "output": str(output)}  # fmt: skip
    return ["run", "projected_trace", "--kwargs", json.dumps(kwargs), "--io", json.dumps(io),
            "--threads", "1", "--log", str(log)]  # fmt: skip


def test_killed_trace_job_resumes_from_its_points(
    gathered, digits_store, tmp_path, monkeypatch, capsys
):
    """SIGKILL a trace job once it has persisted 2 of its 5 points, run it again: it computes
    only the other 3 and writes exactly the store of an uninterrupted run. A partial store of
    another spec (probe seed) is discarded."""
    trace = {"method": "hutchpp", "probes": 30, "seed": 3, "at": "grid", "fit_from_epoch": 0}
    reference = tmp_path / "reference" / "trace.zarr"
    args = (gathered["path"], gathered["trajectory"], digits_store)
    path_trace(trace, HESSIAN, "r", 0, *args, str(reference))
    output, log = tmp_path / "killed" / "trace.zarr", tmp_path / "trace.log"
    command = trace_args(trace, gathered, digits_store, output, log)
    killed = subprocess.run([sys.executable, "-c", KILLED_TRACE_CLI, "2", *command])
    assert killed.returncode == -signal.SIGKILL
    side = Path(f"{output}.points.partial")
    assert zarr.open_group(side, mode="r").attrs["n_complete"] == 2
    assert not output.exists(), "a killed job must not publish its store"

    computed = count_rows(monkeypatch)
    path_trace(trace, HESSIAN, "r", 0, *args, str(output))  # the job run again
    assert "resuming: 2 of 5 points from an earlier attempt" in capsys.readouterr().out
    assert len(computed) == 3
    assert not side.exists() and not Path(f"{output}.points.lock").exists()
    assert_identical_stores(output, reference)
    want = store.read_arrays(reference)

    # In-process: interrupted after 2 points with probe seed 3, then run with seed 4.
    count_rows(monkeypatch, stop_after=2)
    other = tmp_path / "other" / "trace.zarr"
    with pytest.raises(KeyboardInterrupt):
        path_trace(trace, HESSIAN, "r", 0, *args, str(other))
    assert zarr.open_group(f"{other}.points.partial", mode="r").attrs["n_complete"] == 2
    computed = count_rows(monkeypatch)
    path_trace({**trace, "seed": 4}, HESSIAN, "r", 0, *args, str(other))
    assert len(computed) == 5, "the rows of probe seed 3 must not be reused"
    assert "resuming" not in capsys.readouterr().out
    samples = store.read_arrays(other, ["trace_samples"])["trace_samples"]
    assert not np.any(samples == want["trace_samples"])
    assert not Path(f"{other}.points.partial").exists()


def test_slope_fit_matches_numpy():
    x = np.array([0.0, 1, 2, 3, 5])
    y = np.array([3.0, 2.5, 2.2, 1.4, 0.3])
    slope, stderr = slope_fit(x, y)
    assert slope == pytest.approx(np.polyfit(x, y, 1)[0])
    _, cov = np.polyfit(x, y, 1, cov="unscaled")
    residual = y - np.polyval(np.polyfit(x, y, 1), x)
    assert stderr == pytest.approx(np.sqrt(cov[0, 0] * residual @ residual / 3))
    assert np.isnan(slope_fit(x[:2], y[:2])[1])


def test_segment_plan_matches_training(tmp_path, digits_store, digits_spec):
    runs = {
        "a": {**run_spec(epochs=3, checkpoint_every=5), "seeds": [0]},
        "b": {**run_spec(epochs=2, optimizer={"lr": 0.1, "batch_size": "full"}), "seeds": [0]},
    }
    config = make_config(runs)
    config = validate_config({**config, "projection": {"runs": {"a": {"checkpoint_stride": 2}}}})
    # 256 // 32 = 8 steps per epoch, 24 steps: checkpoints 0, 5, ..., 20, 24.
    assert run_checkpoint_steps(config, "a") == checkpoint_steps(24, 5) == [0, 5, 10, 15, 20, 24]
    spec = {k: v for k, v in config["runs"]["a"].items() if k != "seeds"}
    trained = train(tmp_path, "a", spec, digits_spec, digits_store)
    assert store.read_arrays(trained, ["step"])["step"].tolist() == [0, 5, 10, 15, 20, 24]
    assert projection_grid(6, 2) == [0, 2, 4, 5]
    assert n_segments(config, "a") == 3
    assert [segment_grid(6, 2, 1, k) for k in range(3)] == [[0, 2], [2, 4], [4, 5]]
    assert segment_grid(6, 2, 2, 1) == [4, 5]
    with pytest.raises(ValueError, match="segment 3 does not exist"):
        segment_grid(6, 2, 1, 3)
    assert list(problems(config)) == []


def test_config_problems_name_the_key():
    runs = {
        "early": {**run_spec(stop_below_loss=0.1), "seeds": [0]},
        "gd": {**run_spec(optimizer={"lr": 0.1, "batch_size": "full"}), "seeds": [0]},
    }
    with pytest.raises(ConfigError) as info:
        validate_config(
            {
                **make_config(runs),
                "projection": {
                    "runs": {"early": None, "gd": {"store_params": "grid"}, "nope": None},
                    "trace": {"at": "all"},
                    "figures": {"fig1": ["early"], "fig3": ["other"], "path_seed": 7},
                },
            }
        )
    found = str(info.value)
    assert "projection.runs.early: run 'early' stops early (stop_below_loss)" in found
    assert "projection.runs.gd: run 'gd' is full-batch GD" in found
    assert "projection.runs.gd.store_params: projection.trace.at is 'all'" in found
    assert "projection.runs.nope: unknown run 'nope'" in found
    assert "projection.figures.fig3: run 'other' is not projected" in found
    assert "projection.figures.path_seed: 7 is not a seed of run 'early' (drawn in fig1)" in found


def segment_command(chosen: dict, trajectory: str, data: str, output: str, log: str) -> list[str]:
    """The projection_segment rule's command line (one torch thread, as the tests)."""
    kwargs = {"settings": chosen, "segment": 0, "setting": "r", "seed": 0}
    io = {"trajectory": trajectory, "data": data, "output": output}
    return [sys.executable, "-m", "hessvalley", "run", "projection_segment",
            "--kwargs", json.dumps(kwargs), "--io", json.dumps(io), "--threads", "1",
            "--log", log]  # fmt: skip


def test_killed_segment_job_resumes_from_its_projections(runs, digits_store, tmp_path):
    """SIGKILL a segment job once it has persisted a projection, run it again: it reuses the
    finished projections and writes exactly the store of an uninterrupted run."""
    trajectory = permuted_copy(runs["coarse"], tmp_path / "jump.zarr", [1])
    loss = store.read_arrays(trajectory, ["train_loss"])["train_loss"]
    # Half the SGD loss: each projection takes ~100 GD steps, and the barrier is bisected.
    chosen = settings(loss_threshold=0.5 * float(loss.min()), max_gd_steps=2000)
    reference = str(tmp_path / "reference" / "segment_0.zarr")
    project_segment(chosen, 0, "r", 0, trajectory, digits_store, reference)
    n_points = zarr.open_group(reference, mode="r").attrs["n_points"]

    output, log = tmp_path / "killed" / "segment_0.zarr", tmp_path / "segment_0.log"
    command = segment_command(chosen, trajectory, digits_store, str(output), str(log))
    side = output.with_name(output.name + ".projections.partial")
    process = subprocess.Popen(command)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            if zarr.open_group(side, mode="r").attrs.get("n_complete", 0) >= 1:
                break
        except Exception:  # not created yet
            pass
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = zarr.open_group(side, mode="r").attrs["n_complete"]
    assert 1 <= killed_at < n_points, "the kill must land mid-segment"
    assert not output.exists(), "a killed job must not publish its store"

    subprocess.run(command, check=True)
    text = log.read_text()
    resumed = re.search(r"resuming segment 0: (\d+) projections from an earlier attempt", text)
    assert resumed and int(resumed[1]) == killed_at
    counted = re.search(r"\((\d+) projected, (\d+) from an earlier attempt, 0 from the grid", text)
    assert counted and int(counted[2]) == killed_at
    assert int(counted[1]) + killed_at == n_points  # only the rest was projected by GD
    assert not side.exists()

    assert_identical_stores(output, reference, ignore_attrs=["timings_s"])


def test_projection_cache_is_reused_only_for_the_same_segment_spec(
    runs, digits_store, tmp_path, capsys
):
    group = zarr.open_group(runs["coarse"], mode="r")
    output = str(tmp_path / "segment_0.zarr")
    chosen = settings(loss_threshold=generous_threshold(runs["fine"]))  # no GD step
    n_params = group["params"].shape[1]
    planted = Projection(
        torch.zeros(n_params), torch.zeros(0, dtype=torch.float64), 7, CONVERGED, 1.5,
        {name: 0.25 for name in METRICS},
    )  # fmt: skip

    def plant(chosen: dict, seed: int = 0) -> None:
        ProjectionCache.for_segment(output, chosen, group, seed, 0).add(0, planted)

    plant(chosen)
    cache = ProjectionCache.for_segment(output, chosen, group, 0, 0)
    assert len(cache) == 1 and torch.equal(cache[0].params, planted.params)
    assert (cache[0].gd_steps, cache[0].start_loss, cache[0].metrics) == (7, 1.5, planted.metrics)
    for other, seed in ((settings(loss_threshold=0.5), 0), (chosen, 1)):
        plant(other, seed)
        assert len(ProjectionCache.for_segment(output, chosen, group, 0, 0)) == 0

    # project_segment ignores a cache of other settings and uses one of its own.
    for spec, used in ((settings(loss_threshold=0.5), False), (chosen, True)):
        plant(spec)
        project_segment(chosen, 0, "r", 0, runs["coarse"], digits_store, output)
        printed = capsys.readouterr().out
        assert ("resuming segment 0: 1 projections from an earlier attempt" in printed) == used
        result = store.read_arrays(output, ["params", "gd_steps"])
        want = planted.params.numpy() if used else group["params"][0]
        assert np.array_equal(result["params"][0], want)
        assert result["gd_steps"][0] == (7 if used else 0)
        assert not Path(output + ".projections.partial").exists()

    # BatchNorm buffers round-trip too, bit for bit.
    spec = {"any": "spec"}
    with_buffers = ProjectionCache(tmp_path / "bn.zarr", spec, 3, 2)
    projection = Projection(
        torch.randn(3), torch.randn(2, dtype=torch.float64), 0, STEP_CAP, float("nan"),
        {name: 0.5 for name in METRICS},
    )  # fmt: skip
    with_buffers.add(4, projection)
    loaded = ProjectionCache(tmp_path / "bn.zarr", spec, 3, 2)[4]
    assert torch.equal(loaded.buffers, projection.buffers) and loaded.status == STEP_CAP


def test_project_segment_refuses_a_missing_segment(runs, digits_store, tmp_path):
    from hessvalley.errors import HessvalleyError

    with pytest.raises(HessvalleyError, match="segment 1 does not exist"):
        project_segment(
            settings(), 1, "r", 0, runs["coarse"], digits_store, str(tmp_path / "s.zarr")
        )


FIGURES = [f"results/figures/wei2020_{name}.pdf" for name in ("fig1", "fig3", "fig4")]


def snakemake_figures(workdir: Path, *args: str) -> str:
    """Snakemake on the workdir's config.yaml, targeting the three projection figures."""
    config = workdir / "config.yaml"
    return snakemake(workdir, *FIGURES, *args, configfile=config, cores=2).output


def planned(workdir: Path) -> dict[str, int]:
    return planned_jobs(snakemake_figures(workdir, "-n"))


@pytest.mark.workflow
def test_workflow_builds_the_figures_and_reruns_what_is_stale(tmp_path):
    shutil.copy(REPO / "tests/configs/projection.yaml", tmp_path / "config.yaml")
    jobs = planned(tmp_path)
    assert jobs["projection_segment"] == jobs["projection_grid"] == 2  # known before training
    snakemake_figures(tmp_path)
    for figure in FIGURES:
        assert Path(tmp_path / figure).stat().st_size > 1000
        assert Path(tmp_path / figure).with_suffix(".png").stat().st_size > 1000
    path = xr.open_zarr(tmp_path / "results/tiny_mlp/seed0/projected_path.zarr")
    assert path.attrs["n_segments"] == 2
    grid = path.step.values[path.on_grid.values].tolist()
    assert grid == [0, 8, 16, 24] and bool(path.converged.all())
    assert path.sizes["edge"] == path.sizes["point"] - 1
    trace = xr.open_zarr(tmp_path / "results/tiny_mlp/seed0/projected_trace.zarr")
    assert trace.step.values.tolist() == grid and np.all(trace.trace_stderr.values > 0)
    # Each figure states its claim, with the verdict its test gives on these stores.
    claims = {f: read_claim((tmp_path / f).with_suffix(".json")) for f in FIGURES}
    path_store = str(tmp_path / "results/tiny_mlp/seed0/projected_path.zarr")
    expected = connection_verdict(connections(path_store)).verdict
    assert claims[FIGURES[0]].verdict.verdict == expected
    assert claims[FIGURES[1]].verdict.verdict == UNTESTABLE  # one seed: no spread
    assert trace.attrs["hessian"]["chunk_size"] == 2048  # the curvature section's default
    assert planned(tmp_path) == {}

    def edit_config(change) -> None:
        config = yaml.safe_load((tmp_path / "config.yaml").read_text())
        change(config)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    def edit(change) -> None:
        edit_config(lambda config: change(config["projection"]))

    edit(lambda p: p["trace"].update(probes=15))
    assert planned(tmp_path) == {"projected_trace": 1, "wei2020_fig3": 1, "wei2020_fig4": 1}
    edit_config(lambda c: c.update(curvature={"chunk_size": 100}))  # a Hessian key
    assert planned(tmp_path) == {"projected_trace": 1, "wei2020_fig3": 1, "wei2020_fig4": 1}
    edit(lambda p: p.update(n_points=5))
    jobs = planned(tmp_path)
    assert jobs["projection_segment"] == 2 and jobs["projected_path"] == 1
    assert "projection_grid" not in jobs  # no GD key changed: no projection is redone
    assert "train" not in jobs and "dataset" not in jobs
