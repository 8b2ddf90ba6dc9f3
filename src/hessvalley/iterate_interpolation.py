"""The training loss between consecutive SGD iterates (Xing et al. 2018 §2-3, Figs 1-4, Table 1).

``iterate_interpolation`` is the stage of one job of the ``barriers`` section: one run, one
seed, a group of epochs. It replays each epoch exactly from the stored checkpoint at (or
last before) the epoch's first step (``determinism.reproducing``, the data order of
``Trainer``), and every stored checkpoint the replay passes must equal the replayed
parameters and buffers bit for bit, or the job stops. For every step t it evaluates the full
training loss at θ_t^α = (1 − α) θ_t + α θ_{t+1}, α = k / ``points`` (k < ``points``), and at
the epoch's last iterate, so each iterate is evaluated once and ends two profiles; the
points of many steps share one vmapped call (``PointLosses``, ``points_per_call`` at a time)
as the replay produces them. BatchNorm: ``eval`` interpolates the running statistics with the
parameters (the state before a step holds the statistics before its forward pass);
``train`` normalises with the statistics of fixed chunks of ``chunk_size`` samples.

At every ``alignment_every``-th step of an epoch, with g_B the step's own mini-batch gradient
and H and g the Hessian and gradient of the training loss at θ_t (the Hessian factory,
``curvature`` keys, ``barriers.n_samples``): a = g_Bᵀ H g_B / |g_B|² (Xing eq. 4) and
c = gᵀ g_B / |g_B|². Along the step −η g_B the quadratic model of the loss has its minimum at
α* = c / (η a): inside the segment when η a > c (≈ 1 when g_B ≈ g). Per-step and per-epoch
summaries: ``hessvalley.segments``.

Writes ``results/<run>/seed<k>/interpolation/<group>.zarr``: dimension ``step`` (the group's
steps in order; ``iteration`` the global step, ``epoch`` 1-based), ``alpha`` and ``epochs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hessvalley import determinism, segments, store
from hessvalley.curvature.factory import hessian_at, hessian_attrs
from hessvalley.data import load_dataset
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.flat import flatten
from hessvalley.hessian_keys import hessian_keys
from hessvalley.models import has_batch_norm
from hessvalley.progress import progress
from hessvalley.projection.interpolation import PointLosses, line_points
from hessvalley.train import Trainer, trainer_for
from hessvalley.trajectory_store import open_trajectory, read_state


@dataclass(frozen=True)
class State:
    """Flat float32 parameters and float64 buffers, on the trainer's device."""

    params: torch.Tensor
    buffers: torch.Tensor


def current_state(trainer: Trainer) -> State:
    return State(flatten(trainer.params, torch.float32), flatten(trainer.buffers, torch.float64))


class SegmentLosses:
    """Training losses at α = k / points (k < points) of each step's segment and at single
    iterates, in the order they are added, evaluated ``evaluate.batch`` points at a time."""

    def __init__(self, evaluate: PointLosses, x: torch.Tensor, y: torch.Tensor, points: int):
        self.evaluate, self.x, self.y = evaluate, x, y
        self.alphas = segments.segment_alphas(points)[:-1]
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.values: list[np.ndarray] = []

    def add_step(self, before: State, after: State) -> None:
        params, buffers = line_points(
            (before.params, before.buffers), (after.params, after.buffers), self.alphas
        )
        self._queue(params, buffers)

    def add_iterate(self, state: State) -> None:
        self._queue(state.params[None], state.buffers[None])

    def _queue(self, params: torch.Tensor, buffers: torch.Tensor) -> None:
        self.pending.append((params, buffers))
        if sum(len(p) for p, _ in self.pending) >= self.evaluate.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            params = torch.cat([p for p, _ in self.pending])
            buffers = torch.cat([b.to(params.device) for _, b in self.pending])
            self.values.append(self.evaluate(params, buffers, self.x, self.y))
            self.pending = []

    def result(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self.values) if self.values else np.zeros(0)


