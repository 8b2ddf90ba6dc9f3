"""One writer per store: a second writer fails at once naming the holder, stale locks are taken
over, holders on other hosts are judged by their SLURM job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hessvalley import integrity, store, store_lock
from hessvalley.errors import EXIT_PERMANENT, StoreBusyError

from .conftest import run_spec

HOLD = (
    "import sys\n"
    "from hessvalley import store_lock\n"
    "store_lock.acquire(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path/held.zarr`` until the test ends."""
    path = tmp_path / "held.zarr"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "locked\n"
    yield path, process.pid
    process.stdin.close()
    assert process.wait(timeout=30) == 0


def write_lock_file(store_path: Path, **fields) -> Path:
    record = {"host": socket.gethostname(), "pid": 1, "slurm_job_id": None, "since": "earlier"}
    path = store_lock.lock_path(store_path)
    path.write_text(json.dumps({**record, **fields}))
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_store_held_by_another_process_is_refused_and_left_untouched(holder):
    path, pid = holder
    partial = store.partial_path(path)
    partial.mkdir()
    (partial / "work").write_text("the holder's")
    with pytest.raises(StoreBusyError) as caught:
        store.write_store(path, {"x": (("i",), np.arange(3))}, {})
    text = str(caught.value)
    assert text.startswith(f"store {path} is being written by another job (host ")
    assert f"{socket.gethostname()}, PID {pid}, since " in text
    assert "wait for it to finish or stop that process" in text and "\n" not in text
    with pytest.raises(StoreBusyError):
        store.open_partial(path, "hash")
    assert (partial / "work").read_text() == "the holder's" and not path.exists()
    assert json.loads(store_lock.lock_path(path).read_text())["pid"] == pid


def test_stale_lock_of_a_dead_process_is_taken_over_and_removed_after_publication(tmp_path):
    path = tmp_path / "s.zarr"
    lock = write_lock_file(path, pid=dead_pid())
    store.write_store(path, {"x": (("i",), np.arange(3))}, {})
    assert not lock.exists() and integrity.damage(path) == []
    write_lock_file(path, pid=dead_pid())
    store.open_partial(path, "hash")
    assert json.loads(lock.read_text())["pid"] == os.getpid()  # re-entrant in one process
    store_lock.release(path)
    assert not lock.exists()


