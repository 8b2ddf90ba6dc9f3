"""Which curvature each trajectory gets: ``curvature.runs`` read into one plan per run.

``curvature.runs`` is null (every run), a list of runs (each gets the section's defaults:
trace and extreme eigenvalues at every ``curvature.every``-th checkpoint, plus the spectrum at
every ``curvature.spectrum.every``-th for the runs in ``curvature.spectrum.runs``), or a
mapping run -> overrides, so a run gets only the computation a figure needs:

    curvature:
      runs:
        digits_mlp:                       # null: the defaults, as in the list form
        digits_cnn: { measurements: [eigen], every: last, eigen: { k: 1, which: largest } }
        sagun_k5: { measurements: [spectrum], every: last, figure: false }

``every`` is a number (every n-th checkpoint and the last), a list of checkpoint indices
(negative ones count from the end) or ``last``; a run's ``every`` applies to each of its
measurements; ``figure: false`` leaves out the run's curvature figure (a run only a paper
figure reads). Torch-free: the workflow reads it while it parses, the cost plan too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hessvalley.schedule import chosen_checkpoints, run_checkpoint_steps

MEASUREMENTS = ("trace", "eigen", "spectrum")


def curvature_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """run -> {"measurements": [...], "every": {measurement: every}, "eigen": {...}, "figure":
    bool} for every run the ``curvature`` section measures, in the order the config names
    them."""
    section = config["curvature"]
    chosen = section["runs"]
    if chosen is None:
        overrides: dict[str, Any] = dict.fromkeys(config["runs"])
    elif isinstance(chosen, Mapping):
        overrides = dict(chosen)
    else:
        overrides = dict.fromkeys(chosen)
    plans = {}
    for name, override in overrides.items():
        override = override or {}
        default = ["trace", "eigen"]
        if name in section["spectrum"]["runs"]:
            default.append("spectrum")
        measurements = list(override.get("measurements", default))
        every = {}
        for m in measurements:
            fallback = section["spectrum"]["every"] if m == "spectrum" else section["every"]
            every[m] = override.get("every", fallback)
        eigen = {**section["eigen"], **override.get("eigen", {})}
        plans[name] = {
            "measurements": measurements,
            "every": every,
            "eigen": eigen,
            "figure": override.get("figure", True),
        }
    return plans


def problems(config: Mapping[str, Any]) -> Iterator[str]:
    """``curvature.runs`` entries naming unknown runs, or checkpoints a run does not have."""
    section = config["curvature"]
    names = section["runs"] or []
    for name in names:
        if name not in config["runs"]:
            yield f"curvature.runs: unknown run {name!r}"
    for name in section["spectrum"]["runs"]:
        if name not in config["runs"]:
            yield f"curvature.spectrum.runs: unknown run {name!r}"
        elif section["runs"] is not None and name not in section["runs"]:
            yield (
                f"curvature.spectrum.runs: {name!r} is not in curvature.runs "
                "(its spectrum would never be plotted); add it there too"
            )
    if not isinstance(section["runs"], Mapping):
        return
    for name, override in section["runs"].items():
        every = (override or {}).get("every")
        if name not in config["runs"] or not isinstance(every, list):
            continue
        steps = run_checkpoint_steps(config, name)
        if steps is None:
            continue
        try:
            chosen_checkpoints(len(steps), every)
        except ValueError as err:
            yield f"curvature.runs.{name}.every: {err}"
