"""The grid stage: each grid checkpoint of a seed projected once, for the segments to share.

Neighbouring segment jobs meet at a grid checkpoint; if each projected it, the dominant cost
of the whole reproduction (GD on the full training set) would be paid twice. Grid job ``j``
projects the grid checkpoints of segment ``j`` but its right end (``plan.grid_block``), the
segment jobs read both of their ends from the grid stores. A grid job resumes after a kill
from its finished projections and the one in progress (``ProjectionCache``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from hessvalley import store
from hessvalley.data import load_dataset
from hessvalley.determinism import reproducing
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.progress import progress
from hessvalley.projection.cache import ProjectionCache, projections_by_step
from hessvalley.projection.gd import Projection, gd_trainer, project
from hessvalley.projection.outcomes import CONVERGED, DIVERGED, STEP_CAP
from hessvalley.projection.plan import GD_KEYS, grid_block
from hessvalley.trajectory_store import METRICS, open_trajectory, read_state


def gd_spec(settings: Mapping[str, Any], trajectory: zarr.Group) -> dict[str, Any]:
    """What a projection depends on: the GD keys and the trajectory (its config hash)."""
    return {
        "gd": {key: settings[key] for key in GD_KEYS},
        "trajectory": trajectory.attrs["config_hash"],
    }


def job_checkpoints(
    trajectory: str, settings: Mapping[str, Any], segment: int, which: Callable[..., list[int]]
) -> tuple[zarr.Group, list[int]]:
    """The complete trajectory and the checkpoint indices job ``segment`` works on
    (``which``: ``plan.grid_block`` for a grid job, ``plan.segment_grid`` for a segment)."""
    group = open_trajectory(trajectory)
    if not group.attrs.get("complete"):
        raise HessvalleyError(f"trajectory {trajectory} is incomplete")
    try:
        checkpoints = which(
            int(group.attrs["n_checkpoints"]),
            settings["checkpoint_stride"],
            settings["intervals_per_segment"],
            segment,
        )
    except ValueError as err:
        raise HessvalleyError(f"{trajectory}: {err} (did the run stop early?)") from err
    return group, checkpoints


def _grid_arrays(steps: list[int], checkpoints: list[int], found: list[Projection]):
    return {
        "step": (("point",), np.array(steps, dtype=np.int64)),
        "checkpoint": (("point",), np.array(checkpoints, dtype=np.int64)),
        "gd_steps": (("point",), np.array([p.gd_steps for p in found], dtype=np.int64)),
        "status": (("point",), np.array([p.status for p in found], dtype=np.int8)),
        "start_loss": (("point",), np.array([p.start_loss for p in found])),
        **{name: (("point",), np.array([p.metrics[name] for p in found])) for name in METRICS},
        "params": (("point", "param"), np.stack([p.params.numpy() for p in found])),
        "buffers": (("point", "buffer"), np.stack([p.buffers.numpy() for p in found])),
    }


def project_grid(
    settings: Mapping[str, Any],
    segment: int,
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
    checkpoint_flush_seconds: float = 30.0,
) -> None:
    """Grid job: GD projection of the grid checkpoints that segment ``segment`` starts from."""
    device = resolve_device(device)
    group, block = job_checkpoints(trajectory, settings, segment, grid_block)
    dataset = load_dataset(data, device, group.attrs["run"]["train_on"])
    spec = gd_spec(settings, group)
    cache = ProjectionCache.for_segment(output, spec, group, seed, segment)
    if len(cache):
        print(f"resuming grid {segment}: {len(cache)} projections from an earlier attempt")
    trainer = gd_trainer(group, device, dataset)
    steps = [int(group["step"][k]) for k in block]
    found: list[Projection] = []
    start = time.perf_counter()
    recorded = group.attrs.get("determinism")
    with reproducing(recorded, device, f"projection of {trajectory}"):
        desc = f"{setting} seed {seed} grid {segment}"
        for k, step in progress(list(zip(block, steps, strict=True)), desc=desc, unit="checkpoint"):
            if step not in cache:
                job = cache.progress(step)
                cache.add(
                    step,
                    project(
                        trainer,
                        read_state(group, k),
                        float(settings["loss_threshold"]),
                        int(settings["max_gd_steps"]),
                        bool(settings["reset_momentum"]),
                        settings["max_loss_rise"],
                        job,
                        checkpoint_flush_seconds,
                    ),
                )
                job.clear()
            found.append(cache[step])
    status = np.array([p.status for p in found])
    attrs = {
        **store.provenance(spec, seed),
        "setting": setting,
        "segment": segment,
        "checkpoints": block,
        "determinism": recorded,
        "loss_threshold": settings["loss_threshold"],
        "n_converged": int(np.sum(status == CONVERGED)),
        "n_step_cap": int(np.sum(status == STEP_CAP)),
        "n_diverged": int(np.sum(status == DIVERGED)),
        "timings_s": {"total": time.perf_counter() - start},
        "param_layout": group.attrs["param_layout"],
        "buffer_layout": group.attrs["buffer_layout"],
    }
    store.write_store(output, _grid_arrays(steps, block, found), attrs)
    cache.remove()
    print(
        f"grid {segment}: {len(found)} checkpoints projected (steps {steps[0]}..{steps[-1]}), "
        f"{attrs['n_converged']} converged, {attrs['n_step_cap']} at the step cap, "
        f"{attrs['n_diverged']} diverged; GD steps {[p.gd_steps for p in found]}"
    )


def grid_projections(
    paths: Sequence[str],
    settings: Mapping[str, Any],
    trajectory: zarr.Group,
    seed: int,
    steps: Sequence[int],
) -> dict[int, Projection]:
    """The projections at SGD ``steps`` that the grid stores ``paths`` hold, checked to be
    of this trajectory and seed with these GD settings (a store of other settings would
    silently join two different valleys). Only those rows' parameters are read."""
    want = store.config_hash(gd_spec(settings, trajectory))
    out: dict[int, Projection] = {}
    for path in paths:
        grid = store.open_store(path)
        if grid.attrs["config_hash"] != want or int(grid.attrs["seed"]) != seed:
            raise HessvalleyError(
                f"{path}: made with other projection settings, trajectory or seed than this "
                "segment's; re-run its grid job"
            )
        rows = np.flatnonzero(np.isin(np.asarray(grid["step"][...]), list(steps)))
        if not len(rows):
            continue
        span = slice(rows[0], rows[-1] + 1)  # a segment's rows of a grid store are adjacent
        columns = {name: np.asarray(grid[name][span])[rows - rows[0]] for name in grid.array_keys()}
        out.update(projections_by_step(columns))
    return out
