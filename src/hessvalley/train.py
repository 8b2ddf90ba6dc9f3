"""Training trajectories that can be replayed exactly and resumed after a kill.

A trajectory store holds, per checkpoint, the flattened float32 parameters, the SGD momentum
buffer and the BatchNorm buffers, so any later step is reproduced bit for bit by ``replay``:
the data order of epoch e comes from a generator seeded by (seed, e), mini-batches are index
slices of the device-resident dataset, and nothing else is random. The projection's recursive
bisection (Wei & Schwab §2.1.1) relies on this.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr

from hessvalley import store
from hessvalley.data import DeviceDataset, load_dataset
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.flat import buffer_layout, flatten, param_layout, unflatten_into
from hessvalley.losses import build_loss
from hessvalley.models import build_model
from hessvalley.progress import progress
from hessvalley.schedule import checkpoint_steps, steps_per_epoch

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
DEFAULT_FLUSH_SECONDS = 30.0
CHUNK_BYTES = 2**20  # target size of a chunk of per-checkpoint and per-iteration arrays
EAGER_STATE_BYTES = 2**20  # states this large go to the writer thread at each checkpoint
STATE_ARRAYS = ("params", "momentum", "buffers")
MAX_PENDING_WRITES = 3


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s data order: independent streams per (seed, epoch)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=generator)


@dataclass
class TrainState:
    """Everything that determines the future of a run: params, momentum, buffers, step."""

    params: torch.Tensor  # (P,) float32
    momentum: torch.Tensor | None  # (P,) float32; None before the first step or without momentum
    buffers: torch.Tensor  # (Q,) float64 (BatchNorm running stats and counters)
    step: int


class Trainer:
    """One model + SGD optimizer + device-resident data, stepping by global step index."""

    def __init__(
        self,
        spec: Mapping[str, Any],
        data: DeviceDataset,
        seed: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.spec = spec
        self.data = data
        self.seed = int(seed)
        self.device = resolve_device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = build_model(spec["model"], data.input_shape, data.n_classes)
        self.model = model.to(self.device)
        self.params = list(self.model.parameters())
        self.buffers = list(self.model.buffers())
        self.loss_fn = build_loss(spec["loss"])
        opt = spec["optimizer"]
        self.optimizer = torch.optim.SGD(
            self.params,
            lr=opt["lr"],
            momentum=opt.get("momentum", 0.0),
            dampening=opt.get("dampening", 0.0),
            weight_decay=opt.get("weight_decay", 0.0),
            nesterov=opt.get("nesterov", False),
        )
        self.full_batch = opt["batch_size"] == "full"
        self.batch_size = data.n_train if self.full_batch else int(opt["batch_size"])
        self.steps_per_epoch = steps_per_epoch(data.n_train, opt["batch_size"])
        self.chunk = int(spec.get("eval_batch_size", 2048))
        self.bn_eval = self.full_batch and spec.get("batch_norm_mode", "train") == "eval"
        self._order: tuple[int, torch.Tensor] | None = None

    # -- data order ---------------------------------------------------------------------------
    def batch_indices(self, step: int) -> torch.Tensor | None:
        """Training-sample indices of global step ``step`` (None = the whole training set)."""
        if self.full_batch:
            return None
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            order = epoch_order(self.seed, epoch, self.data.n_train).to(self.device)
            self._order = (epoch, order)
        start = position * self.batch_size
        return self._order[1][start : start + self.batch_size]

    def _chunks(self, indices: torch.Tensor | None, n: int):
        for start in range(0, n, self.chunk):
            if indices is None:
                yield slice(start, min(start + self.chunk, n))
            else:
                yield indices[start : start + self.chunk]

    # -- one step -----------------------------------------------------------------------------
    def gradient(self, step: int) -> torch.Tensor:
        """Accumulate the mini-batch gradient of ``step`` into ``.grad``; return the loss."""
        indices = self.batch_indices(step)
        n = self.batch_size
        if self.model.training == self.bn_eval:  # walking the module tree costs ~5 % per step
            self.model.train(not self.bn_eval)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for part in self._chunks(indices, n):
            x, y = self.data.x_train[part], self.data.y_train[part]
            loss = self.loss_fn(self.model(x), y)
            if y.shape[0] != n:
                loss = loss * (y.shape[0] / n)
            loss.backward()
            total += loss.detach()
        return total

    def train_step(self, step: int) -> torch.Tensor:
        loss = self.gradient(step)
        self.optimizer.step()
        return loss

    def flat_grad(self) -> torch.Tensor:
        return flatten((p.grad for p in self.params), torch.float32)

    # -- state --------------------------------------------------------------------------------
    def state(self, step: int) -> TrainState:
        momentum = None
        if self.optimizer.defaults["momentum"] > 0:
            buffers = [self.optimizer.state.get(p, {}).get("momentum_buffer") for p in self.params]
            if all(b is not None for b in buffers):
                momentum = flatten(buffers, torch.float32).cpu()
        return TrainState(
            flatten(self.params, torch.float32).cpu(),
            momentum,
            flatten(self.buffers, torch.float64).cpu(),
            int(step),
        )

    def load_state(self, state: TrainState) -> None:
        unflatten_into(state.params.to(self.device), self.params)
        unflatten_into(state.buffers.to(self.device), self.buffers)
        self.optimizer.state.clear()
        if state.momentum is not None and self.optimizer.defaults["momentum"] > 0:
            momentum = state.momentum.to(self.device)
            offset = 0
            for p in self.params:
                n = p.numel()
                self.optimizer.state[p]["momentum_buffer"] = (
                    momentum[offset : offset + n].reshape(p.shape).clone()
                )
                offset += n
        self._order = None

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Full training and validation loss/accuracy in eval mode (chunked)."""
        was_training = self.model.training
        self.model.eval()
        out = {}
        for split, x, y in (
            ("train", self.data.x_train, self.data.y_train),
            ("val", self.data.x_val, self.data.y_val),
        ):
            n = y.shape[0]
            loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.int64, device=self.device)
            for part in self._chunks(None, n):
                logits = self.model(x[part])
                loss_sum += self.loss_fn(logits, y[part]).double() * y[part].shape[0]
                correct += (logits.argmax(-1) == y[part]).sum()
            out[f"{split}_loss"] = (loss_sum / max(n, 1)).item()
            out[f"{split}_acc"] = (correct.double() / max(n, 1)).item()
        self.model.train(was_training)
        return out


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


