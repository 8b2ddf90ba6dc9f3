"""Throughput of the toy-model noisy-GD simulator (hessvalley.toy.simulator.simulate).

For each toy loss, a batch of independent runs (conditions x runs, the shapes the default
workflow uses) is advanced for --steps steps; repeats are interleaved over the losses so
machine noise hits all alike. Printed per loss: median (min-max) wall time, microseconds per
step, run-steps per second, and runs per second for a run of --steps steps (how many complete
independent runs of that length the simulator finishes per second).

  python bench/bench_toy.py --repeats 5
  python bench/bench_toy.py --runs 500 2000 8000 --losses abs_valley --threads 1

Recorded (2-core CPU, float64, default flags, medians of 5), complete runs per second:
fig2b 7847 (9 etas x 2000 runs in one batch), fig2cd 1735, fig7 4970.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from record import figure, write_result

from hessvalley import toy

MEASURES = "toy-model noisy-GD simulator throughput (complete runs per second, medians)"
# loss -> (conditions: (eta, noise) pairs, default runs per condition, start) of its figure
SETTINGS = {
    "abs_valley": (
        [(eta, toy.Noise("sgd", 1e-3)) for eta in [0.002 + 0.001 * k for k in range(9)]],
        2000,
        [0.0, 0.0, 0.1, 0.1],
    ),
    "gaussian_valley": (
        [(0.02, toy.Noise("sgd", 0.5)), (0.02, toy.Noise("isotropic", 0.5))],
        200,
        [0.0, 0.0, 0.5, -0.5],
    ),
    "tilted_valley": (
        [(0.01, toy.Noise("none")), (0.01, toy.Noise("sgd", 1.0))],
        100,
        [0.1, 0.1],
    ),
}


def make_loss(name: str) -> toy.ValleyLoss:
    return toy.TiltedValley(1e-4) if name == "tilted_valley" else toy.LOSSES[name]()


def time_once(name: str, runs: int, steps: int, device: str) -> float:
    conditions, _, start = SETTINGS[name]
    loss = make_loss(name)
    etas = [eta for eta, _ in conditions]
    noises = [noise for _, noise in conditions]
    theta0 = torch.tensor(start, dtype=toy.DTYPE, device=device).expand(len(etas), runs, -1)
    generator = torch.Generator(device=device).manual_seed(0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    began = time.perf_counter()
    toy.simulate(loss, theta0, etas, noises, steps, generator, record_every=max(steps // 20, 1))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--runs", nargs="+", type=int, default=None,
                        help="runs per condition (default: each figure's own)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cases = [(name, runs) for name in args.losses
             for runs in (args.runs or [SETTINGS[name][1]])]  # fmt: skip
    for name, runs in cases:  # warm-up (allocator, first-call overheads)
        time_once(name, runs, min(args.steps, 50), args.device)
    times: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for _ in range(args.repeats):
        for case in cases:
            times[case].append(time_once(*case, args.steps, args.device))

    print(f"toy simulator, {args.steps} steps, {args.repeats} repeats, threads={args.threads}, "
          f"device={args.device}, float64")  # fmt: skip
    header = ("loss", "batch", "median s", "min-max s", "us/step", "run-steps/s", "runs/s")
    print("{:<16} {:>12} {:>9} {:>15} {:>9} {:>12} {:>10}".format(*header))
    figures = []
    for (name, runs), values in times.items():
        batch = len(SETTINGS[name][0]) * runs
        median = statistics.median(values)
        label = f"{name} ({len(SETTINGS[name][0])}x{runs} runs of {args.steps} steps)"
        figures.append(figure(label, round(batch / median), "runs/s"))
        print(
            f"{name:<16} {f'{len(SETTINGS[name][0])}x{runs}':>12} {median:>9.3f} "
            f"{f'{min(values):.3f}-{max(values):.3f}':>15} {1e6 * median / args.steps:>9.1f} "
            f"{batch * args.steps / median:>12.3g} {batch / median:>10.4g}"
        )

    write_result("bench_toy", MEASURES, figures, vars(args))


if __name__ == "__main__":
    main()
