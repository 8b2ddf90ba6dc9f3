"""README's commands work as written: the Quick start (exactly two set-up commands, both run by
CI), every `snakemake` command (dry-run here, so none can rot) and the install it promises."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from .readme import quick_start_commands, snakemake_commands
from .snakemake_runner import REPO, snakemake

RUN_SUFFIX = " && snakemake --cores all"


def test_quick_start_has_exactly_the_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    run, test = commands
    assert run.endswith(RUN_SUFFIX) and "pip install -e . " in run
    assert test.endswith("pytest") and 'pip install -e ".[test]"' in test


def test_ci_runs_the_readme_install_alone_then_the_test_command():
    """CI first installs as README command 1 does (without the test extra) and checks what
    README promises with it, then runs README's test command."""
    ci_lines = (REPO / ".ci/run").read_text().splitlines()
    run, test = quick_start_commands()
    install = run.removesuffix(RUN_SUFFIX)
    assert install in ci_lines and test in ci_lines
    assert ci_lines.index(install) < ci_lines.index(test)


def test_command_1_installs_what_readme_uses():
    """`pip install -e .` alone gives `snakemake --report` (pygments, snakemake's `reports`
    extra) and `xarray.open_zarr`; CI checks it in a fresh venv (.ci/run)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = {req.name: req for req in map(Requirement, project["dependencies"])}
    assert "reports" in requirements["snakemake"].extras
    assert "xarray" in requirements


def distinct(commands: list[list[str]]) -> list[list[str]]:
    """Commands that differ in more than `-n`, except --report (it needs a finished run:
    tests/test_workflow.py runs it after the tiny workflow)."""
    seen, kept = set(), []
    for command in commands:
        key = tuple(word for word in command if word != "-n")
        if key not in seen and "--report" not in command:
            seen.add(key)
            kept.append(command)
    return kept


COMMANDS = distinct(snakemake_commands())


def test_readme_has_the_commands_checked_below():
    flags = {word for command in snakemake_commands() for word in command if word[0] == "-"}
    assert {"--report", "--unlock", "--profile", "--configfile", "--config", "-n"} <= flags


def command_problem(args: list[str], workdir: Path) -> str | None:
    """Run one README command from the repository root as README says, in a fresh work
    directory: a dry run (-n) that plans every target named, or the unlock itself. None if it
    works, else what went wrong."""
    (workdir / "config").mkdir(parents=True)
    shutil.copy(REPO / "config/config.yaml", workdir / "config")  # the embedded default
    name = "snakemake " + " ".join(args)
    if "--unlock" in args:
        run = snakemake(workdir, *args, check=False)
        return None if "Unlocked working directory" in run.output else f"{name}:\n{run.output}"
    run = snakemake(workdir, "-n", *args, timeout=300, check=False)
    if run.returncode != 0 or "This was a dry-run" not in run.output:
        return f"{name} (exit {run.returncode}):\n{run.output[-3000:]}"
    for target in (word for word in args if word.startswith("results/")):
        if f"output: {target}" not in run.output and f", {target}" not in run.output:
            return f"{name}: {target} is not planned (read as a config file?)"
    return None


@pytest.mark.workflow
def test_readme_snakemake_commands_work_as_written(tmp_path):
    """Every README command works as written. Two at a time: the paper-scale dry runs plan
    6000+ jobs, half a minute of one core each."""
    workdirs = [tmp_path / f"command{i}" for i in range(len(COMMANDS))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(command_problem, COMMANDS, workdirs) if p]
    assert not problems, "\n\n".join(problems)
