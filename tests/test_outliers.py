"""Outlier counters, the Sagun Table 1 stage and its figure and claim (Sagun et al. 2017 §3.1)."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE
from hessvalley.errors import HessvalleyError
from hessvalley.figures.outliers import _columns, outliers_claim, outliers_figure
from hessvalley.outlier_table import CSV_COLUMNS, SCALARS, outlier_table
from hessvalley.outliers import COUNTERS, count_outliers, pca_spectrum, spectrum_window

from .conftest import make_config

FIGURES = {"dpi": 40, "band": "std"}


def spiked(k: int, seed: int = 0, n_bulk: int = 400) -> np.ndarray:
    """k outliers in [1, 1.5] over a bulk decaying from 0.05, with negative values, shuffled."""
    rng = np.random.default_rng(seed)
    bulk = 0.05 * np.exp(-np.arange(n_bulk) / 50) * np.exp(0.1 * rng.standard_normal(n_bulk))
    negative = -0.01 * rng.random(n_bulk // 4)
    values = np.concatenate([rng.uniform(1, 1.5, k), bulk, negative, np.zeros(10)])
    return rng.permutation(values)


@pytest.mark.parametrize("k", [1, 2, 5, 10, 50])
def test_each_counter_finds_k_outliers_above_a_bulk(k):
    counts = count_outliers(spiked(k, seed=k))
    assert set(counts) == set(COUNTERS)
    window = spectrum_window(spiked(k, seed=k))
    for name, found in counts.items():
        assert found.count == k, name
        assert np.sum(window > found.cutoff) == found.count, name  # the cut-off implies it


def test_max_outliers_bounds_the_window_and_the_counts():
    values = spiked(10)
    assert spectrum_window(values, 4).size == 5
    for found in count_outliers(values, max_outliers=4).values():
        assert 0 <= found.count <= 4
    assert all(c.count == 10 for c in count_outliers(values, max_outliers=10).values())


def test_spread_outliers_without_a_gap_split_the_counters():
    """A geometric scree (each value half the one before) has no outlier group: the gap and
    the ratio stop after the first value, the elbow at the floor (1e-3 of the largest)."""
    counts = count_outliers(2.0 ** -np.arange(30))
    assert counts["gap"].count == 1
    assert counts["ratio"].count == 1
    assert counts["elbow"].count == 10  # 2^-9 > 1e-3 > 2^-10: the scree flattens there


def test_no_gap_at_all():
    """Equally spaced values: every gap ties (the first wins), the largest ratio is the
    bottom one, and the log scree never flattens (no elbow)."""
    counts = count_outliers(np.arange(50.0, 0.0, -1.0))
    assert (counts["gap"].count, counts["ratio"].count, counts["elbow"].count) == (1, 49, 0)


@pytest.mark.parametrize(
    "values", [np.ones(20), np.array([3.0]), np.array([-1.0, 0.0, 2.0]), -np.ones(5)]
)
def test_equal_values_and_fewer_than_two_positive_count_zero(values):
    largest = max(float(np.max(values)), 0.0)
    for found in count_outliers(values).values():
        assert found.count == 0
        assert found.cutoff == largest


@pytest.mark.parametrize(
    ("values", "kwargs", "message"),
    [
        (np.array([1.0, np.nan, 0.5]), {}, "NaN or infinite"),
        (np.array([1.0, np.inf]), {}, "NaN or infinite"),
        (np.array([]), {}, "no eigenvalues"),
        (np.ones(3), {"max_outliers": 0}, "max_outliers"),
        (np.ones(3), {"floor": 1.5}, "floor"),
    ],
)
def test_bad_spectra_raise(values, kwargs, message):
    with pytest.raises(ValueError, match=message):
        count_outliers(values, **kwargs)


def test_pca_spectrum_is_the_covariance_spectrum_descending():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    expected = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    spectrum = pca_spectrum(x.astype(np.float32))
    assert spectrum.dtype == np.float64
    np.testing.assert_allclose(spectrum, expected, rtol=1e-5)
    images = rng.standard_normal((20, 1, 2, 3))  # features flattened
    np.testing.assert_allclose(pca_spectrum(images), pca_spectrum(images.reshape(20, 6)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        pca_spectrum(x[:1])


def test_pca_of_k_separated_clusters_shows_k_minus_1():
    """The class means span k − 1 directions: a clean PCA has k − 1 large components."""
    rng = np.random.default_rng(1)
    centres = rng.uniform(-10, 10, (5, 20))
    x = centres[np.arange(500) % 5] + rng.standard_normal((500, 20))
    assert {c.count for c in count_outliers(pca_spectrum(x)).values()} == {4}


def cluster_spec(**overrides) -> dict:
    spec = {"n_classes": 4, "dim": 30, "n_train": 400, "n_val": 8, "cov_scale": 0.25, "seed": 3}
    return spec | overrides


def test_box_generator_draws_centres_in_the_box_and_keeps_the_default():
    from hessvalley.data import gaussian_clusters

    default, normal = (
        gaussian_clusters(cluster_spec()),
        gaussian_clusters(cluster_spec(generator="normal")),
    )
    np.testing.assert_array_equal(default.x_train, normal.x_train)  # unchanged default
    box = gaussian_clusters(cluster_spec(generator="box", center_box=[2.0, 5.0]))
    for c in range(4):
        x = box.x_train[box.y_train == c].astype(np.float64)
        assert np.all((x.mean(axis=0) > 1.7) & (x.mean(axis=0) < 5.3))  # centre in the box
        assert np.std(x - x.mean(axis=0)) == pytest.approx(0.5, rel=0.05)  # sqrt(cov_scale)
    assert np.abs(gaussian_clusters(cluster_spec(generator="box")).x_train).max() > 5
    with pytest.raises(HessvalleyError, match="unknown generator"):
        gaussian_clusters(cluster_spec(generator="uniform"))
    with pytest.raises(HessvalleyError, match="empty"):
        gaussian_clusters(cluster_spec(generator="box", center_box=[1.0, 1.0]))


# -- the stage, on tiny stores ------------------------------------------------------------------


def clusters(k: int) -> dict:
    return {
        "source": "gaussian_clusters",
        "n_classes": k,
        "dim": 8,
        "n_train": 60,
        "n_val": 20,
    }


def tiny_run(dataset: str, batch_size, epochs: int = 30) -> dict:
    return {
        "dataset": dataset,
        "model": {"name": "mlp", "widths": [5, 5], "activation": "relu"},
        "loss": {"name": "ce"},
        "optimizer": {"lr": 0.1, "batch_size": batch_size},
        "epochs": epochs,
    }


@pytest.fixture(scope="module")
def family(tmp_path_factory, one_thread):
    """Two tiny clusters runs (k = 3 by GD, k = 2 by SGD): datasets, trajectories, spectra."""
    from hessvalley.data import build_dataset_store
    from hessvalley.train import train_run
    from hessvalley.trajectory_curvature import spectrum_along_trajectory

    directory = tmp_path_factory.mktemp("outliers")
    config = make_config(
        {"g3": tiny_run("c3", "full"), "s2": tiny_run("c2", 20, epochs=10)},
        {"c3": clusters(3), "c2": clusters(2)},
    )
    curvature = copy.deepcopy(config["curvature"])
    curvature["every"] = "last"
    curvature["spectrum"] = {
        k: v for k, v in curvature["spectrum"].items() if k not in ("runs", "every")
    }
    paths: dict[str, list[str]] = {"spectra": [], "trajectories": [], "datasets": []}
    for run in ("g3", "s2"):
        spec = dict(config["runs"][run])
        spec.pop("seeds")
        name = spec["dataset"]
        data = str(directory / f"{name}.zarr")
        build_dataset_store(config["datasets"][name], name, data)
        trajectory = str(directory / f"{run}.zarr")
        train_run(spec, config["datasets"][name], run, 0, data, trajectory)
        spectrum = str(directory / f"{run}_spectrum.zarr")
        spectrum_along_trajectory(curvature, run, 0, trajectory, data, spectrum)
        for key, path in zip(paths, (spectrum, trajectory, data), strict=True):
            paths[key].append(path)
    return {"dir": directory, "curvature": curvature, **paths}


OUTLIERS = {"max_outliers": None, "ratio_floor": 1e-3}


@pytest.fixture(scope="module")
def table(family) -> tuple[str, str]:
    """The stage's store and CSV over the family."""
    output, table = str(family["dir"] / "outliers.zarr"), str(family["dir"] / "table1.csv")
    paths = {k: family[k] for k in ("spectra", "trajectories", "datasets")}
    outlier_table(OUTLIERS, **paths, output=output, table=table)
    return output, table