def open_trajectory(trajectory: str | os.PathLike | zarr.Group) -> zarr.Group:
    if isinstance(trajectory, zarr.Group):
        return trajectory
    return store.open_store(trajectory)


def trainer_for(
    trajectory: str | os.PathLike | zarr.Group,
    device: str | torch.device = "cpu",
    data: DeviceDataset | None = None,
    spec_overrides: Mapping[str, Any] | None = None,
) -> Trainer:
    """A Trainer set up like the one that wrote ``trajectory`` (optionally with overrides,
    e.g. ``{"optimizer": {..., "batch_size": "full"}}`` for noise-free GD)."""
    group = open_trajectory(trajectory)
    spec = dict(group.attrs["run"])
    spec.update(spec_overrides or {})
    if data is None:
        data = load_dataset(group.attrs["data"], device, spec["train_on"])
    return Trainer(spec, data, int(group.attrs["seed"]), device)


def replay(
    trajectory: str | os.PathLike | zarr.Group,
    checkpoint: int,
    n_steps: int,
    device: str | torch.device = "cpu",
    data: DeviceDataset | None = None,
) -> TrainState:
    """The exact state ``n_steps`` SGD steps after checkpoint ``checkpoint`` of a trajectory."""
    group = open_trajectory(trajectory)
    trainer = trainer_for(group, device, data)
    state = read_state(group, checkpoint)
    trainer.load_state(state)
    for step in range(state.step, state.step + n_steps):
        trainer.train_step(step)
    return trainer.state(state.step + n_steps)


def _divergence(setting: str, seed: int, step: int, value: float) -> HessvalleyError:
    return HessvalleyError(
        f"run {setting!r} seed {seed} diverged: mini-batch loss {value} at step {step}; "
        "checkpoints up to the previous one are kept. Lower runs."
        f"{setting}.optimizer.lr or check the data."
    )


