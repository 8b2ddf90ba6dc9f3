"""The cost model's units (torch-free): jobs, rows, assumptions, and what one run's work
costs from its calibration figures (seconds on the calibrated device, MB).

Kept apart from the per-stage counting (``estimate``) so that the arithmetic a test checks
by hand is a handful of small formulas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hessvalley.schedule import checkpoint_steps, steps_per_epoch

MB = 1e6
BASE_MB = 500.0  # resident memory of a Python process that imported torch (CPU, measured)
CUDA_CONTEXT_MB = 1000.0  # host memory the CUDA context adds (assumed)
GATHER_BASE_MB = 200.0  # a torch-free gather process (zarr, numpy)
DTYPE_BYTES = {"float32": 4, "float64": 8}


@dataclass(frozen=True)
class Assumptions:
    """What the plan assumes beyond the config (``hessvalley plan`` options)."""

    gd_steps: int = 10  # GD steps per projection (capped at the run's max_gd_steps)
    bisections: int = 1  # bisection projections per grid interval
    speedup: float = 1.0  # compute times are the calibration's / speedup
    device: str = "cpu"  # cuda: memory splits into host and device


@dataclass
class Job:
    """``count`` jobs alike: device seconds (already / speedup), host and device MB, disk
    MB. ``kind``: compute, io (time not estimated: reading and writing stores) or small
    (not estimated: figures and the like)."""

    label: str
    count: int
    seconds: float | None
    host_mb: float | None
    device_mb: float | None = None
    disk_mb: float | None = 0.0
    kind: str = "compute"


@dataclass
class Row:
    """The jobs of one rule for one run (or dataset, or toy figure)."""

    stage: str
    setting: str
    jobs: list[Job]
    notes: list[str] = field(default_factory=list)

    @property
    def n_jobs(self) -> int:
        return sum(job.count for job in self.jobs)


@dataclass
class RunCost:
    """One run's sizes and its calibration ``fig`` (None when the model was not measured)."""

    setting: str
    spec: Mapping[str, Any]
    n_train: int
    n_val: int
    sample_bytes: int
    fig: Mapping[str, Any] | None
    assumptions: Assumptions
    projection: Mapping[str, Any] | None = None  # projection_settings of a projected run

    @property
    def batch(self) -> int:
        size = self.spec["optimizer"]["batch_size"]
        return self.n_train if size == "full" else int(size)

    @property
    def chunk(self) -> int:
        return int(self.spec["eval_batch_size"])

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.n_train, self.spec["optimizer"]["batch_size"])

    @property
    def total_steps(self) -> int:
        """Steps of the run (an upper bound when it stops early)."""
        return self.spec["epochs"] * self.steps_per_epoch

    def checkpoint_steps(self) -> list[int]:
        every = self.spec["checkpoint_every"] or self.steps_per_epoch
        return checkpoint_steps(self.total_steps, every)

    # -- sizes (bytes) -------------------------------------------------------------------------
    @property
    def state_bytes(self) -> int:
        """Parameters (float32) and buffers (float64) of one stored state."""
        return 4 * self.fig["n_params"] + 8 * self.fig["n_buffers"]

    @property
    def checkpoint_bytes(self) -> int:
        momentum = self.spec["optimizer"]["momentum"] > 0
        return self.state_bytes + (4 * self.fig["n_params"] if momentum else 0)

    def data_mb(self) -> float:
        return (self.n_train + self.n_val) * (self.sample_bytes + 8) / MB

    def model_mb(self) -> float:
        """Parameters, gradients and momentum (float32) and buffers, resident while training."""
        return (12 * self.fig["n_params"] + 8 * self.fig["n_buffers"]) / MB

    def train_act_mb(self, samples: int) -> float:
        return samples * self.fig["train_act_bytes_per_sample"] / MB

    # -- times (device seconds, / speedup) -----------------------------------------------------
    def _scaled(self, seconds: float) -> float:
        return seconds / self.assumptions.speedup

    def eval_pass(self) -> float:
        """Eval-mode loss and accuracy over training and validation sets (``evaluate``)."""
        return self._scaled((self.n_train + self.n_val) * self.fig["eval_s_per_sample"])

    def sgd_steps(self, steps: int) -> float:
        per_step = self.batch * self.fig["grad_s_per_sample"] + self.fig["optimizer_step_s"]
        return self._scaled(steps * per_step)

    def gd_steps(self) -> int:
        return min(self.assumptions.gd_steps, int(self.projection["max_gd_steps"]))

    def projection_s(self) -> float:
        """One GD projection: G steps, each a full-batch gradient over the training set (and
        the gradient at the final state, whose loss ends the loop), then ``evaluate``."""
        g = self.gd_steps()
        gradients = (g + 1) * self.n_train * self.fig["grad_s_per_sample"]
        return self._scaled(gradients + g * self.fig["optimizer_step_s"]) + self.eval_pass()

    def hvp(self, matmats: list[int], n_samples: int, probes_per_sweep: int) -> float:
        """Seconds of operator applications to blocks of ``matmats`` columns: each block is
        cut into sweeps of ``probes_per_sweep`` probes; a sweep pays the shared forward and
        first backward once and each probe's second backward."""
        fig = self.fig
        sweeps = sum(math.ceil(width / probes_per_sweep) for width in matmats)
        per_sample = sweeps * fig["hvp_sweep_s_per_sample"]
        per_sample += sum(matmats) * fig["hvp_probe_s_per_sample"]
        return self._scaled(n_samples * per_sample)


def trace_matmats(method: str, matvecs: int, n_params: int | None) -> list[int]:
    """Block widths of one trace estimate (``hutchpp_trace``: the sketch H S, then Q^T H Q,
    then the residual probes; ``hutchinson_trace``: the probes), as ``trace_budget`` spends
    ``matvecs``."""
    if method == "hutchinson":
        return [matvecs]
    sketch = matvecs // 3 if n_params is None else min(matvecs // 3, n_params - 1)
    return [sketch, sketch, matvecs - 2 * sketch]


def split_memory(
    assumptions: Assumptions, compute_mb: float, host_extra_mb: float, data_mb: float
) -> tuple[float, float | None]:
    """(host MB, device MB): on a GPU the data, model and activations (``compute_mb``) are
    device memory, the host holding the process, the CUDA context and the dataset while it
    is loaded; on a CPU everything is host memory."""
    if assumptions.device.startswith("cuda"):
        return BASE_MB + CUDA_CONTEXT_MB + data_mb + host_extra_mb, compute_mb
    return BASE_MB + compute_mb + host_extra_mb, None
