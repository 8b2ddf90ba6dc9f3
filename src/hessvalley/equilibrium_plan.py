"""Where the equilibrium sweep (W&S Fig 2a, ``hessvalley.equilibrium``) measures: its points
(GD checkpoints, then each (batch size, learning rate) cell's snapshots), their seeds and A.3's
noise scale C. Pure arithmetic on the config and the GD trajectory's step record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessvalley.errors import HessvalleyError


def cell_seed(sweep_seed: int, run_seed: int, batch_index: int, lr_index: int) -> int:
    """Seed of the data order of cell (``batch_index``, ``lr_index``): independent streams per
    sweep seed, GD run seed and cell."""
    entropy = [int(sweep_seed), int(run_seed), int(batch_index), int(lr_index)]
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def noise_scale(lr: float, batch_size: int, n_train: int, momentum: float = 0.0) -> float:
    """A.3's C = η/(4S)(1 − S/M), with η/(1 − μ) for SGD with momentum μ."""
    return lr / (1.0 - momentum) / (4.0 * batch_size) * (1.0 - batch_size / n_train)


def snapshot_steps(steps: int, snapshots: int) -> list[int]:
    """``snapshots`` steps evenly spaced over the second half of ``steps``, ending at ``steps``."""
    half = steps // 2
    chosen = [half + round((steps - half) * j / snapshots) for j in range(1, snapshots + 1)]
    if snapshots < 1 or len(set(chosen)) != snapshots or chosen[0] <= half:
        raise HessvalleyError(
            f"equilibrium.snapshots = {snapshots} does not fit in the second half of "
            f"equilibrium.steps = {steps}: need 1 <= snapshots <= steps - steps // 2"
        )
    return chosen


def gd_checkpoints(n_checkpoints: int, gd_points: int) -> list[int]:
    """``gd_points`` of a GD run's checkpoints, evenly spaced after the first, the last included."""
    if gd_points <= 0:
        return []
    if n_checkpoints == 1:
        return [0]
    if gd_points >= n_checkpoints - 1:
        return list(range(1, n_checkpoints))
    spots = np.rint(np.arange(1, gd_points + 1) * (n_checkpoints - 1) / gd_points)
    return sorted({int(k) for k in spots})


@dataclass(frozen=True)
class Point:
    """One measurement: a GD checkpoint or a snapshot of an SGD cell."""

    source: str  # "sgd" or "gd"
    batch_size: int  # the GD run's batch size (all samples) for GD points
    lr: float
    noise: float  # C; 0 for GD points (S = M: no noise), NaN would break equality checks
    step: int  # SGD step since the minimum, or the GD run's step
    cell: tuple[int, int] | None = None  # (batch index, lr index) of an SGD point
    checkpoint: int = -1  # GD checkpoint of a GD point


def plan_points(sweep: Mapping[str, Any], group: Any, n_train: int) -> list[Point]:
    """Every point of the sweep in the order it is measured: GD checkpoints, then the cells
    (batch sizes outer, learning rates inner), each cell's snapshots in step order."""
    steps = np.asarray(group["step"][...])
    run_lr = float(group.attrs["run"]["optimizer"]["lr"])
    n = int(group.attrs["n_checkpoints"])
    points = [
        Point("gd", n_train, run_lr, 0.0, int(steps[k]), checkpoint=k)
        for k in gd_checkpoints(n, int(sweep["gd_points"]))
    ]
    snaps = snapshot_steps(int(sweep["steps"]), int(sweep["snapshots"]))
    momentum = float(sweep["momentum"])
    for i, size in enumerate(sweep["batch_sizes"]):
        if not 1 <= int(size) <= n_train:
            raise HessvalleyError(
                f"equilibrium.batch_sizes: {size} is not between 1 and the {n_train} training "
                "samples of the GD run"
            )
        for j, lr in enumerate(sweep["lrs"]):
            c = noise_scale(float(lr), int(size), n_train, momentum)
            points += [Point("sgd", int(size), float(lr), c, s, (i, j)) for s in snaps]
    return points