@pytest.fixture
def squeue(tmp_path, monkeypatch):
    """A fake ``squeue`` on PATH answering with a given state, or failing like SLURM does for
    a job it has forgotten."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)

    def answer(state: str | None) -> None:
        script = bin_dir / "squeue"
        if state is None:
            script.unlink(missing_ok=True)
            return
        body = (
            'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1'
            if state == "forgotten"
            else f'[ "$3" = 777 ] && echo {state}'
        )
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)

    return answer


@pytest.mark.parametrize(
    ("state", "live"),
    [("RUNNING", True), ("PENDING", True), ("COMPLETED", False), ("forgotten", False)],
)
def test_holder_on_another_host_lives_while_its_slurm_job_does(tmp_path, squeue, state, live):
    squeue(state)
    path = tmp_path / "s.zarr"
    write_lock_file(path, host="node7", pid=4242, slurm_job_id="777")
    if live:
        with pytest.raises(StoreBusyError) as caught:
            store_lock.acquire(path)
        text = str(caught.value)
        assert "(host node7, PID 4242, SLURM job 777, since earlier): wait for it (squeue " in text
        assert "--me) or cancel it (scancel 777); never run two writers on one store" in text
    else:
        store_lock.acquire(path)
        store_lock.release(path)


def test_holder_on_another_host_that_cannot_be_checked_is_refused(tmp_path, squeue, monkeypatch):
    path = tmp_path / "s.zarr"
    lock = write_lock_file(path, host="node7", pid=4242)
    with pytest.raises(StoreBusyError, match=f"if PID 4242 on node7 is gone, remove {lock} and"):
        store_lock.acquire(path)
    squeue(None)  # no squeue to ask
    write_lock_file(path, host="node7", pid=4242, slurm_job_id="777")
    with pytest.raises(StoreBusyError, match=f"squeue cannot tell .* remove {lock} and re-run"):
        store_lock.acquire(path)
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # this job, requeued onto another node
    store_lock.acquire(path)
    store_lock.release(path)


def test_scan_finds_live_locks_only(tmp_path, holder):
    held, pid = holder
    write_lock_file(tmp_path / "stale.zarr", pid=dead_pid())
    inside = tmp_path / "other.zarr"
    inside.mkdir()
    write_lock_file(inside / "x", host="node7")  # would count as live, but stores are not entered
    found = store_lock.live_locks([tmp_path, tmp_path / "missing"])
    assert [(store, h.pid) for store, h, _ in found] == [(held, pid)]
    assert f"{held} (host {socket.gethostname()}, PID {pid}, since " in store_lock.refusal(found)


def train_arguments(spec: dict, digits_spec: dict, digits_store: str, output: Path, log: Path):
    kwargs = {"spec": spec, "dataset_spec": digits_spec, "setting": "r", "seed": 0,
              "data": digits_store, "output": str(output)}  # fmt: skip
    return ["run", "train", "--kwargs", json.dumps(kwargs), "--threads", "1", "--log", str(log)]


# `hessvalley run train ...` that waits for a go after its imports (seconds on a busy machine),
# so that two jobs import side by side and reach the store's lock in a chosen order.
PRIMED = (
    "import sys\n"
    "import hessvalley.train\n"
    "from hessvalley.cli import main\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def go(process: subprocess.Popen) -> None:
    process.stdin.write("go\n")
    process.stdin.flush()


def test_second_writer_fails_at_once_and_the_first_publishes(tmp_path, digits_store, digits_spec):
    """A second training job for a store that a first one is writing exits at once with status
    3 and one line naming the first, which trains on and publishes an intact store."""
    spec = run_spec(epochs=10, optimizer={"lr": 0.05, "momentum": 0.9, "batch_size": 4})
    output = tmp_path / "trajectory.zarr"
    arguments = [
        train_arguments(spec, digits_spec, digits_store, output, tmp_path / f"job{i}.log")
        for i in (1, 2)
    ]
    first, second = (
        subprocess.Popen(
            [sys.executable, "-c", PRIMED, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in arguments
    )
    assert first.stdout.readline() == second.stdout.readline() == "ready\n"
    go(first)
    lock = store_lock.lock_path(output)
    deadline = time.time() + 120
    while first.poll() is None and time.time() < deadline:
        holder = store_lock.Holder.parse(lock.read_text()) if lock.exists() else None
        if holder is not None and holder.pid == first.pid:
            break
        time.sleep(0.02)
    go(second)
    error = second.communicate(timeout=120)[1]
    assert first.poll() is None, "the first writer must still be running"
    assert second.returncode == EXIT_PERMANENT, error
    assert error.startswith(f"hessvalley train: store {output} is being written by another job")
    assert f"(host {socket.gethostname()}, PID {first.pid}, since " in error
    assert error.count("\n") == 1

    assert first.wait(timeout=300) == 0, first.stderr.read()
    group = store.open_store(output)
    assert group.attrs["complete"] and group["step"][...].tolist() == list(range(0, 641, 64))
    assert integrity.damage(output) == []
    assert not store.partial_path(output).exists() and not lock.exists()


def test_queued_jobs_of_this_workflow_directory_are_found(tmp_path, monkeypatch):
    """A job still pending in SLURM holds no lock yet: the workflow finds it by its working
    directory (squeue --me), ignoring other directories and finished jobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    here, elsewhere = tmp_path / "work", tmp_path / "other"
    here.mkdir()
    lines = [
        f"101|PENDING|{here}|rule_train_wildcards_tiny_mlp_0",
        f"102|RUNNING|{elsewhere}|rule_train_wildcards_x_0",
        f"103|COMPLETED|{here}|rule_dataset_wildcards_digits",
        f"104|RUNNING|{here}|",
    ]
    script = bin_dir / "squeue"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(lines) + "\nEOF\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    jobs = store_lock.queued_jobs(here)
    assert jobs == ["101 (pending, rule_train_wildcards_tiny_mlp_0)", "104 (running, no comment)"]
    text = store_lock.queue_refusal(jobs)
    assert text.startswith("2 SLURM job(s) of this workflow directory are still queued")
    assert "cancel them (scancel <job id>)" in text
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert store_lock.queued_jobs(here) == []  # no SLURM to ask