class Replay:
    """A trajectory's trainer, moved between stored checkpoints and stepped exactly; every
    checkpoint it steps onto is compared with the store, bit for bit."""

    def __init__(self, trajectory: str, data: Any, device: torch.device) -> None:
        self.path = trajectory
        self.group = open_trajectory(trajectory)
        self.trainer = trainer_for(self.group, device, data)
        self.steps = np.asarray(self.group["step"][...], dtype=np.int64)
        self.stored = {int(step): k for k, step in enumerate(self.steps)}
        self.checked = 0

    def go_to(self, step: int, until: int) -> None:
        """Load the last checkpoint at or before ``step`` and replay up to it; refuses a
        replay that would go on past the trajectory's last step (``until``)."""
        k = int(np.searchsorted(self.steps, step, side="right")) - 1
        if k < 0 or until > self.steps[-1]:
            raise HessvalleyError(
                f"trajectory {self.path} has steps {self.steps[0]}..{self.steps[-1]}: it does "
                f"not reach step {until} (a run stopped early, or barriers epochs beyond it)"
            )
        self.trainer.load_state(read_state(self.group, k))
        for current in range(int(self.steps[k]), step):
            self.trainer.train_step(current)
            self.check(current + 1)

    def check(self, step: int) -> None:
        """Compare the trainer with the stored checkpoint at ``step``, if there is one."""
        k = self.stored.get(step)
        if k is None:
            return
        state = current_state(self.trainer)
        for name, replayed in (("params", state.params), ("buffers", state.buffers)):
            replayed = replayed.cpu().numpy()
            recorded = np.asarray(self.group[name][k]) if name in self.group else np.zeros(0)
            if not np.array_equal(replayed, recorded):
                difference = float(np.max(np.abs(replayed.astype(np.float64) - recorded)))
                raise HessvalleyError(
                    f"replaying trajectory {self.path}: the {name} after step {step} differ "
                    f"from its checkpoint {k} (max |difference| {difference:.3g}); the run "
                    "cannot be replayed exactly (a changed store, or other torch threads, "
                    "version or device than it recorded): delete the trajectory and train "
                    "it again"
                )
        self.checked += 1


class StepAlignment:
    """g_Bᵀ H g_B / |g_B|² and gᵀ g_B / |g_B|² at a state, H and g of the training loss (the
    Hessian factory's operator)."""

    def __init__(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor, hessian: Mapping):
        self.trainer, self.x, self.y, self.hessian = trainer, x, y, hessian

    def __call__(self, state: State, batch_gradient: torch.Tensor) -> tuple[float, float]:
        op = hessian_at(
            self.trainer.model,
            self.trainer.loss_fn,
            self.x,
            self.y,
            self.hessian,
            params=state.params,
            buffers=state.buffers,
        )
        g = batch_gradient.to(op.device, op.dtype)
        norm = g @ g
        curvature = g @ op.matvec(g)
        return float(curvature / norm), float(op.gradient() @ g / norm)


def replay_epoch(
    replay: Replay,
    losses: SegmentLosses,
    alignment: StepAlignment | None,
    every: int | None,
    epoch: int,
) -> dict[str, np.ndarray]:
    """Step through ``epoch`` (1-based), queueing each step's segment points and the last
    iterate; per step the mini-batch loss and, at every ``every``-th, a and c (else NaN)."""
    trainer = replay.trainer
    n = trainer.steps_per_epoch
    first = (epoch - 1) * n
    replay.go_to(first, first + n)
    out = {name: np.full(n, np.nan) for name in ("batch_loss", "alignment", "descent_ratio")}
    before = current_state(trainer)
    for i, step in enumerate(range(first, first + n)):
        out["batch_loss"][i] = float(trainer.gradient(step))
        if alignment is not None and every and i % every == 0:
            out["alignment"][i], out["descent_ratio"][i] = alignment(before, trainer.flat_grad())
        trainer.optimizer.step()
        after = current_state(trainer)
        losses.add_step(before, after)
        replay.check(step + 1)
        before = after
    losses.add_iterate(before)
    out["iteration"] = np.arange(first, first + n, dtype=np.int64)
    out["epoch"] = np.full(n, epoch, dtype=np.int64)
    return out


