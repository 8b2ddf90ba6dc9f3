"""GD projection: from an SGD state, full-batch gradient descent to the valley floor.

GD uses the run's learning rate and momentum (``gd_trainer``) on the whole training set and
stops at the first step whose full training loss is below ``loss_threshold`` (converged),
when that loss rises above ``max_loss_rise`` times its start or is not finite (diverged), or
after ``max_steps`` steps (step cap). Each outcome is a result, recorded with its loss, never
an error: the path goes on.

One loss throughout: GD minimises the eval-mode loss (BatchNorm with the state's running
statistics, frozen), the very function the threshold, the path and the interpolation points
are judged by. A train-mode GD step lowers a different function (batch statistics), which on
a BatchNorm net can raise the eval-mode loss by orders of magnitude while it "descends".

A projection can take hours at paper scale; with a ``GDProgress`` its state (parameters,
momentum, buffers, steps taken) is saved every ``save_every_s`` seconds, and a killed job
resumes it where it stopped, to the identical result.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from torch import Tensor

from hessvalley.data import DeviceDataset
from hessvalley.evaluation import loss_and_accuracy
from hessvalley.projection.outcomes import CONVERGED, DIVERGED, STEP_CAP
from hessvalley.train import Trainer, trainer_for
from hessvalley.trajectory_store import TrainState, open_trajectory


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


@dataclass
class GDProgress:
    """The saved state of the projection of SGD step ``step`` in progress (one file, replaced
    atomically), so a job killed mid-projection resumes it instead of starting over."""

    path: Path
    step: int

    def load(self) -> tuple[TrainState, float] | None:
        """The saved GD state (its ``step`` = GD steps taken) and start loss, if this
        projection's state was saved."""
        if not self.path.is_file():
            return None
        with np.load(self.path) as saved:
            if int(saved["sgd_step"]) != self.step:
                return None
            momentum = torch.from_numpy(saved["momentum"]) if bool(saved["has_momentum"]) else None
            state = TrainState(
                torch.from_numpy(saved["params"]),
                momentum,
                torch.from_numpy(saved["buffers"]),
                int(saved["gd_steps"]),
            )
            return state, float(saved["start_loss"])

    def save(self, state: TrainState, start_loss: float) -> None:
        momentum = state.momentum
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                sgd_step=self.step,
                gd_steps=state.step,
                start_loss=start_loss,
                params=state.params.numpy(),
                has_momentum=momentum is not None,
                momentum=np.zeros(0, np.float32) if momentum is None else momentum.numpy(),
                buffers=state.buffers.numpy(),
            )
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@torch.no_grad()
def full_train_loss(trainer: Trainer) -> float:
    """Eval-mode mean loss over the trainer's training set (chunked), as ``evaluate``."""
    data = trainer.data
    return loss_and_accuracy(
        trainer.model, trainer.loss_fn, data.x_train, data.y_train, trainer.chunk
    )[0]


def gd_trainer(
    trajectory: str | zarr.Group, device: str | torch.device, data: DeviceDataset
) -> Trainer:
    """A full-batch (noise-free) copy of the trajectory's trainer: same lr and momentum,
    BatchNorm in eval mode (the loss GD lowers is the one the threshold is compared with)."""
    group = open_trajectory(trajectory)
    optimizer = {**group.attrs["run"]["optimizer"], "batch_size": "full"}
    return trainer_for(group, device, data, {"optimizer": optimizer, "batch_norm_mode": "eval"})


def _start(
    trainer: Trainer, state: TrainState, reset_momentum: bool, progress: GDProgress | None
) -> tuple[int, float]:
    """Load the state GD starts from (or the saved one it resumes); its steps and start loss."""
    saved = progress.load() if progress is not None else None
    if saved is not None:
        trainer.load_state(saved[0])
        print(f"resuming the projection of step {state.step} at GD step {saved[0].step}")
        return saved[0].step, saved[1]
    momentum = None if reset_momentum else state.momentum
    trainer.load_state(TrainState(state.params, momentum, state.buffers, 0))
    return 0, math.nan


def project(
    trainer: Trainer,
    state: TrainState,
    loss_threshold: float,
    max_steps: int,
    reset_momentum: bool = True,
    max_loss_rise: float | None = None,
    progress: GDProgress | None = None,
    save_every_s: float = 30.0,
) -> Projection:
    """GD from ``state`` until the full training loss is below ``loss_threshold``, rises
    above ``max_loss_rise`` × its start (None: only a non-finite loss counts as divergence),
    or ``max_steps`` steps are taken.

    ``trainer`` must be a full-batch, eval-mode trainer (``gd_trainer``): the loss of each
    step's forward pass is then the thresholded loss itself, so the stopping test costs
    nothing; a loss below the threshold is confirmed by the evaluation the path records, so
    "converged" and the stored loss never disagree by rounding.
    """
    if not (trainer.full_batch and trainer.bn_eval):
        raise ValueError("project needs a full-batch eval-mode trainer (see gd_trainer)")
    steps, start_loss = _start(trainer, state, reset_momentum, progress)
    rise = math.inf if max_loss_rise is None else float(max_loss_rise)
    saved_at, last_save = steps, time.monotonic()
    status = STEP_CAP
    while True:
        due = time.monotonic() - last_save >= save_every_s
        if progress is not None and steps > saved_at and due:
            progress.save(trainer.state(steps), start_loss)
            saved_at, last_save = steps, time.monotonic()
        loss = trainer.gradient(0).item()
        if steps == 0:
            start_loss = loss
        if not math.isfinite(loss) or loss > rise * start_loss:
            status = DIVERGED
            break
        if loss < loss_threshold and full_train_loss(trainer) < loss_threshold:
            status = CONVERGED
            break
        if steps >= max_steps:
            break
        trainer.optimizer.step()
        steps += 1
    final = trainer.state(steps)
    return Projection(final.params, final.buffers, steps, status, start_loss, trainer.evaluate())
