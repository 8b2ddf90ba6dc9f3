"""Per-probe Hessian-vector-product cost as a ratio to one full-data gradient, per HVP method.

For each model family (MLP and small CNN of the embedded default, on 1347 digits) and each
HVP method of ``HessianOperator``, one sweep applies H to ``--probes`` vectors; the per-probe
time (sweep / probes) is divided by the time of one full-data gradient (``op.gradient()``,
same chunks). Gradient and methods are timed in turns; medians of wall and CPU time are
reported. The method marked ``*`` is the family's default (``DEFAULT_HVP_METHOD``), chosen
from this table. Targets: <= 1.0x (MLP), <= 1.5x (CNN).

  python bench/bench_hvp.py --threads 1 --repeats 15 --probes 32
"""

from __future__ import annotations

import argparse

import torch
from curvature_common import LOSS, digits, interleaved_medians, model, set_threads

from hessvalley.curvature.operator import DEFAULT_HVP_METHOD, HVP_METHODS, HessianOperator

TARGETS = {"mlp": 1.0, "cnn": 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--methods", nargs="+", default=list(HVP_METHODS))
    parser.add_argument("--probes", type=int, default=32, help="probe vectors per data sweep")
    parser.add_argument("--samples", type=int, default=1347)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    print(set_threads(args.threads))
    dtype = getattr(torch, args.dtype)
    x, y = digits(args.samples)
    generator = torch.Generator().manual_seed(0)
    print(
        f"M={len(y)}, {args.probes} probes/sweep, chunk {args.chunk_size}, {args.dtype}, "
        f"medians of {args.repeats}"
    )
    for family in args.families:
        net = model(family)
        ops = {
            method: HessianOperator(
                net,
                LOSS,
                x,
                y,
                method=method,
                chunk_size=args.chunk_size,
                probes_per_sweep=args.probes,
                dtype=dtype,
            )
            for method in args.methods
        }
        first = next(iter(ops.values()))
        probes = torch.randn(first.size, args.probes, generator=generator, dtype=dtype)
        reference = first.matmat(probes)
        for method, op in ops.items():
            error = (op.matmat(probes) - reference).abs().max() / reference.abs().max()
            assert error < 1e-4, f"{method} disagrees with {args.methods[0]}: {error:.1e}"
        timed = {"gradient": first.gradient}
        timed.update({m: (lambda op=op, probes=probes: op.matmat(probes)) for m, op in ops.items()})
        medians = interleaved_medians(timed, args.repeats)
        print(f"\n{family}: P={first.size}, target per-probe HVP <= {TARGETS[family]}x gradient")
        for clock in ("wall", "cpu"):
            gradient_time = medians[clock]["gradient"]
            print(f"  {clock} clock: full-data gradient {gradient_time * 1e3:.2f} ms")
            for method in args.methods:
                per_probe = medians[clock][method] / args.probes
                mark = "*" if method == DEFAULT_HVP_METHOD[family] else " "
                print(
                    f"   {mark} {method:27s} per probe {per_probe * 1e3:8.2f} ms   "
                    f"ratio {per_probe / gradient_time:5.2f}x"
                )


if __name__ == "__main__":
    main()
