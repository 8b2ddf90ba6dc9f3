"""One writer per store: a job holds an exclusive lock on the store it writes.

The lock is a file beside the store, ``<store>.lock``, holding one JSON object that names its
holder (host, PID, SLURM job id, start time), locked with ``flock`` for as long as the job
runs. The kernel drops a flock when its process dies, so a SIGKILLed job leaves a stale file
and no live lock; the next writer takes the file over. A second writer while the first lives
fails at once with ``StoreBusyError`` naming the holder, before it touches the store.

flock may not reach across hosts (it does on NFSv4 and on Lustre mounted with ``flock``, not
with ``localflock``), so a granted flock proves nothing about a holder on another host. That
holder counts as live while its SLURM job is queued or running (``squeue``); a holder on
another host without a SLURM job id cannot be checked and is refused, saying how to remove the
file. The workflow scans for live locks before it starts jobs (``live_locks``): Snakemake
deletes a job's old output before running it, so a duplicate submitted after a Ctrl-C must be
stopped there, not inside the job.

Stdlib only: the workflow imports it while it parses.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from hessvalley.errors import StoreBusyError

LOCK_SUFFIX = ".lock"
STORE_SUFFIXES = (".zarr", ".zarr.partial", ".partial")  # folders the scan does not enter
# SLURM states in which a job's processes are gone for good; any other state counts as live.
FINISHED_SLURM_STATES = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
     "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"}
)  # fmt: skip
BUSY_RETRIES = 5  # a probe (the workflow's scan) holds a shared flock for microseconds
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a store's lock."""

    host: str
    pid: int
    slurm_job_id: str | None
    since: str  # ISO 8601, UTC

    @classmethod
    def this_process(cls) -> Holder:
        return cls(
            socket.gethostname(),
            os.getpid(),
            os.environ.get("SLURM_JOB_ID") or None,
            datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        """The holder a lock file names; None for an empty or unreadable file (its writer died
        before writing it: nobody holds it)."""
        try:
            fields = json.loads(text)
            return cls(
                str(fields["host"]),
                int(fields["pid"]),
                str(fields["slurm_job_id"]) if fields.get("slurm_job_id") else None,
                str(fields["since"]),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"host {self.host}, PID {self.pid}{job}, since {self.since}"


@dataclass(frozen=True)
class Liveness:
    """Whether a lock's holder may still be writing, and what a user can do about it."""

    live: bool
    advice: str = ""


def lock_path(store: str | os.PathLike) -> Path:
    store = Path(store)
    return store.with_name(store.name + LOCK_SUFFIX)


def slurm_state(job_id: str) -> str | None:
    """The job's SLURM state, "" when SLURM no longer knows it, None when squeue cannot say."""
    try:
        result = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return "" if "invalid job id" in result.stderr.lower() else None
    states = result.stdout.split()
    return states[0] if states else ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def liveness(holder: Holder | None, lock: Path, flock_granted: bool | None) -> Liveness:
    """Is ``holder`` alive? ``flock_granted``: True when this process got the flock (so no
    holder on this host lives), False when refused (the holder lives), None when the file
    system has no flock."""
    if flock_granted is False:
        return Liveness(True, _wait_advice(holder))
    if holder is None:
        return Liveness(False)
    if holder.host == socket.gethostname():
        alive = not flock_granted and _pid_alive(holder.pid)
        return Liveness(alive, _wait_advice(holder))
    if holder.slurm_job_id:
        if holder.slurm_job_id == os.environ.get("SLURM_JOB_ID"):
            return Liveness(False)  # this very job, requeued onto another node
        state = slurm_state(holder.slurm_job_id)
        if state is None:
            return Liveness(
                True,
                f"squeue cannot tell whether SLURM job {holder.slurm_job_id} still runs; "
                f"if it does not (squeue --me), remove {lock} and re-run",
            )
        return Liveness(state not in FINISHED_SLURM_STATES and state != "", _wait_advice(holder))
    return Liveness(
        True,
        f"a lock taken on another host cannot be checked from here: if PID {holder.pid} on "
        f"{holder.host} is gone, remove {lock} and re-run",
    )


def _wait_advice(holder: Holder | None) -> str:
    if holder is not None and holder.slurm_job_id:
        return f"wait for it (squeue --me) or cancel it (scancel {holder.slurm_job_id})"
    return "wait for it to finish or stop that process"


def busy_error(store: str | os.PathLike, holder: Holder | None, advice: str) -> StoreBusyError:
    who = holder.describe() if holder else "a job that has not yet recorded itself"
    return StoreBusyError(
        f"store {store} is being written by another job ({who}): {advice}; never run two "
        "writers on one store"
    )


class StoreLock:
    """This process's lock on one store (see ``acquire``)."""

    def __init__(self, store: Path, fd: int) -> None:
        self.store = store
        self.path = lock_path(store)
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file (if it is still ours), then drop the flock."""
        if self.fd < 0:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        finally:
            os.close(self.fd)
            self.fd = -1


_HELD: dict[str, StoreLock] = {}


def _key(store: str | os.PathLike) -> str:
    return os.path.abspath(store)


def holds(store: str | os.PathLike) -> bool:
    return _key(store) in _HELD


def acquire(store: str | os.PathLike) -> StoreLock:
    """Lock ``store`` for writing by this process, or raise ``StoreBusyError`` naming the job
    that holds it. Re-entrant within a process (one job, one writer); a stale lock file (its
    holder died) is taken over."""
    key = _key(store)
    if key in _HELD:
        return _HELD[key]
    store = Path(store)
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(BUSY_RETRIES + 1):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        granted = _try_flock(fd, fcntl.LOCK_EX)
        if granted and not _same_file(fd, path):
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
            continue
        holder = Holder.parse(_read(fd))
        verdict = liveness(holder, path, granted)
        if verdict.live:
            os.close(fd)
            if granted is False and attempt < BUSY_RETRIES:
                time.sleep(0.02)
                continue
            raise busy_error(store, holder, verdict.advice)
        _write(fd, Holder.this_process())
        _HELD[key] = StoreLock(store, fd)
        return _HELD[key]
    raise busy_error(store, None, "its lock file keeps changing")


def release(store: str | os.PathLike) -> None:
    """Drop this process's lock on ``store`` (nothing if it holds none)."""
    lock = _HELD.pop(_key(store), None)
    if lock is not None:
        lock.release()


@atexit.register
def release_all() -> None:
    """A job that stops on an error leaves no lock file behind (SIGKILL leaves a stale one)."""
    for key in list(_HELD):
        _HELD.pop(key).release()


def _try_flock(fd: int, operation: int) -> bool | None:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in UNSUPPORTED:
            return None
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _write(fd: int, holder: Holder) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(asdict(holder)) + "\n").encode())
    os.fsync(fd)


