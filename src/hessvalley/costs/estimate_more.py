"""Per-stage estimates of the curvature stages along trajectories, the toy models and the
small stages (figures, claims), torch-free; see ``hessvalley.costs.estimate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hessvalley.costs.estimate import (
    _trace_row,
    _unknown,
    dense_spectrum_seconds,
    hessian_memory,
    hessian_samples,
)
from hessvalley.costs.model import BASE_MB, MB, Job, Row, RunCost, trace_matmats
from hessvalley.curvature_runs import curvature_runs
from hessvalley.schedule import chosen_checkpoints

TOYS = ("fig2b", "fig2cd", "fig7")
APPENDIX_FIGURES = {
    "equilibrium": "wei2020_fig2a",
    "alignment": "wei2020_fig5",
    "fdr": "wei2020_fig6",
    "outliers": "sagun2017_outliers",
    "width": "sagun2017_width",
    # Xing et al. 2018 Figs 5-7
    "minibatch_alignment": "xing2018_fig5",
    "gradient_cosine": "xing2018_fig7",
}


def _points(n_checkpoints: int, every: Any) -> int:
    """Checkpoints measured; a listed index the estimate's checkpoint count lacks (an early
    stop, known only when the run has trained) still counts as one."""
    try:
        return len(chosen_checkpoints(n_checkpoints, every))
    except ValueError:
        return len(every)


def _eigen_row(cost: RunCost, seeds: int, points: int, curvature: Mapping[str, Any]) -> Row:
    """Lanczos to its basis limit (an upper bound: it stops once the Ritz pairs converge)."""
    spec, n_params = curvature["eigen"], cost.fig["n_params"]
    max_dim = min(n_params, spec["max_dim"] or max(100, 20 * int(spec["k"])))
    block = min(int(spec["block_size"]), max_dim)
    matmats = [block] * math.ceil(max_dim / block)
    pps, n_samples = int(curvature["probes_per_sweep"]), hessian_samples(cost, curvature)
    seconds = points * cost.hvp(matmats, n_samples, pps)
    host, device = hessian_memory(cost, curvature, max_dim + 2 * block)
    notes = [f"{points} checkpoints x up to {max_dim} HVPs over {n_samples} samples (upper bound)"]
    disk = points * 8 * 6 * int(spec["k"]) / MB
    return Row(
        "curvature_eigen", cost.setting, [Job("seed", seeds, seconds, host, device, disk)], notes
    )


def _spectrum_row(
    cost: RunCost,
    seeds: int,
    points: int,
    curvature: Mapping[str, Any],
    eigh: Mapping[str, Any] | None,
) -> Row:
    """Exact: P HVPs (unit vectors in blocks of probes_per_sweep) and a dense float64 eigh;
    beyond max_params, SLQ: slq_steps blocks of slq_starts vectors."""
    spec, n_params = curvature["spectrum"], cost.fig["n_params"]
    pps, n_samples = int(curvature["probes_per_sweep"]), hessian_samples(cost, curvature)
    notes = []
    if n_params <= int(spec["max_params"]):
        seconds = dense_spectrum_seconds(cost, curvature, eigh)
        host, device = hessian_memory(cost, curvature, pps + 2)
        host += 3 * 8 * n_params**2 / MB  # dense matrix, its transpose sum, eigh workspace
        notes.append(f"exact: {n_params}x{n_params} float64 Hessian, {points} checkpoints")
        disk = points * n_params * 8 / MB
    else:
        starts, steps = int(spec["slq_starts"]), min(int(spec["slq_steps"]), n_params)
        seconds = cost.hvp([starts] * steps, n_samples, pps)
        host, device = hessian_memory(cost, curvature, starts * (steps + 3))
        notes.append(f"SLQ: {starts} starts x {steps} steps, {points} checkpoints")
        disk = points * starts * steps * 16 / MB
    job = Job("seed", seeds, points * seconds, host, device, disk)
    return Row("curvature_spectrum", cost.setting, [job], notes)


def curvature_rows(
    config: Mapping[str, Any],
    runs: Mapping[str, RunCost | str],
    eigh: Mapping[str, Any] | None,
) -> list[Row]:
    """Trace, extreme eigenvalues (and spectrum) at every ``every``-th checkpoint."""
    curvature = config["curvature"]
    rows = []
    for setting, plan in curvature_runs(config).items():
        seeds, cost = len(config["runs"][setting]["seeds"]), runs[setting]
        stages = [f"curvature_{m}" for m in plan["measurements"]]
        if isinstance(cost, str):
            rows += [_unknown(stage, setting, seeds, cost) for stage in stages]
            continue
        n_checkpoints = len(cost.checkpoint_steps())
        points = {m: _points(n_checkpoints, every) for m, every in plan["every"].items()}
        if "trace" in points:
            spec = curvature["trace"]
            matmats = trace_matmats(spec["method"], int(spec["matvecs"]), cost.fig["n_params"])
            rows.append(
                _trace_row("curvature_trace", cost, seeds, points["trace"], matmats, curvature)
            )
        if "eigen" in points:
            eigen = {**curvature, "eigen": plan["eigen"]}
            rows.append(_eigen_row(cost, seeds, points["eigen"], eigen))
        if "spectrum" in points:
            rows.append(_spectrum_row(cost, seeds, points["spectrum"], curvature, eigh))
        if cost.spec.get("stop_below_loss") is not None:
            for row in rows[-len(stages) :]:
                row.notes.append("upper bound: checkpoints of the full epochs")
    return rows


def toy_steps(name: str, spec: Mapping[str, Any]) -> int:
    if name == "fig2b":
        return int(spec["equilibrate_steps"]) + int(spec["measure_steps"])
    return int(spec["steps"])


def toy_rows(
    config: Mapping[str, Any], given: set[str], figures: Mapping[str, Mapping[str, Any]]
) -> list[Row]:
    """Toy simulations: calibrated seconds per step times steps (CPU; not sped up)."""
    rows = []
    for name in TOYS:
        if f"toy.{name}" not in given:
            continue
        spec = config["toy"][name]
        steps = toy_steps(name, spec)
        conditions = len(spec["etas"]) if name == "fig2b" else 2
        records = steps // int(spec["record_every"]) + 1
        state = conditions * int(spec["runs"]) * len(spec["init"]) * 8
        fig = figures.get(name)
        seconds = None if fig is None else steps * fig["step_s"]
        job = Job("run", 1, seconds, BASE_MB + 2 * records * state / MB, None, records * state / MB)
        rows.append(Row(f"toy_{name}", "toy", [job], [f"{steps} steps, CPU time (not / speedup)"]))
    return rows


def small_rows(config: Mapping[str, Any], given: set[str]) -> list[Row]:
    """Figures and the claims table: read stores, draw; not estimated (seconds to minutes)."""
    chosen = config["figures"]["training_runs"]
    counts: dict[str, int] = {"training_figure": len(config["runs"] if chosen is None else chosen)}
    if "curvature" in given:
        plans = curvature_runs(config)
        counts["curvature_figure"] = sum(plan["figure"] for plan in plans.values())
    if "projection" in given:
        for figure in ("fig1", "fig3", "fig4"):
            counts[f"wei2020_{figure}"] = int(bool(config["projection"]["figures"][figure]))
    for name in TOYS:
        counts[f"wei2020_{name}"] = int(f"toy.{name}" in given)
    for section, figure in APPENDIX_FIGURES.items():
        counts[figure] = int(section in given and bool(config[section]["runs"]))
    if "outliers" in given and config["outliers"]["runs"]:
        counts["outlier_table"] = 1
    counts["sagun2017_batch"] = int("batch" in given and bool(config["batch"]["large"]))
    # Xing et al. 2018 §3 (Figs 1-4, Table 1)
    for figure in ("xing2018_fig1", "xing2018_table1"):
        counts[figure] = int("barriers" in given and bool(config["barriers"]["runs"]))
    claims = any(
        counts.get(f) for f in counts if f.startswith(("wei2020_", "sagun2017_", "xing2018_"))
    )
    counts["claims"] = int(claims)
    return [
        Row(stage, "-", [Job("all", n, None, None, None, None, "small")], ["not estimated"])
        for stage, n in counts.items()
        if n
    ]
