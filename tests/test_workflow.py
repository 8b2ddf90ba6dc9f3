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
import torch
import xarray as xr
import yaml

from hessvalley import stages, store_lock
from hessvalley.verify import verify_main

from .readme import snakemake_commands
from .snakemake_runner import REPO, Run, planned_jobs, snakemake

pytestmark = pytest.mark.workflow


def run(workdir: Path, *args: str) -> Run:
    """Snakemake on the workdir's config.yaml, two cores."""
    return snakemake(workdir, *args, configfile=workdir / "config.yaml", cores=2)


def planned(workdir: Path) -> dict[str, int]:
    """Rule -> job count of what a dry run would execute (empty when nothing is stale)."""
    return planned_jobs(run(workdir, "-n").output)


def edit_config(workdir: Path, change) -> None:
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    shutil.copy(REPO / "tests/configs/tiny.yaml", workdir / "config.yaml")
    run(workdir)
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
    result = snakemake(copy, trace, check=False, configfile=copy / "config.yaml", cores=2)
    assert result.returncode != 0
    assert (
        "hessvalley curvature_trace: store results/tiny_mlp/seed0/trajectory.zarr is damaged: "
        "array 'params' has 0 of 1 chunks (missing c/0/0); delete it (rm -r "
        "results/tiny_mlp/seed0/trajectory.zarr) and re-run snakemake"
    ) in result.output
    assert not (copy / trace).exists()


def test_live_store_lock_refuses_a_run_and_warns_a_dry_run(workdir):
    """Jobs of an earlier Snakemake still writing a store (here this process holds its lock):
    a dry run warns; a run refuses before any job runs or any output is deleted."""
    trajectory = workdir / "results/tiny_mlp/seed0/trajectory.zarr"
    figure = workdir / "results/figures/tiny_mlp_training.pdf"
    drawn = figure.stat().st_mtime_ns
    store_lock.acquire(trajectory)
    try:
        dry = run(workdir, "-n", "--forcerun", "training_figure")
        refused = snakemake(
            workdir,
            "--forcerun",
            "training_figure",
            check=False,
            configfile=workdir / "config.yaml",
            cores=2,
        )
    finally:
        store_lock.release(trajectory)
    holder = f"trajectory.zarr (host {socket.gethostname()}, PID {os.getpid()}, since "
    warned, refusal = dry.output, refused.output
    assert "Warning: 1 store(s) are being written by jobs that are still running" in warned
    assert holder in warned and "training_figure        1" in warned
    assert refused.returncode != 0 and "WorkflowError" in refusal and holder in refusal
    assert "wait for those jobs to finish (squeue --me) or cancel them (scancel" in refusal
    assert figure.stat().st_mtime_ns == drawn
    assert planned(workdir) == {}


def test_second_run_has_nothing_to_do(workdir):
    assert planned(workdir) == {}


def test_printed_job_command_runs_when_pasted_into_a_shell(workdir):
    """The command Snakemake prints (-p) recreates the job's output in a plain shell: no
    variable of the workflow's environment (HESSVALLEY_*, PYTHONPATH) is needed."""
    figure = workdir / "results/figures/tiny_mlp_training.pdf"
    output = run(workdir, figure.relative_to(workdir).as_posix(), "-n", "-p", "--force").output
    [command] = re.findall(r"^Shell command: (hessvalley run training_figure .*)$", output, re.M)
    figure.unlink()
    figure.with_suffix(".png").unlink()
    shell = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(Path.home())}
    pasted = subprocess.run(
        ["bash", "-c", command], cwd=workdir, env=shell, capture_output=True, text=True
    )
    assert pasted.returncode == 0, pasted.stderr[-3000:]
    assert figure.stat().st_size > 1000 and figure.with_suffix(".png").stat().st_size > 1000


def test_execution_keys_rerun_nothing(workdir):
    """The device and the checkpoint flush interval change how jobs run, not their results."""
    edit_config(workdir, lambda c: c.update(device="auto", checkpoint_flush_seconds=0))
    assert planned(workdir) == {}


