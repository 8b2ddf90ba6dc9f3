"""Projection jobs at paper scale: a GD projection killed mid-way resumes to the identical
result, capped and diverging projections are recorded (the path goes on), each grid
checkpoint is projected once per seed, and BatchNorm GD lowers the thresholded loss."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch
import zarr

from hessvalley import store
from hessvalley.data import load_dataset
from hessvalley.projection import bisection, grid
from hessvalley.projection.gather import gather_path
from hessvalley.projection.gd import full_train_loss, gd_trainer, project
from hessvalley.projection.grid import project_grid
from hessvalley.projection.outcomes import CONVERGED, DIVERGED, NOT_CONVERGED, STEP_CAP
from hessvalley.projection.plan import GRID_KEYS, grid_block, segments_of_grid
from hessvalley.projection.segment import project_segment
from hessvalley.train import train_run
from hessvalley.trajectory_store import read_state

from .conftest import run_spec
from .stores import assert_identical_stores
from .test_projection import MLP, permuted_copy, settings

pytestmark = pytest.mark.usefixtures("one_thread")
BN_MODEL = {"name": "vgg11", "batch_norm": True, "width": 8}


@pytest.fixture(scope="module")
def trajectory(tmp_path_factory, digits_store, digits_spec) -> str:
    """An MLP trained for 2 epochs, then 2 more epochs checkpointed every 2 steps (9
    checkpoints): with a grid of every checkpoint and 3 intervals per segment, 3 segments."""
    directory = tmp_path_factory.mktemp("jobs")
    parent = str(directory / "parent.zarr")
    spec = run_spec(model=MLP, epochs=2, optimizer={"lr": 0.2, "momentum": 0.9, "batch_size": 32})
    train_run(spec, digits_spec, "r", 0, digits_store, parent)
    output = str(directory / "r.zarr")
    train_run(run_spec(model=MLP, epochs=2, checkpoint_every=2), digits_spec, "r", 0,
              digits_store, output, init=parent)  # fmt: skip
    return output


def loss_floor(path: str) -> float:
    return float(store.read_arrays(path, ["train_loss"])["train_loss"].min())


def grid_command(chosen: dict, trajectory: str, data: str, output: str, log: str) -> list[str]:
    """The projection_grid rule's command line for grid job 0 (one torch thread)."""
    kwargs = {"settings": {k: chosen[k] for k in GRID_KEYS}, "segment": 0, "setting": "r",
              "seed": 0}  # fmt: skip
    io = {"trajectory": trajectory, "data": data, "output": output}
    return [sys.executable, "-m", "hessvalley", "run", "projection_grid",
            "--kwargs", json.dumps(kwargs), "--io", json.dumps(io), "--threads", "1",
            "--log", log]  # fmt: skip