def test_stage_writes_the_table_store_and_csv(family, table):
    output, table = table
    arrays = store.read_arrays(output)
    assert set(SCALARS) | {"hessian_top", "pca_spectrum"} <= set(arrays)
    assert [str(r) for r in arrays["run"]] == ["s2", "g3"]  # sorted by k
    assert arrays["k"].tolist() == [2, 3]
    assert [str(m) for m in arrays["method"]] == ["SGD", "GD"]
    assert arrays["n_params"].tolist() == [8 * 5 + 5 + 30 + 5 * k + k for k in (2, 3)]
    assert arrays["pca_spectrum"].shape == (2, 8)
    for i, spectrum in enumerate(reversed(family["spectra"])):
        eigenvalues = np.asarray(store.open_store(spectrum)["eigenvalues"][-1])
        top = np.sort(eigenvalues)[::-1]
        kept = arrays["hessian_top"][i]
        np.testing.assert_array_equal(kept[np.isfinite(kept)], top)  # P < 100: all kept
        counts = count_outliers(eigenvalues)
        for c in COUNTERS:
            assert arrays[f"hessian_{c}_count"][i] == counts[c].count
            assert arrays[f"hessian_{c}_cutoff"][i] == pytest.approx(counts[c].cutoff)
    attrs = store.open_store(output).attrs
    assert attrs["config"] == OUTLIERS and attrs["counters"] == list(COUNTERS)
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["run"], r["k"], r["method"], r["P"]) for r in rows] == [
        ("s2", "2", "SGD", "87"),
        ("g3", "3", "GD", "93"),
    ]
    assert rows[1]["activation"] == "relu" and rows[1]["cov_scale"] == "1"
    assert not list(family["dir"].glob("*.partial"))


