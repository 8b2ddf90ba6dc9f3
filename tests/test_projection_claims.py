"""Claims of W&S Figs 1, 3, 4 computed from small synthetic path and trace stores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, read_claim, write_claim
from hessvalley.projection.claims import (
    connection_verdict,
    connections,
    fig1_claim,
    fig3_claim,
    fig4_claim,
    slope_verdict,
    trace_slopes,
)
from hessvalley.projection.outcomes import BARRIER, CONNECTED, NOT_CONVERGED


def path_store(directory, edges, setting="r", seed=0) -> str:
    """A projected path store with the given (left step, right step, cause) edges."""
    steps = sorted({e[0] for e in edges} | {e[1] for e in edges}) or [0]
    cause = np.array([e[2] for e in edges], dtype=np.int8)
    arrays = {
        "step": (("point",), np.array(steps, dtype=np.int64)),
        "edge_left_step": (("edge",), np.array([e[0] for e in edges], dtype=np.int64)),
        "edge_right_step": (("edge",), np.array([e[1] for e in edges], dtype=np.int64)),
        "cause": (("edge",), cause),
        "connected": (("edge",), cause == CONNECTED),
    }
    attrs = {"setting": setting, "seed": seed, "n_points": len(steps)}
    path = directory / f"{setting}_{seed}_path_{len(list(directory.iterdir()))}.zarr"
    return str(store.write_store(path, arrays, attrs))


def trace_store(directory, setting, seed, slope, fit_from_epoch=1.0) -> str:
    """A trace store along epochs 0..4 whose values fall by ``slope`` per epoch."""
    epoch = np.arange(5.0)
    trace = 10.0 + slope * epoch + 0.01 * seed
    arrays = {
        "epoch": (("point",), epoch),
        "trace": (("point",), trace),
        "in_fit": (("point",), epoch >= fit_from_epoch),
    }
    attrs = {"setting": setting, "seed": seed, "slope_per_epoch": slope}
    attrs["fit_from_epoch"] = fit_from_epoch
    return str(store.write_store(directory / f"{setting}_{seed}_trace.zarr", arrays, attrs))


C, B, N = CONNECTED, BARRIER, NOT_CONVERGED


@pytest.mark.parametrize(
    ("edges", "verdict", "reason"),
    [
        ([(0, 4, C), (4, 8, C), (8, 12, C)], HOLDS, "all 3 pairs of 4 points connected"),
        ([(0, 8, C), (8, 9, B), (9, 10, C), (10, 16, C)], FAILS, "(steps 8-9)"),
        ([(0, 8, B), (8, 16, C)], UNTESTABLE, "1 cut at max_depth, 0 with an end"),
        ([(0, 8, N), (8, 16, C)], UNTESTABLE, "0 cut at max_depth, 1 with an end"),
        ([(7, 8, N), (8, 16, C)], UNTESTABLE, "1 with an end whose projection"),
        ([(0, 8, B), (8, 9, B), (9, 10, N)], FAILS, "1 of 3 pairs at adjacent SGD steps"),
        ([], UNTESTABLE, "single point"),
    ],
    ids=[
        "connected",
        "adjacent-barrier",
        "cut",
        "not-converged",
        "adjacent-not-converged",
        "barrier-and-cut",
        "one-point",
    ],
)
def test_connection_verdict(tmp_path, edges, verdict, reason):
    found = connection_verdict(connections(path_store(tmp_path, edges)))
    assert found.verdict == verdict and reason in found.reason


def test_fig1_claim_counts_and_combines_paths(tmp_path):
    good = path_store(tmp_path, [(0, 4, C), (4, 8, C)], setting="a")
    cut = path_store(tmp_path, [(0, 4, C), (4, 6, B), (6, 8, C)], setting="b")
    claim = fig1_claim([good, cut])
    assert claim.verdict.verdict == UNTESTABLE  # one holds, one cannot tell
    assert {k: v.verdict for k, v in claim.parts.items()} == {
        "a seed 0": HOLDS,
        "b seed 0": UNTESTABLE,
    }
    numbers = {n.name: n.value for n in claim.numbers}
    assert numbers["b seed 0: projected points"] == 4
    assert numbers["b seed 0: connected pairs"] == 2
    assert numbers["b seed 0: pairs cut at max_depth"] == 1
    assert numbers["b seed 0: barriers at adjacent steps"] == 0
    barrier = path_store(tmp_path, [(0, 4, C), (4, 5, B)], setting="c")
    assert fig1_claim([good, cut, barrier]).verdict.verdict == FAILS
    assert "4020" in claim.paper_value and "2700" in claim.paper_value

    # Written beside the figure and read back unchanged.
    written = write_claim(tmp_path / "figures" / "wei2020_fig1.pdf", claim)
    assert written.name == "wei2020_fig1.json"
    assert read_claim(written).row() == claim.row()


def test_trace_slope_over_seeds(tmp_path):
    falling = [trace_store(tmp_path, "down", k, s) for k, s in enumerate((-1.0, -1.1, -0.9))]
    found = trace_slopes(falling)["down"]
    mean, stderr = found.mean_and_stderr()
    assert mean == pytest.approx(-1.0)
    assert stderr == pytest.approx(np.std([-1.0, -1.1, -0.9], ddof=1) / math.sqrt(3))
    verdict = slope_verdict(found)
    assert verdict.verdict == HOLDS and "-17.32 standard errors" in verdict.reason
    # The trace at the first and last fitted epoch (1 and 4), mean and error over seeds.
    (first, first_mean, _), (last, last_mean, last_err) = found.ends
    assert (first, last) == (1.0, 4.0)
    assert first_mean == pytest.approx(10.0 - 1.0 + 0.01)
    assert last_mean == pytest.approx(10.0 - 4.0 + 0.01)
    assert last_err == pytest.approx(np.std([-4.0, -4.4 + 0.01, -3.6 + 0.02], ddof=1) / 3**0.5)

    mixed = [trace_store(tmp_path, "mixed", k, s) for k, s in enumerate((-1.0, 0.5, 0.2))]
    assert slope_verdict(trace_slopes(mixed)["mixed"]).verdict == FAILS
    rising = [trace_store(tmp_path, "up", k, s) for k, s in enumerate((1.0, 1.1, 0.9))]
    assert slope_verdict(trace_slopes(rising)["up"]).verdict == FAILS
    single = trace_slopes([trace_store(tmp_path, "one", 0, -1.0)])["one"]
    assert slope_verdict(single).verdict == UNTESTABLE
    assert math.isnan(single.mean_and_stderr()[1]) and math.isnan(single.ends[0][2])

    claim = fig3_claim(falling + mixed)
    assert claim.verdict.verdict == FAILS
    assert {k: v.verdict for k, v in claim.parts.items()} == {"down": HOLDS, "mixed": FAILS}
    assert "from epoch 1 on" in claim.test
    slope = next(n for n in claim.numbers if n.name == "down: trace slope")
    assert (slope.value, slope.unit) == (pytest.approx(-1.0), "per epoch")


def test_fig4_claim_needs_both_tests_per_setting(tmp_path):
    traces = [trace_store(tmp_path, "rl", k, s) for k, s in enumerate((-1.0, -1.1, -0.9))]
    connected = path_store(tmp_path, [(0, 4, C), (4, 8, C)], setting="rl")
    claim = fig4_claim([connected], traces)
    assert claim.verdict.verdict == HOLDS
    assert list(claim.parts) == ["rl: connected", "rl: trace decreasing"]
    barrier = path_store(tmp_path, [(0, 4, C), (4, 5, B)], setting="rl")
    assert fig4_claim([barrier], traces).verdict.verdict == FAILS
    one_seed = fig4_claim([connected], traces[:1])
    assert one_seed.verdict.verdict == UNTESTABLE
    assert one_seed.parts["rl: trace decreasing"].verdict == UNTESTABLE