def test_killed_gd_projection_resumes_to_the_identical_result(trajectory, digits_store, tmp_path):
    """SIGKILL a grid job in the middle of a long GD projection (its state saved every step
    here: HESSVALLEY_CHECKPOINT_FLUSH_SECONDS=0), run it again: it resumes that projection
    at the saved GD step and writes exactly the store of an uninterrupted job."""
    chosen = settings(loss_threshold=0.1 * loss_floor(trajectory), max_gd_steps=20000,
                      intervals_per_segment=3)  # fmt: skip
    reference = str(tmp_path / "reference" / "grid_0.zarr")
    project_grid({k: chosen[k] for k in GRID_KEYS}, 0, "r", 0, trajectory, digits_store,
                 reference)  # fmt: skip
    gd_steps = store.read_arrays(reference, ["gd_steps"])["gd_steps"]
    assert gd_steps.min() > 500, "each projection must be long enough to be killed inside"

    output, log = tmp_path / "killed" / "grid_0.zarr", tmp_path / "grid_0.log"
    command = grid_command(chosen, trajectory, digits_store, str(output), str(log))
    saved = output.with_name(output.name + ".projections.partial") / "gd_in_progress.npz"
    env = {**os.environ, "HESSVALLEY_CHECKPOINT_FLUSH_SECONDS": "0"}
    process = subprocess.Popen(command, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            with np.load(saved) as state:
                if int(state["gd_steps"]) >= 20:
                    break
        except Exception:  # not written yet, or replaced while read
            pass
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with np.load(saved) as state:
        killed_step, killed_at = int(state["sgd_step"]), int(state["gd_steps"])
    assert killed_step == 0 and 20 <= killed_at < gd_steps[0], "the kill must land mid-GD"
    assert not output.exists(), "a killed job must not publish its store"

    subprocess.run(command, check=True, env=env)
    assert f"resuming the projection of step 0 at GD step {killed_at}" in log.read_text()
    assert_identical_stores(output, reference, ignore_attrs=["timings_s"])
    assert not saved.parent.exists()


def test_capped_and_diverging_projections_are_recorded_and_the_segment_completes(
    trajectory, digits_store, tmp_path, monkeypatch
):
    group = zarr.open_group(trajectory, mode="r")
    data = load_dataset(digits_store, "cpu")
    gd = gd_trainer(group, "cpu", data)
    state = read_state(group, 2)
    for group_ in gd.optimizer.param_groups:
        group_["lr"] = 30.0  # unstable: the loss rises at once
    rising = project(gd, state, 1e-6, 1000, max_loss_rise=10)
    assert rising.status == DIVERGED and not rising.converged
    assert 0 < rising.gd_steps < 1000
    assert rising.metrics["train_loss"] > 10 * rising.start_loss  # recorded with its loss
    unlimited = project(gd, state, 1e-6, rising.gd_steps + 5, max_loss_rise=None)
    assert unlimited.gd_steps > rising.gd_steps or not np.isfinite(unlimited.start_loss)

    # A whole segment whose projections hit the step cap (and one that diverges) completes.
    def boosted(*args):
        trainer = gd_trainer(*args)
        trainer.optimizer.param_groups[0]["lr"] = 30.0
        return trainer

    chosen = settings(loss_threshold=1e-6, max_gd_steps=3, intervals_per_segment=3)
    grids = []
    for segment in range(3):
        path = str(tmp_path / f"grid_{segment}.zarr")
        with monkeypatch.context() as patch:
            if segment == 1:
                patch.setattr(grid, "gd_trainer", boosted)
            project_grid({k: chosen[k] for k in GRID_KEYS}, segment, "r", 0, trajectory,
                         digits_store, path)  # fmt: skip
        grids.append(path)
    status = store.read_arrays(grids[1], ["status"])["status"]
    assert set(status) == {DIVERGED} and zarr.open_group(grids[1]).attrs["n_diverged"] == 3
    output = str(tmp_path / "segment_0.zarr")
    project_segment(chosen, 0, "r", 0, trajectory, digits_store, output, grids=grids[:2])
    out = store.read_arrays(output)
    assert list(out["status"]) == [STEP_CAP] * 3 + [DIVERGED]
    assert list(out["gd_steps"][:3]) == [3, 3, 3]
    assert set(out["cause"]) == {NOT_CONVERGED} and len(out["cause"]) == 3  # not bisected
    assert zarr.open_group(output).attrs["n_not_converged"] == 4


def test_each_grid_checkpoint_is_projected_once_per_seed(
    trajectory, digits_store, tmp_path, monkeypatch
):
    """Grid jobs project every grid checkpoint once; segments project only their bisection
    midpoints; the gathered path is the one segments projecting their own ends give.
    Hidden units permuted at checkpoints 1 and 4 put barriers in segments 0 and 1."""
    trajectory = permuted_copy(trajectory, tmp_path / "jump.zarr", [1, 4])
    group = zarr.open_group(trajectory, mode="r")
    steps = np.asarray(group["step"][...])
    chosen = settings(loss_threshold=0.7 * loss_floor(trajectory), intervals_per_segment=3,
                      max_depth=1, checkpoint_stride=1)  # fmt: skip
    n = segments_of_grid(len(steps), 1, 3)
    assert n == 3 and [grid_block(len(steps), 1, 3, j) for j in range(n)] == [
        [0, 1, 2], [3, 4, 5], [6, 7, 8]
    ]  # fmt: skip
    projected: Counter[int] = Counter()

    def counting(*args, **kwargs):
        projected[args[1].step] += 1
        return project(*args, **kwargs)

    monkeypatch.setattr(grid, "project", counting)
    monkeypatch.setattr(bisection, "project", counting)
    grids = [str(tmp_path / f"grid_{j}.zarr") for j in range(n)]
    for j, path in enumerate(grids):
        project_grid({k: chosen[k] for k in GRID_KEYS}, j, "r", 0, trajectory, digits_store,
                     path)  # fmt: skip
    assert projected == Counter(int(s) for s in steps)
    projected.clear()
    shared, alone = [], []
    for j in range(n):
        shared.append(str(tmp_path / "shared" / f"segment_{j}.zarr"))
        project_segment(chosen, j, "r", 0, trajectory, digits_store, shared[-1],
                        grids=grids[j : j + 2])  # fmt: skip
    grid_steps = {int(s) for s in steps}
    assert projected and not grid_steps & set(projected), "segments project midpoints only"
    assert max(projected.values()) == 1
    for j in range(n):
        alone.append(str(tmp_path / "alone" / f"segment_{j}.zarr"))
        project_segment(chosen, j, "r", 0, trajectory, digits_store, alone[-1])
    paths = {}
    for name, segments in (("shared", shared), ("alone", alone)):
        paths[name] = str(tmp_path / f"{name}_path.zarr")
        gather_path("r", 0, segments, paths[name])
    a, b = store.read_arrays(paths["shared"]), store.read_arrays(paths["alone"])
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in b)
    assert zarr.open_group(paths["shared"]).attrs["max_endpoint_mismatch"] == 0

    with pytest.raises(Exception, match="hold no projection of the grid checkpoints"):
        project_segment(chosen, 0, "r", 0, trajectory, digits_store,
                        str(tmp_path / "x.zarr"), grids=grids[:1])  # fmt: skip
    other = {**chosen, "loss_threshold": 0.5}
    with pytest.raises(Exception, match="made with other projection settings"):
        project_segment(other, 0, "r", 0, trajectory, digits_store,
                        str(tmp_path / "y.zarr"), grids=grids[:2])  # fmt: skip


