"""Benchmark results as files: ``bench/results/<name>.json`` with the commit, date, machine,
command and the figures a script measured, so README's benchmark table is generated from
what was measured (``python bench/readme_table.py --write``) and never retyped.

Each figure is a row ``{"quantity", "value", "unit", "target", "met"}``; ``target`` is the
project's goal in words (``"<= 1.0"``) or empty, ``met`` true/false/null (no target).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hessvalley.costs.cache import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def figure(
    quantity: str, value: float, unit: str = "", target: str = "", met: bool | None = None
) -> dict[str, Any]:
    """One measured figure (a median or a ratio of medians)."""
    return {"quantity": quantity, "value": value, "unit": unit, "target": target, "met": met}


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "src", "bench") else "")


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, load, Python and torch."""
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(
    name: str,
    measures: str,
    figures: Sequence[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    results_dir: Path = RESULTS,
    details: dict[str, Any] | None = None,
) -> Path:
    """Write ``<results_dir>/<name>.json`` and return its path (``name`` is the script's name,
    or the script's name and a variant, e.g. the model, when one script measures several).
    ``details``: what a script found beyond its figures (choices made, parts skipped or
    failed and why), kept in the file but not in README's table."""
    record = {
        "name": name,
        "script": Path(sys.argv[0]).name,
        "measures": measures,
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "settings": settings or {},
        "figures": list(figures),
    }
    if details is not None:
        record["details"] = details
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results written to {path}")
    return path