def test_stage_refuses_slq_spectra_and_mismatched_stores(family, tmp_path):
    from hessvalley.trajectory_curvature import spectrum_along_trajectory

    curvature = copy.deepcopy(family["curvature"])
    curvature["spectrum"] |= {"max_params": 50, "slq_starts": 2, "slq_steps": 5}
    slq = str(tmp_path / "slq.zarr")
    spectrum_along_trajectory(
        curvature, "g3", 0, family["trajectories"][0], family["datasets"][0], slq
    )
    out = {"output": str(tmp_path / "o.zarr"), "table": str(tmp_path / "t.csv")}
    one = {"trajectories": family["trajectories"][:1], "datasets": family["datasets"][:1]}
    with pytest.raises(HessvalleyError, match=r"curvature\.spectrum\.max_params"):
        outlier_table(OUTLIERS, spectra=[slq], **one, **out)
    with pytest.raises(HessvalleyError, match="another trajectory"):
        outlier_table(OUTLIERS, spectra=family["spectra"][1:], **one, **out)
    swapped = {"trajectories": one["trajectories"], "datasets": family["datasets"][1:]}
    with pytest.raises(HessvalleyError, match="trained on 'c3'"):
        outlier_table(OUTLIERS, spectra=family["spectra"][:1], **swapped, **out)
    curvature = copy.deepcopy(family["curvature"]) | {"every": [0]}
    first = str(tmp_path / "first.zarr")
    spectrum_along_trajectory(
        curvature, "g3", 0, family["trajectories"][0], family["datasets"][0], first
    )
    with pytest.raises(HessvalleyError, match="not the trajectory's last"):
        outlier_table(OUTLIERS, spectra=[first], **one, **out)
    with pytest.raises(HessvalleyError, match="one of each"):
        outlier_table(OUTLIERS, spectra=family["spectra"], **one, **out)


def test_figure_renders_with_its_claim(table, tmp_path):
    figure = tmp_path / "figures" / "sagun2017_outliers.pdf"
    outliers_figure(table[0], str(figure), FIGURES)
    assert figure.stat().st_size > 0 and figure.with_suffix(".png").stat().st_size > 0
    claim = json.loads(figure.with_suffix(".json").read_text())
    assert claim["id"] == "sagun2017_outliers"
    assert claim["source"] == "Sagun et al. 2017, §3.1, Table 1"
    assert set(claim["parts"]) == {
        "s2 seed 0 (k = 2): Hessian",
        "s2 (k = 2): PCA",
        "g3 seed 0 (k = 3): Hessian",
        "g3 (k = 3): PCA",
    }


# -- the claim, on synthetic tables --------------------------------------------------------------


def synthetic_table(rows: list[dict]) -> dict[str, np.ndarray]:
    """A table store's arrays: each row gives run, seed, k and the Hessian and PCA counts."""
    out: dict[str, list] = {name: [] for name in SCALARS}
    for row in rows:
        full = dict.fromkeys(SCALARS, 0) | {"method": "SGD", "activation": "relu"}
        full |= {"hessian_n_positive": 1000, "pca_n_positive": 100} | row
        for source in ("hessian", "pca"):
            for c, n in zip(COUNTERS, row[source], strict=True):
                full[f"{source}_{c}_count"], full[f"{source}_{c}_cutoff"] = n, 0.1
        for name in SCALARS:
            out[name].append(full[name])
    arrays = {name: np.asarray(values) for name, values in out.items()}
    arrays["hessian_top"] = np.tile(np.geomspace(1, 1e-4, 120), (len(rows), 1))
    arrays["pca_spectrum"] = np.tile(np.geomspace(10, 1, 100), (len(rows), 1))
    return arrays


