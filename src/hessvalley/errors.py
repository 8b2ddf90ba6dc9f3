"""Errors a user can act on, and the exit statuses a stage job ends with.

A leaf module: every layer (library, stages, CLI) imports it and it imports nothing of the
package, so editing the CLI never touches what a stage's cached results depend on.
"""

from __future__ import annotations

# Exit statuses of `hessvalley run`: Snakemake and SLURM see them; README documents them.
EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected error (traceback in the log): a retry may help
EXIT_PERMANENT = 3  # bad input, damaged store, divergence, a busy store: a retry cannot help
EXIT_SIGTERM = 143  # scancel, preemption, time limit (128 + SIGTERM)


class HessvalleyError(RuntimeError):
    """An error the user can act on (bad input, divergence): shown as one line, without a
    traceback, and the job exits with ``EXIT_PERMANENT`` because a retry would fail again."""


class StoreError(HessvalleyError):
    """A store that is missing, incomplete or damaged: names the store, the array and what to
    do about it."""


class StoreBusyError(HessvalleyError):
    """Another job holds the write lock of a store."""