def test_batchnorm_projection_lowers_the_thresholded_loss(tmp_path, digits_store, digits_spec):
    """GD on a BatchNorm net descends the eval-mode loss (running statistics frozen), the
    loss compared with the threshold: at a small learning rate it falls at every step, and
    the loss of GD's own forward pass is that loss."""
    output = str(tmp_path / "bn.zarr")
    spec = run_spec(model=BN_MODEL, epochs=1, checkpoint_every=4,
                    optimizer={"lr": 0.05, "momentum": 0.9, "batch_size": 32})  # fmt: skip
    train_run(spec, digits_spec, "r", 0, digits_store, output)
    group = zarr.open_group(output, mode="r")
    data = load_dataset(digits_store, "cpu")
    gd = gd_trainer(group, "cpu", data)
    gd.optimizer.param_groups[0]["lr"] = 0.01
    state = read_state(group, 1)
    losses, buffers = [], []
    for n_steps in range(6):
        result = project(gd, state, 1e-9, n_steps)
        assert result.gd_steps == n_steps and result.status == STEP_CAP
        losses.append(result.metrics["train_loss"])
        buffers.append(result.buffers)
        forward = gd.gradient(0).item()  # GD's own loss at the projected state
        assert forward == pytest.approx(full_train_loss(gd), rel=1e-5)
    assert losses[0] == pytest.approx(float(group["train_loss"][1]), rel=1e-5)
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert all(torch.equal(b, state.buffers) for b in buffers), "running statistics frozen"
    converged = project(gd, state, (losses[3] + losses[4]) / 2, 100)
    assert converged.status == CONVERGED and converged.gd_steps == 4