def row(run: str, k: int, hessian: tuple, pca: tuple, seed: int = 0, **kw) -> dict:
    return {"run": run, "k": k, "seed": seed, "hessian": hessian, "pca": pca, **kw}


def test_claim_holds_when_a_counter_is_off_by_at_most_one_and_pca_misses_k():
    table = synthetic_table(
        [row("a", 5, (2, 6, 9), (4, 4, 4)), row("b", 10, (10, 1, 3), (9, 13, 1))]
    )
    claim = outliers_claim(table, None)
    assert claim.verdict.verdict == HOLDS
    assert {p.verdict for p in claim.parts.values()} == {HOLDS}
    assert "ratio" in claim.parts["a seed 0 (k = 5): Hessian"].reason


def test_claim_fails_when_no_counter_is_near_k_or_the_pca_shows_k():
    table = synthetic_table(
        [row("a", 10, (2, 14, 15), (9, 9, 9)), row("b", 5, (5, 5, 5), (5, 1, 2))]
    )
    claim = outliers_claim(table, None)
    assert claim.verdict.verdict == FAILS
    assert claim.parts["a seed 0 (k = 10): Hessian"].verdict == FAILS
    assert claim.parts["a (k = 10): PCA"].verdict == HOLDS
    assert claim.parts["b (k = 5): PCA"].verdict == FAILS


def test_claim_parts_per_seed_and_untestable_when_the_counters_cannot_reach_k():
    table = synthetic_table(
        [
            row("a", 50, (49, 49, 2), (49, 49, 49)),
            row("a", 50, (3, 3, 3), (49, 49, 49), seed=1),
            row("c", 20, (2, 2, 2), (1, 1, 1), pca_n_positive=15),
        ]
    )
    claim = outliers_claim(table, max_outliers=30)
    parts = {name: p.verdict for name, p in claim.parts.items()}
    assert parts == {
        "a seed 0 (k = 50): Hessian": UNTESTABLE,  # counts reach 30 < 49
        "a seed 1 (k = 50): Hessian": UNTESTABLE,
        "a (k = 50): PCA": UNTESTABLE,
        "c seed 0 (k = 20): Hessian": FAILS,
        "c (k = 20): PCA": UNTESTABLE,  # 15 components cannot show 20
    }
    assert claim.verdict.verdict == FAILS
    assert (
        outliers_claim(synthetic_table([row("a", 50, (49, 1, 1), (1, 1, 1))]), 60).verdict.verdict
        == HOLDS
    )


def test_caption_renders_the_runs_and_the_window():
    from .test_captions import render

    datasets = {"c2": clusters(2), "c50": clusters(50) | {"dim": 60}, "digits": {"dim": None}}
    datasets["digits"] |= {"n_classes": 10}
    runs = {
        "s2": tiny_run("c2", 25),
        "g50": tiny_run("c50", "full"),
        "d": tiny_run("digits", 32) | {"model": {"name": "mlp", "widths": [8]}},
    }
    config = {"datasets": datasets, "runs": runs, "outliers": OUTLIERS | {"runs": list(runs)}}
    text = render("sagun2017_outliers", config)
    assert "``s2`` (k = 2, 8-d clusters, SGD, relu), ``g50`` (k = 50, 60-d clusters, GD" in text
    assert "``d`` (k = 10, SGD, relu)." in text
    assert "below 0.001 λmax" in text and "top" not in text.split("descending")[1][:20]
    config["outliers"] |= {"max_outliers": 60}
    assert "descending, the top 61 only (a count is at most 60)" in render(
        "sagun2017_outliers", config
    )


def test_figure_columns_are_the_values_of_k_with_every_run_of_each():
    table = synthetic_table(
        [
            row("tanh2", 2, (2, 2, 2), (1, 1, 1)),
            row("relu2", 2, (2, 2, 2), (1, 1, 1)),
            row("relu2", 2, (2, 2, 2), (1, 1, 1), seed=1),
            row("relu5", 5, (5, 5, 5), (1, 1, 1)),
        ]
    )
    assert _columns(table) == [(2, [0, 1]), (5, [3])]  # first seeds; a paper family: 5 columns
