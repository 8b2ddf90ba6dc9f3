"""End to end on the tiny config: the workflow runs, caches, and re-runs exactly what is stale."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml

from hessvalley import store_lock
from hessvalley.verify import verify_main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
               "--cores", "2", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rule -> job count of what a dry run would execute (empty when nothing is stale)."""
    output = snakemake(workdir, "-n")
    text = output.stdout + output.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def edit_config(workdir: Path, change) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    shutil.copy(REPO / "tests/configs/tiny.yaml", workdir / "config.yaml")
    snakemake(workdir)
    return workdir


def test_tiny_workflow_produces_every_artifact(workdir):
    for seed in (0, 1):
        ds = xr.open_zarr(workdir / f"results/tiny_mlp/seed{seed}/trajectory.zarr")
        assert ds.params.dims == ("checkpoint", "param") and ds.sizes["checkpoint"] == 4
        assert ds.attrs["complete"] and ds.attrs["seed"] == seed
    assert (workdir / "results/figures/tiny_mlp_training.pdf").stat().st_size > 1000
    assert (workdir / "results/figures/tiny_mlp_training.png").stat().st_size > 1000
    assert (workdir / "logs/train/tiny_mlp/seed0.log").read_text().count("tiny_mlp seed 0") >= 1
    assert (workdir / "benchmarks/train/tiny_mlp/seed0.tsv").exists()
    for seed in (0, 1):
        curvature = workdir / f"results/tiny_mlp/seed{seed}/curvature"
        with xr.open_zarr(curvature / "trace.zarr") as ds:  # checkpoints 0, 2 and the last
            assert ds["checkpoint"].values.tolist() == [0, 2, 3]
            assert ds["trace"].dims == ("checkpoint",) and (ds["trace_stderr"] > 0).all()
        with xr.open_zarr(curvature / "eigen.zarr") as ds:
            assert ds.sizes["rank"] == 2 and (ds["largest"] > ds["smallest"]).all()
        with xr.open_zarr(curvature / "spectrum.zarr") as ds:
            assert ds.attrs["method"] == "exact" and ds.sizes["eigen"] == 1210
    assert (workdir / "results/figures/tiny_mlp_curvature.png").stat().st_size > 1000


def test_verify_finds_every_store_of_a_fresh_run_good(workdir, capsys):
    assert verify_main([str(workdir / "results"), str(workdir / "resources")]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(
        r"(\d+) store\(s\) checked: \1 good, 0 damaged; 0 interrupted \(.partial\)", summary
    )
    assert int(summary.split()[0]) >= 12  # 2 trajectories, 6 curvature, 3 toy, 1 dataset


def test_damaged_trajectory_is_named_by_verify_and_fails_its_curvature_job(
    workdir, tmp_path, capsys
):
    copy = Path(shutil.copytree(workdir, tmp_path / "copy", symlinks=True))
    trajectory = copy / "results/tiny_mlp/seed0/trajectory.zarr"
    (trajectory / "params/c/0/0").unlink()
    assert verify_main([str(copy / "results")]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {trajectory}: array 'params' has 0 of 1 chunks (missing c/0/0)" in out

    trace = "results/tiny_mlp/seed0/curvature/trace.zarr"
    shutil.rmtree(copy / trace)
    result = snakemake(copy, trace, check=False)
    assert result.returncode != 0
    assert (
        "hessvalley curvature_trace: store results/tiny_mlp/seed0/trajectory.zarr is damaged: "
        "array 'params' has 0 of 1 chunks (missing c/0/0); delete it (rm -r "
        "results/tiny_mlp/seed0/trajectory.zarr) and re-run snakemake"
    ) in result.stderr
    assert not (copy / trace).exists()


def test_live_store_lock_refuses_a_run_and_warns_a_dry_run(workdir):
    """Jobs of an earlier Snakemake still writing a store (here this process holds its lock):
    a dry run warns; a run refuses before any job runs or any output is deleted."""
    trajectory = workdir / "results/tiny_mlp/seed0/trajectory.zarr"
    figure = workdir / "results/figures/tiny_mlp_training.pdf"
    drawn = figure.stat().st_mtime_ns
    store_lock.acquire(trajectory)
    try:
        dry = snakemake(workdir, "-n", "--forcerun", "training_figure")
        refused = snakemake(workdir, "--forcerun", "training_figure", check=False)
    finally:
        store_lock.release(trajectory)
    holder = f"trajectory.zarr (host {socket.gethostname()}, PID {os.getpid()}, since "
    warned, refusal = dry.stdout + dry.stderr, refused.stdout + refused.stderr
    assert "Warning: 1 store(s) are being written by jobs that are still running" in warned
    assert holder in warned and "training_figure        1" in warned
    assert refused.returncode != 0 and "WorkflowError" in refusal and holder in refusal
    assert "wait for those jobs to finish (squeue --me) or cancel them (scancel" in refusal
    assert figure.stat().st_mtime_ns == drawn
    assert planned_jobs(workdir) == {}


def test_second_run_has_nothing_to_do(workdir):
    assert planned_jobs(workdir) == {}


def test_execution_keys_rerun_nothing(workdir):
    """The device and the checkpoint flush interval change how jobs run, not their results."""
    edit_config(workdir, lambda c: c.update(device="auto", checkpoint_flush_seconds=0))
    assert planned_jobs(workdir) == {}


def test_figure_key_reruns_only_that_figure(workdir):
    edit_config(workdir, lambda c: c.setdefault("figures", {}).update(training_log_scale=False))
    assert planned_jobs(workdir) == {"all": 1, "training_figure": 1}


def test_curvature_key_reruns_only_that_measurement(workdir):
    snakemake(workdir)
    edit_config(workdir, lambda c: c["curvature"]["trace"].update(matvecs=33))
    assert planned_jobs(workdir) == {"all": 1, "curvature_trace": 2, "curvature_figure": 1}


def test_training_key_reruns_training_and_downstream_only(workdir):
    edit_config(workdir, lambda c: c["runs"]["tiny_mlp"]["optimizer"].update(lr=0.05))
    jobs = planned_jobs(workdir)
    assert jobs.get("train") == 2 and jobs.get("training_figure") == 1
    assert jobs.get("curvature_eigen") == 2 and jobs.get("curvature_spectrum") == 2
    assert "dataset" not in jobs


def test_adding_a_seed_trains_only_that_seed(workdir):
    edit_config(workdir, lambda c: c["runs"]["tiny_mlp"].update(seeds=[0, 1, 2]))
    snakemake(
        workdir, "results/tiny_mlp/seed0/trajectory.zarr", "results/tiny_mlp/seed1/trajectory.zarr"
    )
    jobs = planned_jobs(workdir)
    assert jobs.get("train") == 1
