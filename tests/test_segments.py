"""The per-step arithmetic of the loss between consecutive iterates (``hessvalley.segments``) on
constructed profiles: no barrier, an interior minimum, a barrier, float ties, a diverged point."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessvalley.segments import (
    epoch_summary,
    floor_rises,
    profiles_from_values,
    segment_alphas,
    step_summaries,
)

ALPHAS = segment_alphas(4)  # 0, 0.25, 0.5, 0.75, 1
PROFILES = {
    "monotone": [3.0, 2.5, 2.0, 1.5, 1.0],  # plain descent: no interior minimum, no barrier
    "valley": [3.0, 1.0, 0.5, 1.5, 2.0],  # minimum inside, below both ends
    "barrier": [1.0, 1.5, 2.5, 1.2, 0.5],  # a point higher than both ends
    "both": [1.0, 0.2, 1.4, 0.9, 1.1],  # a minimum and a barrier in one step
    "tie_top": [1.0, 2.0, 2.0, 1.5, 2.0],  # interior maximum equal to the higher end
    "tie_low": [1.0, 1.0, 1.5, 1.2, 2.0],  # interior minimum equal to the lower end
    "flat": [1.0, 1.0, 1.0, 1.0, 1.0],
    "diverged": [1.0, math.inf, 0.5, 0.7, 0.9],
}


@pytest.fixture(scope="module")
def summary():
    rows = np.array(list(PROFILES.values()))
    out = step_summaries(rows, ALPHAS)
    return {name: {k: v[i] for k, v in out.items()} for i, name in enumerate(PROFILES)}


def test_alphas_hold_the_ends_and_points_inside():
    assert segment_alphas(10).tolist() == [k / 10 for k in range(11)]
    with pytest.raises(ValueError, match="at least 2 points"):
        segment_alphas(1)


@pytest.mark.parametrize(
    ("name", "interior", "barrier", "margin", "minimum", "at"),
    [
        ("monotone", False, False, 2.5 - 3.0, 1.0, 1.0),
        ("valley", True, False, 1.5 - 3.0, 0.5, 0.5),
        ("barrier", False, True, 2.5 - 1.0, 0.5, 1.0),
        ("both", True, True, 1.4 - 1.1, 0.2, 0.25),
        ("tie_top", False, False, 0.0, 1.0, 0.0),
        ("tie_low", False, False, 1.5 - 2.0, 1.0, 0.0),
        ("flat", False, False, 0.0, 1.0, 0.0),
    ],
)
def test_each_constructed_profile(summary, name, interior, barrier, margin, minimum, at):
    row = summary[name]
    assert bool(row["interior_min"]) is interior
    assert bool(row["barrier"]) is barrier
    assert row["barrier_margin"] == pytest.approx(margin)
    assert row["segment_min"] == minimum and row["segment_min_alpha"] == at


def test_height_is_the_peak_above_the_ends_mean(summary):
    assert summary["barrier"]["height"] == pytest.approx(2.5 - (1.0 + 0.5) / 2)
    assert summary["valley"]["height"] == pytest.approx(1.5 - (3.0 + 2.0) / 2)


def test_a_diverged_point_counts_as_nothing(summary):
    row = summary["diverged"]
    assert not row["interior_min"] and not row["barrier"]
    assert all(math.isnan(row[k]) for k in ("segment_min", "barrier_margin", "height"))


def test_epoch_summary_counts_and_fractions(summary):
    names = ["monotone", "valley", "barrier", "both", "diverged"]
    steps = {k: np.array([summary[n][k] for n in names]) for k in summary["valley"]}
    out = epoch_summary(steps)
    assert out["n_steps"] == 5 and out["barriers"] == 2 and out["n_nonfinite"] == 1
    assert out["interior_fraction"] == pytest.approx(2 / 5)
    # minima 1.0, 0.5, 0.5, 0.2, nan: up never (0.5 -> 0.5 is a tie, nan compares false)
    assert out["floor_up_fraction"] == 0.0
    assert floor_rises(np.array([1.0, 2.0, 2.0, 1.0, 3.0])).tolist() == [True, False, False, True]


def test_profiles_share_the_iterates_between_steps():
    values = np.arange(2 * 4 + 1, dtype=float)  # two steps of 4 evaluations and the last iterate
    profiles = profiles_from_values(values, 4)
    assert profiles.tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]
    with pytest.raises(ValueError, match="not S \\* 4 \\+ 1"):
        profiles_from_values(values[:-1], 4)
    with pytest.raises(ValueError, match="do not match"):
        step_summaries(profiles, segment_alphas(3))
