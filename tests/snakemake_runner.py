"""Running Snakemake from the tests: one command line, its output and its table of jobs.

Every test runs the repository's Snakefile (or another one) in its own work directory with
`--directory`, so nothing lands in the checkout. The options added here are written
`--option=value`, which takes exactly one value, and the test's own arguments follow them as
given: a target is never taken for a value of `--configfile` or `--config`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"


@dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr, interleaved as Snakemake wrote them


def command(
    workdir: Path,
    *args: str,
    snakefile: Path = SNAKEFILE,
    configfile: Path | None = None,
    cores: int | None = None,
) -> list[str]:
    """`python -m snakemake --snakefile=... --directory=WORKDIR [--configfile=] [--cores=] ARGS`."""
    line = [sys.executable, "-m", "snakemake", f"--snakefile={snakefile}", f"--directory={workdir}"]
    if configfile is not None:
        line.append(f"--configfile={configfile}")
    if cores is not None:
        line.append(f"--cores={cores}")
    return [*line, *args]


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    timeout: float = 600,
    cwd: Path = REPO,
    **options,
) -> Run:
    """Run Snakemake to the end; with `check`, fail the test with the output's tail unless it
    succeeded. `options` are those of `command`."""
    result = subprocess.run(
        command(workdir, *args, **options),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    run = Run(result.returncode, result.stdout)
    if check and run.returncode != 0:
        pytest.fail(f"snakemake exited {run.returncode}:\n{run.output[-6000:]}")
    return run


def start(
    workdir: Path, *args: str, timeout_s: int, log: str = "run.log", **options
) -> subprocess.Popen:
    """Start Snakemake in the background, output to `workdir/log`, killed (SIGKILL) after
    `timeout_s`: with a broken SLURM status path it loops and ignores SIGTERM."""
    workdir.mkdir(parents=True, exist_ok=True)
    line = ["timeout", "-s", "KILL", str(timeout_s), *command(workdir, *args, **options)]
    with open(workdir / log, "w") as log_file:
        return subprocess.Popen(line, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count of a (dry) run's `Job stats` table; empty when nothing is to be done."""
    if "Job stats:" not in output:
        assert "Nothing to be done" in output, output[-3000:]
        return {}
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    counts = re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)
    return {rule: int(count) for rule, count in counts if rule != "total"}
