"""Training: exact replay, exact resume after SIGKILL, divergence errors, GD mode, init_from."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from hessvalley import store, trajectory_store
from hessvalley.data import load_dataset
from hessvalley.errors import HessvalleyError
from hessvalley.losses import build_loss
from hessvalley.models import build_model
from hessvalley.schedule import checkpoint_steps
from hessvalley.train import Trainer, epoch_order, replay, train_run, trainer_for
from hessvalley.trajectory_store import METRICS, TrainState, TrajectoryWriter, read_state

from .conftest import run_spec

# In-process runs at the CLI jobs' --threads 1: the bits of a gradient depend on the count.
pytestmark = pytest.mark.usefixtures("one_thread")
BN_MODEL = {"name": "vgg11", "batch_norm": True, "width": 8}


def train(tmp_path: Path, digits_store: str, spec: dict, digits_spec: dict, name="traj", **kw):
    output = str(tmp_path / f"{name}.zarr")
    train_run(spec, digits_spec, "r", kw.pop("seed", 0), digits_store, output, **kw)
    return output


def arrays(path: str) -> dict[str, np.ndarray]:
    return store.read_arrays(path)


def stepped_by_hand(trajectory, k: int, n_steps: int, data) -> TrainState:
    """``n_steps`` SGD steps from checkpoint ``k`` at this process's torch thread count."""
    group = trajectory if isinstance(trajectory, zarr.Group) else store.open_store(trajectory)
    trainer = trainer_for(group, data=data)
    state = read_state(group, k)
    trainer.load_state(state)
    for step in range(state.step, state.step + n_steps):
        trainer.train_step(step)
    return trainer.state(state.step + n_steps)


@contextlib.contextmanager
def torch_threads(n: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_schedule():
    assert checkpoint_steps(10, 4) == [0, 4, 8, 10]
    assert checkpoint_steps(8, 4) == [0, 4, 8]


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(3, 5, 100)
    assert torch.equal(a, epoch_order(3, 5, 100))
    assert sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_order(3, 6, 100))
    assert not torch.equal(a, epoch_order(4, 5, 100))


@pytest.mark.parametrize("model", [None, BN_MODEL], ids=["mlp", "vgg11-bn"])
def test_replay_reproduces_every_checkpoint_bit_for_bit(tmp_path, digits_store, digits_spec, model):
    spec = run_spec(epochs=2, checkpoint_every=5, **({"model": model} if model else {}))
    path = train(tmp_path, digits_store, spec, digits_spec)
    group = zarr.open_group(path, mode="r")
    steps = np.asarray(group["step"][...])
    assert steps.tolist() == [0, 5, 10, 15, 16]  # 256 // 32 = 8 steps per epoch
    data = load_dataset(digits_store, "cpu")
    for k in range(len(steps) - 1):
        state = replay(group, k, int(steps[k + 1] - steps[k]), data=data)
        stored = read_state(group, k + 1)
        assert state.step == stored.step
        assert torch.equal(state.params, stored.params)
        assert torch.equal(state.momentum, stored.momentum)
        assert torch.equal(state.buffers, stored.buffers)
    if model is not None:  # BatchNorm running statistics really are part of the state
        assert group["buffers"].shape[1] > 0
        assert not np.array_equal(group["buffers"][0], group["buffers"][-1])


# A hidden layer of 1024: MKL splits the (32, 1024) x (1024, 10) product's inner dimension over
# the threads on an Intel Xeon (a width of 16 was enough on AMD EPYC, not there), so the thread
# count changes the bits of a step; the two tests below check that before relying on it.
THREAD_SENSITIVE_MODEL = {"name": "mlp", "widths": [1024], "activation": "tanh"}


