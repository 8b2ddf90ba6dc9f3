"""Per-stage estimate of the ``minibatch_alignment`` stage (Xing et al. 2018 Figs 5-6),
torch-free; see ``hessvalley.costs.estimate`` for the units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hessvalley.costs.estimate import _unknown, hessian_memory, hessian_samples
from hessvalley.costs.model import MB, Job, Row, RunCost, trace_matmats
from hessvalley.schedule import chosen_checkpoints


def _points(config: Mapping[str, Any], cost: RunCost) -> int:
    """Checkpoints measured: one per listed epoch, else as ``checkpoints`` chooses."""
    section = config["minibatch_alignment"]
    if section["epochs"] is not None:
        return len(section["epochs"])
    every = section["checkpoints"]
    try:
        return len(chosen_checkpoints(len(cost.checkpoint_steps()), every or "last"))
    except ValueError:
        return len(every)


def _hessian(config: Mapping[str, Any]) -> dict[str, Any]:
    """The curvature keys with the section's ``n_samples`` where it sets one."""
    chosen = config["minibatch_alignment"]["n_samples"]
    curvature = config["curvature"]
    return {**curvature, "n_samples": curvature["n_samples"] if chosen is None else chosen}


def checkpoint_seconds(config: Mapping[str, Any], cost: RunCost) -> tuple[float, int, int]:
    """(seconds, H products, Lanczos basis) of one checkpoint: the batch gradients (each
    over its S samples; the full set once) and their H products (a block of ``n_batches``
    per size, one vector for the full set), Lanczos for λmax to its basis limit (an upper
    bound), the trace estimate, and with ``prediction`` ``probes`` products of H and of C
    (C costed as H) and one full gradient."""
    section, curvature, hessian = (
        config["minibatch_alignment"],
        config["curvature"],
        _hessian(config),
    )
    n, pps = hessian_samples(cost, hessian), int(hessian["probes_per_sweep"])
    sizes = [n if s == "full" else min(int(s), n) for s in section["batch_sizes"]]
    n_batches, n_params = int(section["n_batches"]), cost.fig["n_params"]
    blocks = [1 if s == n else n_batches for s in sizes]
    samples = sum(s * b for s, b in zip(sizes, blocks, strict=True))
    eigen = curvature["eigen"]
    max_dim = min(n_params, eigen["max_dim"] or 100)
    block = int(eigen["block_size"])
    trace = trace_matmats(
        curvature["trace"]["method"], int(curvature["trace"]["matvecs"]), n_params
    )
    matmats = blocks + [block] * math.ceil(max_dim / block) + trace
    if section["prediction"]:
        matmats += [int(section["probes"])] * 2
        samples += n
    gradients = samples * cost.fig["grad_s_per_sample"] / cost.assumptions.speedup
    return gradients + cost.hvp(matmats, n, pps), sum(matmats), max_dim


def minibatch_rows(
    config: Mapping[str, Any], given: set[str], runs: Mapping[str, RunCost | str]
) -> list[Row]:
    """One job per run and seed of ``minibatch_alignment.runs``."""
    if "minibatch_alignment" not in given:
        return []
    section, rows = config["minibatch_alignment"], []
    for setting in section["runs"]:
        cost = runs[setting]
        seeds = len(section["seeds"] or config["runs"][setting]["seeds"])
        if isinstance(cost, str):
            rows.append(_unknown("minibatch_alignment", setting, seeds, cost))
            continue
        points = _points(config, cost)
        seconds, products, max_dim = checkpoint_seconds(config, cost)
        vectors = max(2 * int(section["n_batches"]), max_dim + 2) + 4
        host, device = hessian_memory(cost, _hessian(config), vectors)
        values = points * len(section["batch_sizes"]) * int(section["n_batches"])
        notes = [f"{points} checkpoints x {products} H products (Lanczos at its limit)"]
        job = Job("seed", seeds, points * seconds, host, device, 3 * 8 * values / MB)
        rows.append(Row("minibatch_alignment", setting, [job], notes))
    return rows
