"""Training trajectories that can be replayed exactly and resumed after a kill.

``train_run`` trains one seed of a run with SGD and stores a checkpoint (parameters, momentum,
BatchNorm buffers) at every ``checkpoint_every`` steps (see ``hessvalley.trajectory_store``),
so any later step is reproduced bit for bit by ``replay``: the data order of epoch e comes
from a generator seeded by (seed, e), mini-batches are index slices of the device-resident
dataset, and nothing else is random. Bits also depend on the torch thread count, version and
device, which the store records and resume and replay reproduce (``hessvalley.determinism``).
The projection's recursive bisection (Wei & Schwab §2.1.1) relies on this.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import zarr

from hessvalley import determinism, store
from hessvalley.data import DeviceDataset, load_dataset
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.evaluation import loss_and_accuracy
from hessvalley.flat import buffer_layout, flatten, param_layout, unflatten_into
from hessvalley.losses import build_loss
from hessvalley.models import build_model
from hessvalley.progress import progress
from hessvalley.schedule import checkpoint_steps, steps_per_epoch
from hessvalley.sgd import SGD
from hessvalley.trajectory_store import (
    DEFAULT_FLUSH_SECONDS,
    TrainState,
    TrajectoryWriter,
    checkpoint_writer,
    create_trajectory,
    open_trajectory,
    read_state,
)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s data order: independent streams per (seed, epoch)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=generator)


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
        self.optimizer = SGD(
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
        out = {}
        for split, x, y in (
            ("train", self.data.x_train, self.data.y_train),
            ("val", self.data.x_val, self.data.y_val),
        ):
            loss, accuracy = loss_and_accuracy(self.model, self.loss_fn, x, y, self.chunk)
            out[f"{split}_loss"], out[f"{split}_acc"] = loss, accuracy
        return out


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

    Resumes from ``<output>.partial`` when an earlier attempt of the same config was killed,
    under the torch thread count that attempt recorded (``determinism.reproducing``).
    Checkpoints reach the partial store in batches, at most ``checkpoint_flush_seconds``
    apart (see ``TrajectoryWriter``); SIGTERM (scancel, preemption) and Ctrl-C write the
    pending ones before the process exits.
    """
    device = resolve_device(device)
    dataset = load_dataset(data, device, spec["train_on"])
    trainer = Trainer(spec, dataset, seed, device)
    total = spec["epochs"] * trainer.steps_per_epoch
    every = spec["checkpoint_every"] or trainer.steps_per_epoch
    steps = checkpoint_steps(total, every)
    init_hash = None if init is None else open_trajectory(init).attrs["config_hash"]
    identity = {"spec": spec, "dataset": dataset_spec, "seed": seed, "init": init_hash}
    group, resumed = store.open_partial(output, store.config_hash(identity))

    done = int(group.attrs.get("n_complete", 0)) if resumed else 0
    if done:
        recorded = group.attrs.get("determinism")  # None in stores written before the record
        state = read_state(group, done - 1)
        trainer.load_state(state)
        print(f"resuming {setting} seed {seed} from checkpoint {done - 1} (step {state.step})")
    else:
        recorded = determinism.record(device)  # a new run keeps this process's conditions
        if init is not None:
            parent = read_state(open_trajectory(init), -1)
            trainer.load_state(TrainState(parent.params, None, parent.buffers, 0))
    with determinism.reproducing(recorded, device, f"resuming {store.partial_path(output)}"):
        arrays = None  # the writer opens a resumed store's arrays
        if not done:
            attrs = {"run": spec, "setting": setting, "data": data, "init_from": init}
            attrs["determinism"] = determinism.record(device)  # CUDA: deterministic mode on
            arrays = _new_trajectory(group, trainer, steps, every, identity, attrs)
        with checkpoint_writer(
            group, trainer.steps_per_epoch, checkpoint_flush_seconds, arrays
        ) as writer:
            _train_loop(trainer, writer, setting, seed, steps, done)
    store.publish(output)


def _new_trajectory(
    group: zarr.Group,
    trainer: Trainer,
    steps: list[int],
    every: int,
    identity: Mapping[str, Any],
    attrs: Mapping[str, Any],
) -> dict[str, zarr.Array]:
    """Create the arrays and attrs of ``trainer``'s run with checkpoints at ``steps`` (every
    ``every`` steps and the last); ``identity`` is what the run's config hash covers."""
    total = steps[-1]
    return create_trajectory(
        group,
        n_checkpoints=len(steps),
        n_steps=total,
        n_params=sum(p.numel() for p in trainer.params),
        n_buffers=sum(b.numel() for b in trainer.buffers),
        momentum=trainer.optimizer.defaults["momentum"] > 0,
        grad_cosine=bool(trainer.spec.get("log_grad_cosine", False)),
        attrs={
            **store.provenance(identity, seed=identity["seed"]),
            **attrs,
            "n_train": trainer.data.n_train,
            "batch_size": trainer.batch_size,
            "steps_per_epoch": trainer.steps_per_epoch,
            "checkpoint_every": every,
            "total_steps": total,
            "param_layout": param_layout(trainer.model).to_attrs(),
            "buffer_layout": buffer_layout(trainer.model).to_attrs(),
        },
    )


def _train_loop(
    trainer: Trainer,
    writer: TrajectoryWriter,
    setting: str,
    seed: int,
    steps: list[int],
    done: int,
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
    if trainer.spec.get("log_grad_cosine", False):
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
    writer.finish(next_index, step)


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


def _divergence(setting: str, seed: int, step: int, value: float) -> HessvalleyError:
    return HessvalleyError(
        f"run {setting!r} seed {seed} diverged: mini-batch loss {value} at step {step}; "
        "checkpoints up to the previous one are kept. Lower runs."
        f"{setting}.optimizer.lr or check the data."
    )


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
    """The exact state ``n_steps`` SGD steps after checkpoint ``checkpoint`` of a trajectory,
    computed under the conditions the trajectory recorded (``determinism.reproducing``)."""
    group = open_trajectory(trajectory)
    trainer = trainer_for(group, device, data)
    state = read_state(group, checkpoint)
    trainer.load_state(state)
    recorded = group.attrs.get("determinism")
    with determinism.reproducing(recorded, trainer.device, f"replaying {group.store}"):
        for step in range(state.step, state.step + n_steps):
            trainer.train_step(step)
    return trainer.state(state.step + n_steps)
