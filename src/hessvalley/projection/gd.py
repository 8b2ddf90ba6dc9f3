"""GD projection: from an SGD state, full-batch gradient descent to the valley floor.

GD uses the run's learning rate and momentum (``gd_trainer``) on the whole training set and
stops at the first step whose full training loss (eval mode, as the training curves report
it) is below ``loss_threshold``, or after ``max_steps`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import zarr
from torch import Tensor

from hessvalley.data import DeviceDataset
from hessvalley.evaluation import loss_and_accuracy
from hessvalley.models import has_batch_norm
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
