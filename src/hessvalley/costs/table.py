"""The plan as text: assumptions first, the calibration's figures, one line per rule and
run, totals, then every job that is over its limit or fits only at a retry (torch-free)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS = (
    "stage",
    "run",
    "jobs",
    "h/job",
    "h total",
    "mem/job",
    "dev/job",
    "disk/job",
    "disk total",
    "limit (att. 1)",
    "fits",
)


def hours(value: float | None, kind: str = "compute") -> str:
    if kind == "io":
        return "I/O"
    if kind == "small":
        return "small"
    if value is None:
        return "?"
    return "<0.01" if value < 0.01 else f"{value:.3g}"


def size(mb: float | None) -> str:
    if mb is None:
        return "?"
    for unit, scale in (("TB", 1e6), ("GB", 1e3)):
        if mb >= scale:
            return f"{mb / scale:.3g} {unit}"
    return f"{mb:.3g} MB" if mb >= 0.01 else "0"


def kilobytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e3:.3g} kB"


def verdict(attempt: int | None) -> str:
    if attempt is None:
        return "-"
    return {0: "OVER", 1: "yes"}.get(attempt, f"att. {attempt}")


def _row_cells(record: Mapping[str, Any]) -> list[str]:
    kind = record["jobs"][0]["kind"]
    limit = record["limit"]
    return [
        record["stage"],
        record["setting"],
        str(record["n_jobs"]),
        hours(record["hours_per_job"], kind),
        hours(record["hours_total"], kind),
        size(record["host_mb_per_job"]),
        "-" if record["device_mb_per_job"] is None else size(record["device_mb_per_job"]),
        size(record["disk_mb_per_job"]),
        size(record["disk_mb_total"]),
        f"{limit['runtime_min'][0]} min, {size(limit['mem_mb'][0])}",
        verdict(record["attempt"]),
    ]


def _aligned(lines: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return [
        " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]


def figures_lines(calibration: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per-sample figures of each calibrated model (seconds per sample, bytes per sample)."""
    head = [
        "model",
        "params",
        "SGD step",
        "full-batch grad",
        "eval fwd",
        "one HVP",
        "HVP sweep",
        "HVP +probe",
        "train act",
        "HVP act",
    ]
    lines = [head]
    for name, f in calibration.items():
        if f is None:
            lines.append([name, "not calibrated", *[""] * 8])
            continue
        lines.append(
            [
                name,
                f"{f['n_params']:,}",
                f"{f['sgd_step_s_per_sample']:.3g}",
                f"{f['grad_s_per_sample']:.3g}",
                f"{f['eval_s_per_sample']:.3g}",
                f"{f['hvp_s_per_sample']:.3g}",
                f"{f['hvp_sweep_s_per_sample']:.3g}",
                f"{f['hvp_probe_s_per_sample']:.3g}",
                kilobytes(f["train_act_bytes_per_sample"]),
                kilobytes(f["hvp_act_bytes_per_sample"]),
            ]
        )
    return _aligned(lines)


def render(plan: Mapping[str, Any]) -> str:
    """The whole plan as text."""
    out = [f"hessvalley plan of {plan['configfile']}", "assumptions:"]
    out += [f"  - {line}" for line in plan["assumptions"]]
    out += ["", "calibration, seconds per sample on the calibration device (before / speedup):"]
    out += ["  " + line for line in figures_lines(plan["calibration"])]
    lines = [list(COLUMNS)] + [_row_cells(r) for r in plan["rows"]]
    totals = plan["totals"]
    lines.append(
        [
            "total",
            "",
            str(totals["jobs"]),
            "",
            hours(totals["hours"]),
            "",
            "",
            "",
            size(totals["disk_mb"]),
            "",
            "OVER" if plan["over"] else "",
        ]
    )
    table = _aligned(lines)
    out += ["", *table[:1], "-" * len(table[0]), *table[1:-1], "-" * len(table[0]), table[-1]]
    notes = [
        f"  {r['stage']} {r['setting']}: {'; '.join(r['notes'])}"
        for r in plan["rows"]
        if r["notes"] and r["jobs"][0]["kind"] != "small"
    ]
    if notes:
        out += ["", "notes:", *notes]
    if totals["unknown_rows"]:
        out += ["", "not estimated (see notes): " + ", ".join(totals["unknown_rows"])]
    if plan["flagged"]:
        out += ["", f"flagged ({plan['over']} over their limit):"]
        out += [f"  - {flag['message']}" for flag in plan["flagged"]]
    else:
        out += ["", "every estimated job fits its first request"]
    return "\n".join(out) + "\n"