def test_replay_at_another_thread_count_runs_at_the_recorded_one(
    tmp_path, digits_store, digits_spec, capsys
):
    spec = run_spec(epochs=1, checkpoint_every=4, model=THREAD_SENSITIVE_MODEL)
    group = zarr.open_group(train(tmp_path, digits_store, spec, digits_spec), mode="r")
    assert group.attrs["determinism"]["torch_threads"] == 1
    data, end = load_dataset(digits_store), read_state(group, 2)
    with torch_threads(2):
        assert not torch.equal(stepped_by_hand(group, 0, 8, data).params, end.params), (
            "the thread count must change the bits here, or this test proves nothing"
        )
        state = replay(group, 0, 8, data=data)
        assert torch.get_num_threads() == 2
    assert torch.equal(state.params, end.params)
    assert torch.equal(state.momentum, end.momentum)
    assert "running at the recorded 1 torch thread(s) (this process has 2)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("key", "value", "recorded"),
    [("torch_version", "1.13.1", "torch 1.13.1 on cpu"), ("device_type", "cuda", None)],
    ids=["torch-version", "device-type"],
)
def test_resume_and_replay_refuse_another_torch_version_or_device(
    tmp_path, digits_store, digits_spec, monkeypatch, key, value, recorded
):
    recorded = recorded or f"torch {torch.__version__} on cuda"
    spec = run_spec(epochs=2, checkpoint_every=4)
    output = str(tmp_path / "stopped.zarr")
    evaluate, calls = Trainer.evaluate, []

    def interrupted(self):
        calls.append(self)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return evaluate(self)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Trainer, "evaluate", interrupted)
        train_run(spec, digits_spec, "r", 0, digits_store, output)
    partial = store.partial_path(output)
    group = zarr.open_group(partial, mode="r+")
    assert group.attrs["n_complete"] == 2
    group.attrs["determinism"] = {**group.attrs["determinism"], key: value}
    now = f"this process has torch {torch.__version__} on cpu"

    with pytest.raises(HessvalleyError) as info:
        train_run(spec, digits_spec, "r", 0, digits_store, output)
    message = str(info.value)
    assert message.startswith(f"resuming {partial}: cannot be reproduced exactly here")
    assert f"it was computed with {recorded}, {now}; run it with" in message
    assert "delete the store" in message and "\n" not in message
    assert n_complete(partial) == 2 and not Path(output).exists()

    with pytest.raises(HessvalleyError) as info:
        replay(group, 0, 4, data=load_dataset(digits_store))
    assert str(info.value).startswith(f"replaying {group.store}: cannot be reproduced")
    assert f"it was computed with {recorded}, {now}" in str(info.value)


def test_trajectory_contents(tmp_path, digits_store, digits_spec):
    spec = run_spec(epochs=3)
    path = train(tmp_path, digits_store, spec, digits_spec)
    data = arrays(path)
    group = zarr.open_group(path, mode="r")
    assert group.attrs["complete"] is True
    assert data["step"].tolist() == [0, 8, 16, 24]
    assert data["epoch"].tolist() == [0, 1, 2, 3]
    assert data["params"].shape == (4, group.attrs["param_layout"]["numel"])
    assert data["params"].dtype == np.float32
    assert np.all(np.isfinite(data["batch_loss"])) and data["batch_loss"].shape == (24,)
    # The loss is label-smoothed CE minus its minimum H(q): positive, decreasing here.
    assert 0 < data["train_loss"][-1] < data["train_loss"][0]
    # Metrics at a checkpoint equal a fresh evaluation of the stored parameters.
    trainer = Trainer(spec, load_dataset(digits_store), 0)
    trainer.load_state(read_state(group, 2))
    metrics = trainer.evaluate()
    for name in ("train_loss", "val_loss", "train_acc", "val_acc"):
        assert metrics[name] == pytest.approx(data[name][2], rel=1e-12)
    # Batch losses: step 0's mini-batch loss recomputed by hand.
    fresh = Trainer(spec, load_dataset(digits_store), 0)
    idx = epoch_order(0, 0, 256)[:32]
    x, y = fresh.data.x_train[idx], fresh.data.y_train[idx]
    expected = build_loss(spec["loss"])(fresh.model(x), y).item()
    assert data["batch_loss"][0] == pytest.approx(expected, rel=1e-6)


def train_command(spec, digits_spec, digits_store, output, threads=1) -> list[str]:
    """The arguments of ``hessvalley`` for the training job of ``spec``."""
    kwargs = {
        "spec": spec,
        "dataset_spec": digits_spec,
        "setting": "r",
        "seed": 0,
        "data": digits_store,
        "output": output,
    }
    return ["run", "train", "--kwargs", json.dumps(kwargs), "--threads", str(threads)]


# The hessvalley CLI with training held at the start of one step (argv: the step, a file it
# creates when there, then the CLI's arguments), so that a test signals the job at a known
# point of the run however slow or loaded the machine is.
PAUSED_CLI = """
import sys, time
from pathlib import Path
from hessvalley import cli, train
pause_step, marker = int(sys.argv[1]), Path(sys.argv[2])
train_step = train.Trainer.train_step
def paused(self, step):
    if step == pause_step:
        marker.touch()
        time.sleep(120)
    return train_step(self, step)
train.Trainer.train_step = paused
sys.exit(cli.main(sys.argv[3:]))
"""


