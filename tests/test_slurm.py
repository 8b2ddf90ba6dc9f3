"""The SLURM profile on a real single-node SLURM (tests/slurm/setup_slurm.sh, fake GPUs as GRES).

Each rule must become its own sbatch job, GPU rules with a GPU request and CPU rules without one,
and the tiny workflow run through SLURM must produce the same arrays, bit for bit, as a local run.
Snakemake is bounded by `timeout -s KILL`: with a broken status path it loops and ignores SIGTERM.
Skips with the reason when no SLURM is up (not root, no apt-get, setup not run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
SMOKE_SNAKEFILE = REPO / "tests" / "slurm" / "smoke" / "Snakefile"
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"
MARKER_DIR = Path(os.environ.get("HESSVALLEY_SLURM_MARKER_DIR", "/tmp/hessvalley-slurm"))
# Attributes that must agree between the runs; others (versions, paths) describe the host.
COMPARED_ATTRS = ("config", "config_hash", "seed", "complete", "n_complete", "n_checkpoints")
# Test-only overrides of the profile: poll sacct soon after submitting, do not wait for NFS.
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "2", "--latency-wait", "5"]

pytestmark = pytest.mark.slurm


def slurm_unavailable() -> str | None:
    """Why the test SLURM cannot be used, or None when it is up with accounting."""
    skipped = MARKER_DIR / "skipped"
    if skipped.exists():
        return f"tests/slurm/setup_slurm.sh skipped: {skipped.read_text().strip()}"
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return "no SLURM client (run tests/slurm/setup_slurm.sh as root to start a test SLURM)"
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if states.returncode != 0 or not {"idle", "mix", "alloc"} & set(states.stdout.split()):
        reason = (states.stderr or states.stdout).strip() or "no node up"
        return f"SLURM not up ({reason}); run tests/slurm/setup_slurm.sh"
    accounting = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True)
    if accounting.returncode != 0:
        return f"SLURM accounting (sacct) not answering: {accounting.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def require_slurm() -> None:
    reason = slurm_unavailable()
    if reason is not None:
        pytest.skip(reason)


def snakemake(args: list[str], workdir: Path, timeout_s: int) -> subprocess.Popen:
    """Start Snakemake in `workdir`, killed (SIGKILL) after `timeout_s`; output to run.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = ["timeout", "-s", "KILL", str(timeout_s), sys.executable, "-m", "snakemake"]
    command += [*args, "--directory", str(workdir)]
    with open(workdir / "run.log", "w") as log:
        return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, workdir: Path) -> str:
    """Wait for a run started by `snakemake`; fail with its log's tail unless it succeeded."""
    returncode = process.wait()
    output = (workdir / "run.log").read_text()
    if returncode != 0:
        for slurm_log in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")):
            output += f"\n--- {slurm_log}\n{slurm_log.read_text()[-2000:]}"
        killed = " (killed by timeout)" if returncode in (124, 137, -9) else ""
        pytest.fail(f"snakemake exited {returncode}{killed}:\n{output[-6000:]}")
    return output


def slurm_jobs(output: str) -> dict[str, dict[str, str]]:
    """sacct records of the jobs this run submitted, keyed by SLURM job id."""
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", output)
    assert job_ids, "no job was submitted with sbatch"
    fields = ["JobID", "JobName", "State", "ExitCode", "Comment", "ReqTRES", "AllocTRES"]
    records = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = {}
    for line in records.splitlines():
        record = dict(zip(fields, line.split("|"), strict=True))
        jobs[record["JobID"]] = record
    assert sorted(jobs) == sorted(job_ids), f"sacct lacks some of the jobs {job_ids}: {records}"
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    assert {job["JobName"] for job in jobs.values()} == {run_id}
    return jobs


def sbatch_calls(output: str) -> dict[str, list[str]]:
    """The plugin's sbatch command lines (debug output, --verbose) by rule, without --wrap."""
    calls: dict[str, list[str]] = {}
    for line in re.findall(r"sbatch call: (sbatch .*?) --wrap=", output):
        rule = re.search(r"--comment rule_(.+?)(_wildcards_\S*)? ", line).group(1)
        calls.setdefault(rule, []).append(line)
    return calls


def rule_of(job: dict[str, str]) -> str:
    """The rule a job ran, from the plugin's sbatch --comment rule_<name>[_wildcards_...]."""
    return re.match(r"rule_(.+?)(_wildcards_.*)?$", job["Comment"]).group(1)


def tres(job: dict[str, str], field: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job[field].split(",") if item)


