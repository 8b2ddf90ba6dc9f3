"""Training throughput with per-epoch Zarr checkpointing vs the same loop without it.

Three variants of one training run, interleaved over repeats (ABCABC...) so machine noise
hits all alike; medians and median ratios are printed:

  loop        Trainer steps only (the floor);
  loop+eval   plus the per-checkpoint full-train/validation evaluation the trajectory records;
  train_run   the real thing: evaluation, state flattening and the Zarr writes.

The checkpointing overhead the project targets (<= 5 %) is train_run / loop+eval: what
storing a replayable trajectory costs on top of measuring it. train_run / loop is reported too.

  python bench/bench_checkpoint.py --model ws_cnn --epochs 10 --repeats 5

Recorded (2-core CPU, quiet, 1 thread, 1347 digits, batch 64 = 21 steps per epoch, medians):
  ws_cnn, 10 epochs, 7 repeats: train_run / loop+eval 1.224 (loop 1.05 s, loop+eval 1.44 s,
      train_run 1.86 s); 40 epochs, 5 repeats: 1.132
  vgg11 (578810 params), 5 epochs, 5 repeats: 1.284
The 5 % target is missed at this scale: each checkpoint costs a fixed ~25 ms (ws_cnn) to
~90 ms (vgg11, 4.6 MB of params + momentum) that the background writer does not fully hide
(one core trains, the writer contends for the interpreter), against epochs of 0.1-0.3 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hessvalley.config import validate_config
from hessvalley.data import build_dataset_store, load_dataset
from hessvalley.train import Trainer, train_run

MODELS = {
    "mlp": {"name": "mlp", "widths": [64, 64]},
    "ws_cnn": {"name": "ws_cnn"},
    "convnet4": {"name": "convnet4"},
    "vgg11": {"name": "vgg11", "batch_norm": True, "width": 16},
}


def make_spec(model: str, epochs: int, batch_size: int) -> tuple[dict, dict]:
    run = {
        "dataset": "digits",
        "model": MODELS[model],
        "loss": {"name": "ce", "label_smoothing": 0.1},
        "optimizer": {"lr": 0.05, "momentum": 0.9, "batch_size": batch_size},
        "epochs": epochs,
    }
    config = validate_config({"datasets": {"digits": {"source": "digits"}}, "runs": {"r": run}})
    spec = config["runs"]["r"]
    spec.pop("seeds")
    return spec, config["datasets"]["digits"]


def time_loop(spec: dict, data_path: str, evaluate: bool) -> float:
    data = load_dataset(data_path)
    start = time.perf_counter()
    trainer = Trainer(spec, data, seed=0)
    total = spec["epochs"] * trainer.steps_per_epoch
    if evaluate:
        trainer.evaluate()
    for step in range(total):
        trainer.train_step(step)
        if evaluate and (step + 1) % trainer.steps_per_epoch == 0:
            trainer.evaluate()
    return time.perf_counter() - start


def time_train_run(spec: dict, dataset_spec: dict, data_path: str, out: Path) -> float:
    output = out / "trajectory.zarr"
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    train_run(spec, dataset_spec, "bench", 0, data_path, str(output))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="ws_cnn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec, dataset_spec = make_spec(args.model, args.epochs, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_path = str(tmp / "digits.zarr")
        build_dataset_store(dataset_spec, "digits", data_path)
        time_loop(spec, data_path, evaluate=False)  # warm-up
        times: dict[str, list[float]] = {"loop": [], "loop+eval": [], "train_run": []}
        for _ in range(args.repeats):
            times["loop"].append(time_loop(spec, data_path, evaluate=False))
            times["loop+eval"].append(time_loop(spec, data_path, evaluate=True))
            times["train_run"].append(time_train_run(spec, dataset_spec, data_path, tmp))
        n_params = sum(p.numel() for p in Trainer(spec, load_dataset(data_path), 0).params)

    steps = args.epochs * (1347 // args.batch_size)
    print(
        f"model {args.model} ({n_params} params), {args.epochs} epochs x "
        f"{1347 // args.batch_size} steps, batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.repeats} repeats"
    )
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:10s} median {med:7.3f} s  ({steps / med:8.1f} steps/s)")
    ratio = [c / b for b, c in zip(times["loop+eval"], times["train_run"], strict=True)]
    raw = [c / a for a, c in zip(times["loop"], times["train_run"], strict=True)]
    print(f"checkpointing overhead  train_run / loop+eval: median {statistics.median(ratio):.3f}")
    print(f"with evaluation         train_run / loop     : median {statistics.median(raw):.3f}")


if __name__ == "__main__":
    main()
