"""The SLURM profile on a real single-node SLURM (tests/slurm/setup_slurm.sh, fake GPUs as GRES).

Each rule must become its own sbatch job, GPU rules with a GPU request and CPU rules without one,
and the tiny workflow run through SLURM must produce the same arrays, bit for bit, as a local run.
A training job killed by SLURM (scancel, or a requeue as on preemption) must resume from its last
complete checkpoint and end with the same arrays as an uninterrupted run.
Snakemake is bounded by `timeout -s KILL`: with a broken status path it loops and ignores SIGTERM.
Skips with the reason when no SLURM is up (not root, no apt-get, setup not run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from .snakemake_runner import REPO, planned_jobs, snakemake, start

SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"
SMOKE_SNAKEFILE = REPO / "tests" / "slurm" / "smoke" / "Snakefile"
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"
MARKER_DIR = Path(os.environ.get("HESSVALLEY_SLURM_MARKER_DIR", "/tmp/hessvalley-slurm"))
# Attributes that must agree between the runs; others (versions, paths) describe the host.
COMPARED_ATTRS = ("config", "config_hash", "seed", "complete", "n_complete", "n_checkpoints")
# Test-only overrides of the profile: poll sacct soon after submitting, do not wait for NFS.
FAST_POLLING = [
    "--slurm-init-seconds-before-status-checks=2",
    "--seconds-between-status-checks=2",
    "--latency-wait=5",
]

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


def finish(process: subprocess.Popen, workdir: Path, log: str = "run.log") -> str:
    """Wait for a run started by `snakemake`; fail with its log's tail unless it succeeded."""
    returncode = process.wait()
    output = (workdir / log).read_text()
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


def test_smoke_workflow_gpu_request_retry_and_permanent_failure(tmp_path: Path) -> None:
    """GPU and CPU jobs get what they ask for, a retry gets more time; a job failing for good
    asks for memory capped at the node's (by the project's resources rule), so sbatch accepts
    every attempt and the stage's one-line reason (exit status 3) ends Snakemake's output and
    each attempt's SLURM log."""
    workdir = tmp_path / "smoke"
    node_mb = node_memory_mb()
    args = ["--profile", str(SLURM_PROFILE), *FAST_POLLING, "--verbose", "--retries=1"]
    args += ["--config", f"node_mb={node_mb}"]
    run = start(workdir, *args, snakefile=SMOKE_SNAKEFILE, timeout_s=200)
    assert run.wait() not in (0, 124, 137, -9)  # permanent_failure fails, the others finish
    output = (workdir / "run.log").read_text()

    jobs = sorted(slurm_jobs(output).values(), key=lambda job: int(job["JobID"]))
    by_rule = {
        rule: [job for job in jobs if rule_of(job) == rule]
        for rule in ("gpu_job", "cpu_job", "permanent_failure")
    }
    assert len(jobs) == 5, jobs
    [gpu_job], [cpu_first, cpu_retry] = by_rule["gpu_job"], by_rule["cpu_job"]
    assert (gpu_job["State"], gpu_job["ExitCode"]) == ("COMPLETED", "0:0")
    assert (cpu_first["State"], cpu_retry["State"]) == ("FAILED", "COMPLETED")
    assert tres(gpu_job, "ReqTRES")["gres/gpu"] == "1"
    assert tres(gpu_job, "AllocTRES")["gres/gpu"] == "1"
    assert "gres/gpu" not in tres(cpu_retry, "ReqTRES")

    calls = sbatch_calls(output)
    assert "--gpus=1" in calls["gpu_job"][0].split()
    assert not any(arg.startswith(("--gpus", "--gres")) for arg in calls["cpu_job"][0].split())
    # retry: the rule's runtime (60 * attempt) and mem_mb (4000 * attempt) follow the attempt
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

    # the permanent failure: 10 x the node's memory asked, capped at it, accepted twice
    reason = "hessvalley train: device 'cuda' requested but torch sees no CUDA device"
    assert "sbatch: error" not in output
    failures = by_rule["permanent_failure"]
    assert [job["State"] for job in failures] == ["FAILED", "FAILED"], failures
    requests = [
        re.search(r" -t (\d+) --mem (\d+) ", call).groups() for call in calls["permanent_failure"]
    ]
    assert requests == [("10", str(node_mb)), ("15", str(node_mb))]
    last = output.rsplit(f"submitted with SLURM jobid {failures[-1]['JobID']}", 1)[1]
    assert reason in last, last[-3000:]  # the rule's log, printed by show-failed-logs
    for job in failures:
        [log] = (workdir / ".snakemake/slurm_logs/rule_permanent_failure").rglob(
            f"{job['JobID']}.log"
        )
        assert reason in log.read_text() and "non-zero exit status 3" in log.read_text()


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
    cluster = start(cluster_dir, *slurm_args, timeout_s=150)
    # the local reference runs meanwhile on one core: the SLURM run mostly waits on status polls
    local = start(local_dir, *args, "--cores", "1", timeout_s=150)
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


