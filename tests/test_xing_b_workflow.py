"""End to end on a tiny config: Xing et al. 2018's Fig 1 and Table 1 (with Fig 4) are made by the
workflow from the interpolation jobs it plans, state their claims, and a config change re-runs
exactly what reads the changed key.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import xarray as xr

from .snakemake_runner import figures_and_claims, planned_after, planned_jobs, ran_config
from .snakemake_runner import run_config as run

pytestmark = pytest.mark.workflow
FIGURES = ("xing2018_fig1", "xing2018_table1")
GROUPS = {"ref": ["epochs_1-2", "epoch_3"], "short": ["epoch_1"]}  # epochs_per_job: 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return ran_config(tmp_path_factory, "xing_b")


def test_the_figures_the_table_and_the_claims(workdir):
    results = workdir / "results"
    figures_and_claims(results, FIGURES)
    with open(results / "tables/xing2018_table1.csv", newline="") as handle:
        table = [(row["run"], row["epoch"], row["steps"]) for row in csv.DictReader(handle)]
    # 96 digits: batch 16 gives 6 steps an epoch, batch 32 gives 3; short has no epoch 3
    assert table == [("ref", "1", "6"), ("ref", "3", "6"), ("short", "1", "3"), ("short", "3", "-")]
    assert sorted(p.name for p in (results / "figures").glob("*.pdf")) == [
        f"{f}.pdf" for f in FIGURES
    ]


def test_one_store_per_planned_group(workdir):
    for setting, groups in GROUPS.items():
        folder = workdir / "results" / setting / "seed0" / "interpolation"
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{g}.zarr" for g in groups)
    with xr.open_zarr(workdir / "results/ref/seed0/interpolation/epochs_1-2.zarr") as ds:
        assert ds["epochs"].values.tolist() == [1, 2] and ds["profile"].shape == (12, 5)
        assert ds.attrs["checkpoints_checked"] == 2 and ds.attrs["setting"] == "ref"


def test_nothing_is_stale_after_a_run(workdir):
    assert planned_jobs(run(workdir, "-n")) == {}


@pytest.mark.parametrize(
    ("change", "jobs"),
    [
        (lambda c: c["barriers"].update(max_barrier_fraction=0.2), {"xing2018_table1": 1}),
        (lambda c: c["barriers"].update(iterations=3), {"xing2018_fig1": 1}),
        (
            lambda c: c["barriers"].update(points=5),
            {"iterate_interpolation": 3, "xing2018_fig1": 1, "xing2018_table1": 1},
        ),
    ],
)
def test_a_key_reruns_what_reads_it_only(workdir, change, jobs):
    assert planned_after(workdir, change) == {**jobs, "claims": 1, "all": 1}
