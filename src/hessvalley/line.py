"""The loss along the straight line between two stored states (Sagun et al. 2017 §4.1, Fig 10).

``line_between_states`` is the stage for a config entry ``lines.<name>``: it reads one
checkpoint of each of two trajectories of the same model on the same data and evaluates the
full training and validation loss and accuracy at θ(α) = (1 − α) θ_from + α θ_to on a grid of
α that always holds 0 and 1 exactly. α < 0 and α > 1 extend the line beyond either end.

Exactness: the float32 parameters are interpolated in float64 and rounded once to float32,
so α = 0 and α = 1 give the stored states bit for bit, and with BatchNorm in eval mode their
losses are the trajectories' stored ones (the same chunks; one point per call, the default
``points_per_call: 1``, is the plain forward pass of the training curves, bit for bit).
BatchNorm (``batch_norm``): ``eval`` interpolates the running statistics the same way as the
parameters (integer counters too, truncated: eval mode never reads them); ``train``
normalises with the statistics of each chunk of ``chunk_size`` samples in data order (the
validation set with its own chunks' statistics), so the result is deterministic but depends
on the chunking, and the running statistics are neither used nor changed. The points are
evaluated by the package's one point evaluator (``PointLosses``): ``points_per_call`` > 1
vmaps that many points per call (faster for small nets; last-bit differences from the plain
pass).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from hessvalley import store
from hessvalley.data import DeviceDataset, load_dataset
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.losses import LossFn, build_loss
from hessvalley.models import build_model, has_batch_norm
from hessvalley.projection.interpolation import PointLosses
from hessvalley.trajectory_store import METRICS, open_trajectory, read_state

# The keys of a ``lines.<name>`` entry and their defaults (as config.schema.yaml should state).
END_DEFAULTS: dict[str, Any] = {"checkpoint": -1, "seed": 0}
ALPHA_DEFAULTS: dict[str, Any] = {"start": -0.5, "stop": 1.5, "points": 41}
LINE_DEFAULTS: dict[str, Any] = {"batch_norm": "eval", "chunk_size": None, "points_per_call": 1}
# What both runs must share for a line between their states to mean anything.
SHARED_RUN_KEYS = ("model", "dataset", "train_on", "loss")


@dataclass
class End:
    """One end of the line: a checkpoint of a trajectory and what the store says about it."""

    group: zarr.Group
    path: str
    run: Mapping[str, Any]  # the run's validated spec (trajectory attrs["run"])
    setting: str
    seed: int
    checkpoint: int  # resolved (non-negative)
    step: int
    params: torch.Tensor  # (P,) float64, exactly the stored float32 values
    buffers: torch.Tensor  # (Q,) float64

    def describe(self) -> dict[str, Any]:
        """The end's provenance for the line store's attrs."""
        k = self.checkpoint
        return {
            "run": self.setting,
            "seed": self.seed,
            "checkpoint": k,
            "step": self.step,
            "epoch": float(self.group["epoch"][k]),
            "config_hash": self.group.attrs["config_hash"],
            "trajectory": self.path,
            "stored": {name: float(self.group[name][k]) for name in METRICS},
        }


def _read_end(key: str, side: str, spec: Mapping[str, Any], path: str) -> End:
    """Open ``path`` and read checkpoint ``spec["checkpoint"]``, refusing a trajectory that is
    not the run and seed ``lines.<name>.<side>`` names."""
    group = open_trajectory(path)
    setting, seed = group.attrs["setting"], int(group.attrs["seed"])
    if (setting, seed) != (spec["run"], int(spec["seed"])):
        raise HessvalleyError(
            f"{key}.{side}: trajectory {path} is run {setting!r} seed {seed}, not run "
            f"{spec['run']!r} seed {spec['seed']}"
        )
    n = int(group.attrs["n_checkpoints"])
    requested = int(spec["checkpoint"])
    if not -n <= requested < n:
        raise HessvalleyError(
            f"{key}.{side}.checkpoint: {requested} is out of range: run {setting!r} has {n} "
            "checkpoints (negative counts from the end)"
        )
    k = requested % n
    state = read_state(group, k)
    return End(
        group,
        str(path),
        group.attrs["run"],
        setting,
        seed,
        k,
        state.step,
        state.params.double(),
        state.buffers.double(),
    )


def check_same_family(key: str, first: End, second: End) -> None:
    """Refuse a line between runs of different models, data or losses (naming the entry)."""
    differ = [k for k in SHARED_RUN_KEYS if first.run.get(k) != second.run.get(k)]
    if differ:
        details = "; ".join(f"{k}: {first.run.get(k)!r} vs {second.run.get(k)!r}" for k in differ)
        raise HessvalleyError(
            f"{key}: runs {first.setting!r} and {second.setting!r} differ in "
            f"{', '.join(differ)} ({details}); a line needs one model on one dataset"
        )


def alpha_grid(spec: Mapping[str, Any], key: str) -> np.ndarray:
    """``points`` evenly spaced α from ``start`` to ``stop``, with 0 and 1 put in exactly (a
    grid value within 1e-9 of either is replaced by it, else it is added)."""
    spec = {**ALPHA_DEFAULTS, **spec}
    start, stop, points = float(spec["start"]), float(spec["stop"]), int(spec["points"])
    if not (start <= 0.0 and stop >= 1.0 and points >= 2):
        raise HessvalleyError(
            f"{key}.alpha: start {start} <= 0, stop {stop} >= 1 and points {points} >= 2 "
            "needed: the line must cover both end points"
        )
    grid = np.linspace(start, stop, points)
    for end in (0.0, 1.0):
        grid[np.abs(grid - end) < 1e-9] = end
    grid = np.union1d(grid, [0.0, 1.0])
    if not np.any((grid > 0) & (grid < 1)):
        raise HessvalleyError(
            f"{key}.alpha: no point strictly between 0 and 1 ({points} points from {start} "
            f"to {stop}): a barrier cannot be seen; raise points"
        )
    return grid


def interpolate(first: torch.Tensor, second: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 − α) first + α second in float64 (exactly ``first`` at 0 and ``second`` at 1)."""
    return (1.0 - alpha) * first + alpha * second


