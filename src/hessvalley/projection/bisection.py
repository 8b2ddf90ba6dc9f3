"""The recursive bisection of one segment: project the grid checkpoints, test each neighbour
pair for line connectedness, and halve the pairs that are not connected (W&S §2.1.1).

``PathProjector.bisect`` walks the intervals depth first, left to right, so the SGD replays
to midpoints move forward through the segment and a replay cache of the possible later
midpoints makes the whole segment cost at most one SGD pass over it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr

from hessvalley.data import DeviceDataset
from hessvalley.device import resolve_device
from hessvalley.projection.cache import ProjectionCache
from hessvalley.projection.gd import Projection, gd_trainer, project
from hessvalley.projection.interpolation import PointLosses, interpolation_alphas, line_points
from hessvalley.projection.outcomes import BARRIER, CONNECTED, NOT_CONVERGED
from hessvalley.projection.replay import SGDStates, bisection_midpoints
from hessvalley.train import trainer_for
from hessvalley.trajectory_store import TrainState


@dataclass
class Point:
    """A point of the projected path: the SGD step projected, its bisection depth (0 for a
    grid checkpoint) and the projection."""

    step: int
    depth: int
    projection: Projection


@dataclass
class Edge:
    """The line between two neighbouring points: losses at its interpolation points, why
    the pair is (not) connected (``outcomes`` cause code) and its bisection depth."""

    left: int  # step of the left point
    right: int
    train: np.ndarray  # (n_points,) losses on the line
    val: np.ndarray
    cause: int
    depth: int

    @property
    def connected(self) -> bool:
        return self.cause == CONNECTED


@dataclass
class Bisection:
    """Result of bisecting the intervals of a checkpoint grid: ordered points, the edges
    between neighbours, and what it cost."""

    points: list[Point] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    n_bisections: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class PathProjector:
    """Projects SGD states of one trajectory and bisects between them.

    The grid checkpoints' projections are ``given`` (made by the grid jobs, once per
    checkpoint and seed) where the workflow runs it; the ones not given are projected here.
    With a ``cache`` every projection is persisted as it finishes, the one in progress every
    ``save_every_s`` seconds, and one the cache already holds (from a killed earlier attempt)
    is reused instead of rerunning its GD. The SGD replays to midpoints are still redone:
    they are cheap next to the projections, and the bisection then runs exactly as in an
    uninterrupted job.
    """

    def __init__(
        self,
        trajectory: zarr.Group,
        data: DeviceDataset,
        settings: Mapping[str, Any],
        device: str | torch.device = "cpu",
        cache: ProjectionCache | None = None,
        given: Mapping[int, Projection] | None = None,
        save_every_s: float = 30.0,
    ) -> None:
        self.group = trajectory
        self.data = data
        self.settings = dict(settings)
        self.device = resolve_device(device)
        self.sgd = trainer_for(trajectory, self.device, data)
        self.gd = gd_trainer(trajectory, self.device, data)
        self.threshold = float(settings["loss_threshold"])
        self.alphas = interpolation_alphas(int(settings["n_points"]))
        self.losses = PointLosses(
            self.sgd.model, self.sgd.loss_fn, settings["interpolation_batch"], self.sgd.chunk
        )
        self.timings = {"project": 0.0, "replay": 0.0, "interpolate": 0.0}
        self.cache = cache
        self.given = dict(given or {})
        self.save_every_s = float(save_every_s)
        self.n_reused = 0  # projections taken from the cache
        self.n_projected = 0  # projections made here by GD

    def project(self, state: TrainState) -> Projection:
        if self.cache is not None and state.step in self.cache:
            self.n_reused += 1
            return self.cache[state.step]
        start = time.perf_counter()
        progress = self.cache.progress(state.step) if self.cache is not None else None
        result = project(
            self.gd,
            state,
            self.threshold,
            int(self.settings["max_gd_steps"]),
            bool(self.settings["reset_momentum"]),
            self.settings.get("max_loss_rise"),
            progress,
            self.save_every_s,
        )
        self.timings["project"] += time.perf_counter() - start
        self.n_projected += 1
        if self.cache is not None:
            self.cache.add(state.step, result)
            progress.clear()
        return result

    def line(self, a: Projection, b: Projection) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation loss at the interpolation points between a and b."""
        start = time.perf_counter()
        params, buffers = line_points((a.params, a.buffers), (b.params, b.buffers), self.alphas)
        d = self.data
        train = self.losses(params, buffers, d.x_train, d.y_train)
        val = self.losses(params, buffers, d.x_val, d.y_val)
        self.timings["interpolate"] += time.perf_counter() - start
        return train, val

    def bisect(self, grid: Sequence[int], bar=None) -> Bisection:
        """Projected path through the checkpoints ``grid`` (indices, increasing): each one
        projected, each interval between neighbours bisected. Every stored checkpoint in the
        range is an exact starting point for replays."""
        states = SGDStates(
            self.group,
            self.sgd,
            range(grid[0], grid[-1] + 1),
            float(self.settings["replay_cache_mb"]) * 2**20,
        )
        max_depth = self.settings["max_depth"]
        max_depth = math.inf if max_depth is None else int(max_depth)
        steps = np.asarray(self.group["step"][...])
        grid_steps = [int(steps[k]) for k in grid]
        result = Bisection()
        nodes: dict[int, Point] = {}
        stack = [(a, b, 0) for a, b in reversed(list(itertools.pairwise(grid_steps)))]
        while stack:
            left, right, depth = stack.pop()
            for step in (left, right):
                if step not in nodes:  # a grid checkpoint: given, or projected here once
                    given = self.given.get(step)
                    projection = given or self.project(states.state_at(step))
                    nodes[step] = Point(step, 0, projection)
            pa, pb = nodes[left].projection, nodes[right].projection
            train, val = self.line(pa, pb)
            if not (pa.converged and pb.converged):
                cause = NOT_CONVERGED
            elif np.all(train < self.threshold):
                cause = CONNECTED
            else:
                cause = BARRIER
            if cause != BARRIER or right - left <= 1 or depth >= max_depth:
                result.edges.append(Edge(left, right, train, val, cause, depth))
                states.forget_before(right)
                if bar is not None:
                    bar.update(right - left)
                continue
            mid = (left + right) // 2
            # Possible later midpoints inside (left, mid): cache them while replaying there.
            levels = min(max_depth - depth - 1, math.ceil(math.log2(mid - left)) + 1)
            keep = bisection_midpoints(left, mid, int(levels))
            start = time.perf_counter()
            sgd_state = states.state_at(mid, keep)
            self.timings["replay"] += time.perf_counter() - start
            nodes[mid] = Point(mid, depth + 1, self.project(sgd_state))
            result.n_bisections += 1
            stack.append((mid, right, depth + 1))
            stack.append((left, mid, depth + 1))
        result.points = [nodes[s] for s in sorted(nodes)]
        result.timings = {**self.timings, "replayed_steps": states.replayed_steps}
        return result
