"""README.md's shell commands, as the README tests and the workflow test read them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def bash_blocks(section: str | None = None) -> list[str]:
    """The ```bash blocks of README (of one `## ` section when given), stripped."""
    text = README.read_text()
    if section is not None:
        text = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def quick_start_commands() -> list[str]:
    return bash_blocks("Quick start")


def snakemake_commands() -> list[list[str]]:
    """Every `snakemake` command of README's bash blocks, as argument lists without the program
    name and without comments (also those after `&&` in a command line)."""
    commands = []
    for block in bash_blocks():
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["snakemake"]:
                    commands.append(words[1:])
    return commands
