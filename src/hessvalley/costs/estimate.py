"""Per-stage job counts, times, memory and disk of a config (torch-free): the calibration's
per-sample figures times the counts the config fixes (``hessvalley.costs.model``).

Counts follow the workflow: one dataset job per dataset a run uses, one train job per run
and seed, per projected run and seed one grid job and one segment job per segment
(``projection.plan``), one path and one trace job; curvature jobs per measured run and seed.
Runs that stop early (``stop_below_loss``) are costed at their full ``epochs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

from hessvalley.costs.facts import DatasetFacts, run_sizes
from hessvalley.costs.model import (
    GATHER_BASE_MB,
    MB,
    Assumptions,
    Job,
    Row,
    RunCost,
    split_memory,
    trace_matmats,
)
from hessvalley.projection.plan import (
    n_segments,
    projection_grid,
    projection_settings,
    segment_grid,
)
from hessvalley.schedule import TORCHVISION_SOURCES, TORCHVISION_VAL_SIZES


def run_costs(
    config: Mapping[str, Any],
    facts: Mapping[str, DatasetFacts],
    figures: Mapping[str, Mapping[str, Any] | None],
    assumptions: Assumptions,
) -> dict[str, RunCost | str]:
    """Each run's ``RunCost``, or why it cannot be costed."""
    out: dict[str, RunCost | str] = {}
    projected = config.get("projection", {}).get("runs", {})
    for setting, run in config["runs"].items():
        fact = facts[run["dataset"]]
        n_train, n_val = run_sizes(config, setting, fact)
        if None in (n_train, n_val, fact.sample_bytes) or figures.get(setting) is None:
            reasons = "; ".join(fact.unknown) or "model not calibrated"
            out[setting] = f"not estimated: dataset {run['dataset']}: {reasons}"
            continue
        settings = projection_settings(config, setting) if setting in projected else None
        out[setting] = RunCost(
            setting,
            run,
            n_train,
            n_val,
            fact.sample_bytes,
            figures[setting],
            assumptions,
            settings,
        )
    return out


def _unknown(stage: str, setting: str, count: int, reason: str) -> Row:
    return Row(stage, setting, [Job("all", count, None, None, None, None)], [reason])


def dataset_rows(
    config: Mapping[str, Any], facts: Mapping[str, DatasetFacts], assumptions: Assumptions
) -> list[Row]:
    """One job per dataset a run uses: reading the source and writing its store (I/O)."""
    used = sorted({run["dataset"] for run in config["runs"].values()})
    rows = []
    for name in used:
        fact, spec = facts[name], config["datasets"][name]
        size = fact.store_bytes()
        if size is None:
            rows.append(_unknown("dataset", name, 1, "; ".join(fact.unknown)))
            continue
        source = spec["source"]
        raw = size
        if source in TORCHVISION_SOURCES:  # the whole source is read before any subset
            full = TORCHVISION_SOURCES[source] + TORCHVISION_VAL_SIZES[source]
            raw = full * (fact.sample_bytes + 8)
        host = split_memory(assumptions, 0.0, (raw + size) / MB, 0.0)[0]
        job = Job("build", 1, None, host, None, size / MB, "io")
        rows.append(Row("dataset", name, [job], ["memory: the source and the prepared copy"]))
    return rows


def train_rows(config: Mapping[str, Any], runs: Mapping[str, RunCost | str]) -> list[Row]:
    """Per run and seed: every SGD step, and ``evaluate`` at each checkpoint."""
    rows = []
    for setting, cost in runs.items():
        seeds = len(config["runs"][setting]["seeds"])
        if isinstance(cost, str):
            rows.append(_unknown("train", setting, seeds, cost))
            continue
        checkpoints = len(cost.checkpoint_steps())
        seconds = cost.sgd_steps(cost.total_steps) + checkpoints * cost.eval_pass()
        compute = cost.data_mb() + cost.model_mb() + cost.train_act_mb(min(cost.batch, cost.chunk))
        host, device = split_memory(
            cost.assumptions, compute, 2 * cost.state_bytes / MB, cost.data_mb()
        )
        disk = (checkpoints * cost.checkpoint_bytes + 8 * cost.total_steps) / MB
        notes = [f"{cost.total_steps} steps, {checkpoints} checkpoints"]
        stop = cost.spec.get("stop_below_loss")
        if stop is not None:
            notes.append(f"upper bound: stops once the training loss is below {stop}")
        rows.append(Row("train", setting, [Job("seed", seeds, seconds, host, device, disk)], notes))
    return rows


