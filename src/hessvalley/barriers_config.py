"""The ``barriers`` section (Xing et al. 2018 §3: Figs 1-4, Table 1): which epochs of which run
the ``iterate_interpolation`` stage replays, in which jobs, and the cross-key checks, each
naming the key. Torch-free: the workflow reads it while it parses.

The first run of ``barriers.runs`` is the reference run (VGG-11 in the paper): Fig 1 draws
its ``panel_epochs`` and Fig 4 counts barriers in each of its epochs 1..``every_epoch_to``.
Every run of the list is a row of Table 1 at the ``table_epochs`` it reaches (a shorter run's
later epochs are shown as "–", as the paper's 40-epoch MLP row).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# The barriers keys a store depends on (with the run's epochs and the Hessian keys), and the
# keys each figure reads (a change re-runs only what reads it).
STAGE_KEYS = ("points", "batch_norm", "chunk_size", "points_per_call", "alignment_every")
FIGURE_KEYS = {
    "xing2018_fig1": (
        "runs",
        "panel_epochs",
        "iterations",
        "early_epochs",
        "min_interior_fraction",
    ),
    "xing2018_table1": ("runs", "table_epochs", "every_epoch_to", "max_barrier_fraction"),
}


def reference_run(config: Mapping[str, Any]) -> str | None:
    """The run of Figs 1 and 4: the first of ``barriers.runs`` (None when there is none)."""
    runs = config["barriers"]["runs"]
    return runs[0] if runs else None


def table_epochs(config: Mapping[str, Any], run: str) -> list[int]:
    """The Table 1 epochs that ``run`` reaches."""
    last = int(config["runs"][run]["epochs"])
    return sorted(e for e in config["barriers"]["table_epochs"] if e <= last)


def run_epochs(config: Mapping[str, Any], run: str) -> list[int]:
    """Every epoch of ``run`` the stage replays (1-based, sorted): its Table 1 epochs, and for
    the reference run also the Fig 1 panels, Fig 4's epochs and the claim's early epochs."""
    section = config["barriers"]
    epochs = set(table_epochs(config, run))
    if run == reference_run(config):
        last = int(config["runs"][run]["epochs"])
        epochs.update(section["panel_epochs"])
        epochs.update(range(1, (section["every_epoch_to"] or 0) + 1))
        epochs.update(range(1, min(section["early_epochs"], last) + 1))
    return sorted(epochs)


def group_name(epochs: list[int]) -> str:
    """A job's store name: ``epoch_<e>`` or ``epochs_<first>-<last>`` (groups are runs of the
    sorted epochs, so first and last name a group within a config)."""
    if len(epochs) == 1:
        return f"epoch_{epochs[0]}"
    return f"epochs_{epochs[0]}-{epochs[-1]}"


def epoch_groups(config: Mapping[str, Any], run: str) -> dict[str, list[int]]:
    """The jobs of ``run``: group name -> its epochs, ``epochs_per_job`` at a time (null: all
    in one job)."""
    epochs = run_epochs(config, run)
    size = config["barriers"]["epochs_per_job"] or max(len(epochs), 1)
    chunks = [epochs[i : i + size] for i in range(0, len(epochs), size)]
    return {group_name(chunk): chunk for chunk in chunks}


def interpolation_jobs(config: Mapping[str, Any]) -> list[tuple[str, str, list[int]]]:
    """(run, group, epochs) of every ``iterate_interpolation`` job, in the section's order."""
    return [
        (run, group, epochs)
        for run in config["barriers"]["runs"]
        if run in config["runs"]
        for group, epochs in epoch_groups(config, run).items()
    ]


def _beyond(key: str, epochs: list[int], run: str, last: int) -> Iterator[str]:
    late = [e for e in epochs if e > last]
    if late:
        yield (
            f"barriers.{key}: epoch(s) {', '.join(map(str, late))} beyond the {last} epochs of "
            f"run {run!r} (the reference run, the first of barriers.runs)"
        )


def problems(config: Mapping[str, Any]) -> Iterator[str]:
    """Every problem of the ``barriers`` section, as ``"key.path: what is wrong"``."""
    section = config["barriers"]
    runs = section["runs"]
    for name in runs:
        if name not in config["runs"]:
            yield f"barriers.runs: unknown run {name!r}"
            continue
        run = config["runs"][name]
        if section["seed"] not in run["seeds"]:
            yield f"barriers.seed: {section['seed']} is not a seed of run {name!r}"
        if not table_epochs(config, name):
            yield (
                f"barriers.table_epochs: run {name!r} has {run['epochs']} epochs, fewer than "
                f"any of {section['table_epochs']}: its Table 1 row would be empty"
            )
    reference = reference_run(config)
    if reference in config["runs"]:
        last = int(config["runs"][reference]["epochs"])
        yield from _beyond("panel_epochs", section["panel_epochs"], reference, last)
        every = section["every_epoch_to"]
        yield from _beyond("every_epoch_to", [] if every is None else [every], reference, last)
