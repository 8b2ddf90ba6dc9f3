"""Cross-key checks of the sections behind W&S Figs 2a, 5 and 6 (``equilibrium``,
``alignment``, ``fdr``), each naming the key; torch-free (run while the workflow parses).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hessvalley.schedule import run_train_size

SECTIONS = ("equilibrium", "alignment", "fdr")


def _unknown_runs(config: Mapping[str, Any], section: str) -> Iterator[str]:
    for name in config[section]["runs"]:
        if name not in config["runs"]:
            yield f"{section}.runs: unknown run {name!r}"


def _equilibrium(config: Mapping[str, Any]) -> Iterator[str]:
    sweep = config["equilibrium"]
    second_half = sweep["steps"] - sweep["steps"] // 2
    if sweep["snapshots"] > second_half:
        yield (
            f"equilibrium.snapshots: {sweep['snapshots']} snapshots do not fit in the second "
            f"half of equilibrium.steps ({second_half} steps)"
        )
    for name in sweep["runs"]:
        if name not in config["runs"]:
            continue
        size = run_train_size(config, config["runs"][name])
        too_large = [s for s in sweep["batch_sizes"] if size is not None and s > size]
        if too_large:
            yield (
                f"equilibrium.batch_sizes: {too_large} exceed the {size} training samples of "
                f"run {name!r}"
            )


def _alignment(config: Mapping[str, Any]) -> Iterator[str]:
    mode = config["curvature"]["batch_norm"]
    if config["alignment"]["runs"] and mode != "eval":
        yield (
            f"curvature.batch_norm: {mode!r} gives no per-sample gradients (batch statistics "
            "couple the samples of a chunk); alignment.runs needs 'eval'"
        )


def _fdr(config: Mapping[str, Any]) -> Iterator[str]:
    section = config["fdr"]
    for name in section["runs"]:
        run = config["runs"].get(name)
        if run is None:
            continue
        if run["optimizer"].get("nesterov", False):
            yield (
                f"runs.{name}.optimizer.nesterov: fdr.runs measures the fluctuation-dissipation "
                "relation of heavy-ball SGD (W&S A.5, Yaida 2019); with Nesterov momentum it "
                f"differs. Remove {name!r} from fdr.runs or train it without nesterov"
            )
        missing = sorted(set(section["seeds"] or []) - set(run["seeds"]))
        if missing:
            yield f"fdr.seeds: {missing} are not seeds of run {name!r} ({run['seeds']})"


def problems(config: Mapping[str, Any]) -> Iterator[str]:
    """Every problem of the three sections, as ``"key.path: what is wrong"``."""
    for section in SECTIONS:
        yield from _unknown_runs(config, section)
    yield from _equilibrium(config)
    yield from _alignment(config)
    yield from _fdr(config)
