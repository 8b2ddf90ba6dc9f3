"""Per-stage estimates of W&S Figs 2a, 5 and 6 (``equilibrium_sweep``, ``alignment``,
``fdr``), torch-free; see ``hessvalley.costs.estimate`` for the units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hessvalley.costs.estimate import (
    _unknown,
    dense_spectrum_seconds,
    hessian_memory,
    hessian_samples,
)
from hessvalley.costs.model import MB, Job, Row, RunCost
from hessvalley.schedule import chosen_checkpoints


def _seeds(config: Mapping[str, Any], section: str, setting: str) -> int:
    chosen = config[section].get("seeds")
    return len(config["runs"][setting]["seeds"] if chosen is None else chosen)


def _equilibrium_row(
    config: Mapping[str, Any], cost: RunCost, seeds: int, eigh: Mapping | None
) -> Row:
    sweep = config["equilibrium"]
    hessian = {**config["curvature"], "n_samples": None, "dtype": sweep["dtype"]}
    cells = len(sweep["batch_sizes"]) * len(sweep["lrs"])
    points = cells * int(sweep["snapshots"]) + int(sweep["gd_points"])
    per_step = [
        s * cost.fig["grad_s_per_sample"] + cost.fig["optimizer_step_s"]
        for s in sweep["batch_sizes"]
    ]
    training = len(sweep["lrs"]) * int(sweep["steps"]) * sum(per_step) / cost.assumptions.speedup
    seconds = training + points * (dense_spectrum_seconds(cost, hessian, eigh) + cost.eval_pass())
    n_params = cost.fig["n_params"]
    host, device = hessian_memory(cost, hessian, int(hessian["probes_per_sweep"]) + 2)
    host += 3 * 8 * n_params**2 / MB  # the dense Hessian, its symmetrised copy, eigh workspace
    notes = [f"{cells} cells x {sweep['steps']} SGD steps; {points} exact {n_params}-spectra"]
    disk = points * n_params * 8 / MB
    return Row("equilibrium_sweep", cost.setting, [Job("seed", seeds, seconds, host, device, disk)],
               notes)  # fmt: skip


def _alignment_row(config: Mapping[str, Any], cost: RunCost, seeds: int) -> Row:
    """Exact: the dense H (P HVPs) and C (assumed to cost as much: per-sample gradients and
    their outer products); stochastic: ``probes`` matvecs of each of H and C."""
    section, hessian = config["alignment"], config["curvature"]
    points = len(chosen_checkpoints(len(cost.checkpoint_steps()), section["every"]))
    n_params, pps = cost.fig["n_params"], int(hessian["probes_per_sweep"])
    n_samples = hessian_samples(cost, hessian)
    exact = n_params <= int(section["max_params"])
    width = n_params if exact else int(section["probes"])
    seconds = points * 2 * cost.hvp([width], n_samples, pps)
    host, device = hessian_memory(cost, hessian, 2 * pps + 4)
    if exact:
        host += (2 * 8 * n_params**2 + 8 * n_samples * n_params) / MB
        notes = [f"exact: dense {n_params}x{n_params} H and C at {points} checkpoints"]
    else:
        notes = [f"stochastic: {width} probes of H and of C at {points} checkpoints"]
    job = Job("seed", seeds, seconds, host, device, points * 16 * 8 / MB)
    return Row("alignment", cost.setting, [job], notes)


def _fdr_row(config: Mapping[str, Any], cost: RunCost, seeds: int) -> Row:
    """A replay of every step of the run, and Lanczos (to its basis limit, an upper bound)
    at each evaluation checkpoint."""
    section, hessian = config["fdr"], dict(config["curvature"])
    if section["n_samples"] is not None:
        hessian["n_samples"] = section["n_samples"]
    n_checkpoints = len(cost.checkpoint_steps())
    points = len(chosen_checkpoints(n_checkpoints, section["every"]))
    k = max(section["k"])
    max_dim = min(cost.fig["n_params"], section["lanczos"]["max_dim"] or max(100, 20 * k))
    block = int(section["lanczos"]["block_size"])
    n_samples, pps = hessian_samples(cost, hessian), int(hessian["probes_per_sweep"])
    lanczos = cost.hvp([block] * -(-max_dim // block), n_samples, pps)
    seconds = cost.sgd_steps(cost.total_steps) + points * lanczos
    host, device = hessian_memory(cost, hessian, max_dim + 2 * block)
    notes = [f"replay of {cost.total_steps} steps; Lanczos (<= {max_dim}) at {points} points"]
    job = Job("seed", seeds, seconds, host, device, cost.total_steps * 8 * 4 / MB)
    return Row("fdr", cost.setting, [job], notes)


def appendix_rows(
    config: Mapping[str, Any],
    given: set[str],
    runs: Mapping[str, RunCost | str],
    eigh: Mapping[str, Any] | None,
) -> list[Row]:
    """The rows of the sections the config states, per run they name."""
    rows = []
    for section, stage in (
        ("equilibrium", "equilibrium_sweep"),
        ("alignment", "alignment"),
        ("fdr", "fdr"),
    ):
        if section not in given:
            continue
        for setting in config[section]["runs"]:
            seeds, cost = _seeds(config, section, setting), runs[setting]
            if isinstance(cost, str):
                rows.append(_unknown(stage, setting, seeds, cost))
            elif section == "equilibrium":
                rows.append(_equilibrium_row(config, cost, seeds, eigh))
            elif section == "alignment":
                rows.append(_alignment_row(config, cost, seeds))
            else:
                rows.append(_fdr_row(config, cost, seeds))
    return rows