def test_figure_key_reruns_only_that_figure(workdir):
    edit_config(workdir, lambda c: c.setdefault("figures", {}).update(training_log_scale=False))
    assert planned(workdir) == {"all": 1, "training_figure": 1}


def test_curvature_key_reruns_only_that_measurement(workdir):
    run(workdir)
    edit_config(workdir, lambda c: c["curvature"]["trace"].update(matvecs=33))
    assert planned(workdir) == {"all": 1, "curvature_trace": 2, "curvature_figure": 1}


def test_training_key_reruns_training_and_downstream_only(workdir):
    edit_config(workdir, lambda c: c["runs"]["tiny_mlp"]["optimizer"].update(lr=0.05))
    jobs = planned(workdir)
    assert jobs.get("train") == 2 and jobs.get("training_figure") == 1
    assert jobs.get("curvature_eigen") == 2 and jobs.get("curvature_spectrum") == 2
    assert "dataset" not in jobs


def test_adding_a_seed_trains_only_that_seed(workdir):
    edit_config(workdir, lambda c: c["runs"]["tiny_mlp"].update(seeds=[0, 1, 2]))
    run(workdir, "results/tiny_mlp/seed0/trajectory.zarr", "results/tiny_mlp/seed1/trajectory.zarr")
    jobs = planned(workdir)
    assert jobs.get("train") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_failure_a_retry_cannot_fix_says_why(workdir, tmp_path):
    """A job that cannot succeed (CUDA asked for, none present) exits 3 and its one-line reason
    is in Snakemake's output, not only in the job's log."""
    dataset = Path("resources/data/digits.zarr")
    shutil.copytree(workdir / dataset, tmp_path / dataset)  # with mtimes: only train runs
    shutil.copy(workdir / "config.yaml", tmp_path / "config.yaml")
    target = "results/tiny_mlp/seed0/trajectory.zarr"
    result = snakemake(
        tmp_path,
        target,
        "--config",
        "device=cuda",
        configfile=tmp_path / "config.yaml",
        cores=1,
        check=False,
    )
    assert result.returncode != 0
    reason = "hessvalley train: device 'cuda' requested but torch sees no CUDA device: run on"
    assert reason in result.output, result.output[-3000:]
    assert "exit status 3" in result.output, result.output[-3000:]
    assert not (tmp_path / target).exists()


# -- which jobs a config asks for ------------------------------------------------------------

TINY = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())


def dry_run(workdir: Path, config: dict, *args: str) -> str:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return snakemake(workdir, *args, "-n", configfile=path).output


def test_absent_sections_add_no_jobs(tmp_path):
    config = {key: value for key, value in TINY.items() if key not in ("toy", "curvature")}
    jobs = planned_jobs(dry_run(tmp_path, config))
    assert jobs == {"dataset": 1, "train": 2, "training_figure": 1, "all": 1}


def test_each_given_section_adds_its_jobs(tmp_path):
    """One toy sub-section makes one toy figure (and the claims table of its claim); a
    curvature section without `runs` measures every run."""
    config = {**TINY, "toy": {"fig7": {"steps": 100, "average_from": 50}}, "curvature": {}}
    jobs = planned_jobs(dry_run(tmp_path, config))
    assert jobs == {
        "dataset": 1,
        "train": 2,
        "training_figure": 1,
        "toy_fig7": 1,
        "wei2020_fig7": 1,
        "curvature_trace": 2,
        "curvature_eigen": 2,
        "curvature_figure": 1,
        "claims": 1,
        "all": 1,
    }


def test_a_figure_of_an_absent_section_is_still_a_target(tmp_path):
    config = {key: value for key, value in TINY.items() if key != "toy"}
    jobs = planned_jobs(dry_run(tmp_path, config, "results/figures/wei2020_fig2b.pdf"))
    assert jobs == {"toy_fig2b": 1, "wei2020_fig2b": 1}


