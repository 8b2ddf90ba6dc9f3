"""What the projection stage will compute, known from the config alone (torch-free).

The Snakefile needs the number of segment jobs of each projected run before anything is
trained, so that a dry run shows the whole DAG (and SLURM can plan it): a run's checkpoint
steps follow from epochs, steps per epoch and ``checkpoint_every``. Runs that stop early
(``stop_below_loss``) have no such count and cannot be projected; the checks here say so
when the workflow is parsed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from hessvalley.schedule import every_kth, run_checkpoint_steps

# Keys of the ``projection`` section a run may override in ``projection.runs.<setting>``.
RUN_KEYS = (
    "loss_threshold",
    "n_points",
    "max_gd_steps",
    "max_depth",
    "checkpoint_stride",
    "intervals_per_segment",
    "reset_momentum",
    "max_loss_rise",
    "store_params",
    "interpolation_batch",
    "replay_cache_mb",
)
# The keys a GD projection's result depends on: a grid job takes only these, so changing how
# the path between projections is tested (n_points, max_depth, ...) re-runs no projection.
GD_KEYS = ("loss_threshold", "max_gd_steps", "reset_momentum", "max_loss_rise")
# ... and the keys that say which checkpoints a grid job projects.
GRID_KEYS = (*GD_KEYS, "checkpoint_stride", "intervals_per_segment")
FIGURES = ("fig1", "fig3", "fig4")


def projection_settings(config: Mapping[str, Any], setting: str) -> dict[str, Any]:
    """The projection keys of run ``setting``: section defaults updated by its overrides."""
    section = config["projection"]
    overrides = section["runs"][setting] or {}
    return {key: overrides.get(key, section[key]) for key in RUN_KEYS}


def projection_grid(n_checkpoints: int, stride: int) -> list[int]:
    """Indices of the checkpoints that are projected (every ``stride``-th, and the last);
    bisection fills in between them."""
    return every_kth(n_checkpoints, stride)


def segment_grid(n_checkpoints: int, stride: int, per_segment: int, segment: int) -> list[int]:
    """Checkpoint indices of the grid points of segment ``segment``, both ends included:
    ``per_segment`` consecutive grid intervals (the last segment may have fewer)."""
    grid = projection_grid(n_checkpoints, stride)
    first = segment * per_segment
    if not 0 <= first < len(grid) - 1:
        raise ValueError(
            f"segment {segment} does not exist: {len(grid) - 1} grid intervals "
            f"({n_checkpoints} checkpoints, stride {stride}), {per_segment} per segment"
        )
    return grid[first : first + per_segment + 1]


def grid_block(n_checkpoints: int, stride: int, per_segment: int, segment: int) -> list[int]:
    """Checkpoint indices that grid job ``segment`` projects: its segment's grid points but
    the right end, which the next segment's grid job projects (the last job keeps it), so
    every grid checkpoint of a seed is projected exactly once."""
    grid = segment_grid(n_checkpoints, stride, per_segment, segment)
    last = segment == segments_of_grid(n_checkpoints, stride, per_segment) - 1
    return grid if last else grid[:-1]


def segments_of_grid(n_checkpoints: int, stride: int, per_segment: int) -> int:
    """Segment (and grid) jobs of a run of ``n_checkpoints`` checkpoints: consecutive groups
    of ``per_segment`` grid intervals (the last group may be shorter)."""
    return math.ceil((len(projection_grid(n_checkpoints, stride)) - 1) / per_segment)


def grid_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The projection settings a grid job depends on (``GRID_KEYS``)."""
    return {key: settings[key] for key in GRID_KEYS}


def n_segments(config: Mapping[str, Any], setting: str) -> int:
    """Segment jobs of a projected run: consecutive groups of ``intervals_per_segment``
    grid intervals (the last group may be shorter)."""
    steps = run_checkpoint_steps(config, setting)
    if steps is None:
        raise ValueError(f"run {setting!r} has no checkpoint schedule known from the config")
    settings = projection_settings(config, setting)
    return segments_of_grid(
        len(steps), settings["checkpoint_stride"], settings["intervals_per_segment"]
    )


def problems(config: Mapping[str, Any]) -> Iterator[str]:
    """Cross-key problems of the ``projection`` section as ``"key.path: problem"`` lines."""
    section = config["projection"]
    runs = section["runs"]
    for setting in runs:
        key = f"projection.runs.{setting}"
        if setting not in config["runs"]:
            known = ", ".join(sorted(config["runs"])) or "none"
            yield f"{key}: unknown run {setting!r} (defined: {known})"
            continue
        run = config["runs"][setting]
        if run.get("stop_below_loss") is not None:
            yield (
                f"{key}: run {setting!r} stops early (stop_below_loss), so its number of "
                "checkpoints, and of segment jobs, is unknown before training; project a "
                "run with a fixed length"
            )
        elif run_checkpoint_steps(config, setting) is None:
            yield (
                f"{key}: the training-set size of run {setting!r} is unknown before the "
                f"dataset is built; set datasets.{run['dataset']}.n_train"
            )
        elif run["optimizer"]["batch_size"] == "full":
            yield f"{key}: run {setting!r} is full-batch GD; there is no SGD path to project"
        settings = projection_settings(config, setting)
        if section["trace"]["at"] == "all" and settings["store_params"] != "all":
            yield (
                f"{key}.store_params: projection.trace.at is 'all', which needs the "
                "parameters of every projected point (store_params: all)"
            )
    path_seed = section["figures"]["path_seed"]
    for figure in FIGURES:
        for setting in section["figures"][figure]:
            if setting not in runs:
                yield (
                    f"projection.figures.{figure}: run {setting!r} is not projected "
                    "(add it to projection.runs)"
                )
            elif path_seed is not None and path_seed not in config["runs"][setting]["seeds"]:
                yield (
                    f"projection.figures.path_seed: {path_seed} is not a seed of run "
                    f"{setting!r} (drawn in {figure})"
                )
