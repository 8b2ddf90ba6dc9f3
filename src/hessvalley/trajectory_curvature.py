"""Curvature along a training trajectory: trace, extreme eigenvalues and spectrum per checkpoint.

Each function reads one trajectory, rebuilds the model at every chosen checkpoint (parameters
and BatchNorm buffers) and writes one store under ``results/<setting>/seed<k>/curvature/``.
The Hessian is that of the mean training loss over the run's training set (or a seeded
subset, ``curvature.n_samples``), BatchNorm in the ``curvature.batch_norm`` mode, built by
the one Hessian factory (``hessvalley.curvature.factory``) that the trace along projected
paths uses too.
The same probe seed is used at every checkpoint, so differences between checkpoints are not
probe noise alone. At paper scale a job runs for hours: each checkpoint's result is kept on
disk as it finishes (``PartialRows``), and a killed job resumes after the last one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from hessvalley import store
from hessvalley.curvature import (
    HessianOperator,
    exact_spectrum,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_extremes,
    negative_eigenvalue_sum,
    stochastic_lanczos_quadrature,
)
from hessvalley.curvature.factory import hessian_at, hessian_attrs
from hessvalley.curvature.trace import trace_budget
from hessvalley.data import load_dataset
from hessvalley.device import resolve_device
from hessvalley.hessian_keys import hessian_keys
from hessvalley.partial_rows import PartialRows
from hessvalley.progress import progress
from hessvalley.schedule import chosen_checkpoints
from hessvalley.train import trainer_for
from hessvalley.trajectory_store import open_trajectory, read_state


class CheckpointHessians:
    """Hessian operators of one trajectory's training loss at its checkpoints, built by the
    Hessian factory from the ``curvature`` keys (``hessian_at``)."""

    def __init__(
        self, trajectory: str, data: str, curvature: Mapping[str, Any], device: str
    ) -> None:
        self.device = resolve_device(device)
        self.group = open_trajectory(trajectory)
        self.run = self.group.attrs["run"]
        dataset = load_dataset(data, self.device, self.run["train_on"])
        self.trainer = trainer_for(self.group, self.device, dataset)
        self.x, self.y = dataset.x_train, dataset.y_train
        self.curvature = curvature
        self.n_checkpoints = int(self.group.attrs["n_checkpoints"])
        self.n_params = int(self.group.attrs["param_layout"]["numel"])

    def operator(self, k: int) -> HessianOperator:
        self.trainer.load_state(read_state(self.group, k))
        return hessian_at(self.trainer.model, self.trainer.loss_fn, self.x, self.y, self.curvature)

    def coords(self, chosen: np.ndarray) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        return {
            "checkpoint": (("checkpoint",), chosen),
            "step": (("checkpoint",), np.asarray(self.group["step"][...])[chosen]),
            "epoch": (("checkpoint",), np.asarray(self.group["epoch"][...])[chosen]),
            "train_loss": (("checkpoint",), np.asarray(self.group["train_loss"][...])[chosen]),
        }

    def rows(
        self, output: str, section: str, seed: int, chosen: np.ndarray, desc: str
    ) -> tuple[PartialRows, dict[str, list[Any]], Iterator[int]]:
        """The rows an earlier, killed attempt finished (``PartialRows``), all rows so far by
        column, and the chosen checkpoints still to do (with a progress bar)."""
        spec = {
            **self.attrs(section, "", seed)["config"],
            "trajectory": self.group.attrs["config_hash"],
            "chosen": chosen,
            "seed": seed,
        }
        done = PartialRows(output, spec, "checkpoints")
        if len(done):
            print(f"resuming: {len(done)} of {len(chosen)} checkpoints from an earlier attempt")
        bar = {"desc": desc, "initial": len(done), "total": len(chosen), "unit": "checkpoint"}
        todo = (int(k) for k in progress(chosen[len(done) :], **bar))
        return done, defaultdict(list, done.rows()), todo

    def attrs(self, section: str, setting: str, seed: int) -> dict[str, Any]:
        spec = hessian_keys(self.curvature) | {section: self.curvature[section]}
        return {
            **store.provenance(spec, seed=seed),
            "setting": setting,
            **hessian_attrs(self.curvature, len(self.y)),
            "n_params": self.n_params,
            "trajectory_config_hash": self.group.attrs["config_hash"],
        }


def trace_along_trajectory(
    curvature: Mapping[str, Any],
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """Hutch++ (or Hutchinson) trace with standard error and samples at each chosen checkpoint."""
    hessians = CheckpointHessians(trajectory, data, curvature, device)
    spec = curvature["trace"]
    chosen = np.asarray(chosen_checkpoints(hessians.n_checkpoints, curvature["every"]))
    estimator = hutchpp_trace if spec["method"] == "hutchpp" else hutchinson_trace
    budget = trace_budget(spec["method"], int(spec["matvecs"]), hessians.n_params)
    partial, rows, todo = hessians.rows(
        output, "trace", seed, chosen, f"{setting} seed {seed} trace"
    )
    for k in todo:
        generator = torch.Generator().manual_seed(int(spec["seed"]))
        result = estimator(hessians.operator(k), generator, **budget)
        row = {
            "trace": np.float64(result.estimate),
            "trace_stderr": np.float64(result.stderr),
            "trace_samples": result.samples.numpy(),
            "n_matvecs": np.int64(result.n_matvecs),
        }
        partial.add(row)
        for name, value in row.items():
            rows[name].append(value)
    estimates = np.asarray(rows["trace"])
    arrays = {
        **hessians.coords(chosen),
        "trace": (("checkpoint",), estimates),
        "trace_stderr": (("checkpoint",), np.asarray(rows["trace_stderr"])),
        "trace_samples": (("checkpoint", "sample"), np.stack(rows["trace_samples"])),
        "n_matvecs": (("checkpoint",), np.asarray(rows["n_matvecs"])),
    }
    store.write_store(output, arrays, {**hessians.attrs("trace", setting, seed), **budget})
    partial.remove()
    print(f"{setting} seed {seed}: trace {estimates[0]:.4g} -> {estimates[-1]:.4g}")


def eigen_along_trajectory(
    curvature: Mapping[str, Any],
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """The k largest and k most negative eigenvalues (Lanczos) with Ritz residuals."""
    hessians = CheckpointHessians(trajectory, data, curvature, device)
    spec = curvature["eigen"]
    k = min(int(spec["k"]), hessians.n_params)
    chosen = np.asarray(chosen_checkpoints(hessians.n_checkpoints, curvature["every"]))
    partial, rows, todo = hessians.rows(
        output, "eigen", seed, chosen, f"{setting} seed {seed} eigen"
    )
    for index in todo:
        generator = torch.Generator().manual_seed(int(spec["seed"]))
        pairs = lanczos_extremes(
            hessians.operator(index),
            k,
            generator,
            which=spec["which"],
            tol=float(spec["tol"]),
            max_dim=spec["max_dim"],
            block_size=int(spec["block_size"]),
        )
        row = {}
        for name in RITZ_FIELDS:
            value = getattr(pairs, name)
            row[name] = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value)
        partial.add(row)
        for name, value in row.items():
            rows[name].append(value)
    arrays = {
        **hessians.coords(chosen),
        "largest": (("checkpoint", "rank"), np.stack(rows["largest"])),
        "largest_residual": (("checkpoint", "rank"), np.stack(rows["largest_residuals"])),
        "smallest": (("checkpoint", "rank"), np.stack(rows["smallest"])),
        "smallest_residual": (("checkpoint", "rank"), np.stack(rows["smallest_residuals"])),
        "n_matvecs": (("checkpoint",), np.asarray(rows["n_matvecs"])),
        "converged": (("checkpoint",), np.asarray(rows["converged"])),
    }
    store.write_store(output, arrays, hessians.attrs("eigen", setting, seed))
    partial.remove()
    top = np.stack(rows["largest"])[:, 0]
    print(f"{setting} seed {seed}: top eigenvalue {top[0]:.4g} -> {top[-1]:.4g}")


RITZ_FIELDS = (
    "largest",
    "largest_residuals",
    "smallest",
    "smallest_residuals",
    "n_matvecs",
    "converged",
)


def spectrum_along_trajectory(
    curvature: Mapping[str, Any],
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """Every eigenvalue (exact Hessian, float64 eigh) for nets up to ``max_params``; beyond
    that, the spectral density by stochastic Lanczos quadrature. Both give the sum of the
    negative eigenvalues (W&S Fig 2a) and a density on a common grid."""
    hessians = CheckpointHessians(trajectory, data, curvature, device)
    spec = curvature["spectrum"]
    exact = hessians.n_params <= int(spec["max_params"])
    chosen = np.asarray(chosen_checkpoints(hessians.n_checkpoints, curvature["every"]))
    desc = f"{setting} seed {seed} spectrum"
    partial, rows, todo = hessians.rows(output, "spectrum", seed, chosen, desc)
    for k in todo:
        op = hessians.operator(k)
        if exact:
            eigenvalues = exact_spectrum(op, int(spec["max_params"])).numpy()
            negative = negative_eigenvalue_sum(torch.from_numpy(eigenvalues))
            row = {"eigenvalues": eigenvalues, "negative_sum": np.float64(negative)}
            row["negative_sum_stderr"] = np.float64(0.0)
        else:
            generator = torch.Generator().manual_seed(int(spec["seed"]))
            quadrature = stochastic_lanczos_quadrature(
                op, generator, n_starts=int(spec["slq_starts"]), n_steps=int(spec["slq_steps"])
            )
            estimate = quadrature.trace_of(lambda t: t.clamp(max=0))
            row = {
                "slq_nodes": quadrature.nodes.numpy(),
                "slq_weights": quadrature.weights.numpy(),
                "negative_sum": np.float64(estimate.estimate),
                "negative_sum_stderr": np.float64(estimate.stderr),
            }
        partial.add(row)
        for name, value in row.items():
            rows[name].append(value)
    arrays = {
        **hessians.coords(chosen),
        "negative_sum": (("checkpoint",), np.asarray(rows["negative_sum"])),
        "negative_sum_stderr": (("checkpoint",), np.asarray(rows["negative_sum_stderr"])),
    }
    if exact:
        arrays["eigenvalues"] = (("checkpoint", "eigen"), np.stack(rows["eigenvalues"]))
    else:
        for name in ("slq_nodes", "slq_weights"):
            arrays[name] = (("checkpoint", "start", "node"), np.stack(rows[name]))
    attrs = {**hessians.attrs("spectrum", setting, seed), "method": "exact" if exact else "slq"}
    store.write_store(output, arrays, attrs)
    partial.remove()
    print(
        f"{setting} seed {seed}: {'exact' if exact else 'SLQ'} spectrum at {len(chosen)} "
        f"checkpoints; negative eigenvalue sum {rows['negative_sum'][-1]:.4g} at the last"
    )
