"""End to end on a tiny config: W&S Figs 2a, 5 and 6 and a run-by-run curvature plan are
made by the workflow, state their claims, and re-run exactly what a config change makes stale.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import xarray as xr

from .snakemake_runner import figures_and_claims, planned_after, planned_jobs, ran_config
from .snakemake_runner import run_config as run

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return ran_config(tmp_path_factory, "appendix")


def test_each_figure_its_stores_and_its_claim(workdir):
    results = workdir / "results"
    figures_and_claims(results, ("wei2020_fig2a", "wei2020_fig5", "wei2020_fig6"))
    with xr.open_zarr(results / "tiny_gd/seed0/equilibrium.zarr") as ds:
        assert ds.sizes["point"] == 2 * 2 * 2 + 2  # cells x snapshots + GD checkpoints
        assert ds.attrs["setting"] == "tiny_gd"
    for seed in (0, 1):
        with xr.open_zarr(results / f"tiny_sgd/seed{seed}/alignment.zarr") as ds:
            assert list(ds.checkpoint.values) == [0, 2, 4]  # every 2nd and the last
    assert not (results / "tiny_sgd/seed0/fdr.zarr").exists()  # fdr.seeds: [1]
    with xr.open_zarr(results / "tiny_sgd/seed1/fdr.zarr") as ds:
        assert list(ds.subspace.values) == [1, 3]
        assert ds.attrs["hessian"]["n_samples"] == 32  # fdr.n_samples over curvature's null
    eigen = results / "tiny_sgd/seed0/curvature"
    assert sorted(p.name for p in eigen.iterdir()) == ["eigen.zarr"]
    with xr.open_zarr(eigen / "eigen.zarr") as ds:
        assert list(ds.checkpoint.values) == [4] and ds.sizes["rank"] == 1
    assert (results / "figures/tiny_sgd_curvature.png").stat().st_size > 1000


def test_nothing_is_stale_after_a_run(workdir):
    assert planned_jobs(run(workdir, "-n")) == {}


def test_a_figure_key_reruns_only_its_figure(workdir):
    def later(config):
        config["alignment"]["from_epoch"] = 1

    assert planned_after(workdir, later) == {"wei2020_fig5": 1, "claims": 1, "all": 1}


@pytest.mark.parametrize(
    ("change", "jobs"),
    [
        (lambda c: c["fdr"].update(k=[2]), {"fdr": 1, "wei2020_fig6": 1}),
        (lambda c: c["equilibrium"].update(steps=30), {"equilibrium_sweep": 1, "wei2020_fig2a": 1}),
        (lambda c: c["alignment"].update(probes=10), {"alignment": 2, "wei2020_fig5": 1}),
        (lambda c: c["fdr"].update(seeds=[0, 1]), {"fdr": 1, "wei2020_fig6": 1}),
    ],
)
def test_a_stage_key_reruns_its_stage_and_figure_only(workdir, change, jobs):
    assert planned_after(workdir, change) == {**jobs, "claims": 1, "all": 1}


def test_a_curvature_plan_change_reruns_only_that_measurement(workdir):
    def more(config):
        config["curvature"]["runs"]["tiny_sgd"]["every"] = [0, -1]

    assert planned_after(workdir, more) == {"curvature_eigen": 2, "curvature_figure": 1, "all": 1}
