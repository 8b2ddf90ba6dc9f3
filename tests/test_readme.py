"""README's Quick start: exactly two set-up commands, and CI runs the test one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_has_exactly_the_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    run, test = commands
    assert run.endswith("snakemake --cores all") and "pip install -e ." in run
    assert test.endswith("pytest") and 'pip install -e ".[test]"' in test


def test_ci_runs_the_readme_test_command():
    ci_lines = (REPO / ".ci/run").read_text().splitlines()
    assert quick_start_commands()[1] in ci_lines