def _summaries(
    per_epoch: Sequence[Mapping[str, np.ndarray]], values: np.ndarray, points: int, lr: float
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """The store's arrays from the replayed epochs and the losses in their order."""
    alphas = segments.segment_alphas(points)
    profiles, summaries, epochs, offset = [], [], [], 0
    for record in per_epoch:
        size = len(record["iteration"]) * points + 1
        profile = segments.profiles_from_values(values[offset : offset + size], points)
        offset += size
        steps = segments.step_summaries(profile, alphas)
        profiles.append(profile)
        summaries.append(steps)
        epochs.append(segments.epoch_summary(steps))
    per_step = {k: np.concatenate([r[k] for r in per_epoch]) for k in per_epoch[0]}
    per_step |= {k: np.concatenate([s[k] for s in summaries]) for k in summaries[0]}
    per_step["lr_alignment"] = lr * per_step["alignment"]
    per_step["predicted_alpha"] = per_step["descent_ratio"] / per_step["lr_alignment"]
    arrays: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        "alpha": (("alpha",), alphas),
        "profile": (("step", "alpha"), np.concatenate(profiles)),
    }
    arrays |= {name: (("step",), value) for name, value in per_step.items()}
    arrays["epochs"] = (("epochs",), np.asarray([r["epoch"][0] for r in per_epoch], np.int64))
    for field in segments.EPOCH_FIELDS:
        arrays[f"epoch_{field}"] = (("epochs",), np.asarray([e[field] for e in epochs]))
    medians = [np.nanmedian(r["alignment"]) if np.any(np.isfinite(r["alignment"])) else np.nan
               for r in per_epoch]  # fmt: skip
    arrays["epoch_lr_alignment_median"] = (("epochs",), lr * np.asarray(medians, np.float64))
    return arrays


def iterate_interpolation(
    barriers: Mapping[str, Any],
    hessian: Mapping[str, Any],
    setting: str,
    seed: int,
    epochs: list[int],
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """The loss between consecutive iterates over every step of ``epochs`` of one trajectory
    (the ``barriers`` stage keys), with the barriers, interior minima and η a per step."""
    device = resolve_device(device)
    group = open_trajectory(trajectory)
    if (group.attrs["setting"], int(group.attrs["seed"])) != (setting, int(seed)):
        raise HessvalleyError(
            f"barriers.runs: trajectory {trajectory} is run {group.attrs['setting']!r} seed "
            f"{group.attrs['seed']}, not run {setting!r} seed {seed}"
        )
    run = group.attrs["run"]
    dataset = load_dataset(data, device, run["train_on"])
    replay = Replay(trajectory, dataset, device)
    trainer = replay.trainer
    points, every = int(barriers["points"]), barriers["alignment_every"]
    chunk = int(barriers["chunk_size"] or trainer.chunk)
    evaluate = PointLosses(
        trainer.model, trainer.loss_fn, barriers["points_per_call"], chunk, barriers["batch_norm"]
    )
    losses = SegmentLosses(evaluate, dataset.x_train, dataset.y_train, points)
    keys = hessian_keys(hessian)
    alignment = StepAlignment(trainer, dataset.x_train, dataset.y_train, keys) if every else None
    recorded = group.attrs.get("determinism")
    with determinism.reproducing(recorded, device, f"replaying {trajectory}"):
        per_epoch = [
            replay_epoch(replay, losses, alignment, every, epoch)
            for epoch in progress(sorted(epochs), desc=f"{setting} seed {seed}", unit="epoch")
        ]
    lr = float(run["optimizer"]["lr"])
    arrays = _summaries(per_epoch, losses.result(), points, lr)
    spec = {
        **{key: barriers[key] for key in ("points", "batch_norm", "chunk_size")},
        **{key: barriers[key] for key in ("points_per_call", "alignment_every")},
        "hessian": keys,
        "epochs": sorted(epochs),
        "trajectory": group.attrs["config_hash"],
    }
    attrs = {
        **store.provenance(spec, seed=seed),
        "setting": setting,
        "model": run["model"]["name"],
        "lr": lr,
        "momentum": float(run["optimizer"].get("momentum", 0.0)),
        "batch_size": int(group.attrs["batch_size"]),
        "steps_per_epoch": trainer.steps_per_epoch,
        "points": points,
        "batch_norm": barriers["batch_norm"],
        "has_batch_norm": has_batch_norm(trainer.model),
        "chunk_size": chunk,
        "points_per_call": evaluate.batch,
        "alignment_every": every,
        **hessian_attrs(keys, len(dataset.y_train)),
        "n_params": int(group.attrs["param_layout"]["numel"]),
        "checkpoints_checked": replay.checked,
        "trajectory_config_hash": group.attrs["config_hash"],
    }
    store.write_store(output, arrays, attrs)
    counts = ", ".join(
        f"epoch {e}: {b}/{n}"
        for e, b, n in zip(
            arrays["epochs"][1],
            arrays["epoch_barriers"][1],
            arrays["epoch_n_steps"][1],
            strict=True,
        )
    )
    print(f"{setting} seed {seed}: barriers crossed {counts}")
