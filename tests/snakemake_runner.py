"""Running Snakemake from the tests: one command line, its output and its table of jobs.

Every test runs the repository's Snakefile (or another one) in its own work directory with
`--directory`, so nothing lands in the checkout. The options added here are written
`--option=value`, which takes exactly one value, and the test's own arguments follow them as
given: a target is never taken for a value of `--configfile` or `--config`.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hessvalley.claims import VERDICTS

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


# -- the catalogue's workflow tests: a tiny config of tests/configs run in a fresh folder ------


def run_config(workdir: Path, *args: str) -> str:
    """Snakemake in ``workdir`` on its config.yaml, 2 cores; the output."""
    return snakemake(workdir, *args, configfile=workdir / "config.yaml", cores=2).output


def ran_config(tmp_path_factory, name: str) -> Path:
    """A fresh folder holding tests/configs/<name>.yaml as config.yaml, the workflow run there."""
    workdir = tmp_path_factory.mktemp(name)
    shutil.copy(REPO / f"tests/configs/{name}.yaml", workdir / "config.yaml")
    run_config(workdir)
    return workdir


def planned_after(workdir: Path, change) -> dict[str, int]:
    """The jobs a dry run plans after ``change`` edits the config (then undone)."""
    path = workdir / "config.yaml"
    original = path.read_text()
    config = yaml.safe_load(original)
    change(config)
    path.write_text(yaml.safe_dump(config))
    try:
        return planned_jobs(run_config(workdir, "-n"))
    finally:
        path.write_text(original)


def figures_and_claims(results: Path, figures: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Assert each figure's pdf and png and one claims.csv row per figure, each with a verdict
    and numbers; the rows by id."""
    for figure in figures:
        for suffix in (".pdf", ".png"):
            assert (results / "figures" / f"{figure}{suffix}").stat().st_size > 1000
    with open(results / "claims.csv", newline="") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(figures)
    assert all(row["verdict"] in VERDICTS and row["numbers"] for row in rows.values())
    return rows