def test_smoke_workflow_gpu_request_and_retry(tmp_path: Path) -> None:
    workdir = tmp_path / "smoke"
    args = ["-s", str(SMOKE_SNAKEFILE), "--profile", str(SLURM_PROFILE), *FAST_POLLING, "--verbose"]
    output = finish(snakemake(args, workdir, timeout_s=150), workdir)

    jobs = sorted(slurm_jobs(output).values(), key=lambda job: int(job["JobID"]))
    by_rule = {
        rule: [job for job in jobs if rule_of(job) == rule] for rule in ("gpu_job", "cpu_job")
    }
    assert len(jobs) == 3, jobs
    [gpu_job], [cpu_first, cpu_retry] = by_rule["gpu_job"], by_rule["cpu_job"]
    assert (gpu_job["State"], gpu_job["ExitCode"]) == ("COMPLETED", "0:0")
    assert (cpu_first["State"], cpu_retry["State"]) == ("FAILED", "COMPLETED")
    assert tres(gpu_job, "ReqTRES")["gres/gpu"] == "1"
    assert tres(gpu_job, "AllocTRES")["gres/gpu"] == "1"
    assert "gres/gpu" not in tres(cpu_retry, "ReqTRES")

    calls = sbatch_calls(output)
    assert "--gpus=1" in calls["gpu_job"][0].split()
    assert not any(arg.startswith(("--gpus", "--gres")) for arg in calls["cpu_job"][0].split())
    # retry: runtime "60 * attempt" and mem_mb "4000 * attempt" are re-evaluated per attempt
    limits = [re.search(r" -t (\d+) --mem (\d+) ", call).groups() for call in calls["cpu_job"]]
    assert limits == [("60", "4000"), ("120", "8000")]
    assert "--requeue" in calls["gpu_job"][0].split()

    # each job ran inside its own allocation; only the GPU job sees a (fake) GPU
    gpu_line = (workdir / "gpu.txt").read_text().split()
    cpu_line = (workdir / "cpu.txt").read_text().split()
    assert gpu_line == ["gpu_job", f"SLURM_JOB_ID={gpu_job['JobID']}", "CUDA_VISIBLE_DEVICES=0"]
    assert cpu_line == [
        "cpu_job",
        f"SLURM_JOB_ID={cpu_retry['JobID']}",
        "CUDA_VISIBLE_DEVICES=unset",
    ]


def zarr_stores(workdir: Path) -> list[Path]:
    return sorted(
        path.relative_to(workdir)
        for top in ("results", "resources")
        for path in (workdir / top).rglob("*.zarr")
        if ".partial" not in path.name
    )


def assert_same_store(local: Path, cluster: Path) -> None:
    """Same arrays (names, dims, dtypes, values bit for bit) and same deterministic attrs."""
    a, b = zarr.open_group(local, mode="r"), zarr.open_group(cluster, mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys()), local
    for name in a.array_keys():
        x, y = a[name], b[name]
        assert x.metadata.dimension_names == y.metadata.dimension_names, f"{local}/{name}"
        x, y = np.asarray(x[...]), np.asarray(y[...])
        assert x.dtype == y.dtype and x.shape == y.shape, f"{local}/{name}"
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{local}/{name} differs"
    for key in COMPARED_ATTRS:
        assert a.attrs.get(key) == b.attrs.get(key), f"{local} attrs[{key!r}] differs"


def test_tiny_workflow_through_slurm_equals_local_run(tmp_path: Path) -> None:
    # gpu=1: GPU rules request a GPU (the fake GRES) while still computing on the CPU
    targets = ["results/tiny_mlp/seed0/trajectory.zarr", "results/tiny_mlp/seed1/trajectory.zarr"]
    args = [*targets, "--configfile", str(TINY_CONFIG), "--config", "gpu=1"]
    cluster_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_args = [*args, "--profile", str(SLURM_PROFILE), *FAST_POLLING, "--verbose"]
    cluster = snakemake(slurm_args, cluster_dir, timeout_s=150)
    # the local reference runs meanwhile on one core: the SLURM run mostly waits on status polls
    local = snakemake([*args, "--cores", "1"], local_dir, timeout_s=150)
    try:
        finish(local, local_dir)
    except BaseException:
        cluster.kill()  # jobs it submitted end on their own; the node stays usable
        raise
    output = finish(cluster, cluster_dir)

    jobs = slurm_jobs(output)
    assert sorted(rule_of(job) for job in jobs.values()) == ["dataset", "train", "train"]
    for job in jobs.values():
        assert (job["State"], job["ExitCode"]) == ("COMPLETED", "0:0"), job
        requested = tres(job, "ReqTRES").get("gres/gpu")
        assert requested == ("1" if rule_of(job) == "train" else None), job
    calls = sbatch_calls(output)
    assert all("--gpus=1" in call.split() for call in calls["train"])
    assert "--gpus" not in calls["dataset"][0] and "--ntasks=1" in calls["dataset"][0].split()

    stores = zarr_stores(local_dir)
    assert [str(path) for path in stores] == [
        "resources/data/digits.zarr",
        "results/tiny_mlp/seed0/trajectory.zarr",
        "results/tiny_mlp/seed1/trajectory.zarr",
    ]
    assert zarr_stores(cluster_dir) == stores
    for store in stores:
        assert_same_store(local_dir / store, cluster_dir / store)
