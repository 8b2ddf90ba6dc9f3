"""The trace stage: the Hessian trace of the training loss along a projected path (W&S Fig 3).

The Hessian at each traced point comes from the one Hessian factory (``hessian_at``) with the
``curvature`` section's keys, the operator of the curvature stage along trajectories; so
this trace and the curvature stage's are comparable (equal at equal parameters, method,
budget and probe seed). The same probes are used at every point, so differences along the
path are not probe noise alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import zarr

from hessvalley import store
from hessvalley.curvature import hutchinson_trace, hutchpp_trace
from hessvalley.curvature.factory import hessian_at, hessian_attrs
from hessvalley.curvature.trace import trace_budget
from hessvalley.data import load_dataset
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.hessian_keys import hessian_keys
from hessvalley.losses import build_loss
from hessvalley.models import build_model
from hessvalley.progress import progress
from hessvalley.stats import slope_fit
from hessvalley.trajectory_store import open_trajectory

POINT_ARRAYS = ("step", "epoch", "train_loss", "val_loss", "converged", "on_grid")


def traced_points(projected: zarr.Group, at: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Indices into the path store's kept states that are traced (every kept state, or the
    grid checkpoints: ``projection.trace.at``) and the point arrays at them."""
    state_point = np.asarray(projected["state_point"][...])
    points = {name: np.asarray(projected[name][...])[state_point] for name in POINT_ARRAYS}
    chosen = np.arange(len(state_point))
    if at == "grid":
        chosen = chosen[points["on_grid"]]
    return chosen, {name: values[chosen] for name, values in points.items()}


def _budget(trace: Mapping[str, Any], n_params: int) -> dict[str, int]:
    budget = trace_budget(trace["method"], int(trace["probes"]))
    if "sketch_size" in budget and budget["sketch_size"] >= n_params:
        raise HessvalleyError(
            f"projection.trace.probes: {trace['probes']} gives a Hutch++ sketch of "
            f"{budget['sketch_size']} vectors, not below the {n_params} parameters"
        )
    return budget


def path_trace(
    trace: Mapping[str, Any],
    curvature: Mapping[str, Any],
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
    device = resolve_device(device)
    run = open_trajectory(trajectory).attrs["run"]
    dataset = load_dataset(data, device, run["train_on"])
    projected = store.open_store(path)
    chosen, points = traced_points(projected, trace["at"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(
            0
        )  # the weights are replaced by each point's; this only silences the init
        model = build_model(run["model"], dataset.input_shape, dataset.n_classes).to(device)
    loss_fn = build_loss(run["loss"])
    estimator = hutchpp_trace if trace["method"] == "hutchpp" else hutchinson_trace
    budget = _budget(trace, sum(p.numel() for p in model.parameters()))
    estimates, stderrs, samples = [], [], []
    for index in progress(chosen, desc=f"{setting} seed {seed} trace", unit="point"):
        op = hessian_at(
            model,
            loss_fn,
            dataset.x_train,
            dataset.y_train,
            curvature,
            params=torch.from_numpy(np.asarray(projected["params"][index])),
            buffers=torch.from_numpy(np.asarray(projected["buffers"][index])),
        )
        generator = torch.Generator().manual_seed(int(trace["seed"]))  # same probes everywhere
        result = estimator(op, generator, **budget)
        estimates.append(result.estimate)
        stderrs.append(result.stderr)
        samples.append(result.samples.numpy())
    estimates = np.asarray(estimates)
    fit = points["epoch"] >= float(trace["fit_from_epoch"])
    slope, slope_stderr = slope_fit(points["epoch"][fit], estimates[fit])
    arrays = {
        **{name: (("point",), values) for name, values in points.items()},
        "state": (("point",), chosen.astype(np.int64)),
        "trace": (("point",), estimates),
        "trace_stderr": (("point",), np.asarray(stderrs)),
        "trace_samples": (("point", "probe"), np.stack(samples)),
        "in_fit": (("point",), fit),
    }
    spec = {
        "trace": dict(trace),
        "hessian": hessian_keys(curvature),
        "path": projected.attrs["config_hash"],
    }
    attrs = {
        **store.provenance(spec, seed),
        "setting": setting,
        "method": trace["method"],
        "budget": budget,
        "matvecs": int(trace["probes"]),
        **hessian_attrs(curvature, len(dataset.y_train)),
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
