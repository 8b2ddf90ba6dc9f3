"""End to end on a tiny config: Sagun et al. 2017's three figures (outliers, width, batch),
Table 1 and a line between two stored states are made by the workflow, state their claims,
and re-run exactly what a config change makes stale.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .snakemake_runner import figures_and_claims, planned_after, planned_jobs, ran_config
from .snakemake_runner import run_config as run

pytestmark = pytest.mark.workflow
FIGURES = ("sagun2017_outliers", "sagun2017_width", "sagun2017_batch")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return ran_config(tmp_path_factory, "sagun")


def test_each_figure_the_table_and_the_claims(workdir):
    results = workdir / "results"
    figures_and_claims(results, FIGURES)
    with open(results / "tables/sagun2017_table1.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(row["run"], row["k"]) for row in table] == [("k2", "2"), ("k3", "3")]
    with xr.open_zarr(results / "sagun2017/outliers.zarr") as ds:
        assert list(ds["run"].values) == ["k2", "k3"]
    # Only the training figure asked for, no curvature figure for the family runs.
    drawn = sorted(p.name for p in (results / "figures").glob("*.pdf"))
    assert drawn == sorted([f"{f}.pdf" for f in FIGURES] + ["sb_training.pdf"])


def test_the_line_ends_are_the_stored_states(workdir):
    results = workdir / "results"
    with xr.open_zarr(results / "lines/lb_to_sb.zarr") as line:
        alpha = line["alpha"].values
        assert len(alpha) == 9 and alpha[0] == -0.5 and alpha[-1] == 1.5
        assert {0.0, 1.0} <= set(alpha.tolist())
        ends = {a: float(line["train_loss"].sel(alpha=a)) for a in (0.0, 1.0)}
    for a, run_name in ((0.0, "lb"), (1.0, "lb_sb")):
        with xr.open_zarr(results / f"{run_name}/seed0/trajectory.zarr") as traj:
            stored = float(traj["train_loss"].values[-1])
        np.testing.assert_allclose(ends[a], stored, rtol=1e-5)


def test_nothing_is_stale_after_a_run(workdir):
    assert planned_jobs(run(workdir, "-n")) == {}


def fewer_line_points(config):
    config["lines"]["lb_to_sb"]["alpha"]["points"] = 5


@pytest.mark.parametrize(
    ("change", "jobs"),
    [
        (fewer_line_points, {"line": 1, "sagun2017_batch": 1}),
        (lambda c: c["width"].update(top=3), {"sagun2017_width": 1}),
        (
            lambda c: c["outliers"].update(max_outliers=5),
            {"outlier_table": 1, "sagun2017_outliers": 1},
        ),
    ],
)
def test_a_section_key_reruns_its_stage_and_figure_only(workdir, change, jobs):
    assert planned_after(workdir, change) == {**jobs, "claims": 1, "all": 1}
