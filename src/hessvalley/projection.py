"""Projected paths: SGD states projected to the valley floor (Wei & Schwab 2020 §2.1.1, A.2).

A state is *projected* by gradient descent on the full training set with the run's learning
rate and momentum (no mini-batch noise) until the full training loss is below
``loss_threshold``, or a step cap. Two projected states are *line connected* when the
training loss at ``n_points`` evenly spaced points strictly between them, and at both ends,
is below the threshold. Between consecutive checkpoints A (step a) and B (step b) whose
projections are not line connected, SGD is replayed exactly from A to step (a+b)//2, that
state projected, and both halves treated the same way, until every neighbouring pair is
connected or sits at adjacent steps (or ``max_depth`` halvings deep). The ordered projected
states are the *projected path*.

Conventions (config/README.md, "projection"):
- Loss = the run's loss in eval mode over the whole training set (split A for
  ``train_on: A``), exactly what the training curves report (``Trainer.evaluate``).
- Projection GD starts with zero momentum (``reset_momentum``): the projected point depends
  on the parameters alone, not on the noisy SGD velocity. Its BatchNorm handling is the
  run's ``batch_norm_mode`` for full-batch steps (as any GD in this project); the projected
  state keeps the running statistics GD leaves.
- Interpolated points interpolate parameters and floating-point buffers (BatchNorm running
  statistics) linearly and evaluate in eval mode.
- A pair with a non-converged end is a failed connection and is not bisected: no finer
  path can connect a point that is not a minimum.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hessvalley import store
from hessvalley.data import DeviceDataset, load_dataset
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.losses import LossFn
from hessvalley.models import has_batch_norm
from hessvalley.path_store import (
    BARRIER,
    CONNECTED,
    CONVERGED,
    DIVERGED,
    NOT_CONVERGED,
    STEP_CAP,
    counts,
)
from hessvalley.progress import progress
from hessvalley.projection_plan import projection_grid, segment_grid
from hessvalley.train import Trainer, trainer_for
from hessvalley.trajectory_store import METRICS, TrainState, open_trajectory, read_state

# -- projection --------------------------------------------------------------------------------


@dataclass
class Projection:
    """A projected state and how GD got there."""

    params: Tensor  # (P,) float32, CPU
    buffers: Tensor  # (Q,) float64, CPU
    gd_steps: int
    status: int
    start_loss: float  # full training loss of the state before projection
    metrics: dict[str, float]  # eval-mode train/val loss and accuracy of the projected state

    @property
    def converged(self) -> bool:
        return self.status == CONVERGED


class ProjectionCache:
    """The finished projections of one segment job, kept on disk as each one completes.

    A segment job spends nearly all its time in GD projections; a job killed by SLURM (time
    limit, preemption, scancel) and resubmitted would otherwise redo every one. Each
    projection is appended to ``<output>.projections.partial`` (zarr, one row per projection,
    keyed by its SGD step) as soon as it finishes, and a later attempt with the same spec
    (projection settings, trajectory config hash, seed, segment) loads them and skips their GD;
    a store made by another spec is discarded. Rows count once ``n_complete`` (written after
    them) covers them, and zarr writes each file atomically, so a kill mid-append loses at
    most the projection in progress. The bisection is deterministic given the projections,
    so a resumed segment's store is bit for bit an uninterrupted one's.
    """

    SCALARS = (
        ("step", "int64"),
        ("gd_steps", "int64"),
        ("status", "int8"),
        ("start_loss", "float64"),
        *((name, "float64") for name in METRICS),
    )

    def __init__(
        self, output: str | os.PathLike, spec: Mapping[str, Any], n_params: int, n_buffers: int
    ) -> None:
        base = f"{os.fspath(output)}.projections"
        self.path = store.partial_path(base)
        self.group, resumed = store.open_partial(base, store.config_hash(spec))
        self.n_buffers = n_buffers
        if not resumed:
            self._create(spec, n_params)
        self.projections: dict[int, Projection] = self._load()

    def _create(self, spec: Mapping[str, Any], n_params: int) -> None:
        for name, dtype in self.SCALARS:
            store.create(self.group, name, ("projection",), shape=(0,), dtype=dtype, chunks=(64,))
        rows = {
            "params": ("param", n_params, "float32"),
            "buffers": ("buffer", self.n_buffers, "float64"),
        }
        for name, (dim, size, dtype) in rows.items():
            if size:
                store.create(
                    self.group,
                    name,
                    ("projection", dim),
                    shape=(0, size),
                    dtype=dtype,
                    chunks=(1, size),
                    compress=False,
                )
        # The hash goes in last: a store killed before it is complete is never reused.
        self.group.update_attributes({**store.provenance(spec), "n_complete": 0})

    @classmethod
    def for_segment(
        cls,
        output: str | os.PathLike,
        settings: Mapping[str, Any],
        trajectory: zarr.Group,
        seed: int,
        segment: int,
    ) -> ProjectionCache:
        """The cache of segment ``segment`` of ``trajectory`` projected with ``settings``."""
        spec = {
            "projection": dict(settings),
            "trajectory": trajectory.attrs["config_hash"],
            "seed": seed,
            "segment": segment,
        }
        n_buffers = trajectory["buffers"].shape[1] if "buffers" in trajectory else 0
        return cls(output, spec, trajectory["params"].shape[1], n_buffers)

    def __len__(self) -> int:
        return len(self.projections)

    def __contains__(self, step: int) -> bool:
        return step in self.projections

    def __getitem__(self, step: int) -> Projection:
        return self.projections[step]

    def _load(self) -> dict[int, Projection]:
        n = int(self.group.attrs["n_complete"])
        column = {name: np.asarray(self.group[name][:n]) for name, _ in self.SCALARS}
        params = np.asarray(self.group["params"][:n])
        buffers = np.asarray(self.group["buffers"][:n]) if self.n_buffers else np.zeros((n, 0))
        return {
            int(column["step"][i]): Projection(
                torch.from_numpy(params[i]),
                torch.from_numpy(buffers[i]),
                int(column["gd_steps"][i]),
                int(column["status"][i]),
                float(column["start_loss"][i]),
                {name: float(column[name][i]) for name in METRICS},
            )
            for i in range(n)
        }

    def add(self, step: int, projection: Projection) -> None:
        """Append ``projection`` of the SGD state at ``step`` and commit it."""
        n = int(self.group.attrs["n_complete"])
        row = {
            "step": step,
            "gd_steps": projection.gd_steps,
            "status": projection.status,
            "start_loss": projection.start_loss,
            **{name: projection.metrics[name] for name in METRICS},
            "params": projection.params.numpy(),
        }
        if self.n_buffers:
            row["buffers"] = projection.buffers.numpy()
        for name, value in row.items():
            array = self.group[name]
            array.resize((n + 1, *array.shape[1:]))
            array[n] = value
        self.group.attrs["n_complete"] = n + 1
        self.projections[step] = projection

    def remove(self) -> None:
        """Delete the store (once the segment's output is published)."""
        shutil.rmtree(self.path, ignore_errors=True)


@torch.no_grad()
def full_train_loss(trainer: Trainer) -> float:
    """Eval-mode mean loss over the trainer's training set (chunked), as ``evaluate``."""
    was_training = trainer.model.training
    trainer.model.eval()
    x, y = trainer.data.x_train, trainer.data.y_train
    total = torch.zeros((), dtype=torch.float64, device=trainer.device)
    for start in range(0, len(y), trainer.chunk):
        part = slice(start, start + trainer.chunk)
        total += trainer.loss_fn(trainer.model(x[part]), y[part]).double() * len(y[part])
    trainer.model.train(was_training)
    return (total / len(y)).item()


def gd_trainer(
    trajectory: str | zarr.Group, device: str | torch.device, data: DeviceDataset
) -> Trainer:
    """A full-batch (noise-free) copy of the trajectory's trainer: same lr and momentum."""
    group = open_trajectory(trajectory)
    optimizer = {**group.attrs["run"]["optimizer"], "batch_size": "full"}
    return trainer_for(group, device, data, {"optimizer": optimizer})


def project(
    trainer: Trainer,
    state: TrainState,
    loss_threshold: float,
    max_steps: int,
    reset_momentum: bool = True,
) -> Projection:
    """GD from ``state`` until the full training loss is below ``loss_threshold``.

    ``trainer`` must be a full-batch trainer (``gd_trainer``). For nets without BatchNorm
    the loss of each GD step's forward pass is the eval-mode loss, so the stopping test
    costs nothing; with BatchNorm an eval-mode pass per step decides.
    """
    if not trainer.full_batch:
        raise ValueError("project needs a full-batch trainer (see gd_trainer)")
    momentum = None if reset_momentum else state.momentum
    trainer.load_state(TrainState(state.params, momentum, state.buffers, 0))
    eval_mode_check = has_batch_norm(trainer.model)
    steps, start_loss, status = 0, math.nan, STEP_CAP
    while True:
        loss = full_train_loss(trainer) if eval_mode_check else trainer.gradient(0).item()
        if steps == 0:
            start_loss = loss
        if not math.isfinite(loss):
            status = DIVERGED
            break
        # Confirm with the evaluation the path records, so "converged" and the stored loss
        # never disagree by rounding.
        if loss < loss_threshold and (eval_mode_check or full_train_loss(trainer) < loss_threshold):
            status = CONVERGED
            break
        if steps >= max_steps:
            break
        if eval_mode_check:
            trainer.gradient(0)
        trainer.optimizer.step()
        steps += 1
    final = trainer.state(steps)
    return Projection(final.params, final.buffers, steps, status, start_loss, trainer.evaluate())


# -- losses at many parameter vectors ---------------------------------------------------------


class PointLosses:
    """Full-data eval-mode losses at many flat parameter (and buffer) vectors of one model.

    ``batch`` points share one call: ``torch.func.functional_call`` vmapped over stacked
    parameter sets, so a small net's matmuls become one batched matmul per layer
    (bench/bench_projection.py measures the gain). Activations of ``batch`` points times
    ``chunk`` samples are alive at once.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: int = 8, chunk: int = 2048):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.loss_fn = loss_fn
        self.batch = max(int(batch), 1)
        self.chunk = max(int(chunk), 1)
        self.params = [(n, p.shape, p.dtype) for n, p in self.module.named_parameters()]
        self.buffers = [(n, b.shape, b.dtype) for n, b in self.module.named_buffers()]

        def point_loss(params, buffers, x, y):
            return self.loss_fn(functional_call(self.module, (params, buffers), (x,)), y)

        self._one = point_loss
        self._many = vmap(point_loss, in_dims=(0, 0, None, None))

    @staticmethod
    def _split(flat: Tensor, layout) -> dict[str, Tensor]:
        """(k, N) rows -> {name: (k, *shape)} in each tensor's dtype."""
        out, offset = {}, 0
        for name, shape, dtype in layout:
            n = math.prod(shape)
            out[name] = flat[:, offset : offset + n].reshape(flat.shape[0], *shape).to(dtype)
            offset += n
        return out

    @torch.no_grad()
    def __call__(self, params: Tensor, buffers: Tensor, x: Tensor, y: Tensor) -> np.ndarray:
        """Mean loss over (x, y) at each row of ``params`` (k, P) / ``buffers`` (k, Q)."""
        device = x.device
        params = params.to(device)
        buffers = buffers.to(device)
        out = np.zeros(params.shape[0])
        n = len(y)
        for first in range(0, params.shape[0], self.batch):
            rows = slice(first, first + self.batch)
            p = self._split(params[rows], self.params)
            b = self._split(buffers[rows], self.buffers)
            total = torch.zeros(p[self.params[0][0]].shape[0], dtype=torch.float64, device=device)
            for start in range(0, n, self.chunk):
                xs, ys = x[start : start + self.chunk], y[start : start + self.chunk]
                if params[rows].shape[0] == 1:
                    one = {k: v[0] for k, v in p.items()}, {k: v[0] for k, v in b.items()}
                    losses = self._one(*one, xs, ys)[None]
                else:
                    losses = self._many(p, b, xs, ys)
                total += losses.double() * len(ys)
            out[rows] = (total / n).cpu().numpy()
        return out


def interpolation_alphas(n_points: int) -> np.ndarray:
    """``n_points`` evenly spaced points strictly between the ends (the ends are the
    projected points themselves)."""
    return np.arange(1, n_points + 1) / (n_points + 1)


def line_points(
    a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], alphas: np.ndarray
) -> tuple[Tensor, Tensor]:
    """Stacked (params, buffers) at (1 - alpha) a + alpha b for each alpha."""
    t = torch.as_tensor(alphas)
    params = torch.lerp(a[0][None].double(), b[0][None].double(), t[:, None]).float()
    buffers = torch.lerp(a[1][None], b[1][None], t[:, None].to(a[1].dtype))
    return params, buffers


