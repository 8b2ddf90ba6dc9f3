"""What a job asks its scheduler for: runtime (minutes) and memory (MB) from the config.

Each rule's request is ``resources.<rule>`` (else ``resources.default``) times the attempt, so
a job SLURM killed at its time or memory limit is resubmitted with more, but never more than
``resources.limits``: a request beyond what a node has or a partition allows would be refused
by sbatch, and that refusal would hide the job's real failure from the user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEYS = ("runtime", "mem_mb")


def job_resource(config: Mapping[str, Any], rule: str, key: str, attempt: int) -> int:
    """``key`` (``runtime`` or ``mem_mb``) that a job of ``rule`` requests at ``attempt``
    (1 for the first submission): the configured value × attempt, capped at the limit."""
    section = config["resources"]
    base = section.get(rule, {}).get(key, section["default"][key])
    return min(base * attempt, section["limits"][key])