def node_memory_mb() -> int:
    """RealMemory of the test SLURM's (single) node: sbatch refuses --mem beyond it."""
    node = subprocess.run(
        ["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=True
    ).stdout
    return int(re.search(r"RealMemory=(\d+)", node).group(1))


# -- preemption: a training job killed by SLURM resumes from its last complete checkpoint ------

KILLED_TARGET = "results/tiny_mlp/seed0/trajectory.zarr"
# tiny_mlp, one seed, 6400 steps (about 3 s) with 17 checkpoints: long enough to kill mid-run.
LONG_RUN = {"epochs": 200, "checkpoint_every": 400, "seeds": [0]}
LONG_BATCH_SIZE = 8
RESUMED = re.compile(r"resuming tiny_mlp seed 0 from checkpoint (\d+) \(step (\d+)\)")


@dataclass
class LongRun:
    """The lengthened tiny config and its uninterrupted local run (the reference)."""

    config: Path
    n_checkpoints: int  # of the whole run
    local_dir: Path
    local: subprocess.Popen

    def reference(self) -> Path:
        finish(self.local, self.local_dir)
        return self.local_dir / KILLED_TARGET

    def cluster_args(self) -> list[str]:
        """The user's command through the profile (which sets --rerun-incomplete)."""
        return [KILLED_TARGET, "--configfile", str(self.config), "--profile", str(SLURM_PROFILE)]

    def cluster_workdir(self, workdir: Path) -> Path:
        """A workdir holding the local run's dataset store (copied with its mtimes), so that only
        the train job goes through SLURM; the tiny-workflow test covers the dataset job."""
        dataset = Path("resources/data/digits.zarr")
        shutil.copytree(self.local_dir / dataset, workdir / dataset)
        return workdir


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LongRun]:
    """Builds the dataset locally, then trains the reference in the background: the SLURM runs
    meanwhile mostly wait on status polls."""
    root = tmp_path_factory.mktemp("preemption")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["gpu"] = 1  # the train job requests a (fake) GPU
    config["checkpoint_flush_seconds"] = 0  # every checkpoint on disk at once: kill mid-run
    config["runs"]["tiny_mlp"].update(LONG_RUN)
    config["runs"]["tiny_mlp"]["optimizer"]["batch_size"] = LONG_BATCH_SIZE
    config_path = root / "long.yaml"
    config_path.write_text(yaml.safe_dump(config))
    steps = LONG_RUN["epochs"] * config["datasets"]["digits"]["n_train"] // LONG_BATCH_SIZE
    n_checkpoints = steps // LONG_RUN["checkpoint_every"] + 1
    local_dir = root / "local"
    args = ["--configfile", str(config_path), "--cores", "1"]
    finish(start(local_dir, "resources/data/digits.zarr", *args, timeout_s=60), local_dir)
    local = start(local_dir, KILLED_TARGET, *args, timeout_s=150, log="train.log")
    yield LongRun(config_path, n_checkpoints, local_dir, local)
    stop(local, local_dir)


