"""The segment stage: the projected path between the grid checkpoints of one segment job.

A segment is ``intervals_per_segment`` consecutive intervals of the projection grid
(``plan.segment_grid``). The job takes the projections of its grid checkpoints from the grid
stores (``grid``: each checkpoint is projected once per seed), bisects the intervals
(``PathProjector``), resuming from the projections an earlier, killed attempt left
(``ProjectionCache``), and writes the segment store: the ordered points, the lines between
neighbours, and the kept parameters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from hessvalley import store
from hessvalley.data import load_dataset
from hessvalley.determinism import reproducing
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.progress import progress
from hessvalley.projection.bisection import Bisection, Edge, PathProjector, Point
from hessvalley.projection.cache import ProjectionCache
from hessvalley.projection.gd import Projection
from hessvalley.projection.grid import grid_projections, job_checkpoints
from hessvalley.projection.interpolation import interpolation_alphas
from hessvalley.projection.outcomes import counts
from hessvalley.projection.plan import projection_grid, segment_grid


def _point_arrays(points: Sequence[Point], steps_per_epoch: int, grid_steps: set[int]):
    p = [pt.projection for pt in points]
    step = np.array([pt.step for pt in points], dtype=np.int64)
    return {
        "step": (("point",), step),
        "epoch": (("point",), step / steps_per_epoch),
        "depth": (("point",), np.array([pt.depth for pt in points], dtype=np.int16)),
        "on_grid": (("point",), np.isin(step, sorted(grid_steps))),
        "gd_steps": (("point",), np.array([x.gd_steps for x in p], dtype=np.int64)),
        "status": (("point",), np.array([x.status for x in p], dtype=np.int8)),
        "converged": (("point",), np.array([x.converged for x in p])),
        "start_loss": (("point",), np.array([x.start_loss for x in p])),
        **{
            name: (("point",), np.array([x.metrics[name] for x in p]))
            for name in ("train_loss", "val_loss", "train_acc", "val_acc")
        },
    }


def _edge_arrays(edges: Sequence[Edge], n_points: int):
    if edges:
        train = np.stack([e.train for e in edges])
        val = np.stack([e.val for e in edges])
    else:
        train = val = np.zeros((0, n_points))
    return {
        "alpha": (("alpha",), interpolation_alphas(n_points)),
        "edge_left_step": (("edge",), np.array([e.left for e in edges], dtype=np.int64)),
        "edge_right_step": (("edge",), np.array([e.right for e in edges], dtype=np.int64)),
        "interp_train_loss": (("edge", "alpha"), train),
        "interp_val_loss": (("edge", "alpha"), val),
        "connected": (("edge",), np.array([e.connected for e in edges], dtype=bool)),
        "cause": (("edge",), np.array([e.cause for e in edges], dtype=np.int8)),
        "edge_depth": (("edge",), np.array([e.depth for e in edges], dtype=np.int16)),
    }


def _stored_points(points: Sequence[Point], store_params: str, grid_steps: set[int]):
    if store_params == "all":
        return list(range(len(points)))
    return [i for i, pt in enumerate(points) if pt.step in grid_steps]


def segment_arrays(
    result: Bisection,
    group: zarr.Group,
    settings: Mapping[str, Any],
    grid: Sequence[int],
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """The segment store's arrays: points, edges, and the parameters kept (every point or
    the grid checkpoints, ``store_params``; the segment's last grid checkpoint is kept by
    the next segment, which starts there)."""
    steps = np.asarray(group["step"][...])
    full_grid = projection_grid(int(group.attrs["n_checkpoints"]), settings["checkpoint_stride"])
    grid_steps = {int(steps[k]) for k in full_grid}
    stored = _stored_points(result.points, settings["store_params"], grid_steps)
    if grid[-1] != full_grid[-1]:  # the next segment starts at this end and stores it
        stored = [i for i in stored if i != len(result.points) - 1]
    return {
        **_point_arrays(result.points, int(group.attrs["steps_per_epoch"]), grid_steps),
        **_edge_arrays(result.edges, int(settings["n_points"])),
        "state_point": (("state",), np.array(stored, dtype=np.int64)),
        "params": (
            ("state", "param"),
            np.stack([result.points[i].projection.params.numpy() for i in stored]),
        ),
        "buffers": (
            ("state", "buffer"),
            np.stack([result.points[i].projection.buffers.numpy() for i in stored]),
        ),
    }


def _given_ends(
    grids: Sequence[str] | None,
    grid_steps: list[int],
    settings: Mapping[str, Any],
    group: zarr.Group,
    seed: int,
    segment: int,
) -> dict[int, Projection]:
    """The projections of the segment's grid checkpoints from the grid stores (none without
    stores; all of them, or an error naming the missing steps, with)."""
    if grids is None:
        return {}
    from_grids = grid_projections(grids, settings, group, seed, grid_steps)
    missing = [step for step in grid_steps if step not in from_grids]
    if missing:
        raise HessvalleyError(
            f"segment {segment}: the grid stores {list(grids)} hold no projection of the grid "
            f"checkpoints at steps {missing}"
        )
    return {step: from_grids[step] for step in grid_steps}


def project_segment(
    settings: Mapping[str, Any],
    segment: int,
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    grids: Sequence[str] | None = None,
    device: str = "cpu",
    checkpoint_flush_seconds: float = 30.0,
) -> None:
    """Segment job: projected path between the checkpoints of segment ``segment``.

    The grid checkpoints' projections come from the grid stores ``grids`` (the workflow's
    way: each is projected once per seed); without them this job projects its grid
    checkpoints itself."""
    device = resolve_device(device)
    group, grid = job_checkpoints(trajectory, settings, segment, segment_grid)
    dataset = load_dataset(data, device, group.attrs["run"]["train_on"])
    cache = ProjectionCache.for_segment(output, settings, group, seed, segment)
    if len(cache):
        print(f"resuming segment {segment}: {len(cache)} projections from an earlier attempt")
    steps = np.asarray(group["step"][...])
    given = _given_ends(grids, [int(steps[k]) for k in grid], settings, group, seed, segment)
    projector = PathProjector(
        group, dataset, settings, device, cache, given, checkpoint_flush_seconds
    )
    a, b = int(steps[grid[0]]), int(steps[grid[-1]])
    start = time.perf_counter()
    # Bisection replays SGD exactly from the stored checkpoints: under the recorded conditions.
    recorded = group.attrs.get("determinism")
    with reproducing(recorded, device, f"projection of {trajectory}"):
        desc = f"{setting} seed {seed} segment {segment}"
        with progress(total=b - a, desc=desc, unit="step") as bar:
            result = projector.bisect(grid, bar)
    arrays = segment_arrays(result, group, settings, grid)
    summary = counts(arrays["converged"][1], arrays["cause"][1])
    timings = {**result.timings, "total": time.perf_counter() - start}
    attrs = {
        **store.provenance(
            {"projection": settings, "trajectory": group.attrs["config_hash"]}, seed
        ),
        "setting": setting,
        "segment": segment,
        "run": group.attrs["run"],
        "steps_per_epoch": int(group.attrs["steps_per_epoch"]),
        "grid_checkpoints": grid,
        "determinism": recorded,
        "steps": [a, b],
        "loss_threshold": settings["loss_threshold"],
        "n_bisections": result.n_bisections,
        "timings_s": timings,
        "param_layout": group.attrs["param_layout"],
        "buffer_layout": group.attrs["buffer_layout"],
        **summary,
    }
    store.write_store(output, arrays, attrs)
    cache.remove()
    print(
        f"segment {segment} (steps {a}..{b}): {summary['n_points']} points "
        f"({projector.n_projected} projected, {projector.n_reused} from an earlier attempt, "
        f"{len(given)} from the grid jobs), {summary['n_failed_connections']} failed connections, "
        f"{summary['n_not_converged']} not converged, {result.n_bisections} bisections; "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )
