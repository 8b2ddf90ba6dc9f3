"""Cross-key checks of the sections behind Sagun et al. 2017's figures (``outliers``,
``width``, ``batch``) and of ``lines``, each naming the key; torch-free (run while the
workflow parses).

The Sagun figures read curvature stores (``curvature.runs``): the outlier table and the width
figure an exact spectrum, the batch figure the extreme eigenvalues. A run a figure needs but
the curvature section does not measure is an error that says what to add.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hessvalley.curvature_runs import curvature_runs
from hessvalley.schedule import run_checkpoint_steps


def _measured(config: Mapping[str, Any], key: str, run: str, measurement: str) -> Iterator[str]:
    plan = curvature_runs(config).get(run)
    if plan is None or measurement not in plan["measurements"]:
        yield (
            f"{key}: run {run!r} gets no curvature {measurement}: add it to curvature.runs "
            f"(e.g. {run}: {{measurements: [{measurement}], figure: false}})"
        )


def _family(config: Mapping[str, Any], section: str) -> Iterator[str]:
    for name in config[section]["runs"]:
        if name not in config["runs"]:
            yield f"{section}.runs: unknown run {name!r}"
            continue
        yield from _measured(config, f"{section}.runs", name, "spectrum")
        plan = curvature_runs(config).get(name)
        if section == "width" and plan and plan["every"].get("spectrum") == "last":
            yield (
                f"curvature.runs.{name}.every: the width figure compares the spectrum at the "
                "first and the last checkpoint; use [0, -1]"
            )


def _batch(config: Mapping[str, Any]) -> Iterator[str]:
    batch = config["batch"]
    names = {role: batch[role] for role in ("small", "large", "switched")}
    if not any(names.values()) and batch["line"] is None:
        return
    for role, name in names.items():
        if name is None:
            yield f"batch.{role}: missing (the batch figure needs small, large and switched)"
        elif name not in config["runs"]:
            yield f"batch.{role}: unknown run {name!r}"
    if batch["line"] is None:
        yield "batch.line: missing (a line of `lines` from the large run to the switched one)"
    elif batch["line"] not in config["lines"]:
        yield f"batch.line: unknown line {batch['line']!r} (not in lines)"
    runs = {role: config["runs"].get(name) for role, name in names.items() if name}
    if len(runs) < 3 or not all(runs.values()):
        return
    for role in ("small", "large"):
        yield from _measured(config, f"batch.{role}", names[role], "eigen")
        if batch["seed"] not in runs[role]["seeds"]:
            yield f"batch.seed: {batch['seed']} is not a seed of run {names[role]!r}"
    if runs["switched"]["init_from"] != names["large"]:
        yield (
            f"batch.switched: run {names['switched']!r} must continue the large-batch run "
            f"(runs.{names['switched']}.init_from: {names['large']})"
        )
    if runs["small"]["optimizer"]["lr"] != runs["large"]["optimizer"]["lr"]:
        yield "batch.large: the small- and large-batch runs must share the learning rate"
    small, large = (run_checkpoint_steps(config, names[r]) for r in ("small", "large"))
    if small and large and small[-1] != large[-1]:
        yield (
            f"batch.large: run {names['large']!r} takes {large[-1]} steps and "
            f"{names['small']!r} {small[-1]}: the comparison needs equal iterations"
        )


def _lines(config: Mapping[str, Any]) -> Iterator[str]:
    for name, line in config["lines"].items():
        ends = {end: line[end] for end in ("from", "to")}
        runs = {}
        for end, spec in ends.items():
            run = config["runs"].get(spec["run"])
            if run is None:
                yield f"lines.{name}.{end}.run: unknown run {spec['run']!r}"
                continue
            runs[end] = run
            if spec["seed"] not in run["seeds"]:
                yield f"lines.{name}.{end}.seed: {spec['seed']} is not a seed of {spec['run']!r}"
            steps = run_checkpoint_steps(config, spec["run"])
            if steps is not None and not -len(steps) <= spec["checkpoint"] < len(steps):
                yield (
                    f"lines.{name}.{end}.checkpoint: {spec['checkpoint']} is out of range "
                    f"(run {spec['run']!r} has {len(steps)} checkpoints)"
                )
        if len(runs) == 2 and (
            runs["from"]["model"] != runs["to"]["model"]
            or runs["from"]["dataset"] != runs["to"]["dataset"]
        ):
            yield f"lines.{name}: the two runs differ in model or dataset (no line between them)"
        alpha = line["alpha"]
        if not alpha["start"] <= 0 < 1 <= alpha["stop"]:
            yield (
                f"lines.{name}.alpha: [{alpha['start']}, {alpha['stop']}] must cover [0, 1] "
                "(start <= 0, stop >= 1): the line's end points are its states"
            )


def _training_runs(config: Mapping[str, Any]) -> Iterator[str]:
    for name in config["figures"]["training_runs"] or []:
        if name not in config["runs"]:
            yield f"figures.training_runs: unknown run {name!r}"


def problems(config: Mapping[str, Any]) -> Iterator[str]:
    """Every problem of these sections, as ``"key.path: what is wrong"``."""
    yield from _family(config, "outliers")
    yield from _family(config, "width")
    yield from _batch(config)
    yield from _lines(config)
    yield from _training_runs(config)
