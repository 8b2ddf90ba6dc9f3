"""Sagun et al. 2017 §3.2 (Figs 4-6): the width claim's verdicts follow its stated tests on
synthetic spectra, negatives are counted beyond round-off only, an SLQ spectrum is refused
with the key to raise, and the figure renders from stores of real tiny runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pytest
from docutils.core import publish_parts
from jinja2 import Environment

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE
from hessvalley.config import validate_config
from hessvalley.errors import HessvalleyError
from hessvalley.figures import width as width_module
from hessvalley.figures.width import read_family, width_figure
from hessvalley.figures.width_claims import (
    WidthSpectra,
    negative_count,
    relative_spread,
    width_claim,
)
from hessvalley.train import train_run
from hessvalley.trajectory_curvature import spectrum_along_trajectory

from .conftest import REPO, make_config, run_spec

FIGURES = {"dpi": 40, "band": "std"}
WIDTH = {"top": 5, "tolerance": 0.25, "cv_threshold": 0.5, "ratio_threshold": 0.1}
TOP_EDGE = np.array([4.0, 2.5, 1.5, 1.0, 0.7])
pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_spectrum(
    n_params: int, top: np.ndarray, negative_fraction: float = 0.1
) -> np.ndarray:
    """Ascending: n_params·fraction negatives down to −0.02·λ1, the top edge, a bulk near 0."""
    n_negative = round(negative_fraction * n_params)
    negatives = -0.02 * top[0] * np.linspace(1.0, 0.05, n_negative)
    bulk = np.linspace(0.0, 0.01, n_params - n_negative - len(top))
    return np.sort(np.concatenate([negatives, bulk, top]))


def write_spectrum(
    path: Path,
    setting: str,
    seed: int,
    rows: np.ndarray,
    method: str = "exact",
    dtype: str = "float64",
) -> str:
    """A spectrum store in the layout of ``spectrum_along_trajectory``: rows at checkpoints
    0 and the last."""
    rows = np.asarray(rows, dtype=np.float64)
    n = len(rows)
    arrays = {
        "checkpoint": (("checkpoint",), np.array([0, 9][:n])),
        "step": (("checkpoint",), np.array([0, 90][:n])),
        "epoch": (("checkpoint",), np.array([0.0, 9.0][:n])),
        "train_loss": (("checkpoint",), np.array([2.3, 0.05][:n])),
        "negative_sum": (("checkpoint",), np.clip(rows, None, 0).sum(axis=1)),
        "negative_sum_stderr": (("checkpoint",), np.zeros(n)),
    }
    if method == "exact":
        arrays["eigenvalues"] = (("checkpoint", "eigen"), rows)
    attrs = {
        "setting": setting,
        "seed": seed,
        "n_params": rows.shape[1],
        "method": method,
        "hessian": {"dtype": dtype},
    }
    store.write_store(path, arrays, attrs)
    return str(path)


def family_stores(tmp_path: Path, tops: dict[int, np.ndarray], seeds=(0,)) -> list[str]:
    """One store per (width, seed): the init spectrum has a twice larger edge than the end."""
    paths = []
    for n_params, top in tops.items():
        for seed in seeds:
            end = synthetic_spectrum(n_params, top * (1 + 0.01 * seed))
            init = synthetic_spectrum(n_params, 2 * top)
            path = tmp_path / f"p{n_params}_s{seed}.zarr"
            paths.append(write_spectrum(path, f"w{n_params}", seed, np.stack([init, end])))
    return paths


def family(tmp_path: Path, tops: dict[int, np.ndarray], seeds=(0,)) -> list[WidthSpectra]:
    return read_family(family_stores(tmp_path, tops, seeds))


def test_equal_right_edges_hold(tmp_path):
    widths = family(tmp_path, {200: TOP_EDGE, 400: TOP_EDGE, 800: TOP_EDGE}, seeds=(0, 1))
    assert [w.n_params for w in widths] == [200, 400, 800] and widths[0].n_seeds == 2
    claim = width_claim(widths, WIDTH)
    assert claim.verdict.verdict == HOLDS, claim.verdict.reason
    assert all(part.verdict == HOLDS for part in claim.parts.values())
    numbers = {n.name: n for n in claim.numbers}
    assert numbers["w400 (P = 400): n₋/P"].value == pytest.approx(0.1)
    assert np.isfinite(numbers["w400 (P = 400): λ1"].stderr)  # two seeds: a standard error


def test_a_width_whose_top_doubles_fails_the_right_edge_only(tmp_path):
    widths = family(tmp_path, {200: TOP_EDGE, 400: TOP_EDGE, 800: 2 * TOP_EDGE})
    np.testing.assert_allclose(relative_spread(widths, 5), 0.75)  # (2 − 1) / (4/3)
    claim = width_claim(widths, WIDTH)
    assert claim.verdict.verdict == FAILS
    verdicts = [part.verdict for part in claim.parts.values()]
    assert verdicts == [FAILS, HOLDS, HOLDS]
    assert "0.75" in claim.parts["the right edge does not move with width"].reason


def test_negative_fractions_that_drift_and_a_deep_left_edge_fail(tmp_path):
    tops = {200: TOP_EDGE, 400: TOP_EDGE, 800: TOP_EDGE}
    widths = family(tmp_path, tops)
    fractions = (0.01, 0.1, 0.4)
    drifting = [
        replace(w, end=synthetic_spectrum(w.n_params, TOP_EDGE, fraction)[None])
        for w, fraction in zip(widths, fractions, strict=True)
    ]
    parts = width_claim(drifting, WIDTH).parts
    assert parts["n₋/P is the same at every width"].verdict == FAILS
    deep = np.copy(widths[1].end)
    deep[:, 0] = -0.5 * TOP_EDGE[0]
    widths[1] = replace(widths[1], end=deep)
    parts = width_claim(widths, WIDTH).parts
    assert parts["the negative eigenvalues are tiny next to the right edge"].verdict == FAILS


def test_one_width_or_no_negatives_is_not_testable(tmp_path):
    one = family(tmp_path / "one", {200: TOP_EDGE})
    assert width_claim(one, WIDTH).verdict.verdict == UNTESTABLE
    two = family(tmp_path / "two", {200: TOP_EDGE, 400: TOP_EDGE})
    positive = [replace(w, end=np.sort(np.abs(w.end), axis=1)) for w in two]
    claim = width_claim(positive, WIDTH)
    assert claim.parts["n₋/P is the same at every width"].verdict == UNTESTABLE
    assert claim.verdict.verdict == UNTESTABLE


def test_negative_count_ignores_round_off_of_zero_modes():
    rng = np.random.default_rng(0)
    n_params, real = 1000, 30
    spectrum = np.concatenate(
        [[10.0], -np.linspace(2e-3, 1e-2, real), np.zeros(n_params - 1 - real)]
    )
    eps64, eps32 = np.finfo(np.float64).eps, np.finfo(np.float32).eps
    noisy64 = spectrum + np.where(spectrum == 0, rng.normal(0, 1e-13, n_params), 0)
    assert (noisy64 < 0).sum() > real + 100  # the zero modes scatter below 0
    assert negative_count(noisy64, eps64) == real
    noisy32 = spectrum + np.where(spectrum == 0, rng.normal(0, 1e-5, n_params), 0)
    assert negative_count(noisy32, eps32) == real  # the cutoff is 1000 · 1.2e-7 · 10 = 1.2e-3
    assert negative_count(noisy32, eps64) > real + 100  # float64's cutoff would count them


def test_the_hessian_precision_sets_the_cutoff(tmp_path):
    rows = np.stack([synthetic_spectrum(200, TOP_EDGE)] * 2)
    rows[:, 50] = -1e-6  # beyond float64's round-off (2e-13), within float32's (1e-4)
    rows = np.sort(rows, axis=1)
    for dtype, counted in (("float64", 21), ("float32", 20)):
        path = write_spectrum(tmp_path / f"{dtype}.zarr", "w", 0, rows, dtype=dtype)
        (widths,) = read_family([path])
        assert int(widths.n_negative[0]) == counted


def test_an_slq_spectrum_is_refused_naming_the_key(tmp_path):
    rows = np.zeros((2, 3))
    path = write_spectrum(tmp_path / "slq.zarr", "wide", 0, rows, method="slq")
    with pytest.raises(HessvalleyError, match=r"curvature\.spectrum\.max_params"):
        width_figure([path], str(tmp_path / "fig.pdf"), FIGURES, WIDTH)


def test_figure_states_the_claim_and_its_tolerance(tmp_path, monkeypatch):
    """The claim beside the figure, and the figure's texts, from synthetic stores (not saved:
    the real runs' test saves the PDF and PNG)."""
    texts: list[str] = []

    def collect(fig, path, dpi=150) -> None:
        texts.extend(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        plt.close(fig)

    monkeypatch.setattr(width_module, "save_figure", collect)
    tops = {200: TOP_EDGE, 400: TOP_EDGE, 800: 2 * TOP_EDGE}
    output = tmp_path / "figures" / "sagun2017_width.pdf"
    width_figure(
        family_stores(tmp_path, tops, (0, 1)), str(output), FIGURES, {**WIDTH, "tolerance": 0.9}
    )
    claim = json.loads(output.with_suffix(".json").read_text())
    assert (
        claim["id"] == "sagun2017_width" and claim["source"] == "Sagun et al. 2017, §3.2, Figs 4-6"
    )
    assert claim["verdict"] == HOLDS and "at most 0.9;" in claim["test"]
    text = "\n".join(texts)
    assert "(tolerance 0.9)" in text and "mean ± std over 2 seed(s)" in text
    assert "w800 (P = 800)" in text and "w200: n₋/P = 0.1" in text


def test_figure_from_real_tiny_runs(tmp_path, digits_store, digits_spec):
    """Two tiny MLPs trained a few steps, their exact spectra at the first and last checkpoint."""
    curvature = {**make_config({})["curvature"], "every": [0, -1], "dtype": "float64"}
    spectra = []
    for hidden in (3, 6):
        spec = run_spec(model={"name": "mlp", "widths": [hidden], "activation": "tanh"}, epochs=2)
        trajectory, spectrum = (str(tmp_path / f"{name}{hidden}.zarr") for name in ("t", "s"))
        train_run(spec, digits_spec, f"w{hidden}", 0, digits_store, trajectory)
        spectrum_along_trajectory(curvature, f"w{hidden}", 0, trajectory, digits_store, spectrum)
        spectra.append(spectrum)
    output = tmp_path / "sagun2017_width.pdf"
    width_figure(spectra, str(output), FIGURES, WIDTH)
    assert output.is_file() and output.with_suffix(".png").is_file()
    claim = json.loads(output.with_suffix(".json").read_text())
    assert claim["id"] == "sagun2017_width" and claim["verdict"] in (HOLDS, FAILS)
    assert len(claim["parts"]) == 3
    (narrow, wide) = read_family(spectra)
    assert (narrow.n_params, wide.n_params) == (64 * 3 + 3 + 30 + 10, 64 * 6 + 6 + 60 + 10)
    assert narrow.init is not None and narrow.end_epoch[0] == 2


def test_caption_states_the_config_values():
    runs = {
        f"w{h}": {
            "dataset": "digits",
            "model": {"name": "mlp", "widths": [h]},
            "optimizer": {"lr": 0.3, "batch_size": 64},
            "epochs": 50,
            "stop_below_loss": 0.07,
        }
        for h in (8, 16)
    }
    config = validate_config(
        {
            "datasets": {"digits": {"source": "digits"}},
            "runs": runs,
            "curvature": {
                "runs": {r: {"measurements": ["spectrum"], "every": [0, -1]} for r in runs}
            },
            "width": {"runs": list(runs), "top": 7, "tolerance": 0.33},
        }
    )
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string((REPO / "workflow/report/sagun2017_width.rst").read_text())
    text = template.render(snakemake=SimpleNamespace(config=config))
    publish_parts(text, writer="html", settings_overrides={"halt_level": 2})
    text = " ".join(text.split())
    run = "``w8`` (mlp of hidden widths 8 on ``digits``, 1 seed(s), SGD with batch 64"
    assert f"{run} at learning rate 0.3," in text
    assert "until the training loss is below 0.07 (at most 50 epochs)" in text
    assert "The 7 largest" in text and "is at most 0.33 (``width.tolerance``)" in text
