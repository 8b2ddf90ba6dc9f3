"""Xing et al. 2018 §3: the interpolation stores of a run read as one, and the two claims
tested from them (torch-free; the figures ``barriers`` and ``barrier_table`` draw the same
numbers).

- ``xing2018_fig1``: the loss between consecutive iterates has a minimum inside the segment
  on most steps of the early epochs (fraction above ``min_interior_fraction`` in each of the
  reference run's epochs up to ``early_epochs``), and the valley floor (the segment minima in
  sequence) has ups and downs in every panel.
- ``xing2018_table1``: barriers crossed per epoch are negligible: at most
  ``max_barrier_fraction`` of an epoch's steps in every run at every Table 1 epoch it reaches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, Claim, Number, Verdict, combine
from hessvalley.errors import HessvalleyError

SOURCE_FIG1 = "Xing et al. 2018, §3, Figs 1-3"
SOURCE_TABLE = "Xing et al. 2018, §3, Table 1 and Fig 4"
STEP_ARRAYS = (
    "profile",
    "iteration",
    "epoch",
    "batch_loss",
    "alignment",
    "descent_ratio",
    "lr_alignment",
    "predicted_alpha",
    "segment_min",
    "segment_min_alpha",
    "interior_min",
    "barrier_margin",
    "barrier",
    "height",
)
EPOCH_ARRAYS = (
    "epochs",
    "epoch_n_steps",
    "epoch_barriers",
    "epoch_interior_fraction",
    "epoch_floor_up_fraction",
    "epoch_n_nonfinite",
    "epoch_lr_alignment_median",
)


@dataclass
class RunSteps:
    """Every replayed step of one run and seed (all its stores, in step order)."""

    setting: str
    seed: int
    attrs: Mapping[str, Any]  # of its first store (lr, points, batch_norm, ...)
    alpha: np.ndarray
    steps: dict[str, np.ndarray]  # STEP_ARRAYS, (n_steps, ...)
    epochs: dict[str, np.ndarray]  # EPOCH_ARRAYS, (n_epochs,)

    def epoch_steps(self, epoch: int, first: int | None = None) -> dict[str, np.ndarray]:
        """The step arrays of ``epoch`` (its first ``first`` steps when given)."""
        rows = np.flatnonzero(self.steps["epoch"] == epoch)[:first]
        return {name: values[rows] for name, values in self.steps.items()}

    def epoch_row(self, epoch: int) -> dict[str, Any] | None:
        """The per-epoch summary of ``epoch`` (None when it was not replayed)."""
        where = np.flatnonzero(self.epochs["epochs"] == epoch)
        if not len(where):
            return None
        return {name: values[where[0]] for name, values in self.epochs.items()}


def read_runs(paths: Sequence[str]) -> dict[str, RunSteps]:
    """The interpolation stores grouped by run setting (one seed per run), in path order."""
    grouped: dict[str, list[Any]] = defaultdict(list)
    for path in paths:
        group = store.open_store(path)
        grouped[str(group.attrs["setting"])].append((path, group))
    runs = {}
    for setting, stores in grouped.items():
        seeds = {int(g.attrs["seed"]) for _, g in stores}
        hashes = {g.attrs["trajectory_config_hash"] for _, g in stores}
        if len(seeds) > 1 or len(hashes) > 1:
            raise HessvalleyError(
                f"run {setting}: interpolation stores of {len(hashes)} trajectories (seeds "
                f"{sorted(seeds)}); the figures read one seed of each run (barriers.seed)"
            )
        arrays = [
            store.read_arrays(path, [*STEP_ARRAYS, *EPOCH_ARRAYS, "alpha"]) for path, _ in stores
        ]
        steps = {n: np.concatenate([a[n] for a in arrays]) for n in STEP_ARRAYS}
        order = np.argsort(steps["iteration"], kind="stable")
        epochs = {n: np.concatenate([a[n] for a in arrays]) for n in EPOCH_ARRAYS}
        by_epoch = np.argsort(epochs["epochs"], kind="stable")
        runs[setting] = RunSteps(
            setting,
            seeds.pop(),
            dict(stores[0][1].attrs),
            arrays[0]["alpha"],
            {n: v[order] for n, v in steps.items()},
            {n: v[by_epoch] for n, v in epochs.items()},
        )
    return runs


def floor_turns(segment_min: np.ndarray) -> tuple[int, int]:
    """How often the floor (the segment minima in sequence) goes up and goes down."""
    values = np.asarray(segment_min, dtype=float)
    return int(np.sum(values[1:] > values[:-1])), int(np.sum(values[1:] < values[:-1]))


def _fraction_above(values: np.ndarray, threshold: float) -> float:
    finite = values[np.isfinite(values)]
    return float(np.mean(finite > threshold)) if len(finite) else float("nan")


def fig1_claim(run: RunSteps, barriers: Mapping[str, Any]) -> Claim:
    """Interior minima on most steps of the early epochs; the floor goes up and down in every
    Fig 1 panel. Numbers: per early epoch the interior fraction, per panel the floor's ups
    and η a."""
    threshold, early = float(barriers["min_interior_fraction"]), int(barriers["early_epochs"])
    parts, numbers = {}, []
    early_rows = [r for r in (run.epoch_row(e) for e in range(1, early + 1)) if r is not None]
    for row in early_rows:
        fraction, epoch = float(row["epoch_interior_fraction"]), int(row["epochs"])
        verdict = HOLDS if fraction > threshold else FAILS
        parts[f"interior minima, epoch {epoch}"] = Verdict(
            verdict, f"{fraction:.2f} of {int(row['epoch_n_steps'])} steps (needs > {threshold:g})"
        )
        numbers.append(
            Number(f"epoch {epoch}: steps with an interior minimum", 100 * fraction, unit="%")
        )
    if not early_rows:
        parts["interior minima in the early epochs"] = Verdict(
            UNTESTABLE, "no early epoch replayed"
        )
    for epoch in barriers["panel_epochs"]:
        steps = run.epoch_steps(epoch, int(barriers["iterations"]))
        if not len(steps["iteration"]):
            continue
        ups, downs = floor_turns(steps["segment_min"])
        ok = HOLDS if ups and downs else FAILS
        parts[f"floor ups and downs, epoch {epoch}"] = Verdict(
            ok, f"{ups} up, {downs} down over {len(steps['iteration'])} steps"
        )
        numbers.append(
            Number(f"epoch {epoch}: floor goes up", 100 * ups / max(ups + downs, 1), unit="%")
        )
        lr_a = steps["lr_alignment"]
        if np.any(np.isfinite(lr_a)):
            numbers.append(Number(f"epoch {epoch}: median η·gᵀHg/|g|²", float(np.nanmedian(lr_a))))
            numbers.append(
                Number(
                    f"epoch {epoch}: η·gᵀHg/|g|² > 1", 100 * _fraction_above(lr_a, 1.0), unit="%"
                )
            )
    numbers.extend(_model_numbers(run))
    return Claim(
        id="xing2018_fig1",
        source=SOURCE_FIG1,
        claim="The training loss between consecutive SGD iterates is quadratic-like with a "
        "minimum inside the segment, and the valley floor through these minima has ups and "
        "downs: SGD moves over barriers rather than crossing them.",
        test=f"run {run.setting} seed {run.seed}: in each epoch up to {early}, more than "
        f"{threshold:g} of the steps have a point strictly inside the segment lower than both "
        f"ends ({int(run.attrs['points'])} evaluations per step); in each drawn panel of "
        f"{int(barriers['iterations'])} steps the segment minima rise at least once and fall at "
        "least once",
        numbers=numbers,
        verdict=combine(parts),
        paper_value="VGG-11 on CIFAR-10, batch 100, lr 0.1: a minimum inside every segment at "
        "epochs 1 and 2 (not visible at 25 and 100); the floor has ups and downs at every epoch",
        parts=parts,
    )


def table_claim(runs: Mapping[str, RunSteps], barriers: Mapping[str, Any]) -> Claim:
    """At most ``max_barrier_fraction`` of an epoch's steps cross a barrier, for every run at
    every Table 1 epoch it reaches; numbers: the fractions and the barriers' heights."""
    limit = float(barriers["max_barrier_fraction"])
    parts, numbers = {}, []
    total_barriers = total_steps = 0
    for setting, run in runs.items():
        for epoch in barriers["table_epochs"]:
            row = run.epoch_row(epoch)
            if row is None:
                continue
            count, n = int(row["epoch_barriers"]), int(row["epoch_n_steps"])
            total_barriers, total_steps = total_barriers + count, total_steps + n
            fraction = count / n if n else float("nan")
            parts[f"{setting} epoch {epoch}"] = Verdict(
                HOLDS if fraction <= limit else FAILS,
                f"{count} of {n} steps ({100 * fraction:.2g} %)",
            )
            numbers.append(
                Number(f"{setting} epoch {epoch}: barriers crossed", count, unit=f"of {n} steps")
            )
    if total_steps:
        numbers.insert(
            0,
            Number(
                "barriers crossed, all Table 1 cells", 100 * total_barriers / total_steps, unit="%"
            ),
        )
    numbers.extend(_height_numbers(runs))
    return Claim(
        id="xing2018_table1",
        source=SOURCE_TABLE,
        claim="SGD rarely crosses barriers: the number of update steps whose interpolation has "
        "a point higher than both ends is negligible in each epoch.",
        test=f"for every run and every Table 1 epoch it reaches, the steps with such a point "
        f"(strictly higher; {int(next(iter(runs.values())).attrs['points'])} evaluations per "
        f"step) are at most {limit:g} of the epoch's steps",
        numbers=numbers,
        verdict=combine(parts) if parts else Verdict(UNTESTABLE, "no Table 1 epoch replayed"),
        paper_value="barriers per epoch of 450 iterations: VGG-11 1, 0, 0, 13 and ResNet-56 1, "
        "0, 1, 23 at epochs 1, 10, 25, 100; MLP 1 at epoch 1 (our reading of the garbled "
        "table, config/README.md); Fig 4: few in each of VGG-11's first 40 epochs",
        parts=parts,
    )


def _height_numbers(runs: Mapping[str, RunSteps]) -> list[Number]:
    """The highest barrier over the loss at its step's start, over every replayed step."""
    relative = []
    for run in runs.values():
        crossed = run.steps["barrier"].astype(bool)
        start = run.steps["profile"][crossed, 0]
        relative.extend((run.steps["height"][crossed] / start).tolist())
    if not relative:
        return [Number("barriers crossed in any replayed step", 0)]
    return [
        Number("barriers crossed in any replayed step", len(relative)),
        Number("largest barrier height / loss at the step", 100 * max(relative), unit="%"),
    ]


def _model_numbers(run: RunSteps) -> list[Number]:
    """How often the quadratic model along the step, minimum at α* = c / (η a), puts the
    minimum inside the segment exactly when the measured profile has an interior minimum."""
    predicted = run.steps["predicted_alpha"]
    measured = np.isfinite(predicted)
    if not np.any(measured):
        return []
    inside = (predicted[measured] > 0) & (predicted[measured] < 1)
    agree = float(np.mean(inside == run.steps["interior_min"][measured].astype(bool)))
    return [Number("quadratic model's α* in (0, 1) iff an interior minimum", 100 * agree, unit="%")]
