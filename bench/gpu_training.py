"""The training sections of ``bench_gpu.py``: one PreAct-ResNet18 epoch, the project's step
against a bare torch loop, and bit-exact replay of a stored run."""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gpu_common import Bench, synthetic, timed_medians
from gpu_curvature import IMAGE, ms
from record import figure

from hessvalley import determinism, store
from hessvalley.config import validate_config
from hessvalley.data import DeviceDataset
from hessvalley.train import Trainer, replay, train_run
from hessvalley.trajectory_store import open_trajectory, read_state

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
PROJECT = "project: Trainer.train_step, as train_run steps"
BARE = "bare torch loop"
BARE_DETERMINISTIC = "bare torch loop, the project's deterministic settings"


def run_spec(width: int, batch_size: int, epochs: int = 1, checkpoint_every: int = 0):
    """A validated run (and its dataset entry) training PreAct-ResNet18 with SGD lr 0.1,
    momentum 0.9, weight decay 5e-4 and plain cross-entropy."""
    run = {
        "dataset": "synthetic",
        "model": {"name": "preact_resnet18", "width": width},
        "loss": {"name": "ce"},
        "optimizer": {
            "lr": LR,
            "momentum": MOMENTUM,
            "weight_decay": WEIGHT_DECAY,
            "batch_size": batch_size,
        },
        "epochs": epochs,
        "checkpoint_every": checkpoint_every or None,
    }
    datasets = {"synthetic": {"source": "digits"}}  # a placeholder: the data are passed as paths
    config = validate_config({"datasets": datasets, "runs": {"bench": run}})
    spec = config["runs"]["bench"]
    spec.pop("seeds")
    return spec, config["datasets"]["synthetic"]


def section_epoch(bench: Bench, seconds: float) -> dict[str, Any]:
    """4. One epoch of device-resident CIFAR-shaped images, batch ``epoch_batch``: the
    project's training step (``Trainer.train_step`` under ``determinism.reproducing``, as
    ``train_run`` runs it) against a bare loop over the same batches from the same initial
    model with ``torch.optim.SGD`` and ``F.cross_entropy``; on CUDA the bare loop also under
    the project's deterministic settings, which is the like-for-like comparison there."""
    sizes, device = bench.sizes, bench.device
    x, y = synthetic(sizes.epoch_images, IMAGE, device)
    data = DeviceDataset(x, y, x[: sizes.epoch_batch], y[: sizes.epoch_batch], 10, IMAGE, "")
    spec, _ = run_spec(sizes.resnet_width, sizes.epoch_batch)
    trainer = Trainer(spec, data, seed=0, device=device)
    steps = trainer.steps_per_epoch
    batches = [trainer.batch_indices(step) for step in range(steps)]
    conditions = determinism.record(device)

    def project() -> None:
        with determinism.reproducing(conditions, device, "bench"):
            losses = [trainer.train_step(step) for step in range(steps)]
            torch.stack(losses).cpu()

    def bare_loop(deterministic: bool):
        model = copy.deepcopy(trainer.model)  # before any step: the same initial weights
        optimizer = torch.optim.SGD(
            model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )

        def epoch() -> None:
            settings = contextlib.nullcontext()
            if deterministic:
                settings = determinism.reproducing(conditions, device, "bench")
            with settings:
                model.train()
                for index in batches:
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(model(x[index]), y[index]).backward()
                    optimizer.step()

        return model, epoch

    loops = {BARE: bare_loop(False)}
    if device.type == "cuda":
        loops[BARE_DETERMINISTIC] = bare_loop(True)
    functions = {PROJECT: project, **{name: epoch for name, (_, epoch) in loops.items()}}
    medians, _, failures = timed_medians(bench, functions, seconds)
    found: dict[str, Any] = {
        "images": sizes.epoch_images,
        "batch": sizes.epoch_batch,
        "steps": steps,
        "epoch_ms": {
            name: ms(medians[name]) if name in medians else failures[name] for name in functions
        },
    }
    like = BARE_DETERMINISTIC if device.type == "cuda" else BARE
    if PROJECT in medians and like in medians:
        equal = all(
            torch.equal(a, b)
            for a, b in zip(trainer.params, loops[like][0].parameters(), strict=True)
        )
        found["project_equals_bare_bit_for_bit"] = equal
        ratio = round(medians[PROJECT] / medians[like], 3)
        found["project_over_bare"] = ratio
        bench.figures.append(figure(f"4 epoch: project / {like}", ratio, "x"))
    if device.type == "cuda" and BARE in medians and BARE_DETERMINISTIC in medians:
        cost = round(medians[BARE_DETERMINISTIC] / medians[BARE], 3)
        found["deterministic_over_default"] = cost
        bench.figures.append(figure("4 epoch: bare loop deterministic / default", cost, "x"))
    if PROJECT in medians:
        found["project_images_per_s"] = round(steps * sizes.epoch_batch / medians[PROJECT], 1)
    print(f"  {found}")
    return found


