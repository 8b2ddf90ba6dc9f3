"""The trajectory store: how a training run's checkpoints are laid out, written and read back.

Per checkpoint the store holds the flattened float32 parameters, the SGD momentum buffer and
the BatchNorm buffers (``TrainState``), the step, epoch and full-data metrics; per iteration
the mini-batch loss (and optionally the cosine of consecutive gradients). ``n_complete`` counts
the checkpoints that are entirely on disk, so a partial store left by a killed run resumes
from its last complete checkpoint; ``complete`` and ``n_checkpoints`` mark a finished run.
Checkpoints are written in batches on a background thread (``TrajectoryWriter``) so that
storing a replayable trajectory costs training little.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr

from hessvalley import store

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
DEFAULT_FLUSH_SECONDS = 30.0
CHUNK_BYTES = 2**20  # target size of a chunk of per-checkpoint and per-iteration arrays
EAGER_STATE_BYTES = 2**20  # states this large go to the writer thread at each checkpoint
STATE_ARRAYS = ("params", "momentum", "buffers")
MAX_PENDING_WRITES = 3


@dataclass
class TrainState:
    """Everything that determines the future of a run: params, momentum, buffers, step."""

    params: torch.Tensor  # (P,) float32
    momentum: torch.Tensor | None  # (P,) float32; None before the first step or without momentum
    buffers: torch.Tensor  # (Q,) float64 (BatchNorm running stats and counters)
    step: int


# -- reading ------------------------------------------------------------------------------------


def open_trajectory(trajectory: str | os.PathLike | zarr.Group) -> zarr.Group:
    if isinstance(trajectory, zarr.Group):
        return trajectory
    return store.open_store(trajectory)


def read_state(trajectory: zarr.Group, k: int) -> TrainState:
    """The state stored at checkpoint ``k`` (negative counts from the end); also reads the
    completed checkpoints of a partial store."""
    n = int(trajectory.attrs.get("n_checkpoints") or trajectory.attrs["n_complete"])
    k = k % n if k < 0 else k
    if not 0 <= k < n:
        raise IndexError(f"checkpoint {k} out of range (the trajectory has {n})")
    momentum = None
    step = int(trajectory["step"][k])
    if "momentum" in trajectory and step > 0:
        momentum = torch.from_numpy(np.asarray(trajectory["momentum"][k]))
    buffers = (
        torch.from_numpy(np.asarray(trajectory["buffers"][k]))
        if "buffers" in trajectory
        else torch.zeros(0, dtype=torch.float64)
    )
    return TrainState(
        torch.from_numpy(np.asarray(trajectory["params"][k])), momentum, buffers, step
    )


# -- creating -----------------------------------------------------------------------------------


def create_trajectory(
    group: zarr.Group,
    *,
    n_checkpoints: int,
    n_steps: int,
    n_params: int,
    n_buffers: int,
    momentum: bool,
    grad_cosine: bool,
    attrs: Mapping[str, Any],
) -> dict[str, zarr.Array]:
    """Preallocate the arrays of a run of ``n_checkpoints`` checkpoints and ``n_steps``
    iterations in an empty (partial) store and write its attrs, with no checkpoint complete.

    Returns the arrays, to hand to the ``TrajectoryWriter`` (opening them again costs time)."""
    n = n_checkpoints
    arrays = {}

    def create(name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype: str, **kw):
        arrays[name] = store.create(group, name, dims, shape=shape, dtype=dtype, **kw)

    def per_checkpoint(name: str, dim: str, width: int, dtype: str) -> None:
        """Rows of a small net share a chunk file: fewer files to write per batch."""
        rows = max(1, min(n, CHUNK_BYTES // (width * np.dtype(dtype).itemsize)))
        chunks = (rows, width)
        create(name, ("checkpoint", dim), (n, width), dtype, chunks=chunks, compress=False)

    per_checkpoint("params", "param", n_params, "float32")
    if momentum:
        per_checkpoint("momentum", "param", n_params, "float32")
    if n_buffers:
        per_checkpoint("buffers", "buffer", n_buffers, "float64")
    create("step", ("checkpoint",), (n,), "int64", fill_value=-1)
    for name in ("epoch", *METRICS):
        create(name, ("checkpoint",), (n,), "float64", fill_value=math.nan)
    per_iteration = {"chunks": (min(n_steps, CHUNK_BYTES // 4),), "fill_value": math.nan}
    create("batch_loss", ("iteration",), (n_steps,), "float32", **per_iteration)
    if grad_cosine:
        create("grad_cosine", ("iteration",), (n_steps,), "float32", **per_iteration)
        create("last_grad", ("param",), (n_params,), "float32")
    group.update_attributes(store.jsonable({**attrs, "n_complete": 0, "complete": False}))
    return arrays


# -- writing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def checkpoint_writer(
    group: zarr.Group,
    steps_per_epoch: int,
    flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    arrays: Mapping[str, zarr.Array] | None = None,
) -> Iterator[TrajectoryWriter]:
    """A ``TrajectoryWriter`` whose queued checkpoints reach the disk however the body ends:
    normally, by an error, by Ctrl-C or by SIGTERM (scancel, preemption, which SLURM sends
    before SIGKILL), which exits with status 143 once they are written."""
    writer = TrajectoryWriter(group, steps_per_epoch, flush_seconds, arrays=arrays)
    try:
        with _exit_on_sigterm():
            yield writer
    except BaseException:
        pending = writer.n_buffered
        writer.close()
        if pending:
            kept = group.attrs["n_complete"]
            print(f"wrote {pending} pending checkpoint(s) before stopping; {kept} are on disk")
        raise
    writer.close()


@contextlib.contextmanager
def _exit_on_sigterm():
    """Turn SIGTERM into SystemExit(143) so that ``finally`` blocks (the checkpoint writer's
    flush) run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class _Checkpoint:
    """One checkpoint waiting in the writer's buffer."""

    k: int
    step: int
    state: TrainState | None  # None when the writer thread has it already
    metrics: dict[str, float]
    iterations: Mapping[str, tuple[slice, np.ndarray]]
    last_grad: np.ndarray | None


