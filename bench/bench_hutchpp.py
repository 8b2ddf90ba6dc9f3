"""Hutch++ vs Hutchinson: Hessian-vector products needed for the same standard error on a
trained small net (spiked spectrum: a few outliers over a bulk near zero, Sagun et al.).

The embedded-default MLP (or CNN) is trained by full-batch GD with momentum on 1347 digits;
its exact trace (dense Hessian) is the reference. For each seed both estimators run with the
adaptive stop at the same relative standard error ``--rtol``; the HVPs each needed (Hutch++:
2 x sketch + residual probes) are compared by their medians over seeds. The ratio of the
per-probe sample standard deviations predicts the same thing without the stop's noise.

  python bench/bench_hutchpp.py --family mlp --rtol 0.01 --seeds 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from curvature_common import LOSS, digits, model, set_threads, train

from hessvalley.curvature import (
    HessianOperator,
    exact_spectrum,
    hutchinson_trace,
    hutchpp_trace,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--rtol", type=float, default=0.01, help="target relative stderr")
    parser.add_argument("--sketch-size", type=int, default=20)
    parser.add_argument("--min-probes", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--block", type=int, default=8, help="probes added per adaptive step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(set_threads(args.threads))
    x, y = digits()
    net = train(model(args.family), x, y, args.train_steps, args.lr)
    op = HessianOperator(net, LOSS, x, y, dtype=torch.float64, probes_per_sweep=64)
    eigenvalues = exact_spectrum(op)
    exact = eigenvalues.sum().item()
    top = eigenvalues.flip(0)[:12].tolist()
    frobenius_share = (
        eigenvalues.flip(0)[: args.sketch_size].pow(2).sum() / eigenvalues.pow(2).sum()
    )
    print(
        f"{args.family}: P={op.size}, train loss {op.loss().item():.4f} after "
        f"{args.train_steps} GD steps; exact trace {exact:.4f}\n"
        f"top eigenvalues {', '.join(f'{v:.3g}' for v in top)}; median |lambda| "
        f"{eigenvalues.abs().median().item():.2e}; top {args.sketch_size} carry "
        f"{frobenius_share.item():.1%} of |H|_F^2"
    )
    estimators = {
        "hutchinson": lambda generator: hutchinson_trace(
            op,
            generator,
            args.min_probes,
            rtol=args.rtol,
            max_probes=20_000,
            probes_per_block=args.block,
        ),
        "hutch++": lambda generator: hutchpp_trace(
            op,
            generator,
            args.min_probes,
            sketch_size=args.sketch_size,
            rtol=args.rtol,
            max_probes=20_000,
            probes_per_block=args.block,
        ),
    }
    counts: dict[str, list[int]] = {name: [] for name in estimators}
    spreads: dict[str, list[float]] = {name: [] for name in estimators}
    seconds: dict[str, list[float]] = {name: [] for name in estimators}
    for seed in range(args.seeds):
        for name, estimator in estimators.items():
            start = time.process_time()
            run = estimator(torch.Generator().manual_seed(seed))
            seconds[name].append(time.process_time() - start)
            counts[name].append(run.n_matvecs)
            spreads[name].append(run.samples.std().item())
            if seed == 0:
                print(
                    f"  seed 0 {name:10s}: {run.estimate:.4f} +- {run.stderr:.4f} "
                    f"({run.relative_stderr:.2%}), {run.n_matvecs} HVPs, "
                    f"error {abs(run.estimate - exact) / run.stderr:.2f} stderr"
                )
    hvps = {name: statistics.median(values) for name, values in counts.items()}
    cpu = {name: statistics.median(values) for name, values in seconds.items()}
    std_ratio = statistics.median(spreads["hutchinson"]) / statistics.median(spreads["hutch++"])
    print(
        f"to reach {args.rtol:.1%} relative stderr, medians over {args.seeds} seeds:\n"
        f"  HVPs: Hutchinson {hvps['hutchinson']:.0f}, Hutch++ {hvps['hutch++']:.0f} "
        f"(sketch {args.sketch_size}) -> {hvps['hutchinson'] / hvps['hutch++']:.1f}x fewer\n"
        f"  CPU time: Hutchinson {cpu['hutchinson']:.2f} s, Hutch++ {cpu['hutch++']:.2f} s "
        f"-> {cpu['hutchinson'] / cpu['hutch++']:.1f}x faster"
    )
    print(
        f"per-probe sample std ratio {std_ratio:.1f} -> residual probes needed "
        f"{std_ratio**2:.0f}x fewer (before the 2 x {args.sketch_size} sketch HVPs)"
    )


if __name__ == "__main__":
    main()
