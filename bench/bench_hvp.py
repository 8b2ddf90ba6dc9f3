"""Per-probe Hessian-vector-product cost as a ratio to one full-data gradient, per HVP method.

For each model family (MLP and small CNN of the embedded default, on the 1347 digits) and each
HVP method of ``HessianOperator``, one data sweep applies H to ``--probes`` vectors (the
operator's ``probes_per_sweep``); per-probe time = sweep time / probes, which includes the
probes' share of the sweep's forward and first backward pass. The reference is one full-data
gradient, ``op.gradient()``: in one chunk of the whole set (the fastest way, so the ratio is
not flattered by a slow chunked gradient) and, when ``--chunk-size`` is below the data size,
also with those chunks; the ratio uses the faster of the two. Gradients and methods are timed
in turns (round robin, one warm-up call each) and medians of wall and process-CPU time over
``--repeats`` are reported. The method marked ``*`` is the family's default
(what ``method="auto"`` took on this model and data by its own short timing). With one
chunk the gradient graph is kept across sweeps, so the double-backward methods' per-probe
time is the second backward alone.
Targets: <= 1.0x (MLP), <= 1.5x (CNN).

  python bench/bench_hvp.py --threads 1 --repeats 7 --probes 32

Threads: one by default, as the workflow's ``threads: 1``. The development machine has two
cores shared with other jobs; with two torch threads, a thread waiting for a core stalls every
parallel op (MLP per-probe HVPs ran ~5x slower at 2 threads than at 1 under such load), so
two-thread figures there measure the neighbours, not the methods.

Recorded (2-core CPU shared with other jobs, load ~2-3, torch 2.15, 1 thread, float32, 1347
samples in one chunk, 32 probes per sweep, medians of 7 interleaved repeats; per-probe HVP /
gradient, wall clock, steady malloc (this script's default) | glibc's default malloc):
  mlp (64-32-10 tanh, 2410 params), gradient 1.5 | 2.2 ms:
    * double_backward_batched   0.70 | 0.69   (vmapped in sub-blocks, BATCHED_SAMPLE_PROBES)
      double_backward_loop      0.63 | 0.61
      forward_over_reverse_vmap 0.52 | 0.84
      forward_over_reverse_loop 3.16 | 3.13
  cnn (ws_cnn 8-8-8 relu, 1338 params), gradient 29 | 27 ms:
    * double_backward_loop      2.23 | 2.76
      double_backward_batched   2.25 | 3.13
      forward_over_reverse_vmap 1.76 | 6.29
      forward_over_reverse_loop 3.36 | 4.45
MLP: target met by every reverse-over-reverse method. The default stays batched, not the
one-chunk winner: vmap loses its lead under the default malloc (its tensors are 32x a chunk's
activations and are page-faulted in again every sweep) and needs that memory, and the loop's
per-chunk overhead grows when the data are chunked (chunks of 256: loop ~1.3-1.5x).
CNN: target missed by every method. An exact HVP costs a tangent forward (two convolutions per
layer, conv(dx, W) + conv(x, dW)) plus a tangent backward (two convolution backwards per
layer), i.e. about two gradients of the same kernels, so ~2x is the floor unless batching the
probes makes the kernels faster; vmap does that a little (1.76x), but only with the steady
malloc and at 32x the activation memory, so the loop stays the default. Neither chunk size
(128-2048), probes per sweep (8-64) nor the method brought it to 1.5x of the one-chunk
gradient; float64 would only be slower.
"""

from __future__ import annotations

import argparse

import torch
from curvature_common import LOSS, digits, interleaved_medians, model, set_threads, steady_malloc
from record import figure, write_result

from hessvalley.curvature.operator import HVP_METHODS, HessianOperator

TARGETS = {"mlp": 1.0, "cnn": 1.5}
MEASURES = "per-probe Hessian-vector product time / one full-data gradient (wall, medians)"


