"""End to end on a tiny config: Xing et al. 2018 Figs 5-6 (mini-batch alignment) and Fig 7
(gradient cosine) are made by the workflow, state their claims, and re-run exactly what a
config change makes stale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .snakemake_runner import figures_and_claims, planned_after, planned_jobs, ran_config
from .snakemake_runner import run_config as run

pytestmark = pytest.mark.workflow
FIGURES = ("xing2018_fig5", "xing2018_fig7")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return ran_config(tmp_path_factory, "xing_a")


def test_each_figure_its_store_and_the_claims(workdir):
    results = workdir / "results"
    figures_and_claims(results, FIGURES)
    with xr.open_zarr(results / "sb/seed0/minibatch_alignment.zarr") as ds:
        assert ds["epoch"].values.tolist() == [1.0, 2.0]
        assert ds["batch_size"].values.tolist() == [5, 20, 80]
        assert (
            ds["ratio"].shape == (2, 3, 5) and np.ptp(ds["ratio"].values[:, 2], axis=1).max() == 0
        )
        assert np.all(ds["ratio"].values <= ds["lambda_max"].values[:, None, None] * (1 + 1e-6))
    with xr.open_zarr(results / "gd/seed0/trajectory.zarr") as traj:
        assert traj["grad_cosine"].shape == (16,) and np.isnan(traj["grad_cosine"].values[0])
    drawn = sorted(p.name for p in (results / "figures").glob("*.pdf"))
    assert drawn == sorted(f"{f}.pdf" for f in FIGURES)


def test_nothing_is_stale_after_a_run(workdir):
    assert planned_jobs(run(workdir, "-n")) == {}


@pytest.mark.parametrize(
    ("change", "jobs"),
    [
        (
            lambda c: c["minibatch_alignment"].update(n_batches=4),
            {"minibatch_alignment": 1, "xing2018_fig5": 1},
        ),
        (lambda c: c["gradient_cosine"].update(smooth=3), {"xing2018_fig7": 1}),
    ],
)
def test_a_section_key_reruns_its_stage_and_figure_only(workdir, change, jobs):
    assert planned_after(workdir, change) == {**jobs, "claims": 1, "all": 1}