# -- the workflow's scan ------------------------------------------------------------------------


def lock_files(roots: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Every ``*.lock`` under ``roots``, without entering stores (they hold many files)."""
    for root in roots:
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = [d for d in subfolders if not d.endswith(STORE_SUFFIXES)]
            for name in files:
                if name.endswith(LOCK_SUFFIX):
                    yield Path(folder, name)


def probe(lock: Path) -> tuple[Holder | None, Liveness]:
    """The holder a lock file names and whether it lives, without taking the lock over."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None, Liveness(False)
    try:
        granted = _try_flock(fd, fcntl.LOCK_SH)
        holder = Holder.parse(_read(fd))
    finally:
        os.close(fd)  # drops a granted shared flock at once
    return holder, liveness(holder, lock, granted)


def live_locks(roots: Iterable[str | os.PathLike]) -> list[tuple[Path, Holder | None, str]]:
    """(store, holder, advice) for every store under ``roots`` that a live job is writing."""
    found = []
    for lock in lock_files(roots):
        holder, verdict = probe(lock)
        if verdict.live:
            found.append((lock.with_name(lock.name[: -len(LOCK_SUFFIX)]), holder, verdict.advice))
    return found


def queued_jobs(workdir: str | os.PathLike) -> list[str]:
    """This user's SLURM jobs, queued or running, whose working directory is ``workdir``: jobs
    of an earlier Snakemake of this workflow. A queued job holds no lock yet, and Snakemake
    deletes a job's output before running it, so a duplicate that starts after the original
    published would destroy its store. Empty when there is no SLURM to ask."""
    try:
        result = subprocess.run(
            ["squeue", "--me", "-h", "-o", "%i|%T|%Z|%k"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    here = os.path.realpath(workdir)
    jobs = []
    for line in result.stdout.splitlines():
        job_id, state, folder, comment = [*line.split("|", 3), "", "", ""][:4]
        if os.path.realpath(folder) == here and state not in FINISHED_SLURM_STATES:
            jobs.append(f"{job_id} ({state.lower()}, {comment or 'no comment'})")
    return jobs


def queue_refusal(jobs: list[str]) -> str:
    """The workflow's message when jobs of an earlier Snakemake of it are still queued."""
    return (
        f"{len(jobs)} SLURM job(s) of this workflow directory are still queued or running, "
        f"probably those of an earlier snakemake that was stopped: {'; '.join(jobs)}. Starting "
        "now would submit duplicates of them: wait for them (squeue --me) or cancel them "
        "(scancel <job id>), then run snakemake again"
    )


def refusal(found: list[tuple[Path, Holder | None, str]]) -> str:
    """The workflow's message when jobs of an earlier Snakemake still write stores."""
    stores = "; ".join(
        f"{store} ({holder.describe() if holder else 'holder unknown'}: {advice})"
        for store, holder, advice in found
    )
    return (
        f"{len(found)} store(s) are being written by jobs that are still running, probably "
        f"those of an earlier snakemake that was stopped: {stores}. Starting now would run a "
        "second writer on them: wait for those jobs to finish (squeue --me) or cancel them "
        "(scancel <job id>), then run snakemake again"
    )
