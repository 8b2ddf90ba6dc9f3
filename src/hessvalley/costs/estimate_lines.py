"""Per-stage estimates of the ``line`` stage (loss and accuracy along a straight line between
two stored states) and of ``iterate_interpolation`` (the loss between consecutive iterates,
Xing et al. 2018), torch-free; see ``hessvalley.costs.estimate`` for the units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hessvalley.barriers_config import epoch_groups
from hessvalley.costs.estimate import _unknown, hessian_memory, hessian_samples
from hessvalley.costs.model import MB, Job, Row, RunCost, split_memory


def line_rows(
    config: Mapping[str, Any], given: set[str], runs: Mapping[str, RunCost | str]
) -> list[Row]:
    """One job per line: an evaluation pass (training and validation sets) per alpha."""
    if "lines" not in given:
        return []
    rows = []
    for name, line in config["lines"].items():
        cost = runs[line["from"]["run"]]
        if isinstance(cost, str):
            rows.append(_unknown("line", name, 1, cost))
            continue
        points = int(line["alpha"]["points"])
        activations = cost.chunk * cost.fig["eval_act_bytes_per_sample"] / MB
        host, device = split_memory(
            cost.assumptions, cost.data_mb() + cost.model_mb() + activations,
            3 * cost.state_bytes / MB, cost.data_mb(),
        )  # fmt: skip
        job = Job("line", 1, points * cost.eval_pass(), host, device, points * 32 / MB)
        rows.append(Row("line", name, [job], [f"{points} points x one evaluation pass"]))
    return rows


# -- Xing et al. 2018 §3 (Figs 1-4, Table 1): the loss between consecutive iterates ----------


def _replay_offset(cost: RunCost, epoch: int) -> int:
    """Steps replayed before ``epoch``'s first: from the last checkpoint at or before it."""
    first = (epoch - 1) * cost.steps_per_epoch
    return first - max(step for step in cost.checkpoint_steps() if step <= first)


def _interpolation_job(
    config: Mapping[str, Any], cost: RunCost, epochs: list[int], count: int
) -> tuple[Job, str]:
    """``count`` jobs of ``epochs``: the replayed SGD steps, ``points`` evaluations of the
    training set a step (and one a epoch: its last iterate), and at every ``alignment_every``-th
    step a Hessian-vector product and a gradient over the Hessian's samples."""
    section = config["barriers"]
    hessian = dict(config["curvature"])
    if section["n_samples"] is not None:
        hessian["n_samples"] = section["n_samples"]
    steps, points, every = cost.steps_per_epoch, int(section["points"]), section["alignment_every"]
    replayed = sum(steps + _replay_offset(cost, e) for e in epochs)
    evaluations = len(epochs) * (steps * points + 1)
    measured = len(epochs) * (-(-steps // every) if every else 0)
    n_h, pps = hessian_samples(cost, hessian), int(hessian["probes_per_sweep"])
    evaluate = evaluations * cost.n_train * cost.fig["eval_s_per_sample"] / cost.assumptions.speedup
    align = cost.hvp([1], n_h, pps) + n_h * cost.fig["grad_s_per_sample"] / cost.assumptions.speedup
    seconds = cost.sgd_steps(replayed) + evaluate + measured * align
    per_call = int(section["points_per_call"])
    chunk = int(section["chunk_size"] or cost.chunk)
    activations = per_call * min(chunk, cost.n_train) * cost.fig["eval_act_bytes_per_sample"]
    pending = (per_call + points) * 12 * cost.fig["n_params"]  # float64 lerp, float32 points
    compute = cost.data_mb() + cost.model_mb() + (activations + pending) / MB
    memory = split_memory(cost.assumptions, compute, 3 * cost.state_bytes / MB, cost.data_mb())
    if measured:
        memory = tuple(
            max(a or 0, b or 0) or None
            for a, b in zip(memory, hessian_memory(cost, hessian, 3), strict=True)
        )
    disk = len(epochs) * steps * (points + 1 + 16) * 8 / MB
    note = (
        f"{len(epochs)} epoch(s) of {steps} steps, {replayed} replayed; {evaluations} training-set "
        f"evaluations; eta a at {measured} steps over {n_h} samples"
    )
    return Job(f"{len(epochs)} epoch(s)", count, seconds, *memory, disk), note


def interpolation_rows(
    config: Mapping[str, Any], given: set[str], runs: Mapping[str, RunCost | str]
) -> list[Row]:
    """One row per run of ``barriers.runs``: its jobs (``barriers_config.interpolation_jobs``),
    alike ones counted together."""
    if "barriers" not in given:
        return []
    rows = []
    for setting in config["barriers"]["runs"]:
        cost = runs[setting]
        groups = list(epoch_groups(config, setting).values())
        if isinstance(cost, str):
            rows.append(_unknown("iterate_interpolation", setting, len(groups), cost))
            continue
        alike: dict[tuple, int] = {}
        for epochs in groups:
            key = (len(epochs), sum(_replay_offset(cost, e) for e in epochs))
            alike[key] = alike.get(key, 0) + 1
        jobs, notes = [], []
        for epochs in groups:
            key = (len(epochs), sum(_replay_offset(cost, e) for e in epochs))
            if key in alike:
                job, note = _interpolation_job(config, cost, epochs, alike.pop(key))
                jobs.append(job)
                notes.append(note)
        rows.append(Row("iterate_interpolation", setting, jobs, notes))
    return rows