def _projection_memory(cost: RunCost, host_extra_mb: float, act_mb: float) -> tuple:
    compute = cost.data_mb() + cost.model_mb() + cost.state_bytes / MB + act_mb
    return split_memory(cost.assumptions, compute, host_extra_mb, cost.data_mb())


def _bisections(cost: RunCost, steps: list[int], grid: list[int]) -> int:
    """Bisection projections of one segment: ``bisections`` per grid interval, at most the
    interval's inner steps and 2^max_depth - 1."""
    depth = cost.projection["max_depth"]
    total = 0
    for left, right in pairwise(grid):
        cap = steps[right] - steps[left] - 1
        if depth is not None:
            cap = min(cap, 2 ** int(depth) - 1)
        total += min(cost.assumptions.bisections, cap)
    return total


def _segment_jobs(cost: RunCost, seeds: int) -> tuple[list[Job], list[Job], int]:
    """(grid jobs, segment jobs, bisection points of one seed) of a projected run."""
    settings, config_steps = cost.projection, cost.checkpoint_steps()
    stride, per = settings["checkpoint_stride"], settings["intervals_per_segment"]
    n = math.ceil((len(projection_grid(len(config_steps), stride)) - 1) / per)
    state_mb, projection = cost.state_bytes / MB, cost.projection_s()
    train_act = cost.train_act_mb(min(cost.n_train, cost.chunk))
    interp_act = settings["interpolation_batch"] * cost.chunk
    interp_act *= cost.fig["eval_act_bytes_per_sample"] / MB
    grid_jobs, segment_jobs, bisected = [], [], 0
    for j in range(n):
        grid = segment_grid(len(config_steps), stride, per, j)
        last = j == n - 1
        projections = len(grid) - 1 + last
        host, device = _projection_memory(cost, 3 * state_mb, train_act)
        grid_jobs.append(
            Job(
                f"segment {j}",
                seeds,
                projections * projection,
                host,
                device,
                projections * state_mb,
            )
        )
        mids = _bisections(cost, config_steps, grid)
        bisected += mids
        replay = config_steps[grid[-1]] - config_steps[grid[0]] if mids else 0
        edges = len(grid) - 1 + mids
        interp = edges * settings["n_points"] * cost.eval_pass()
        seconds = mids * projection + cost.sgd_steps(replay) + interp
        points = len(grid) + mids  # projections the bisection holds
        extra = settings["replay_cache_mb"] * 2**20 / MB + points * state_mb
        host, device = _projection_memory(cost, extra, max(train_act, interp_act))
        kept = len(grid) - 1 + last + (mids if settings["store_params"] == "all" else 0)
        segment_jobs.append(Job(f"segment {j}", seeds, seconds, host, device, kept * state_mb))
    return _merge(grid_jobs), _merge(segment_jobs), bisected


def _merge(jobs: list[Job]) -> list[Job]:
    """Jobs with equal estimates as one entry (labels joined as a range)."""
    merged: dict[tuple, Job] = {}
    for job in jobs:
        key = (job.seconds, job.host_mb, job.device_mb, job.disk_mb)
        if key in merged:
            first = merged[key].label.split("..")[0]
            merged[key].label = f"{first}..{job.label.split()[-1]}"
            merged[key].count += job.count
        else:
            merged[key] = Job(job.label, job.count, *key, job.kind)
    return list(merged.values())