def run_model(run: Mapping[str, Any], data: DeviceDataset) -> tuple[nn.Module, LossFn]:
    """The run's model (initial weights: they are overwritten) and loss, as the Trainer
    builds them, without a trainer's data order and optimizer state (a line never steps)."""
    model = build_model(run["model"], data.input_shape, data.n_classes)
    return model.to(data.x_train.device).eval(), build_loss(run["loss"])


def losses_along(
    model: nn.Module,
    loss_fn: LossFn,
    data: DeviceDataset,
    first: End,
    second: End,
    alpha: np.ndarray,
    batch_norm: str,
    chunk_size: int,
    points_per_call: int = 1,
) -> dict[str, np.ndarray]:
    """Training and validation loss and accuracy at each α (``METRICS`` -> (n_alpha,)),
    ``points_per_call`` points at a time (their states built one block at a time)."""
    evaluate = PointLosses(model, loss_fn, points_per_call, chunk_size, batch_norm)
    out: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for start in range(0, len(alpha), evaluate.batch):
        block = alpha[start : start + evaluate.batch]
        params = torch.stack([interpolate(first.params, second.params, a) for a in block])
        buffers = torch.stack([interpolate(first.buffers, second.buffers, a) for a in block])
        for split, x, y in (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val)):
            loss, accuracy = evaluate.metrics(params.float(), buffers, x, y)
            out[f"{split}_loss"].append(loss)
            out[f"{split}_acc"].append(accuracy)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def barrier_summary(alpha: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    """The barrier on (0, 1): the highest loss at an interior α minus the higher end point's
    (positive = a barrier), where it is, and how much the loss rises from each end to the
    farthest α beyond it (None where the grid does not extend past that end). Non-finite
    values (a diverged point) give None."""
    at_0, at_1 = float(loss[alpha == 0.0][0]), float(loss[alpha == 1.0][0])
    interior = (alpha > 0) & (alpha < 1)
    peak = int(np.flatnonzero(interior)[np.argmax(loss[interior])])
    rise_before = float(loss[0] - at_0) if alpha[0] < 0 else math.nan
    rise_beyond = float(loss[-1] - at_1) if alpha[-1] > 1 else math.nan
    return {
        "barrier": _finite_or_none(float(np.max(loss[interior])) - max(at_0, at_1)),
        "barrier_alpha": float(alpha[peak]),
        "end_losses": [_finite_or_none(at_0), _finite_or_none(at_1)],
        "rise_before": _finite_or_none(rise_before),
        "rise_beyond": _finite_or_none(rise_beyond),
        "rises_before": bool(rise_before > 0) if math.isfinite(rise_before) else None,
        "rises_beyond": bool(rise_beyond > 0) if math.isfinite(rise_beyond) else None,
    }


def line_between_states(
    line: Mapping[str, Any],
    name: str,
    start: str,
    end: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """Write the line store of ``lines.<name>``: metrics along α from the state of ``start``
    (``line["from"]``) to that of ``end`` (``line["to"]``), the barrier and the rises."""
    key = f"lines.{name}"
    line = {
        **LINE_DEFAULTS,
        **line,
        "from": {**END_DEFAULTS, **line["from"]},
        "to": {**END_DEFAULTS, **line["to"]},
        "alpha": {**ALPHA_DEFAULTS, **line.get("alpha", {})},
    }
    if line["batch_norm"] not in ("eval", "train"):
        raise HessvalleyError(f"{key}.batch_norm: {line['batch_norm']!r} is not eval or train")
    first = _read_end(key, "from", line["from"], start)
    second = _read_end(key, "to", line["to"], end)
    check_same_family(key, first, second)
    alpha = alpha_grid(line["alpha"], key)
    device = resolve_device(device)
    dataset = load_dataset(data, device, first.run["train_on"])
    chunk_size = int(line["chunk_size"] or first.run.get("eval_batch_size", 2048))
    model, loss_fn = run_model(first.run, dataset)
    metrics = losses_along(
        model,
        loss_fn,
        dataset,
        first,
        second,
        alpha,
        line["batch_norm"],
        chunk_size,
        int(line["points_per_call"]),
    )
    summary = barrier_summary(alpha, metrics["train_loss"])
    summary["val_barrier"] = barrier_summary(alpha, metrics["val_loss"])["barrier"]
    identity = {
        "line": line,
        "from": first.group.attrs["config_hash"],
        "to": second.group.attrs["config_hash"],
    }
    attrs = {
        **store.provenance(identity),
        "line": name,
        "batch_norm": line["batch_norm"],
        "has_batch_norm": has_batch_norm(model),
        "chunk_size": chunk_size,
        "points_per_call": int(line["points_per_call"]),
        "interpolation": "float64 (1 - alpha) from + alpha to, rounded to float32 once",
        "distance": float(torch.linalg.vector_norm(second.params - first.params)),
        "ends": {"from": first.describe(), "to": second.describe()},
        "summary": summary,
    }
    arrays = {"alpha": (("alpha",), alpha)}
    arrays.update({metric: (("alpha",), values) for metric, values in metrics.items()})
    store.write_store(output, arrays, attrs)
    barrier = summary["barrier"]
    print(
        f"{key}: {first.setting} checkpoint {first.checkpoint} -> {second.setting} "
        f"checkpoint {second.checkpoint}, {len(alpha)} points; barrier on (0, 1) "
        f"{'non-finite' if barrier is None else f'{barrier:.4g}'}"
    )