def synthetic_store(path: Path, n_train: int, device: torch.device) -> str:
    """A CIFAR-shaped dataset store of standard-normal images and uniform labels."""
    x, y = synthetic(n_train + n_train // 4, IMAGE, torch.device("cpu"), seed=1)
    image = ("channel", "height", "width")
    arrays = {
        "x_train": (("sample", *image), x[:n_train].numpy()),
        "y_train": (("sample",), y[:n_train].numpy()),
        "x_val": (("val_sample", *image), x[n_train:].numpy()),
        "y_val": (("val_sample",), y[n_train:].numpy()),
        "split": (("sample",), np.zeros(n_train, dtype=np.int8)),
    }
    store.write_store(path, arrays, {"n_classes": 10, "input_shape": list(IMAGE)})
    return str(path)


def section_replay(bench: Bench, seconds: float) -> dict[str, Any]:
    """5. ``train_run`` writes a run with checkpoints; ``replay`` from the middle checkpoint
    to the last must give the stored parameters, momentum and buffers bit for bit."""
    sizes, device = bench.sizes, bench.device
    batch = min(128, sizes.replay_images)
    steps_per_epoch = sizes.replay_images // batch
    epochs = max(1, sizes.replay_steps // steps_per_epoch)
    every = max(1, epochs * steps_per_epoch // 8)
    spec, dataset_spec = run_spec(sizes.replay_width, batch, epochs, every)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_store(Path(tmp) / "data.zarr", sizes.replay_images, device)
        output = str(Path(tmp) / "run.zarr")
        start = time.perf_counter()
        train_run(spec, dataset_spec, "bench_gpu", 0, data, output, device=str(device))
        trained = time.perf_counter() - start
        group = open_trajectory(output)
        n = int(group.attrs["n_checkpoints"])
        middle, last = read_state(group, n // 2), read_state(group, n - 1)
        start = time.perf_counter()
        replayed = replay(output, n // 2, last.step - middle.step, device=device)
        replay_s = time.perf_counter() - start
        recorded = dict(group.attrs["determinism"])
    parts = {"params": (replayed.params, last.params), "buffers": (replayed.buffers, last.buffers)}
    if last.momentum is not None:
        parts["momentum"] = (replayed.momentum, last.momentum)
    exact = {name: torch.equal(a, b) for name, (a, b) in parts.items()}
    differences = {name: float((a - b).abs().max()) for name, (a, b) in parts.items()}
    bit_exact = all(exact.values())
    found = {
        "steps": last.step,
        "checkpoints": n,
        "replayed_from_step": middle.step,
        "bit_exact": bit_exact,
        "bit_exact_by_part": exact,
        "max_abs_difference": differences,
        "train_run_s": round(trained, 3),
        "replay_s": round(replay_s, 3),
        "determinism_recorded": recorded,
    }
    label = f"5 replay: {last.step - middle.step} steps from step {middle.step} bit-exact (1 = yes)"
    bench.figures.append(figure(label, int(bit_exact), "", "== 1", bit_exact))
    bench.figures.append(figure("5 replay: max |parameter difference|", differences["params"]))
    print(f"  bit-exact {bit_exact}, max differences {differences}")
    return found