def stop(process: subprocess.Popen, workdir: Path) -> None:
    """Kill a run started by `snakemake` (timeout leads its own process group) and scancel the
    SLURM jobs it submitted, so that a failed test leaves nothing running."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for log in workdir.glob("*.log"):
        for run_id in re.findall(r"SLURM run ID: (\S+)", log.read_text()):
            subprocess.run(["scancel", "--name", run_id], capture_output=True)


def n_complete(store: Path) -> int:
    """Complete checkpoints of a (partial) trajectory store; 0 before its metadata is written."""
    try:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0
    return int(attrs.get("n_complete", 0))


def wait_for_checkpoints(process: subprocess.Popen, workdir: Path, n: int, log: str) -> None:
    """Wait until the job's partial store holds `n` complete checkpoints. Meanwhile no
    trajectory store exists: the job builds it under `.partial`."""
    partial, output = workdir / f"{KILLED_TARGET}.partial", workdir / KILLED_TARGET
    deadline = time.monotonic() + 60
    while n_complete(partial) < n:
        assert not output.exists(), "the trajectory store appeared before the job finished"
        if process.poll() is not None:
            finish(process, workdir, log)  # fails with the log's tail unless it succeeded
            pytest.fail(f"Snakemake finished before {partial} held {n} checkpoints")
        if time.monotonic() > deadline:
            tail = (workdir / log).read_text()[-3000:]
            pytest.fail(f"{partial} did not get {n} checkpoints within 60 s:\n{tail}")
        time.sleep(0.05)


def watch_until_exit(process: subprocess.Popen, workdir: Path) -> None:
    """While Snakemake runs: whenever the trajectory store exists, it is complete and its
    partial store is gone (the job publishes it by one rename at the end)."""
    partial, output = workdir / f"{KILLED_TARGET}.partial", workdir / KILLED_TARGET
    while process.poll() is None:
        if output.exists():  # checked before the partial: the rename is atomic
            assert not partial.exists(), "trajectory store and partial store side by side"
            assert json.loads((output / "zarr.json").read_text())["attributes"]["complete"]
        time.sleep(0.1)


def running_train_job(workdir: Path, log: str) -> str:
    """SLURM id of the train job of the run logging to `log` (squeue by run name and comment)."""
    run_id = re.search(r"SLURM run ID: (\S+)", (workdir / log).read_text()).group(1)
    queue = subprocess.run(
        ["squeue", "-h", "--name", run_id, "-o", "%i|%k|%T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = [line.split("|") for line in queue.splitlines()]
    train = [job for job, comment, state in jobs if comment.startswith("rule_train_")]
    assert len(train) == 1, queue
    return train[0]


def wait_for_queue_state(job_id: str, state: str) -> None:
    """Wait until squeue gives `state` for the job (--states=all: also an ended one; a killed
    job stays COMPLETING until its processes are gone)."""
    deadline = time.monotonic() + 60
    while True:
        queue = subprocess.run(
            ["squeue", "-h", "--states=all", "-j", job_id, "-o", "%T"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if queue == state:
            return
        assert time.monotonic() < deadline, f"job {job_id} is {queue!r}, not {state}"
        time.sleep(0.2)


def resumed_from(workdir: Path) -> int:
    """The checkpoint the (last) train attempt resumed from, by its log line."""
    log = (workdir / "logs" / "train" / "tiny_mlp" / "seed0.log").read_text()
    match = RESUMED.search(log)
    assert match, f"the train job did not resume:\n{log}"
    checkpoint, step = int(match.group(1)), int(match.group(2))
    assert step == checkpoint * LONG_RUN["checkpoint_every"], match.group(0)
    return checkpoint


def test_killed_training_job_resumes_from_its_last_checkpoint(
    long_run: LongRun, tmp_path: Path
) -> None:
    """scancel: the user stops Snakemake and runs the same command, the new job resumes. That job
    is then requeued, as SLURM does on preemption, and resumes again within the same run."""
    workdir = long_run.cluster_workdir(tmp_path / "killed")
    args = [*long_run.cluster_args(), *FAST_POLLING]
    partial = workdir / f"{KILLED_TARGET}.partial"
    first = start(workdir, *args, timeout_s=120)
    try:
        wait_for_checkpoints(first, workdir, 2, "run.log")
        cancelled_id = running_train_job(workdir, "run.log")
        subprocess.run(["scancel", cancelled_id], check=True)
        wait_for_queue_state(cancelled_id, "CANCELLED")
        # The plugin (2.8.0) reads sacct's "CANCELLED by <uid>" as still running and would wait
        # forever: the user stops Snakemake (Ctrl-C) and runs the same command again.
        first.send_signal(signal.SIGINT)  # timeout passes it on to Snakemake
        assert first.wait(timeout=60) not in (0, 124, 137, -9)
    except BaseException:
        stop(first, workdir)
        raise
    first_output = (workdir / "run.log").read_text()
    cancelled_at = n_complete(partial)
    assert 2 <= cancelled_at < long_run.n_checkpoints, f"not killed mid-run: {cancelled_at}"
    assert not (workdir / KILLED_TARGET).exists()

    # --rerun-incomplete (set by the profile) plans the train job: a partial store is not output
    dry_output = snakemake(workdir, *args, "--dry-run", timeout=60).output
    assert planned_jobs(dry_output) == {"train": 1}, dry_output[-3000:]
    assert f"reason: Missing output files: {KILLED_TARGET}" in dry_output

    second = start(workdir, *args, timeout_s=120, log="rerun.log")
    try:
        wait_for_checkpoints(second, workdir, cancelled_at + 2, "rerun.log")
        rerun_resumed_from = resumed_from(workdir)  # this attempt's log, before SLURM requeues it
        requeued_id = running_train_job(workdir, "rerun.log")
        # What SLURM does to a preempted (or node-failed) job submitted with --requeue
        # (profile: slurm-requeue): kill it and queue it again under the same id.
        subprocess.run(["scontrol", "requeue", requeued_id], check=True)
        wait_for_queue_state(requeued_id, "PENDING")
        requeued_at = n_complete(partial)
        # SLURM holds a requeued job for about two minutes (BeginTime): start it now
        subprocess.run(["scontrol", "update", f"JobId={requeued_id}", "StartTime=now"], check=True)
        watch_until_exit(second, workdir)
    except BaseException:
        stop(second, workdir)
        raise
    second_output = finish(second, workdir, log="rerun.log")

    assert rerun_resumed_from == cancelled_at - 1 >= 1
    assert requeued_at < long_run.n_checkpoints, f"not killed mid-run: {requeued_at}"
    assert resumed_from(workdir) == requeued_at - 1 > rerun_resumed_from
    [cancelled] = slurm_jobs(first_output).values()
    assert cancelled["JobID"] == cancelled_id and rule_of(cancelled) == "train", cancelled
    assert cancelled["State"].split()[0] == "CANCELLED", cancelled  # "CANCELLED by <uid>"
    [requeued] = slurm_jobs(second_output).values()  # submitted once, waited through the requeue
    assert requeued["JobID"] == requeued_id and rule_of(requeued) == "train", requeued
    assert (requeued["State"], requeued["ExitCode"]) == ("COMPLETED", "0:0"), requeued
    history = subprocess.run(
        ["sacct", "-n", "-P", "-X", "--duplicates", "-j", requeued_id, "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert history == ["REQUEUED", "COMPLETED"], history
    assert not partial.exists()
    assert_same_store(long_run.reference(), workdir / KILLED_TARGET)