# -- exact SGD states at any step ---------------------------------------------------------------


def state_bytes(state: TrainState) -> int:
    momentum = 0 if state.momentum is None else state.momentum.numel() * 4
    return state.params.numel() * 4 + momentum + state.buffers.numel() * 8


class SGDStates:
    """Exact SGD states at any step between two checkpoints of a trajectory.

    A state at step s is replayed from the closest known state at or before s: a stored
    checkpoint, a cached state, or the replay trainer itself (which then just steps on).
    A replay also caches the states at the steps in ``keep`` it passes (the bisection's
    possible later midpoints), within ``cache_bytes``; so the whole bisection of a segment
    costs at most one replay pass over it when the cache is large enough.
    """

    def __init__(
        self,
        trajectory: zarr.Group,
        trainer: Trainer,
        checkpoints: Iterable[int],
        cache_bytes: float = 1 << 30,
    ) -> None:
        self.group = trajectory
        self.trainer = trainer
        steps = np.asarray(trajectory["step"][...])
        self.stored = {int(steps[k]): int(k) for k in checkpoints}
        self.cache: dict[int, TrainState] = {}
        self.cache_bytes = cache_bytes
        self.cursor: int | None = None  # the step the replay trainer holds
        self.replayed_steps = 0

    def _known(self, step: int) -> TrainState:
        if step in self.cache:
            return self.cache[step]
        return read_state(self.group, self.stored[step])

    def _cached_bytes(self) -> int:
        return sum(state_bytes(s) for s in self.cache.values())

    def state_at(self, step: int, keep: Sequence[int] = ()) -> TrainState:
        """The SGD state after ``step`` steps (exact replay of the trajectory)."""
        if step in self.cache or step in self.stored:
            return self._known(step)
        starts = [s for s in (*self.cache, *self.stored) if s <= step]
        if not starts:
            raise ValueError(f"no stored or cached state at or before step {step}")
        start = max(starts)
        if self.cursor is None or not start <= self.cursor <= step:
            self.trainer.load_state(self._known(start))
            self.cursor = start
        budget = self.cache_bytes - self._cached_bytes()
        wanted = {s for s in keep if self.cursor < s < step}
        for s in range(self.cursor, step):
            self.trainer.train_step(s)
            self.replayed_steps += 1
            if s + 1 in wanted:
                snapshot = self.trainer.state(s + 1)
                if state_bytes(snapshot) <= budget:
                    self.cache[s + 1] = snapshot
                    budget -= state_bytes(snapshot)
        self.cursor = step
        state = self.trainer.state(step)
        self.cache[step] = state
        return state

    def forget_before(self, step: int) -> None:
        """Drop cached states before ``step`` (the bisection has moved past them)."""
        for s in [s for s in self.cache if s < step]:
            del self.cache[s]