def start_paused(args: list[str], pause_step: int, tmp_path: Path, env=None) -> subprocess.Popen:
    """Start ``hessvalley <args>``; return once its training waits at ``pause_step``."""
    marker = tmp_path / f"paused-{pause_step}"
    command = [sys.executable, "-c", PAUSED_CLI, str(pause_step), str(marker), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while not marker.exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(process.communicate()[0].decode()[-2000:])
        time.sleep(0.02)
    return process


def n_complete(path: Path) -> int:
    return zarr.open_group(path, mode="r").attrs["n_complete"]


def n_complete_now(path: Path) -> int:
    """``n_complete`` of a store being written (a read may meet a half-written zarr.json)."""
    try:
        return n_complete(path)
    except Exception:
        return -1


def kill_at_step(args: list[str], step: int, n_written: int, tmp_path: Path, output: str) -> None:
    """SIGKILL a training job (checkpoints written at once) at ``step``, once its first
    ``n_written`` checkpoints are on disk."""
    env = {**os.environ, "HESSVALLEY_CHECKPOINT_FLUSH_SECONDS": "0"}
    process = start_paused(args, step, tmp_path, env)
    partial = store.partial_path(output)
    deadline = time.time() + 60
    while n_complete_now(partial) < n_written and time.time() < deadline:
        time.sleep(0.02)  # the writer thread may still be writing the last one
    process.kill()
    process.wait()
    assert n_complete(partial) == n_written
    assert not Path(output).exists(), "a killed run must not publish its store"


# 8 steps per epoch, a checkpoint every 4 steps: 9 checkpoints at steps 0, 4, ..., 32.
KILLED_SPEC = {
    "epochs": 4,
    "checkpoint_every": 4,
    "optimizer": {"lr": 0.05, "momentum": 0.9, "batch_size": 32},
}


def test_resume_after_sigkill_is_exact(tmp_path, digits_store, digits_spec, capsys):
    spec = run_spec(**KILLED_SPEC)
    reference = train(tmp_path, digits_store, spec, digits_spec, name="reference")
    output = str(tmp_path / "killed.zarr")
    args = train_command(spec, digits_spec, digits_store, output)
    kill_at_step(args, 13, 4, tmp_path, output)  # checkpoints 0-3 (steps 0-12) are on disk

    train(tmp_path, digits_store, spec, digits_spec, name="killed")  # the job run again
    assert "resuming r seed 0 from checkpoint 3 (step 12)" in capsys.readouterr().out
    got, want = arrays(output), arrays(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_resume_at_another_thread_count_runs_at_the_recorded_one(
    tmp_path, digits_store, digits_spec
):
    """A job killed at 1 torch thread and resumed with 2 (another --threads, or SLURM's
    --cpus-per-task) finishes at 1, since the bits of a gradient depend on it."""
    spec = run_spec(**KILLED_SPEC, model=THREAD_SENSITIVE_MODEL)
    reference = train(tmp_path, digits_store, spec, digits_spec, name="reference")
    with torch_threads(2):
        two_threads = stepped_by_hand(reference, 3, 4, load_dataset(digits_store))
    assert not torch.equal(two_threads.params, read_state(store.open_store(reference), 4).params), (
        "the thread count must change the bits here, or this test proves nothing"
    )

    output = str(tmp_path / "killed.zarr")
    kill_at_step(train_command(spec, digits_spec, digits_store, output), 13, 4, tmp_path, output)
    command = train_command(spec, digits_spec, digits_store, output, threads=2)
    resumed = subprocess.run([sys.executable, "-m", "hessvalley", *command], capture_output=True)
    log = (resumed.stdout + resumed.stderr).decode()
    assert resumed.returncode == 0, log[-2000:]
    got, want = arrays(output), arrays(reference)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert "running at the recorded 1 torch thread(s) (this process has 2)" in log
    assert zarr.open_group(output, mode="r").attrs["determinism"] == {
        "torch_threads": 1,
        "torch_version": torch.__version__,
        "device_type": "cpu",
        "device_name": None,
        "deterministic_algorithms": False,
    }


def test_sigterm_writes_buffered_checkpoints_then_resume_is_exact(
    tmp_path, digits_store, digits_spec
):
    """scancel and SLURM preemption send SIGTERM: checkpoints still in the writer's buffer (the
    flush interval is far longer than this run) reach the disk before the exit."""
    spec = run_spec(**KILLED_SPEC)
    reference = train(tmp_path, digits_store, spec, digits_spec, name="reference")
    output = str(tmp_path / "terminated.zarr")
    args = train_command(spec, digits_spec, digits_store, output)
    env = {**os.environ, "HESSVALLEY_CHECKPOINT_FLUSH_SECONDS": "3600"}
    process = start_paused(args, 13, tmp_path, env)
    partial = store.partial_path(output)
    assert n_complete(partial) == 0, "checkpoints 0-3 must still be in the buffer"
    process.send_signal(signal.SIGTERM)
    log = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 128 + signal.SIGTERM, log[-2000:]
    group = zarr.open_group(partial, mode="r")
    kept = group.attrs["n_complete"]
    assert kept == 4
    assert f"checkpoint(s) before stopping; {kept} are on disk" in log
    want = arrays(reference)
    for name in ("params", "momentum", "step", "train_loss"):
        np.testing.assert_array_equal(group[name][:kept], want[name][:kept], err_msg=name)

    train(tmp_path, digits_store, spec, digits_spec, name="terminated")  # the job run again
    got = arrays(output)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize(
    ("flush_seconds", "eager_bytes"),
    [(0.0, 2**40), (30.0, 0), (0.0, 0)],
    ids=["each-checkpoint-at-once", "eager-states", "eager-states-each-at-once"],
)
def test_checkpoint_write_modes_store_the_same_trajectory(
    tmp_path, digits_store, digits_spec, monkeypatch, flush_seconds, eager_bytes
):
    """Batched writes (the default for this small net: one batch at the end), one write per
    checkpoint, and states written at each checkpoint all store the same bytes."""
    spec = run_spec(epochs=3, optimizer={"lr": 0.05, "momentum": 0.9, "batch_size": 32})
    batched = arrays(train(tmp_path, digits_store, spec, digits_spec, name="batched"))
    monkeypatch.setattr(trajectory_store, "EAGER_STATE_BYTES", eager_bytes)
    path = train(tmp_path, digits_store, spec, digits_spec, checkpoint_flush_seconds=flush_seconds)
    other = arrays(path)
    assert sorted(other) == sorted(batched)
    for name in batched:
        np.testing.assert_array_equal(other[name], batched[name], err_msg=name)
    assert zarr.open_group(path, mode="r").attrs["n_complete"] == 4


WRITER_METRICS = dict.fromkeys(METRICS, 0.25)


def writer_store(tmp_path: Path) -> zarr.Group:
    """A bare trajectory-like store of 4 checkpoints of 3 params."""
    group = zarr.open_group(tmp_path / "w.zarr", mode="w")
    store.create(group, "params", ("checkpoint", "param"), shape=(4, 3), dtype="float32",
                 chunks=(1, 3), compress=False)  # fmt: skip
    store.create(group, "step", ("checkpoint",), shape=(4,), dtype="int64", fill_value=-1)
    for name in ("epoch", *METRICS):
        store.create(group, name, ("checkpoint",), shape=(4,), dtype="float64", fill_value=-1)
    group.attrs["n_complete"] = 0
    return group


def writer_state(k: int) -> TrainState:
    return TrainState(torch.full((3,), float(k)), None, torch.zeros(0, dtype=torch.float64), 2 * k)


def test_failed_state_write_stops_later_batches(tmp_path, monkeypatch):
    group = writer_store(tmp_path)
    writer = TrajectoryWriter(group, steps_per_epoch=4, flush_seconds=0, eager_bytes=0)

    def broken(first, states):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "_write_states", broken)
    writer.write(0, writer_state(0), WRITER_METRICS)
    with pytest.raises(OSError, match="disk full"):  # the first error, not the skipped batch's
        writer.close()
    # the batch queued after the failed state write did not mark checkpoint 0 complete
    assert zarr.open_group(tmp_path / "w.zarr", mode="r").attrs["n_complete"] == 0


def test_writer_buffers_checkpoints_until_flushed(tmp_path):
    group = writer_store(tmp_path)

    def on_disk():
        return zarr.open_group(tmp_path / "w.zarr", mode="r").attrs["n_complete"]

    writer = TrajectoryWriter(group, steps_per_epoch=4, flush_seconds=3600)
    writer.write(0, writer_state(0), WRITER_METRICS)
    writer.write(1, writer_state(1), WRITER_METRICS)
    assert writer.n_buffered == 2 and on_disk() == 0
    with pytest.raises(ValueError, match="checkpoint 3 queued after 1"):
        writer.write(3, writer_state(3), WRITER_METRICS)
    writer.close()
    assert on_disk() == 2
    np.testing.assert_array_equal(group["params"][:2], [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(group["epoch"][:], [0, 0.5, -1, -1])
    # A buffer limit of one state's bytes hands each checkpoint over at once.
    writer = TrajectoryWriter(group, steps_per_epoch=4, flush_seconds=3600, max_bytes=12)
    writer.write(2, writer_state(2), WRITER_METRICS)
    assert writer.n_buffered == 0
    writer.close()
    assert on_disk() == 3 and group["step"][2] == 4


def test_divergence_names_step_and_value_and_keeps_checkpoints(tmp_path, digits_store, digits_spec):
    spec = run_spec(
        epochs=3, loss={"name": "mse"}, optimizer={"lr": 50.0, "momentum": 0.9, "batch_size": 32}
    )
    output = str(tmp_path / "diverged.zarr")
    with pytest.raises(HessvalleyError) as info:
        train_run(spec, digits_spec, "r", 0, digits_store, output)
    message = str(info.value)
    assert "run 'r' seed 0 diverged" in message and "runs.r.optimizer.lr" in message
    step = int(message.split(" at step ")[1].split(";")[0])
    # Replaying up to that step gives finite parameters whose next mini-batch loss is not finite.
    partial = store.partial_path(output)
    trainer = Trainer(spec, load_dataset(digits_store), 0)
    trainer.load_state(replay(partial, 0, step))
    assert torch.isfinite(trainer.state(step).params).all()
    assert not math.isfinite(trainer.gradient(step).item())
    assert zarr.open_group(partial, mode="r").attrs["n_complete"] >= 1


def test_full_batch_gd_is_plain_gradient_descent(tmp_path, digits_store, digits_spec):
    spec = run_spec(
        epochs=3, optimizer={"lr": 0.5, "batch_size": "full"}, eval_batch_size=100
    )  # 3 chunks per step
    path = train(tmp_path, digits_store, spec, digits_spec)
    data = load_dataset(digits_store)
    torch.manual_seed(0)
    model = build_model(spec["model"], data.input_shape, data.n_classes).double()
    loss_fn = build_loss(spec["loss"])
    for _ in range(3):
        model.zero_grad()
        loss_fn(model(data.x_train.double()), data.y_train).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    stored = torch.from_numpy(arrays(path)["params"][-1]).double()
    torch.testing.assert_close(stored, flat, rtol=0, atol=2e-6)


def test_stop_below_loss_and_init_from(tmp_path, digits_store, digits_spec):
    first = run_spec(epochs=3, optimizer={"lr": 0.2, "momentum": 0.9, "batch_size": 32})
    parent = train(tmp_path, digits_store, first, digits_spec, name="parent")
    threshold = arrays(parent)["train_loss"][-1] / 3
    gd = run_spec(
        epochs=500,
        optimizer={"lr": 0.2, "momentum": 0.9, "batch_size": "full"},
        stop_below_loss=threshold,
        checkpoint_every=5,
    )
    path = train(tmp_path, digits_store, gd, digits_spec, name="gd", init=parent)
    data = arrays(path)
    group = zarr.open_group(path, mode="r")
    n = group.attrs["n_checkpoints"]
    assert n > 2
    assert data["train_loss"][-1] < threshold <= data["train_loss"][-2]
    assert data["step"][-1] == group.attrs["n_steps"] == data["batch_loss"].shape[0] < 2500
    assert data["params"].shape[0] == n
    # init_from: checkpoint 0 of the child is the parent's last state, momentum fresh.
    np.testing.assert_array_equal(data["params"][0], arrays(parent)["params"][-1])
    assert read_state(group, 0).momentum is None


def test_grad_cosine_log_survives_resume(tmp_path, digits_store, digits_spec):
    spec = run_spec(epochs=2, log_grad_cosine=True)
    path = train(tmp_path, digits_store, spec, digits_spec)
    cosine = arrays(path)["grad_cosine"]
    assert np.isnan(cosine[0]) and np.all(np.abs(cosine[1:]) <= 1)
    trainer = Trainer(spec, load_dataset(digits_store), 0)
    trainer.load_state(read_state(zarr.open_group(path, mode="r"), 0))
    trainer.gradient(0)
    g0 = trainer.flat_grad().clone()
    trainer.optimizer.step()
    trainer.gradient(1)
    expected = torch.nn.functional.cosine_similarity(trainer.flat_grad(), g0, dim=0)
    assert cosine[1] == pytest.approx(expected.item(), abs=1e-6)
