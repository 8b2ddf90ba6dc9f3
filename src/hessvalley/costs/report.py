"""The plan as a table and as JSON, each job set against its SLURM request (torch-free).

A job fits at the first attempt whose request (``resources.job_resource``: the rule's
runtime and mem_mb times the attempt, capped at ``resources.limits``) covers its estimated
time and host memory; one that no attempt covers (the profile's retries + 1) is over, and
the plan's exit status says so, so a script can refuse to launch it. Jobs of the stages that
save their progress as they go (``RESUMING``) carry their work over to the next attempt: they
fit once the attempts' runtimes together cover their time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from hessvalley.costs.model import Job, Row
from hessvalley.resources import job_resource

PROFILE = Path("workflow/profiles/slurm/config.yaml")
OVER = 0  # attempt value of a job no attempt covers
# Stages whose killed job resumes where it stopped (losing minutes): training checkpoints,
# finished projections and the GD state in progress, finished trace points and checkpoints.
RESUMING = frozenset(
    {
        "train",
        "projection_grid",
        "projection_segment",
        "projected_trace",
        "curvature_trace",
        "curvature_eigen",
        "curvature_spectrum",
    }
)

# What to turn when a rule's jobs run over: (time, memory).
KNOBS: dict[str, tuple[str, str]] = {
    "dataset": ("resources.dataset.runtime", "resources.dataset.mem_mb"),
    "train": (
        "runs.{setting}.epochs, or raise resources.train.runtime",
        "runs.{setting}.eval_batch_size, or raise resources.train.mem_mb",
    ),
    "projection_grid": (
        "projection.intervals_per_segment or projection.max_gd_steps, or raise "
        "resources.projection_grid.runtime",
        "runs.{setting}.eval_batch_size, or raise resources.projection_grid.mem_mb",
    ),
    "projection_segment": (
        "projection.intervals_per_segment or projection.max_depth, or raise "
        "resources.projection_segment.runtime",
        "projection.replay_cache_mb or projection.interpolation_batch, or raise "
        "resources.projection_segment.mem_mb",
    ),
    "projected_path": ("resources.projected_path.runtime", "resources.projected_path.mem_mb"),
    "projected_trace": (
        "curvature.n_samples or projection.trace.probes, or raise "
        "resources.projected_trace.runtime",
        "curvature.chunk_size or curvature.probes_per_sweep, or raise "
        "resources.projected_trace.mem_mb",
    ),
    "curvature_trace": (
        "curvature.n_samples or curvature.trace.matvecs, raise curvature.every, or raise "
        "resources.curvature_trace.runtime",
        "curvature.chunk_size, or raise resources.curvature_trace.mem_mb",
    ),
    "curvature_eigen": (
        "curvature.n_samples or curvature.eigen.max_dim, raise curvature.every, or raise "
        "resources.curvature_eigen.runtime",
        "curvature.eigen.max_dim or curvature.chunk_size, or raise "
        "resources.curvature_eigen.mem_mb",
    ),
    "curvature_spectrum": (
        "curvature.spectrum.max_params (SLQ instead of exact), raise curvature.spectrum.every, "
        "or raise resources.curvature_spectrum.runtime",
        "curvature.spectrum.max_params, or raise resources.curvature_spectrum.mem_mb",
    ),
}


def max_attempts(profile: str | Path = PROFILE) -> int:
    """Attempts a job gets: the SLURM profile's ``retries`` + 1 (3 when unreadable)."""
    try:
        retries = yaml.safe_load(Path(profile).read_text()).get("retries", 2)
    except (OSError, yaml.YAMLError, AttributeError):
        retries = 2
    return int(retries) + 1


def attempt_needed(config: Mapping[str, Any], stage: str, job: Job, attempts: int) -> int | None:
    """First attempt whose request covers the job (``OVER`` if none; None if unknown)."""
    minutes = None if job.seconds is None else job.seconds / 60
    if job.kind == "small" or (minutes is None and job.host_mb is None):
        return None
    available = 0.0
    for attempt in range(1, attempts + 1):
        runtime = job_resource(config, stage, "runtime", attempt)
        memory = job_resource(config, stage, "mem_mb", attempt)
        available = available + runtime if stage in RESUMING else runtime
        if (minutes is None or minutes <= available) and (job.host_mb or 0) <= memory:
            return attempt
    return OVER


def _knob(stage: str, setting: str, which: int) -> str:
    pair = KNOBS.get(stage, (f"resources.{stage}.runtime", f"resources.{stage}.mem_mb"))
    return "lower " + pair[which].format(setting=setting)


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600