def bisection_midpoints(left: int, right: int, levels: int) -> list[int]:
    """The midpoints the bisection of (left, right) may need within ``levels`` more halvings,
    shallowest first."""
    out, frontier = [], [(left, right)]
    for _ in range(levels):
        nxt = []
        for lo, hi in frontier:
            if hi - lo > 1:
                mid = (lo + hi) // 2
                out.append(mid)
                nxt += [(lo, mid), (mid, hi)]
        frontier = nxt
    return out


# -- bisection of one segment -----------------------------------------------------------------


@dataclass
class Point:
    step: int
    depth: int
    projection: Projection


@dataclass
class Edge:
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

    With a ``cache`` every projection is persisted as it finishes, and one the cache already
    holds (from a killed earlier attempt) is reused instead of rerunning its GD. The SGD
    replays to midpoints are still redone: they are cheap next to the projections, and the
    bisection then runs exactly as in an uninterrupted job.
    """

    def __init__(
        self,
        trajectory: zarr.Group,
        data: DeviceDataset,
        settings: Mapping[str, Any],
        device: str | torch.device = "cpu",
        cache: ProjectionCache | None = None,
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
        self.n_reused = 0  # projections taken from the cache

    def project(self, state: TrainState) -> Projection:
        if self.cache is not None and state.step in self.cache:
            self.n_reused += 1
            return self.cache[state.step]
        start = time.perf_counter()
        result = project(
            self.gd,
            state,
            self.threshold,
            int(self.settings["max_gd_steps"]),
            bool(self.settings["reset_momentum"]),
        )
        self.timings["project"] += time.perf_counter() - start
        if self.cache is not None:
            self.cache.add(state.step, result)
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
                if step not in nodes:  # a grid checkpoint, projected once
                    nodes[step] = Point(step, 0, self.project(states.state_at(step)))
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


# -- stores ---------------------------------------------------------------------------------------


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


def project_segment(
    settings: Mapping[str, Any],
    segment: int,
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """Segment job: projected path between the checkpoints of segment ``segment``."""
    device = resolve_device(device)
    group = open_trajectory(trajectory)
    if not group.attrs.get("complete"):
        raise HessvalleyError(f"trajectory {trajectory} is incomplete")
    n_checkpoints = int(group.attrs["n_checkpoints"])
    try:
        grid = segment_grid(
            n_checkpoints,
            settings["checkpoint_stride"],
            settings["intervals_per_segment"],
            segment,
        )
    except ValueError as err:
        raise HessvalleyError(f"{trajectory}: {err} (did the run stop early?)") from err
    dataset = load_dataset(data, device, group.attrs["run"]["train_on"])
    cache = ProjectionCache.for_segment(output, settings, group, seed, segment)
    if len(cache):
        print(f"resuming segment {segment}: {len(cache)} projections from an earlier attempt")
    projector = PathProjector(group, dataset, settings, device, cache)
    steps = np.asarray(group["step"][...])
    a, b = int(steps[grid[0]]), int(steps[grid[-1]])
    bar = progress(total=b - a, desc=f"{setting} seed {seed} segment {segment}", unit="step")
    start = time.perf_counter()
    result = projector.bisect(grid, bar)
    bar.close()
    full_grid = projection_grid(n_checkpoints, settings["checkpoint_stride"])
    grid_steps = {int(steps[k]) for k in full_grid}
    stored = _stored_points(result.points, settings["store_params"], grid_steps)
    if grid[-1] != full_grid[-1]:  # the next segment starts at this end and stores it
        stored = [i for i in stored if i != len(result.points) - 1]
    arrays = {
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
        f"({summary['n_points'] - projector.n_reused} projected, {projector.n_reused} from an "
        f"earlier attempt), {summary['n_failed_connections']} failed connections, "
        f"{summary['n_not_converged']} not converged, {result.n_bisections} bisections; "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )


# -- trace along the projected path ----------------------------------------------------------


def slope_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of y on x and its standard error (nan when undetermined)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan, math.nan
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    if len(x) < 3:
        return float(coef[0]), math.nan
    residual = y - design @ coef
    variance = residual @ residual / (len(x) - 2)
    return float(coef[0]), float(math.sqrt(variance / np.sum((x - x.mean()) ** 2)))


def path_trace(
    trace: Mapping[str, Any],
    setting: str,
    seed: int,
    path: str,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """Hessian trace of the training loss at the projected points (all, or the projected
    checkpoints), with the estimator's standard error and a slope fit along the path."""
    from hessvalley.curvature import HessianOperator, hutchinson_trace, hutchpp_trace
    from hessvalley.curvature.trace import trace_budget
    from hessvalley.flat import unflatten_into
    from hessvalley.losses import build_loss
    from hessvalley.models import build_model

    device = resolve_device(device)
    run = open_trajectory(trajectory).attrs["run"]
    dataset = load_dataset(data, device, run["train_on"])
    projected = store.open_store(path)
    state_point = np.asarray(projected["state_point"][...])
    point_arrays = {
        name: np.asarray(projected[name][...])[state_point]
        for name in ("step", "epoch", "train_loss", "val_loss", "converged", "on_grid")
    }
    chosen = np.arange(len(state_point))
    if trace["at"] == "grid":
        chosen = chosen[point_arrays["on_grid"]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the weights are overwritten; this only silences the init
        model = build_model(run["model"], dataset.input_shape, dataset.n_classes).to(device)
    loss_fn = build_loss(run["loss"])
    estimator = hutchpp_trace if trace["method"] == "hutchpp" else hutchinson_trace
    budget = trace_budget(trace["method"], int(trace["probes"]))
    n_params = sum(p.numel() for p in model.parameters())
    if "sketch_size" in budget and budget["sketch_size"] >= n_params:
        raise HessvalleyError(
            f"projection.trace.probes: {trace['probes']} gives a Hutch++ sketch of "
            f"{budget['sketch_size']} vectors, not below the {n_params} parameters"
        )
    estimates, stderrs, samples = [], [], []
    for index in progress(chosen, desc=f"{setting} seed {seed} trace", unit="point"):
        unflatten_into(torch.from_numpy(np.asarray(projected["params"][index])), model.parameters())
        unflatten_into(torch.from_numpy(np.asarray(projected["buffers"][index])), model.buffers())
        op = HessianOperator(
            model,
            loss_fn,
            dataset.x_train,
            dataset.y_train,
            chunk_size=int(run.get("eval_batch_size", 2048)),
            bn_policy="eval",
        )
        generator = torch.Generator().manual_seed(int(trace["seed"]))  # same probes everywhere
        result = estimator(op, generator, **budget)
        estimates.append(result.estimate)
        stderrs.append(result.stderr)
        samples.append(result.samples.numpy())
    epoch = point_arrays["epoch"][chosen]
    estimates = np.asarray(estimates)
    fit = epoch >= float(trace["fit_from_epoch"])
    slope, slope_stderr = slope_fit(epoch[fit], estimates[fit])
    arrays = {
        **{name: (("point",), values[chosen]) for name, values in point_arrays.items()},
        "state": (("point",), chosen.astype(np.int64)),
        "trace": (("point",), estimates),
        "trace_stderr": (("point",), np.asarray(stderrs)),
        "trace_samples": (("point", "probe"), np.stack(samples)),
        "in_fit": (("point",), fit),
    }
    attrs = {
        **store.provenance({"trace": dict(trace), "path": projected.attrs["config_hash"]}, seed),
        "setting": setting,
        "method": trace["method"],
        "budget": budget,
        "matvecs": int(trace["probes"]),
        "bn_policy": "eval",
        "slope_per_epoch": slope,
        "slope_stderr": slope_stderr,
        "fit_from_epoch": float(trace["fit_from_epoch"]),
        "n_fit": int(fit.sum()),
    }
    store.write_store(output, arrays, attrs)
    print(
        f"{setting} seed {seed}: trace at {len(chosen)} projected points, "
        f"{estimates[0]:.4g} -> {estimates[-1]:.4g}; slope from epoch "
        f"{trace['fit_from_epoch']}: {slope:.4g} ± {slope_stderr:.2g} per epoch"
    )