def projection_rows(
    config: Mapping[str, Any], runs: Mapping[str, RunCost | str], hessian: Mapping[str, Any]
) -> list[Row]:
    """Grid projections, bisection segments, the gathered path and its trace, per run."""
    rows = []
    trace = config["projection"]["trace"]
    for setting in config["projection"]["runs"]:
        seeds = len(config["runs"][setting]["seeds"])
        cost = runs[setting]
        if isinstance(cost, str):
            n = n_segments(config, setting) * seeds
            rows += [
                _unknown(s, setting, n, cost) for s in ("projection_grid", "projection_segment")
            ]
            rows += [
                _unknown(s, setting, seeds, cost) for s in ("projected_path", "projected_trace")
            ]
            continue
        grid_jobs, segment_jobs, bisected = _segment_jobs(cost, seeds)
        g = cost.gd_steps()
        rows.append(Row("projection_grid", setting, grid_jobs, [f"{g} GD steps per projection"]))
        rows.append(
            Row(
                "projection_segment",
                setting,
                segment_jobs,
                [f"{bisected} bisection projections per seed"],
            )
        )
        n_grid = len(
            projection_grid(len(cost.checkpoint_steps()), cost.projection["checkpoint_stride"])
        )
        kept = n_grid + (bisected if cost.projection["store_params"] == "all" else 0)
        state_mb = cost.state_bytes / MB
        path = Job("seed", seeds, None, GATHER_BASE_MB + state_mb, None, kept * state_mb, "io")
        rows.append(Row("projected_path", setting, [path], [f"{kept} kept states, streamed"]))
        points = n_grid + (bisected if trace["at"] == "all" else 0)
        matmats = trace_matmats(trace["method"], int(trace["probes"]), None)
        rows.append(_trace_row("projected_trace", cost, seeds, points, matmats, hessian))
    return rows


def hessian_memory(cost: RunCost, hessian: Mapping[str, Any], vectors: int) -> tuple:
    """(host, device) MB of a Hessian job: data, model, one chunk's double-backward graph
    and ``vectors`` parameter-sized vectors (probes, sketch, Krylov basis)."""
    n_samples = hessian_samples(cost, hessian)
    width = 8 if hessian["dtype"] == "float64" else 4
    graph = min(int(hessian["chunk_size"]), n_samples) * cost.fig["hvp_act_bytes_per_sample"]
    graph *= width / 4
    compute = (
        cost.data_mb() + cost.model_mb() + (graph + vectors * width * cost.fig["n_params"]) / MB
    )
    return split_memory(cost.assumptions, compute, 2 * cost.state_bytes / MB, cost.data_mb())


def dense_spectrum_seconds(
    cost: RunCost, hessian: Mapping[str, Any], eigh: Mapping[str, Any] | None
) -> float:
    """One exact spectrum: P HVPs in blocks of probes_per_sweep over the Hessian's samples,
    plus a dense float64 eigh scaled as P^3 from its calibration (on the host: not sped up)."""
    n_params = cost.fig["n_params"]
    seconds = cost.hvp([n_params], hessian_samples(cost, hessian), int(hessian["probes_per_sweep"]))
    if eigh is not None:
        seconds += eigh["seconds"] * (n_params / eigh["size"]) ** 3
    return seconds


def hessian_samples(cost: RunCost, hessian: Mapping[str, Any]) -> int:
    n = hessian["n_samples"]
    return cost.n_train if n is None else min(int(n), cost.n_train)


def _trace_row(
    stage: str,
    cost: RunCost,
    seeds: int,
    points: int,
    matmats: list[int],
    hessian: Mapping[str, Any],
) -> Row:
    pps, n_samples = int(hessian["probes_per_sweep"]), hessian_samples(cost, hessian)
    seconds = points * cost.hvp(matmats, n_samples, pps)
    host, device = hessian_memory(cost, hessian, max(matmats[0], pps) * 2 + 4)
    disk = points * (sum(matmats) + 4) * 8 / MB
    notes = [f"{points} points x {sum(matmats)} HVPs over {n_samples} samples"]
    return Row(stage, cost.setting, [Job("seed", seeds, seconds, host, device, disk)], notes)