def main() -> None:
    steady_malloc()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn"], choices=TARGETS)
    parser.add_argument("--methods", nargs="+", default=list(HVP_METHODS), choices=HVP_METHODS)
    parser.add_argument("--probes", type=int, default=32, help="probe vectors per data sweep")
    parser.add_argument("--samples", type=int, default=1347)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    print(set_threads(args.threads))
    dtype = getattr(torch, args.dtype)
    x, y = digits(args.samples)
    generator = torch.Generator().manual_seed(0)
    print(
        f"M={len(y)} samples, chunk {args.chunk_size}, {args.probes} probes per sweep, "
        f"{args.dtype}; medians of {args.repeats} interleaved repeats"
    )
    rows = []
    for family in args.families:
        net = model(family)

        def operator(method: str, chunk_size: int, net=net) -> HessianOperator:
            return HessianOperator(
                net,
                LOSS,
                x,
                y,
                method=method,
                chunk_size=chunk_size,
                probes_per_sweep=args.probes,
                dtype=dtype,
            )

        ops = {method: operator(method, args.chunk_size) for method in args.methods}
        first = next(iter(ops.values()))
        probes = torch.randn(first.size, args.probes, generator=generator, dtype=dtype)
        reference = first.matmat(probes)
        auto = operator("auto", args.chunk_size)
        auto.matmat(probes)
        print(f"{family}: method='auto' measured {auto.method_timings}, took {auto.method}")
        for method, op in ops.items():
            error = (op.matmat(probes) - reference).abs().max() / reference.abs().max()
            assert error < 1e-4, f"{method} disagrees with {args.methods[0]}: {error:.1e}"
        gradients = {"gradient, one chunk": operator(args.methods[0], len(y)).gradient}
        if args.chunk_size < len(y):
            gradients[f"gradient, chunks of {args.chunk_size}"] = first.gradient
        timed = dict(gradients)
        timed.update({m: (lambda op=op, v=probes: op.matmat(v)) for m, op in ops.items()})
        medians = interleaved_medians(timed, args.repeats)
        base = {clock: min(medians[clock][g] for g in gradients) for clock in medians}
        print(f"\n{family}: P={first.size}, target per-probe HVP <= {TARGETS[family]}x gradient")
        print(f"  {'':29s} {'wall ms':>9s} {'cpu ms':>9s} {'wall x':>7s} {'cpu x':>7s}  target")
        for name in gradients:
            wall, cpu = medians["wall"][name], medians["cpu"][name]
            print(f"    {name:27s} {wall * 1e3:9.2f} {cpu * 1e3:9.2f}")
        for method in args.methods:
            wall = medians["wall"][method] / args.probes
            cpu = medians["cpu"][method] / args.probes
            ratio_wall, ratio_cpu = wall / base["wall"], cpu / base["cpu"]
            mark = "*" if method == auto.method else " "
            met = "met" if ratio_wall <= TARGETS[family] else "MISSED"
            print(
                f"  {mark} {method:27s} {wall * 1e3:9.2f} {cpu * 1e3:9.2f} "
                f"{ratio_wall:7.2f} {ratio_cpu:7.2f}  {met}"
            )
            rows.append((family, method, ratio_wall, mark))
    print("\nper-probe HVP / gradient (wall), * = the method auto took:")
    figures = []
    for family, method, ratio, mark in rows:
        if mark == "*":
            print(f"  {family}: {method} {ratio:.2f}x (target <= {TARGETS[family]}x)")
        target = f"<= {TARGETS[family]}" if mark == "*" else ""
        met = ratio <= TARGETS[family] if mark == "*" else None
        label = f"{family}, {method}" + (" (auto's choice)" if mark == "*" else "")
        figures.append(figure(label, round(ratio, 3), "x gradient", target, met))
    write_result("bench_hvp", MEASURES, figures, vars(args))


if __name__ == "__main__":
    main()
