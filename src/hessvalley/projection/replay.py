"""Exact SGD states at any step between two checkpoints: the bisection's midpoints.

A trajectory checkpoint holds everything a step depends on (parameters, momentum, BatchNorm
buffers; the data order is seeded by (seed, epoch)), so replaying SGD from it reproduces
the run bit for bit. The replay cache keeps the states the bisection may ask for next.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import zarr

from hessvalley.train import Trainer
from hessvalley.trajectory_store import TrainState, read_state


def state_bytes(state: TrainState) -> int:
    """Host memory of one cached state (float32 parameters and momentum, float64 buffers)."""
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
