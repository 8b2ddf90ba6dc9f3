"""The batch figure (Sagun et al. 2017 Figs 7-10) from tiny synthetic stores, and its claim's
verdicts on synthetic spectra, runs and lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE
from hessvalley.errors import HessvalleyError
from hessvalley.figures.batch import (
    BARRIER_TOLERANCE,
    Spectrum,
    batch_claim,
    batch_figure,
    switch_jump,
)
from hessvalley.outliers import count_outliers

BULK = np.linspace(0.5, 0.1, 17)
PARTS = {
    "count": "same number of outliers (gap counter, ±1)",
    "top": "LB's top eigenvalue larger than SB's",
    "barrier": "no barrier on the line from LB's end to the switched end",
}


def spectrum(top: list[float], residual: float = 1e-6, bulk: np.ndarray = BULK) -> Spectrum:
    """The top-20 Ritz values ``top`` then ``bulk``, with their gap/ratio/elbow counts."""
    largest = np.concatenate([top, bulk])[:20]
    smallest = -np.geomspace(1e-2, 1e-3, 20)
    return Spectrum(largest, np.full(20, residual), smallest, 100, count_outliers(largest))


def run(batch: int, losses: list[float], acc: float = 0.9, start: int = 0) -> dict:
    n = len(losses)
    return {
        "step": np.arange(n) * 10 + start,
        "train_loss": np.asarray(losses),
        "val_loss": np.asarray(losses) + 0.1,
        "train_acc": np.full(n, acc),
        "val_acc": np.full(n, acc - 0.05),
        "batch_size": batch,
    }


RUNS = {
    "small": [run(16, [2.0, 0.5, 0.2], acc=0.97)],
    "large": [run(512, [2.0, 0.6, 0.3], acc=0.95)],
    "switched": [run(16, [0.3, 0.9, 0.25, 0.1], acc=0.98)],
}
NO_BARRIER = {"barrier": -0.01, "end_losses": [0.3, 0.1], "rise_before": 0.2, "rise_beyond": 0.01}
TOLERATED = BARRIER_TOLERANCE * 0.3  # the largest barrier that is no barrier in NO_BARRIER


def verdicts(claim) -> dict[str, str]:
    return {short: claim.parts[long].verdict for short, long in PARTS.items()}


def test_claim_holds_when_counts_match_lb_is_sharper_and_the_line_is_flat():
    claim = batch_claim([spectrum([10, 8, 6])], [spectrum([20, 15, 12])], RUNS, NO_BARRIER)
    assert verdicts(claim) == {"count": HOLDS, "top": HOLDS, "barrier": HOLDS}
    assert claim.verdict.verdict == HOLDS and claim.id == "sagun2017_batch"
    numbers = {n.name: n.value for n in claim.numbers}
    assert numbers["SB outliers (gap)"] == 3 and numbers["LB outliers (gap)"] == 3
    assert numbers["LB λ1"] == 20
    assert numbers["train_loss jump after the switch"] == pytest.approx(0.6)
    assert numbers["LB then SB final val_acc"] == pytest.approx(93.0)
    assert numbers["line barrier on (0, 1)"] == -0.01


@pytest.mark.parametrize(
    ("small", "large", "summary", "expected"),
    [
        # four outliers against one: the counts differ by more than one
        ([10, 9, 8, 7], [20], NO_BARRIER, {"count": FAILS}),
        # LB flatter than SB
        ([10, 8, 6], [9, 7, 5], NO_BARRIER, {"top": FAILS}),
        # a barrier above the tolerance (a fraction of the higher end loss, 0.3)
        ([10, 8, 6], [20, 15, 12], {**NO_BARRIER, "barrier": TOLERATED * 1.2}, {"barrier": FAILS}),
        # a bump within it is no barrier
        ([10, 8, 6], [20, 15, 12], {**NO_BARRIER, "barrier": TOLERATED * 0.8}, {"barrier": HOLDS}),
        # a diverged point on the line
        ([10, 8, 6], [20, 15, 12], {**NO_BARRIER, "barrier": None}, {"barrier": UNTESTABLE}),
    ],
)
def test_claim_parts_from_synthetic_inputs(small, large, summary, expected):
    claim = batch_claim([spectrum(small)], [spectrum(large)], RUNS, summary)
    assert {k: v for k, v in verdicts(claim).items() if k in expected} == expected
    assert (claim.verdict.verdict == FAILS) == (FAILS in expected.values())


def test_a_count_at_the_window_end_or_within_the_residuals_is_not_a_pass():
    ending = spectrum(list(np.linspace(10, 9, 19)), bulk=np.array([0.1]))  # bulk unseen
    assert ending.counts["gap"].count == 19 == ending.window - 1
    claim = batch_claim([ending], [spectrum([20, 15, 12])], RUNS, NO_BARRIER)
    assert verdicts(claim)["count"] == UNTESTABLE and claim.verdict.verdict == UNTESTABLE
    close = batch_claim([spectrum([10, 8, 6])], [spectrum([10.001, 8, 6], 0.01)], RUNS, NO_BARRIER)
    assert verdicts(close)["top"] == FAILS  # larger by less than the Ritz residuals


def test_switch_jump_is_the_rise_above_the_switch_point():
    assert switch_jump(RUNS["large"][0], RUNS["switched"][0], "train_loss") == pytest.approx(0.6)
    falling = run(16, [0.3, 0.2, 0.1])
    assert switch_jump(RUNS["large"][0], falling, "val_loss") == pytest.approx(-0.1)


# -- the figure from tiny stores ------------------------------------------------------------


def write_trajectory(path: Path, r: dict, config_hash: str, init: str | None) -> str:
    metrics = ("step", "train_loss", "val_loss", "train_acc", "val_acc")
    arrays = {name: (("checkpoint",), np.asarray(r[name])) for name in metrics}
    attrs = {"batch_size": r["batch_size"], "config_hash": config_hash, "config": {"init": init}}
    store.write_store(path, arrays, attrs)
    return str(path)


def write_eigen(path: Path, s: Spectrum) -> str:
    arrays = {
        "largest": (("checkpoint", "rank"), s.largest[None]),
        "largest_residual": (("checkpoint", "rank"), s.largest_residual[None]),
        "smallest": (("checkpoint", "rank"), s.smallest[None]),
        "step": (("checkpoint",), np.array([s.step])),
    }
    store.write_store(path, arrays, {})
    return str(path)


def write_line(path: Path, start_hash: str, end_hash: str, start_k: int = 2) -> str:
    alpha = np.linspace(-0.5, 1.5, 9)
    loss = 0.2 + 0.1 * (alpha - 1.2) ** 2
    ends = {
        "from": {"run": "lb", "checkpoint": start_k, "config_hash": start_hash},
        "to": {"run": "sw", "checkpoint": 3, "config_hash": end_hash},
    }
    attrs = {"line": "lb_sw", "batch_norm": "eval", "ends": ends, "summary": NO_BARRIER}
    arrays = {"alpha": (("alpha",), alpha), "train_loss": (("alpha",), loss)}
    store.write_store(path, {**arrays, "val_loss": (("alpha",), loss + 0.05)}, attrs)
    return str(path)


@pytest.fixture
def inputs(tmp_path) -> dict:
    return {
        "small_eigen": [write_eigen(tmp_path / "sb_eigen.zarr", spectrum([10, 8, 6]))],
        "large_eigen": [write_eigen(tmp_path / "lb_eigen.zarr", spectrum([20, 15, 12]))],
        "small": [write_trajectory(tmp_path / "sb.zarr", RUNS["small"][0], "hsb", None)],
        "large": [write_trajectory(tmp_path / "lb.zarr", RUNS["large"][0], "hlb", None)],
        "switched": [write_trajectory(tmp_path / "sw.zarr", RUNS["switched"][0], "hsw", "hlb")],
        "line": write_line(tmp_path / "line.zarr", "hlb", "hsw"),
    }


def test_figure_renders_with_its_claim(inputs, tmp_path):
    output = tmp_path / "figures" / "sagun2017_batch.pdf"
    batch_figure(**inputs, output=str(output), figures={"dpi": 50})
    assert output.stat().st_size > 0 and output.with_suffix(".png").stat().st_size > 0
    claim = json.loads(output.with_suffix(".json").read_text())
    assert claim["id"] == "sagun2017_batch" and claim["verdict"] == HOLDS
    assert set(claim["parts"]) == set(PARTS.values())


def test_figure_refuses_a_line_or_switch_that_is_not_the_experiment(inputs, tmp_path):
    output = str(tmp_path / "f.pdf")
    early = {**inputs, "line": write_line(tmp_path / "early.zarr", "hlb", "hsw", start_k=1)}
    with pytest.raises(
        HessvalleyError, match=r"batch\.line: line 'lb_sw' runs from lb checkpoint 1"
    ):
        batch_figure(**early, output=output, figures={})
    fresh = write_trajectory(tmp_path / "fresh.zarr", RUNS["switched"][0], "hsw", None)
    with pytest.raises(HessvalleyError, match=r"batch\.switched: .* does not continue"):
        batch_figure(**{**inputs, "switched": [fresh]}, output=output, figures={})
