"""Wall time of our Hutchinson trace against PyHessian's ``hessian.trace()`` on the same model,
data and probe count, side by side in one run (medians of interleaved repeats).

Both estimate tr(H) of the same freshly initialised embedded-default MLP or CNN on the same
1347 digits (float32, label-smoothed cross-entropy) with exactly ``--probes`` Rademacher
probes; ours is ``hutchinson_trace`` on ``HessianOperator(method="auto")``. Each timed call
includes the set-up (our operator, PyHessian's ``hessian(...)`` and its first graph).
PyHessian applies H to one probe per call, in two modes, each compared with ours under the
same memory bound:
- ``one graph`` (``data=``): the whole training set in one autograd graph, built once and
  reused by every probe (possible only when it fits); ours with one chunk of the whole set.
- ``batches of B`` (``dataloader=``): forward and backward of every batch redone for every
  probe (how PyHessian covers a training set that does not fit in one graph); ours in chunks
  of B, all probes of a sweep sharing each chunk's forward and backward.
Target: ours >= 2x faster.

PyHessian 0.1 under torch 2.x: it runs unmodified; its early stop is disabled (tol < 0) so it
draws exactly ``--probes`` probes, it runs on a deep copy (it switches the model to eval and
leaves .grad fields holding a double-backward graph, which are cleared after each call to
break that reference cycle), and torch's warning about ``backward(create_graph=True)`` is
silenced.

  python bench/bench_trace_pyhessian.py --probes 32 --chunk-size 256 --repeats 7

Recorded (2-core CPU shared with other jobs, 1 thread, steady malloc | default malloc,
32 probes, M=1347, batches of 256, medians of 7; wall ms, ours / PyHessian -> speed-up):
  mlp one graph        42.7 / 41.6     -> 0.97x  |  53.1 / 55.2     -> 1.04x
  mlp batches of 256   48.4 / 249.8    -> 5.16x  |  59.7 / 323.3    -> 5.41x
  cnn one graph      1898.7 / 1972.4   -> 1.04x  |  3999.6 / 4169.4 -> 1.04x
  cnn batches of 256 1987.7 / 3034.5   -> 1.53x  |  2107.7 / 3442.1 -> 1.63x

With one graph both do the same work per probe (one double backward through the shared graph)
and tie: PyHessian's one-graph loop is already the cheapest exact reverse-over-reverse HVP, and
no method of ours is 2x cheaper (bench_hvp.py). With batches, PyHessian redoes a forward and
backward per probe and batch, we do them once per sweep: the speed-up tends to
(gradient + HVP) / HVP plus PyHessian's per-batch overheads, 5x for the MLP (HVP ~0.7
gradient) but only ~1.5x for the CNN (HVP ~2.2 gradients). Target met: MLP with batches only.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch
from curvature_common import LOSS, digits, interleaved_medians, model, set_threads, steady_malloc
from pyhessian import hessian
from record import figure, write_result

from hessvalley.curvature import HessianOperator, hutchinson_trace

TARGET = 2.0
MEASURES = "Hutchinson trace, ours vs PyHessian trace(): same model, data, probes (wall, medians)"


def ours(net, x, y, probes: int, chunk_size: int) -> list[float]:
    op = HessianOperator(net, LOSS, x, y, chunk_size=chunk_size, probes_per_sweep=probes)
    return hutchinson_trace(op, torch.Generator().manual_seed(0), probes).samples.tolist()


def pyhessian_trace(net, x, y, probes: int, chunk_size: int | None) -> list[float]:
    """PyHessian on a copy of ``net``: one graph of (x, y), or a list of batches."""
    net = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
        if chunk_size is None:
            h = hessian(net, LOSS, data=(x, y), cuda=False)
        else:
            batches = [
                (x[i : i + chunk_size], y[i : i + chunk_size]) for i in range(0, len(y), chunk_size)
            ]
            h = hessian(net, LOSS, dataloader=batches, cuda=False)
        samples = h.trace(maxIter=probes, tol=-1.0)
    for p in net.parameters():
        p.grad = None
    return samples


def main() -> None:
    steady_malloc()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=256, help="PyHessian batch size")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(set_threads(args.threads))
    x, y = digits()
    print(
        f"M={len(y)} samples, {args.probes} Rademacher probes, float32; medians of "
        f"{args.repeats} interleaved repeats"
    )
    modes = {"one graph": None, f"batches of {args.chunk_size}": args.chunk_size}
    summary = []
    for family in args.families:
        net = model(family)
        runs = {}
        for mode, chunk in modes.items():
            ours_chunk = chunk or len(y)
            runs[("ours", mode)] = lambda n=net, c=ours_chunk: ours(n, x, y, args.probes, c)
            runs[("PyHessian", mode)] = lambda n=net, c=chunk: pyhessian_trace(
                n, x, y, args.probes, c
            )
        size = sum(p.numel() for p in net.parameters())
        print(f"\n{family}: P={size}; trace estimates (mean +- stderr of the probes):")
        for (who, mode), run in runs.items():
            samples = run()
            assert len(samples) == args.probes, (who, mode, len(samples))
            mean, stderr = statistics.mean(samples), statistics.stdev(samples) / args.probes**0.5
            print(f"  {who:9s} {mode:15s} {mean:8.3f} +- {stderr:.3f}")
        medians = interleaved_medians(runs, args.repeats)
        print(f"  {'mode':15s} {'clock':5s} {'ours ms':>9s} {'PyHessian ms':>13s} {'speed-up':>9s}")
        for mode in modes:
            for clock, times in medians.items():
                mine, theirs = times[("ours", mode)], times[("PyHessian", mode)]
                print(
                    f"  {mode:15s} {clock:5s} {mine * 1e3:9.1f} {theirs * 1e3:13.1f} "
                    f"{theirs / mine:8.2f}x"
                )
                if clock == "wall":
                    summary.append((family, mode, theirs / mine))
    print(f"\nours vs PyHessian (wall), target >= {TARGET}x:")
    figures = []
    for family, mode, speedup in summary:
        met = "met" if speedup >= TARGET else "MISSED"
        print(f"  {family} {mode:15s} {speedup:5.2f}x  {met}")
        label = f"{family}, {mode}: PyHessian time / ours"
        figures.append(figure(label, round(speedup, 3), "x", f">= {TARGET}", speedup >= TARGET))
    write_result("bench_trace_pyhessian", MEASURES, figures, vars(args))


if __name__ == "__main__":
    main()
