"""Projection stage costs on CPU: GD projection per state, SGD replay, interpolation throughput.

Trains a short trajectory of each model on digits (the embedded default's settings), then

  projection   seconds per projected state and per GD step (checkpoints of the trajectory,
               projected to the threshold; median over states and repeats);
  replay       SGD steps per second of the exact replay a bisection midpoint needs;
  interpolate  interpolation points per second (training + validation loss of each point)
               for several ``interpolation_batch`` sizes, vmapped calls vs one at a time,
               repeats interleaved so machine noise hits all alike; medians and the ratio
               to one point at a time.

  python bench/bench_projection.py --models mlp convnet4 --repeats 5

Recorded (2-core CPU, 1 thread, medians of 5): MLP 0.58 s per projection, interpolation
1241 points/s (1.29x faster batched 8 per call than one at a time); ConvNet 0.51 s per
projection, 311 points/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from record import figure, write_result

from hessvalley.config import validate_config
from hessvalley.data import build_dataset_store, load_dataset
from hessvalley.projection.gd import gd_trainer, project
from hessvalley.projection.interpolation import PointLosses, interpolation_alphas, line_points
from hessvalley.projection.replay import SGDStates
from hessvalley.train import train_run, trainer_for
from hessvalley.trajectory_store import read_state

MEASURES = "projection stage: GD projection per state, exact replay, interpolation (medians)"
# The embedded default's projected runs (config/config.yaml).
SETTINGS = {
    "mlp": (
        {"source": "digits"},
        {"name": "mlp", "widths": [32], "activation": "tanh"},
        64,
    ),
    "convnet4": (
        {"source": "digits", "n_train": 256},
        {"name": "convnet4", "channels": [4, 8], "hidden": 32},
        32,
    ),
}


def make_trajectory(model: str, epochs: int, directory: Path) -> str:
    dataset, net, batch = SETTINGS[model]
    run = {
        "dataset": "d",
        "model": net,
        "loss": {"name": "ce", "label_smoothing": 0.1},
        "optimizer": {"lr": 0.1, "momentum": 0.9, "batch_size": batch},
        "epochs": epochs,
        "checkpoint_every": None,
    }
    config = validate_config({"datasets": {"d": dataset}, "runs": {model: run}})
    data = str(directory / f"{model}_data.zarr")
    build_dataset_store(config["datasets"]["d"], "d", data)
    spec = config["runs"][model]
    spec.pop("seeds")
    output = str(directory / f"{model}.zarr")
    train_run(spec, config["datasets"]["d"], model, 0, data, output)
    return output


def bench_projection(group: zarr.Group, data, threshold: float, repeats: int) -> float:
    gd = gd_trainer(group, "cpu", data)
    n = int(group.attrs["n_checkpoints"])
    checkpoints = sorted({n // 4, n // 2, 3 * n // 4, n - 1})
    per_state, per_step, steps = [], [], []
    for _ in range(repeats):
        for k in checkpoints:
            start = time.perf_counter()
            result = project(gd, read_state(group, k), threshold, 5000)
            elapsed = time.perf_counter() - start
            per_state.append(elapsed)
            steps.append(result.gd_steps)
            if result.gd_steps:
                per_step.append(elapsed / result.gd_steps)
    print(
        f"  projection (threshold {threshold:g}, checkpoints {checkpoints}): "
        f"median {statistics.median(per_state):.3f} s per state, "
        f"median {statistics.median(steps):.0f} GD steps, "
        f"{1e3 * statistics.median(per_step):.2f} ms per GD step"
    )
    return statistics.median(per_state)


def bench_replay(group: zarr.Group, data, repeats: int) -> float:
    per_step = []
    n_steps = int(group.attrs["steps_per_epoch"])
    for _ in range(repeats):
        states = SGDStates(group, trainer_for(group, "cpu", data), [0], cache_bytes=0)
        start = time.perf_counter()
        states.state_at(n_steps - 1)
        per_step.append((time.perf_counter() - start) / (n_steps - 1))
    print(
        f"  replay: {1 / statistics.median(per_step):.0f} SGD steps/s "
        f"({1e3 * statistics.median(per_step):.2f} ms per step)"
    )
    return 1 / statistics.median(per_step)


def bench_interpolation(
    group: zarr.Group, data, batches: list[int], repeats: int, points: int
) -> dict[int, float]:
    trainer = trainer_for(group, "cpu", data)
    a, b = read_state(group, 0), read_state(group, -1)
    params, buffers = line_points((a.params, a.buffers), (b.params, b.buffers),
                                  interpolation_alphas(points))  # fmt: skip
    evaluators = {batch: PointLosses(trainer.model, trainer.loss_fn, batch) for batch in batches}
    times: dict[int, list[float]] = {batch: [] for batch in batches}
    reference = None
    for _ in range(repeats):
        for batch, evaluate in evaluators.items():
            start = time.perf_counter()
            train = evaluate(params, buffers, data.x_train, data.y_train)
            evaluate(params, buffers, data.x_val, data.y_val)
            times[batch].append(time.perf_counter() - start)
            reference = train if reference is None else reference
            np.testing.assert_allclose(train, reference, rtol=1e-5)
    base = statistics.median(times[batches[0]])
    rates = {}
    for batch in batches:
        median = statistics.median(times[batch])
        label = "one at a time" if batch == 1 else f"batch {batch} (vmap)"
        print(
            f"  interpolation, {label}: {points / median:.0f} points/s "
            f"(train + validation loss each), x{base / median:.2f} vs batch {batches[0]}"
        )
        rates[batch] = points / median
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.03)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--points", type=int, default=32, help="interpolation points per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            path = make_trajectory(model, args.epochs, Path(tmp))
            group = zarr.open_group(path, mode="r")
            data = load_dataset(group.attrs["data"], "cpu")
            print(f"{model}: {data.n_train} training samples, {args.threads} thread(s)")
            seconds = bench_projection(group, data, args.threshold, max(1, args.repeats // 2))
            replay = bench_replay(group, data, args.repeats)
            rates = bench_interpolation(group, data, args.batches, args.repeats, args.points)
            best = max(rates, key=rates.get)
            figures += [
                figure(f"{model}: GD projection per state", round(seconds, 3), "s"),
                figure(f"{model}: exact SGD replay", round(replay), "steps/s"),
                figure(f"{model}: interpolation, batch {best}", round(rates[best]), "points/s"),
                figure(
                    f"{model}: interpolation, batch {best} / one at a time",
                    round(rates[best] / rates[args.batches[0]], 2),
                    "x",
                ),
            ]
    write_result("bench_projection", MEASURES, figures, vars(args))


if __name__ == "__main__":
    main()
