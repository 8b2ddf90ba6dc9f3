"""The trace stage: the Hessian trace of the training loss along a projected path (W&S Fig 3).

The Hessian at each traced point comes from the one Hessian factory (``hessian_at``) with the
``curvature`` section's keys, the operator of the curvature stage along trajectories; so
this trace and the curvature stage's are comparable (equal at equal parameters, method,
budget and probe seed). The same probes are used at every point, so differences along the
path are not probe noise alone.

At paper scale a trace job runs for hours (151 points of 99 Hessian-vector products each), so
each finished point is kept on disk at once (``PartialRows``) and a job killed by SLURM
resumes after the points it finished; probes are seeded per point, so the resumed trace is
bit for bit an uninterrupted one's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import zarr

from hessvalley import store
from hessvalley.curvature import hutchinson_trace, hutchpp_trace
from hessvalley.curvature.factory import hessian_at, hessian_attrs
from hessvalley.curvature.trace import TraceEstimate, trace_budget
from hessvalley.data import load_dataset
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.hessian_keys import hessian_keys
from hessvalley.losses import build_loss
from hessvalley.models import build_model
from hessvalley.partial_rows import PartialRows
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


def _model(run: Mapping[str, Any], dataset: Any, device: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the weights are replaced by each point's; this only silences init
        return build_model(run["model"], dataset.input_shape, dataset.n_classes).to(device)


def _row(result: TraceEstimate) -> dict[str, Any]:
    return {
        "trace": result.estimate,
        "trace_stderr": result.stderr,
        "trace_samples": result.samples.numpy(),
    }


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
    model = _model(run, dataset, device)
    loss_fn = build_loss(run["loss"])
    estimator = hutchpp_trace if trace["method"] == "hutchpp" else hutchinson_trace
    budget = _budget(trace, sum(p.numel() for p in model.parameters()))
    spec = {
        "trace": dict(trace),
        "hessian": hessian_keys(curvature),
        "path": projected.attrs["config_hash"],
    }
    # The traced points' steps and losses identify the path beyond its config (a path
    # re-projected by other code has other losses).
    identity = {"points": {name: points[name] for name in ("step", "train_loss")}}
    cache = PartialRows(output, {**spec, **identity, "seed": seed}, "points")
    if len(cache):
        print(f"resuming: {len(cache)} of {len(chosen)} points from an earlier attempt")
    done = defaultdict(list, cache.rows())
    bar = {"desc": f"{setting} seed {seed} trace", "initial": len(cache), "total": len(chosen)}
    for index in progress(chosen[len(cache) :], unit="point", **bar):
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
        row = _row(estimator(op, generator, **budget))
        cache.add(row)
        for name, value in row.items():
            done[name].append(value)
    estimates = np.asarray(done["trace"], dtype=np.float64)
    fit = points["epoch"] >= float(trace["fit_from_epoch"])
    slope, slope_stderr = slope_fit(points["epoch"][fit], estimates[fit])
    arrays = {
        **{name: (("point",), values) for name, values in points.items()},
        "state": (("point",), chosen.astype(np.int64)),
        "trace": (("point",), estimates),
        "trace_stderr": (("point",), np.asarray(done["trace_stderr"], dtype=np.float64)),
        "trace_samples": (("point", "probe"), np.stack(done["trace_samples"])),
        "in_fit": (("point",), fit),
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
    cache.remove()
    print(
        f"{setting} seed {seed}: trace at {len(chosen)} projected points, "
        f"{estimates[0]:.4g} -> {estimates[-1]:.4g}; slope from epoch "
        f"{trace['fit_from_epoch']}: {slope:.4g} ± {slope_stderr:.2g} per epoch"
    )
