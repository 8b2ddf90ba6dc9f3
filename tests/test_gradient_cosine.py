"""Xing et al. 2018 eq. 5, Fig 7: the claim on synthetic cosine series (falling, flat, rising
with the batch size; a part per adjacent pair), the distance from the initialisation, the
moving average, and the figure from tiny stores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS
from hessvalley.errors import HessvalleyError
from hessvalley.figures.gradient_cosine import (
    fig7_claim,
    fig7_figure,
    later_means,
    moving_average,
    read_runs,
)

SPEC = {"from_fraction": 0.5, "smooth": None, "blocks": 10}


def cosine_store(
    path: Path, setting: str, batch: int, level: float, seed: int = 0, log: bool = True
) -> str:
    """A trajectory-like store of 400 iterations whose cosine is ``level`` plus noise, and 5
    checkpoints moving along one direction (|θ_k − θ_0| = k · batch / 100)."""
    rng = np.random.default_rng(seed + batch)
    cosine = level + 0.05 * rng.standard_normal(400)
    cosine[0] = np.nan
    params = np.outer(np.arange(5) * batch / 100, np.ones(4) / 2).astype(np.float32)
    arrays = {
        "step": (("checkpoint",), np.arange(5) * 100),
        "params": (("checkpoint", "param"), params),
    }
    if log:
        arrays["grad_cosine"] = (("iteration",), cosine.astype(np.float32))
    attrs = {
        "setting": setting,
        "seed": seed,
        "batch_size": batch,
        "n_train": 1000,
        "n_checkpoints": 5,
    }
    store.write_store(path, arrays, attrs)
    return str(path)


def family(tmp_path: Path, levels: dict[int, float], seeds=(0,)) -> list[str]:
    return [
        cosine_store(tmp_path / f"b{batch}_s{seed}.zarr", f"b{batch}", batch, level, seed)
        for batch, level in levels.items()
        for seed in seeds
    ]


def test_falling_cosine_holds_per_adjacent_pair(tmp_path):
    runs = read_runs(family(tmp_path, {1000: -0.3, 10: 0.2, 100: 0.0}, seeds=(0, 1)))
    assert [r.batch_size for r in runs] == [10, 100, 1000] and runs[-1].full
    assert runs[-1].label == "batch 1000 (all)" and len(runs[0].cosines) == 2
    np.testing.assert_allclose(runs[1].distances[0], np.arange(5), rtol=1e-6)
    claim = fig7_claim(runs, SPEC)
    assert claim.verdict.verdict == HOLDS
    assert list(claim.parts) == ["batch 10 above batch 100", "batch 100 above batch 1000 (all)"]
    mean, se, blocks = later_means(runs, SPEC)[0]
    assert mean == pytest.approx(0.2, abs=0.02) and 0 < se < 0.01 and blocks == 20
    by_name = {n.name: n for n in claim.numbers}
    assert by_name["|θ_end − θ_0|, batch 10"].value == pytest.approx(0.4, rel=1e-6)


def test_flat_and_rising_cosines_fail_the_pair_they_concern(tmp_path):
    flat = fig7_claim(read_runs(family(tmp_path / "flat", {10: 0.1, 100: 0.1})), SPEC)
    assert flat.verdict.verdict == FAILS
    rising = fig7_claim(read_runs(family(tmp_path / "rise", {10: 0.5, 100: 0.0, 1000: 0.9})), SPEC)
    assert rising.parts["batch 10 above batch 100"].verdict == HOLDS
    assert rising.parts["batch 100 above batch 1000 (all)"].verdict == FAILS
    assert rising.verdict.verdict == FAILS


def test_only_the_later_iterations_count(tmp_path):
    paths = family(tmp_path, {10: 0.2, 100: 0.0})
    early = fig7_claim(read_runs(paths), {**SPEC, "from_fraction": 0.0})
    (mean, _, blocks), _ = later_means(read_runs(paths), {**SPEC, "from_fraction": 0.9})
    assert blocks == 10 and mean == pytest.approx(0.2, abs=0.05)
    assert early.verdict.verdict == HOLDS


def test_a_run_without_the_cosine_log_names_the_key(tmp_path):
    path = cosine_store(tmp_path / "plain.zarr", "plain", 10, 0.0, log=False)
    with pytest.raises(HessvalleyError, match=r"runs\.plain\.log_grad_cosine"):
        read_runs([path])


def test_moving_average_skips_nans():
    values = np.array([np.nan, 1.0, 2.0, 3.0, np.nan, 5.0])
    smoothed = moving_average(values, 3)
    np.testing.assert_allclose(smoothed, [1.0, 1.5, 2.0, 2.5, 4.0, 5.0])
    assert math.isnan(moving_average(np.array([np.nan, np.nan]), 1)[0])


def test_figure_renders_from_tiny_stores(tmp_path):
    output = tmp_path / "figures" / "xing2018_fig7.pdf"
    fig7_figure(
        family(tmp_path, {10: 0.2, 100: 0.0, 1000: -0.2}),
        str(output),
        {"dpi": 40},
        {"from_fraction": 0.5, "smooth": 7, "blocks": 5},
    )
    assert output.read_bytes()[:4] == b"%PDF"
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    claim = json.loads(output.with_suffix(".json").read_text())
    assert claim["id"] == "xing2018_fig7" and claim["verdict"] == HOLDS