# The Sagun sections over tiny_mlp (small batch), a large-batch run of as many steps (24) and
# its continuation, with the curvature each figure reads.
SAGUN_RUNS = {
    "tiny_lb": {
        **TINY["runs"]["tiny_mlp"],
        "optimizer": {"lr": 0.1, "momentum": 0.9, "batch_size": 64},
    },
    "tiny_sw": {**TINY["runs"]["tiny_mlp"], "init_from": "tiny_lb", "epochs": 1},
}
SAGUN_RUNS["tiny_lb"]["epochs"] = 6
SAGUN_SECTIONS = {
    "curvature": {
        **TINY["curvature"],
        "runs": {
            "tiny_mlp": {"measurements": ["trace", "eigen", "spectrum"], "every": [0, -1]},
            "tiny_lb": {"measurements": ["eigen"], "every": "last"},
        },
    },
    "outliers": {"runs": ["tiny_mlp"]},
    "width": {"runs": ["tiny_mlp"]},
    "lines": {"lb_sw": {"from": {"run": "tiny_lb"}, "to": {"run": "tiny_sw"}}},
    "batch": {"small": "tiny_mlp", "large": "tiny_lb", "switched": "tiny_sw", "line": "lb_sw"},
}


# Xing et al. 2018 §3 (Figs 1-4, Table 1) over tiny_mlp's first epoch.
XING_BARRIERS = {
    "runs": ["tiny_mlp"],
    "table_epochs": [1],
    "panel_epochs": [1],
    "every_epoch_to": 1,
}
# Xing et al. 2018 Figs 5-7: tiny_mlp's last checkpoint; tiny_mlp and tiny_lb (24 steps each at
# lr 0.1) logging the gradient cosine.
XING_BATCH = {
    "minibatch_alignment": {"runs": ["tiny_mlp"], "batch_sizes": [8, "full"], "n_batches": 2},
    "gradient_cosine": {"runs": ["tiny_mlp", "tiny_lb"]},
}
XING_RUNS = {
    name: {**run, "log_grad_cosine": True}
    for name, run in {"tiny_mlp": TINY["runs"]["tiny_mlp"], **SAGUN_RUNS}.items()
    if name != "tiny_sw"
}


def test_every_rule_asks_for_its_own_resources(tmp_path):
    """runtime and mem_mb of each rule's jobs are the config's resources.<rule>."""
    asked = {rule: [100 + i, 1000 + i] for i, rule in enumerate(sorted(stages.STAGES))}
    config = {
        **TINY,
        "projection": {
            "runs": {"tiny_mlp": None},
            "figures": {"fig1": ["tiny_mlp"], "fig3": ["tiny_mlp"], "fig4": ["tiny_mlp"]},
        },
        "equilibrium": {"runs": ["tiny_mlp"]},
        "alignment": {"runs": ["tiny_mlp"]},
        "fdr": {"runs": ["tiny_mlp"]},
        **SAGUN_SECTIONS,
        "barriers": XING_BARRIERS,
        **XING_BATCH,
        "runs": {**TINY["runs"], **SAGUN_RUNS, **XING_RUNS},
        "resources": {
            **{rule: {"runtime": t, "mem_mb": m} for rule, (t, m) in asked.items()},
            "limits": {"runtime": 200, "mem_mb": 2000},
        },
    }
    output = dry_run(tmp_path, config)
    jobs = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", output, re.M)
    got = {
        rule: [int(re.search(rf"\b{key}=(\d+)", block)[1]) for key in ("runtime", "mem_mb")]
        for rule, block in jobs
        if rule != "all"
    }
    assert set(got) >= set(stages.STAGES) - {"claims"}, sorted(got)
    assert got == {rule: asked[rule] for rule in got}


def test_readme_report_command_works(workdir):
    """README's report command, as written, after the tiny workflow (which makes no figure that
    states a claim): one self-contained HTML file with the run's figures."""
    [args] = [command for command in snakemake_commands() if "--report" in command]
    run(workdir, *args)
    report = workdir / "results/report.html"
    assert report.stat().st_size > 100_000 and "tiny_mlp_training.png" in report.read_text()
