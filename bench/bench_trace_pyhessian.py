"""Wall time of our Hutchinson trace against PyHessian's ``hessian.trace()`` on the same model,
data and probe count, side by side in one run (medians of interleaved repeats).

PyHessian (PyPI ``pyhessian``, the ``bench`` extra) applies H to one probe per call, in two
modes, each compared with ours under the same memory bound:
- ``data=``: the whole training set in one autograd graph, built once and reused by every
  probe (possible only when it fits); ours with one chunk of the whole set.
- ``dataloader=``: batches of ``--chunk-size``, forward and backward of every batch redone
  for every probe (how PyHessian covers a training set that does not fit); ours in chunks
  of the same size, all probes of a sweep sharing each chunk's forward and backward.
PyHessian's early stop is disabled (tol < 0) so both use exactly ``--probes`` Rademacher
probes. Target: ours >= 2x faster.

  python bench/bench_trace_pyhessian.py --probes 32 --chunk-size 256 --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from curvature_common import LOSS, digits, interleaved_medians, model, set_threads
from pyhessian import hessian

from hessvalley.curvature import HessianOperator, hutchinson_trace


def ours(net, x, y, probes: int, chunk_size: int) -> list[float]:
    op = HessianOperator(net, LOSS, x, y, chunk_size=chunk_size, probes_per_sweep=probes)
    return hutchinson_trace(op, torch.Generator().manual_seed(0), probes).samples.tolist()


def pyhessian_trace(net, x, y, probes: int, chunk_size: int | None) -> list[float]:
    """PyHessian on a copy (it switches the model to eval and fills its .grad)."""
    if chunk_size is None:
        h = hessian(copy.deepcopy(net), LOSS, data=(x, y), cuda=False)
    else:
        batches = [
            (x[i : i + chunk_size], y[i : i + chunk_size]) for i in range(0, len(y), chunk_size)
        ]
        h = hessian(copy.deepcopy(net), LOSS, dataloader=batches, cuda=False)
    return h.trace(maxIter=probes, tol=-1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(set_threads(args.threads))
    x, y = digits()
    print(
        f"M={len(y)}, {args.probes} probes, batch/chunk {args.chunk_size}, "
        f"medians of {args.repeats}"
    )
    pairs = {"one graph": len(y), f"batches of {args.chunk_size}": args.chunk_size}
    for family in args.families:
        net = model(family)
        runs = {}
        for name, chunk in pairs.items():
            pyhessian_chunk = None if chunk == len(y) else chunk
            runs[("ours", name)] = lambda net=net, c=chunk: ours(net, x, y, args.probes, c)
            runs[("pyhessian", name)] = lambda net=net, c=pyhessian_chunk: pyhessian_trace(
                net, x, y, args.probes, c
            )
        for (who, name), run in runs.items():
            samples = run()
            assert len(samples) == args.probes, (who, name, len(samples))
            mean, stderr = statistics.mean(samples), statistics.stdev(samples) / args.probes**0.5
            print(f"  {family} {who:9s} {name:14s}: trace {mean:.3f} +- {stderr:.3f}")
        medians = interleaved_medians(runs, args.repeats)
        for clock, times in medians.items():
            for name in pairs:
                mine, theirs = times[("ours", name)], times[("pyhessian", name)]
                print(
                    f"{family} {name:14s} ({clock}): ours {mine * 1e3:8.1f} ms, PyHessian "
                    f"{theirs * 1e3:8.1f} ms -> ours {theirs / mine:.2f}x faster"
                )


if __name__ == "__main__":
    main()