def train_run(
    spec: Mapping[str, Any],
    dataset_spec: Mapping[str, Any],
    setting: str,
    seed: int,
    data: str,
    output: str,
    init: str | None = None,
    device: str = "cpu",
    checkpoint_flush_seconds: float = DEFAULT_FLUSH_SECONDS,
) -> None:
    """Train one seed of run ``setting`` and write its trajectory store to ``output``.

    Resumes from ``<output>.partial`` when an earlier attempt of the same config was killed.
    Checkpoints reach the partial store in batches, at most ``checkpoint_flush_seconds``
    apart (see ``TrajectoryWriter``); SIGTERM (scancel, preemption) and Ctrl-C write the
    pending ones before the process exits.
    """
    device = resolve_device(device)
    dataset = load_dataset(data, device, spec["train_on"])
    trainer = Trainer(spec, dataset, seed, device)
    spe = trainer.steps_per_epoch
    total = spec["epochs"] * spe
    every = spec["checkpoint_every"] or spe
    steps = checkpoint_steps(total, every)
    log_cosine = bool(spec.get("log_grad_cosine", False))
    init_hash = None if init is None else open_trajectory(init).attrs["config_hash"]
    identity = {"spec": spec, "dataset": dataset_spec, "seed": seed, "init": init_hash}
    group, resumed = store.open_partial(output, store.config_hash(identity))
    n_params = sum(p.numel() for p in trainer.params)
    n_buffers = sum(b.numel() for b in trainer.buffers)
    has_momentum = trainer.optimizer.defaults["momentum"] > 0

    done = int(group.attrs.get("n_complete", 0)) if resumed else 0
    created: dict[str, zarr.Array] | None = None  # the writer opens a resumed store's arrays
    if done:
        state = read_state(group, done - 1)
        trainer.load_state(state)
        print(f"resuming {setting} seed {seed} from checkpoint {done - 1} (step {state.step})")
    else:
        if init is not None:
            parent = read_state(open_trajectory(init), -1)
            trainer.load_state(TrainState(parent.params, None, parent.buffers, 0))
        n = len(steps)
        created = {}

        def create(name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype: str, **kw):
            created[name] = store.create(group, name, dims, shape=shape, dtype=dtype, **kw)

        def per_checkpoint(name: str, dim: str, width: int, dtype: str) -> None:
            """Rows of a small net share a chunk file: fewer files to write per batch."""
            rows = max(1, min(n, CHUNK_BYTES // (width * np.dtype(dtype).itemsize)))
            chunks = (rows, width)
            create(name, ("checkpoint", dim), (n, width), dtype, chunks=chunks, compress=False)

        per_checkpoint("params", "param", n_params, "float32")
        if has_momentum:
            per_checkpoint("momentum", "param", n_params, "float32")
        if n_buffers:
            per_checkpoint("buffers", "buffer", n_buffers, "float64")
        create("step", ("checkpoint",), (n,), "int64", fill_value=-1)
        for name in ("epoch", *METRICS):
            create(name, ("checkpoint",), (n,), "float64", fill_value=math.nan)
        per_iteration = {"chunks": (min(total, CHUNK_BYTES // 4),), "fill_value": math.nan}
        create("batch_loss", ("iteration",), (total,), "float32", **per_iteration)
        if log_cosine:
            create("grad_cosine", ("iteration",), (total,), "float32", **per_iteration)
            create("last_grad", ("param",), (n_params,), "float32")
        group.update_attributes(
            store.jsonable(
                {
                    **store.provenance(identity, seed=seed),
                    "run": spec,
                    "setting": setting,
                    "data": data,
                    "init_from": init,
                    "n_train": dataset.n_train,
                    "batch_size": trainer.batch_size,
                    "steps_per_epoch": spe,
                    "checkpoint_every": every,
                    "total_steps": total,
                    "param_layout": param_layout(trainer.model).to_attrs(),
                    "buffer_layout": buffer_layout(trainer.model).to_attrs(),
                    "n_complete": 0,
                    "complete": False,
                }
            )
        )
        done = 0
    writer = TrajectoryWriter(group, spe, checkpoint_flush_seconds, arrays=created)
    try:
        with _exit_on_sigterm():
            _train_loop(trainer, writer, setting, seed, steps, done, log_cosine)
    except BaseException:
        pending = writer.n_buffered
        writer.close()
        if pending:
            kept = group.attrs["n_complete"]
            print(f"wrote {pending} pending checkpoint(s) before stopping; {kept} are on disk")
        raise
    writer.close()
    store.publish(output)


@contextlib.contextmanager
def _exit_on_sigterm():
    """Turn SIGTERM into SystemExit(143) so that ``finally`` blocks (the checkpoint writer's
    flush) run: SLURM's scancel and preemption send SIGTERM before SIGKILL."""
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


def _train_loop(
    trainer: Trainer,
    writer: TrajectoryWriter,
    setting: str,
    seed: int,
    steps: list[int],
    done: int,
    log_cosine: bool,
) -> None:
    """Step from checkpoint ``done - 1`` (or write checkpoint 0 first) to the end."""
    group, device = writer.group, trainer.device
    total = steps[-1]
    if done == 0:
        writer.write(0, trainer.state(0), trainer.evaluate())
        done = 1

    start = steps[done - 1]
    losses: list[torch.Tensor] = []  # mini-batch losses since the last checkpoint
    cosines = None
    if log_cosine:
        previous = group["last_grad"][...] if start > 0 else None
        cosines = GradientCosines(total, device, previous)
    stop_below = trainer.spec.get("stop_below_loss")
    with progress(total=total, initial=start, desc=f"{setting} seed {seed}", unit="step") as bar:
        next_index = done
        step = start
        while step < total:
            losses.append(
                cosines.train_step(trainer, step) if cosines else trainer.train_step(step)
            )
            step += 1
            bar.update(1)
            if step != steps[next_index]:
                continue
            segment = slice(steps[next_index - 1], step)
            segment_losses = torch.stack(losses).cpu().numpy()
            losses = []
            bad = np.flatnonzero(~np.isfinite(segment_losses))
            if bad.size:
                raise _divergence(
                    setting, seed, segment.start + int(bad[0]), segment_losses[bad[0]]
                )
            metrics = trainer.evaluate()
            iterations = {"batch_loss": (segment, segment_losses)}
            last_grad = None
            if cosines:
                iterations["grad_cosine"] = (segment, cosines.values[segment].cpu().numpy())
                last_grad = cosines.previous.cpu().numpy()
            writer.write(next_index, trainer.state(step), metrics, iterations, last_grad)
            bar.set_postfix(
                train_loss=f"{metrics['train_loss']:.4g}",
                val=f"{metrics['val_loss']:.4g}",
                refresh=False,
            )
            next_index += 1
            if stop_below is not None and metrics["train_loss"] < stop_below:
                loss = metrics["train_loss"]
                print(f"stopping at step {step}: train loss {loss:.4g} < {stop_below}")
                break
    writer.flush()
    _finish(group, writer.arrays, next_index, step)


class GradientCosines:
    """Cosine of consecutive mini-batch gradients during training (Xing et al. 2018 eq. 5).

    The last gradient is saved with each checkpoint, so a resumed run logs the same values.
    """

    def __init__(self, total: int, device: torch.device, previous: np.ndarray | None) -> None:
        self.values = torch.full((total,), math.nan, device=device)
        self.previous = None if previous is None else torch.from_numpy(previous).to(device)

    def train_step(self, trainer: Trainer, step: int) -> torch.Tensor:
        loss = trainer.gradient(step)
        grad = trainer.flat_grad()
        if self.previous is not None:
            self.values[step] = torch.nn.functional.cosine_similarity(grad, self.previous, dim=0)
        self.previous = grad
        trainer.optimizer.step()
        return loss


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
    most ``flush_seconds`` of training, SIGTERM and Ctrl-C nothing (``train_run`` writes the
    buffer before exiting). ``flush_seconds=0`` completes each checkpoint at once.
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

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)


def _finish(
    group: zarr.Group, arrays: Mapping[str, zarr.Array], n_checkpoints: int, last_step: int
) -> None:
    """Trim preallocated arrays when the run stopped early; mark the store complete."""
    for array in arrays.values():
        dims = array.metadata.dimension_names or ()
        if dims and dims[0] == "checkpoint" and array.shape[0] != n_checkpoints:
            array.resize((n_checkpoints, *array.shape[1:]))
        elif dims and dims[0] == "iteration" and array.shape[0] != last_step:
            array.resize((last_step, *array.shape[1:]))
    if "last_grad" in group:
        del group["last_grad"]
    group.update_attributes(
        {"n_checkpoints": n_checkpoints, "n_steps": last_step, "complete": True}
    )