def row_record(
    config: Mapping[str, Any], row: Row, attempts: int, device_limit_mb: float | None
) -> dict[str, Any]:
    """One row as JSON: totals, the worst job, the verdict and each over-limit job."""
    jobs, flagged = [], []
    for job in row.jobs:
        needed = attempt_needed(config, row.stage, job, attempts)
        record = {
            "label": job.label,
            "count": job.count,
            "kind": job.kind,
            "hours": _hours(job.seconds),
            "host_mb": job.host_mb,
            "device_mb": job.device_mb,
            "disk_mb": job.disk_mb,
            "attempt": needed,
        }
        jobs.append(record)
        if needed == OVER or (needed or 1) > 1:
            flagged.append(_flag(config, row, job, needed, attempts))
        if device_limit_mb and (job.device_mb or 0) > device_limit_mb:
            flagged.append(
                {
                    "stage": row.stage,
                    "setting": row.setting,
                    "label": job.label,
                    "over": True,
                    "message": f"device memory {job.device_mb:.0f} MB "
                    f"above the GPU's {device_limit_mb:.0f} MB",
                }
            )
    known = [j["attempt"] for j in jobs if j["attempt"] is not None]
    verdict = None if not known else (OVER if OVER in known else max(known))
    return {
        "stage": row.stage,
        "setting": row.setting,
        "jobs": jobs,
        "n_jobs": row.n_jobs,
        "notes": row.notes,
        "hours_per_job": _max(j["hours"] for j in jobs),
        "hours_total": _sum((j["hours"], j["count"]) for j in jobs),
        "host_mb_per_job": _max(j["host_mb"] for j in jobs),
        "device_mb_per_job": _max(j["device_mb"] for j in jobs),
        "disk_mb_per_job": _max(j["disk_mb"] for j in jobs),
        "disk_mb_total": _sum((j["disk_mb"], j["count"]) for j in jobs),
        "limit": {
            "runtime_min": [
                job_resource(config, row.stage, "runtime", 1),
                job_resource(config, row.stage, "runtime", attempts),
            ],
            "mem_mb": [
                job_resource(config, row.stage, "mem_mb", 1),
                job_resource(config, row.stage, "mem_mb", attempts),
            ],
        },
        "attempt": verdict,
        "flagged": flagged,
    }


def _max(values) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _sum(pairs) -> float | None:
    pairs = list(pairs)
    if any(value is None for value, _ in pairs):
        return None
    return sum(value * count for value, count in pairs)


def _flag(
    config: Mapping[str, Any], row: Row, job: Job, needed: int | None, attempts: int
) -> dict[str, Any]:
    """What is over (or fits only at a retry), by how much, and the knob to turn."""
    runtime = job_resource(config, row.stage, "runtime", 1)
    memory = job_resource(config, row.stage, "mem_mb", 1)
    top_runtime = job_resource(config, row.stage, "runtime", attempts)
    top_memory = job_resource(config, row.stage, "mem_mb", attempts)
    resumes = row.stage in RESUMING
    if resumes:  # its attempts' runtimes add up
        top_runtime = sum(
            job_resource(config, row.stage, "runtime", a) for a in range(1, attempts + 1)
        )
    hours = _hours(job.seconds)
    slow = hours is not None and hours * 60 > (top_runtime if needed == OVER else runtime)
    big = (job.host_mb or 0) > (top_memory if needed == OVER else memory)
    parts = []
    if slow:
        reach = (
            f"{top_runtime} min over {attempts} attempts, as it resumes"
            if resumes
            else f"up to {top_runtime} min at attempt {attempts}"
        )
        parts.append(f"{hours:.3g} h > {runtime} min ({reach}, resources.limits.runtime)")
    if big:
        parts.append(
            f"{job.host_mb:.0f} MB > {memory} MB (up to {top_memory} MB at attempt {attempts})"
        )
    knobs = [_knob(row.stage, row.setting, 0)] * slow + [_knob(row.stage, row.setting, 1)] * big
    verdict = "OVER" if needed == OVER else f"fits only at attempt {needed}"
    where = f"{row.stage} {row.setting} [{job.label}, {job.count} job(s)]"
    return {
        "stage": row.stage,
        "setting": row.setting,
        "label": job.label,
        "over": needed == OVER,
        "message": f"{verdict}: {where}: {'; '.join(parts)}; " + "; ".join(knobs),
    }


def plan_record(
    config: Mapping[str, Any],
    rows: list[Row],
    header: Mapping[str, Any],
    attempts: int,
    device_limit_mb: float | None = None,
) -> dict[str, Any]:
    """The whole plan as JSON: assumptions, rows, totals, flags and the exit status."""
    records = [row_record(config, row, attempts, device_limit_mb) for row in rows]
    flagged = [flag for record in records for flag in record["flagged"]]
    over = [flag for flag in flagged if flag["over"]]
    return {
        **header,
        "attempts": attempts,
        "rows": records,
        "totals": {
            "jobs": sum(r["n_jobs"] for r in records),
            "hours": sum(r["hours_total"] or 0 for r in records),
            "disk_mb": sum(r["disk_mb_total"] or 0 for r in records),
            "unknown_rows": [
                f"{r['stage']} {r['setting']}"
                for r in records
                if r["hours_total"] is None
                and r["attempt"] is None
                and r["jobs"][0]["kind"] == "compute"
            ],
        },
        "flagged": flagged,
        "over": len(over),
    }