class TrajectoryWriter:
    """Writes checkpoints into a (partial) trajectory store, in batches, on a background thread.

    Every Zarr write costs a fixed ~1.5 ms of Python, and a writer thread doing that while a
    small model trains slows the training thread more than that (they share the interpreter).
    So checkpoints wait in memory and are written together, one write per array per batch,
    once ``flush_seconds`` have passed since the last batch (or ``max_bytes`` are buffered),
    and at the end. A state (params, momentum, buffers) of at least ``eager_bytes`` goes to
    the writer thread at each checkpoint instead: copying megabytes to disk mostly runs
    outside the interpreter, beside training, and the end of the run has less left to write.

    ``n_complete`` is bumped only after all of a batch's arrays are on disk, so a kill at any
    moment leaves a store that resumes from its last complete checkpoint: a SIGKILL loses at
    most ``flush_seconds`` of training, SIGTERM and Ctrl-C nothing (``checkpoint_writer``
    writes the buffer before exiting). ``flush_seconds=0`` completes each checkpoint at once.
    """

    def __init__(
        self,
        group: zarr.Group,
        steps_per_epoch: int,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        max_bytes: int = 512 * 2**20,
        arrays: Mapping[str, zarr.Array] | None = None,
        eager_bytes: int | None = None,
    ) -> None:
        self.group = group
        if arrays is None:
            arrays = {name: group[name] for name in group.array_keys()}
        self.arrays = dict(arrays)
        self.steps_per_epoch = steps_per_epoch
        self.flush_seconds = float(flush_seconds)
        self.max_bytes = int(max_bytes)
        states = [self.arrays[name] for name in STATE_ARRAYS if name in self.arrays]
        row_bytes = sum(array.nbytes // array.shape[0] for array in states)
        self.eager = row_bytes >= (EAGER_STATE_BYTES if eager_bytes is None else eager_bytes)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: list[Future] = []
        self._buffer: list[_Checkpoint] = []
        self._buffered_bytes = 0
        self._last_submit = time.monotonic()
        self._failed: BaseException | None = None

    def write(
        self,
        k: int,
        state: TrainState,
        metrics: Mapping[str, float],
        iterations: Mapping[str, tuple[slice, np.ndarray]] | None = None,
        last_grad: np.ndarray | None = None,
    ) -> None:
        """Queue checkpoint ``k``: its state, metrics and per-iteration arrays since the last.

        Checkpoints must come in order (``k`` one more than the previous one)."""
        self._collect_finished()
        if self._buffer and k != self._buffer[-1].k + 1:
            raise ValueError(f"checkpoint {k} queued after {self._buffer[-1].k}")
        step = state.step
        if self.eager:
            self._enqueue(self._write_states, k, [state])
            state = None
        else:
            tensors = (state.params, state.momentum, state.buffers)
            self._buffered_bytes += sum(t.nbytes for t in tensors if t is not None)
        record = _Checkpoint(k, step, state, dict(metrics), dict(iterations or {}), last_grad)
        self._buffer.append(record)
        due = time.monotonic() - self._last_submit >= self.flush_seconds
        if due or self._buffered_bytes >= self.max_bytes:
            self._submit()

    @property
    def n_buffered(self) -> int:
        """Checkpoints queued but not yet handed to the writer thread."""
        return len(self._buffer)

    def _submit(self) -> None:
        if self._buffer:
            self._enqueue(self._write_batch, self._buffer)
            self._buffer, self._buffered_bytes = [], 0
        self._last_submit = time.monotonic()

    def _enqueue(self, write, *args) -> None:
        while len(self._pending) >= MAX_PENDING_WRITES:  # the disk falls behind: bound memory
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._guarded, write, *args))

    def _guarded(self, write, *args) -> None:
        """Run one queued write, none after a failed one: a batch must not mark checkpoints
        complete whose state rows were never written."""
        if self._failed is not None:
            raise RuntimeError("skipped: an earlier checkpoint write failed") from self._failed
        try:
            write(*args)
        except BaseException as err:
            self._failed = err
            raise

    def _write_states(self, first: int, states: list[TrainState]) -> None:
        """Rows ``first, first + 1, ...`` of params, momentum and buffers."""
        arrays = self.arrays
        rows = slice(first, first + len(states))
        arrays["params"][rows] = np.stack([state.params.numpy() for state in states])
        if "momentum" in arrays:
            zeros = np.zeros(states[0].params.shape, "f4")
            arrays["momentum"][rows] = np.stack(
                [zeros if s.momentum is None else s.momentum.numpy() for s in states]
            )
        if "buffers" in arrays:
            arrays["buffers"][rows] = np.stack([state.buffers.numpy() for state in states])

    def _write_batch(self, batch: list[_Checkpoint]) -> None:
        arrays = self.arrays
        for name in dict.fromkeys(n for record in batch for n in record.iterations):
            parts = [record.iterations[name] for record in batch if name in record.iterations]
            for (before, _), (after, _) in itertools.pairwise(parts):
                if before.stop != after.start:
                    raise ValueError(f"{name}: iterations {before} and {after} are not adjacent")
            where = slice(parts[0][0].start, parts[-1][0].stop)
            arrays[name][where] = np.concatenate([values for _, values in parts])
        last_grads = [record.last_grad for record in batch if record.last_grad is not None]
        if last_grads:
            arrays["last_grad"][...] = last_grads[-1]
        if not self.eager:
            self._write_states(batch[0].k, [record.state for record in batch])
        rows = slice(batch[0].k, batch[-1].k + 1)
        step = np.array([record.step for record in batch], dtype=np.int64)
        arrays["step"][rows] = step
        arrays["epoch"][rows] = step / self.steps_per_epoch
        for name in METRICS:
            arrays[name][rows] = np.array([record.metrics[name] for record in batch])
        self.group.attrs["n_complete"] = batch[-1].k + 1

    def _collect_finished(self) -> None:
        running = []
        for future in self._pending:
            if future.done():
                future.result()  # re-raise a failed write now rather than at the end
            else:
                running.append(future)
        self._pending = running

    def flush(self) -> None:
        """Write everything queued and wait for it; re-raise the first write error."""
        self._submit()
        for future in self._pending:
            future.result()
        self._pending = []

    def finish(self, n_checkpoints: int, last_step: int) -> None:
        """Write everything queued, trim the preallocated arrays when the run stopped early
        and mark the store complete."""
        self.flush()
        for array in self.arrays.values():
            dims = array.metadata.dimension_names or ()
            if dims and dims[0] == "checkpoint" and array.shape[0] != n_checkpoints:
                array.resize((n_checkpoints, *array.shape[1:]))
            elif dims and dims[0] == "iteration" and array.shape[0] != last_step:
                array.resize((last_step, *array.shape[1:]))
        if "last_grad" in self.group:
            del self.group["last_grad"]
        self.group.update_attributes(
            {"n_checkpoints": n_checkpoints, "n_steps": last_step, "complete": True}
        )

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
