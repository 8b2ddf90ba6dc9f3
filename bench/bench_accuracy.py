"""Time to a 1% relative standard error of tr(H) on trained nets with spiked spectra: our
Hutch++ with adaptive stopping against PyHessian's Hutchinson (equal accuracy, not equal probes).

Models (bench/suite_models.py, float32, cross-entropy, whole data in one graph on both sides):
``mlp`` 784-256-10 tanh on its 2048 points, trained by full-batch GD with momentum 0.9; ``cnn``
conv 16-32-32 + linear on 128 of its images (the suite's 512 make the float64 reference and
PyHessian's hundreds of probes too slow for a 10-minute run), trained by full-batch Adam. The
top eigenvalues (Lanczos) against the trace show the spike: about one outlier per class, then a
bulk near zero, the regime where Hutchinson's per-probe spread is large and Hutch++ pays.

Reference: a float64 Hutch++ (sketch ``REFERENCE_SKETCH``, adaptive to ``--reference-rtol``,
default 0.2% relative standard error, on a seed none of the runs below uses); its stderr adds
in quadrature to the errors below (0.2 of the 1% target: ~2% on an RMS).

Per seed (``--seeds``, default 5), timed in turns, wall clock, set-up included:
- ours: ``HessianOperator(method="auto")`` + ``hutchpp_trace(sketch_size=20, rtol=0.01)``
  (minimum 20 residual probes, then blocks of 20 until the relative stderr is <= 1%). The sketch
  is fixed at 2 x classes, not tuned on the reference: a C-class classifier's Hessian has about
  C outliers (Papyan 2019), so 2C columns catch them with room to spare.
- PyHessian (a): its own stopping rule, ``trace()`` at its defaults (maxIter=100, tol=1e-3: stop
  when the running mean changes by < 0.1% relatively): time, probes, error vs the reference.
- PyHessian (b): Hutchinson to the same 1% relative stderr: a pilot of ``--pilot`` probes gives
  the per-probe std, n = (std / (0.01 |mean|))^2, then ``trace(maxIter=n, tol=-1)`` is timed
  (the pilot is not counted). Where that run would exceed ``--pyhessian-seconds``, as many
  probes as fit are timed and the time is extrapolated linearly to n from that run and a
  1-probe run (PyHessian's loop costs the same per probe); such rows are marked "extrap." and
  leave (b)'s error out (its estimate is from fewer probes).
Reported: medians over seeds of the times, (b) / ours (target >= 5), (a) / ours, RMS relative
error vs the reference, and ours' RMS z-score (error / reported stderr; ~1 when honest).

  python bench/bench_accuracy.py [--models mlp cnn] [--seeds 5] [--rtol 0.01] [--threads 1]
      [--results-dir bench/results]

Recorded on one machine, one run each (2-core Intel Xeon 2.8 GHz shared with other jobs;
torch 2.14.1, 1 thread, steady malloc, defaults: ~350 s each; medians over 5 seeds).
  mlp: train loss 0.0162 (200 GD steps), top eigenvalues 13.9, 12.5, 11.2, 9.96, 9.37, 8.13,
    6.76, 6.31, 5.6, then 2.73, 2.34, ...; reference tr(H) = 209.8 +- 0.42 (0.20%), the top 12
    carry 43%.
    before (engine of 0c117ae): ours 1.84 s (60 HVPs), PyHessian (b) 8.70 s (354 probes, all
    timed in full): (b) / ours = 4.7x, target >= 5 MISSED; RMS error ours 1.27% (RMS z 1.65),
    (a) 3.41% (0.40 s, 19 probes), (b) 0.91%.
    after: ours 1.59 s (60 HVPs, double_backward_loop), (b) 8.37 s: 5.3x, target met (6.4x in
    a run of the same code before the 10% switch margin); RMS error ours 1.54% (RMS z 1.98),
    (a) 3.43%, (b) 0.92%.
  cnn (N = 128): train loss 0.0002 (50 Adam steps), top eigenvalues 2.33, 1.9, 1.26, 1.14,
    1.06, 0.896, 0.787, 0.712, 0.529, then 0.132, ...; reference tr(H) = 12.31 +- 0.025
    (0.20%), the top 12 carry 89%.
    before: ours 5.54 s, (b) 164 s (1743 probes, extrapolated from 30 s runs): 29.6x, met;
    RMS error ours 0.26% (RMS z 0.57), (a) 16% (10 probes).
    after: ours 6.38 s (double_backward_loop), (b) 195 s: 30.6x, met; RMS error ours 0.48%
    (RMS z 0.98), (a) 15.9%.
Hutch++ took the minimum 60 HVPs (20 sketch, 20 for tr(Q^T H Q), 20 residual) in every run.
The MLP's residual quadratic forms are skewed, so 20 of them underestimate their spread: over
40 seeds (float64 reference, fixed 20 or adaptive) ours' RMS z is 1.4 and its RMS error 1.1%,
at 60 residual probes still RMS z 1.4; PyHessian (b)'s 300-400 probes land at 0.9%. Matching
(b)'s 0.9% would take ~30 residual probes (70 HVPs, ~15% more time): (b) / ours ~4.6-5.5x on
the MLP, so its target is met only narrowly, if at all, at truly equal accuracy. The CNN's
sharper spike (~1700 Hutchinson probes against Hutch++'s 60 HVPs) gives ~30x. PyHessian's own
rule (a) stops after 8-30 probes whatever the spread: 3.4% (MLP) and 16% (CNN) RMS error for
the 1% asked.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from curvature_common import set_threads, steady_malloc
from pyhessian import hessian
from record import RESULTS, figure, write_result
from suite_models import N_CLASSES, suite_model
from torch import Tensor, nn

from hessvalley.curvature import HessianOperator, hutchpp_trace, lanczos_extremes
from hessvalley.losses import cross_entropy

LOSS = cross_entropy()
SKETCH = 2 * N_CLASSES
REFERENCE_SKETCH = 40
TARGET = 5.0
MEASURES = (
    "time to a 1% relative stderr of tr(H), trained nets: ours Hutch++ vs PyHessian "
    "Hutchinson (wall, medians over seeds)"
)


@dataclass(frozen=True)
class Training:
    """How a suite model is trained to a spiked spectrum: full-batch steps of GD with
    momentum 0.9 (``adam`` False) or Adam, on ``samples`` of its data."""

    samples: int
    steps: int
    lr: float
    adam: bool


TRAINING = {
    "mlp": Training(samples=2048, steps=200, lr=0.1, adam=False),
    "cnn": Training(samples=128, steps=50, lr=0.003, adam=True),
}


def trained(name: str) -> tuple[nn.Module, Tensor, Tensor, float]:
    """The suite model trained full-batch on its data; returns it, the data, the final loss."""
    spec = TRAINING[name]
    net, x, y = suite_model(name, n_samples=spec.samples)
    if spec.adam:
        optimizer = torch.optim.Adam(net.parameters(), lr=spec.lr)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=spec.lr, momentum=0.9)
    for _ in range(spec.steps):
        optimizer.zero_grad()
        LOSS(net(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        return net.eval(), x, y, LOSS(net(x), y).item()


def ours(net: nn.Module, x: Tensor, y: Tensor, seed: int, rtol: float):
    """Set-up + adaptive Hutch++; returns (seconds, estimate, method)."""
    start = time.perf_counter()
    op = HessianOperator(net, LOSS, x, y, chunk_size=len(y), probes_per_sweep=SKETCH)
    run = hutchpp_trace(
        op,
        torch.Generator().manual_seed(seed),
        SKETCH,
        sketch_size=SKETCH,
        rtol=rtol,
        max_probes=5000,
    )
    return time.perf_counter() - start, run, op.method


def pyhessian(net: nn.Module, x: Tensor, y: Tensor, seed: int, **trace_args):
    """PyHessian on a copy of ``net`` with the whole data in one graph; returns (seconds,
    samples). Its probes come from torch's global generator, seeded here."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    net = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
        samples = hessian(net, LOSS, data=(x, y), cuda=False).trace(**trace_args)
    seconds = time.perf_counter() - start
    for p in net.parameters():
        p.grad = None
    return seconds, samples


def pyhessian_to_rtol(net, x, y, seed: int, args: argparse.Namespace) -> dict:
    """PyHessian Hutchinson to ``args.rtol``: probes n from a pilot's std, then n probes timed
    (or timed up to ``args.pyhessian_seconds`` and extrapolated linearly)."""
    pilot_seconds, pilot = pyhessian(net, x, y, seed + 1000, maxIter=args.pilot, tol=-1.0)
    spread = statistics.stdev(pilot) / (args.rtol * abs(statistics.mean(pilot)))
    n = max(2, math.ceil(spread**2))
    one, _ = pyhessian(net, x, y, seed, maxIter=1, tol=-1.0)
    per_probe = (pilot_seconds - one) / (args.pilot - 1)
    timed = n
    if one + (n - 1) * per_probe > args.pyhessian_seconds:
        timed = max(2, min(n, 1 + int((args.pyhessian_seconds - one) / per_probe)))
    seconds, samples = pyhessian(net, x, y, seed, maxIter=timed, tol=-1.0)
    if timed < n:
        seconds += (n - timed) * (seconds - one) / (timed - 1)
    return {"seconds": seconds, "n": n, "samples": samples, "extrapolated": timed < n}


def describe(name: str, net: nn.Module, x: Tensor, y: Tensor, loss: float, args) -> float:
    """Print the training, the top of the spectrum and the reference; return the reference."""
    spec = TRAINING[name]
    op = HessianOperator(net, LOSS, x, y, chunk_size=len(y), probes_per_sweep=SKETCH)
    top = (
        lanczos_extremes(op, 12, torch.Generator().manual_seed(99), which="largest", block_size=4)
        .largest.sort(descending=True)
        .values
    )
    op64 = HessianOperator(
        net, LOSS, x, y, chunk_size=len(y), probes_per_sweep=REFERENCE_SKETCH, dtype=torch.float64
    )
    start = time.perf_counter()
    reference = hutchpp_trace(
        op64,
        torch.Generator().manual_seed(10_000),
        REFERENCE_SKETCH,
        sketch_size=REFERENCE_SKETCH,
        rtol=args.reference_rtol,
        max_probes=5000,
    )
    print(
        f"\n{name}: P = {op.size}, N = {len(y)}; {spec.steps} full-batch "
        f"{'Adam' if spec.adam else 'GD (momentum 0.9)'} steps, lr {spec.lr}: train loss "
        f"{loss:.4f}\n  top eigenvalues (Lanczos, float32): "
        f"{', '.join(f'{v:.3g}' for v in top.tolist())}\n  reference: float64 Hutch++ "
        f"(sketch {REFERENCE_SKETCH}, {reference.n_matvecs} HVPs, "
        f"{time.perf_counter() - start:.0f} s): tr(H) = {reference.estimate:.4f} +- "
        f"{reference.stderr:.4f} ({reference.relative_stderr:.2%}); top 12 carry "
        f"{top.sum().item() / reference.estimate:.0%} of it",
        flush=True,
    )
    return reference.estimate


def run_seeds(net, x, y, exact: float, args: argparse.Namespace) -> dict[str, list]:
    """Ours, PyHessian (a) and (b) per seed, in turns; printed per seed."""
    rows: dict[str, list] = {key: [] for key in ("ours", "a", "b", "method")}
    print(
        f"  {'seed':>4s} | {'ours s':>7s} {'HVPs':>5s} {'error':>7s} {'z':>5s} | "
        f"{'(a) s':>6s} {'probes':>6s} {'error':>7s} | {'(b) s':>7s} {'n':>6s} {'error':>7s}"
    )
    for seed in range(args.seeds):
        seconds, run, method = ours(net, x, y, seed, args.rtol)
        rows["ours"].append((seconds, run.n_matvecs, run.estimate, run.stderr))
        rows["method"].append(method)
        a_seconds, a_samples = pyhessian(net, x, y, seed)
        rows["a"].append((a_seconds, len(a_samples), statistics.mean(a_samples)))
        b = pyhessian_to_rtol(net, x, y, seed, args)
        rows["b"].append(b)
        b_error = (
            "extrap."
            if b["extrapolated"]
            else f"{(statistics.mean(b['samples']) - exact) / exact:+7.2%}"
        )
        print(
            f"  {seed:4d} | {seconds:7.2f} {run.n_matvecs:5d} "
            f"{(run.estimate - exact) / exact:+7.2%} {(run.estimate - exact) / run.stderr:+5.2f} | "
            f"{a_seconds:6.2f} {len(a_samples):6d} "
            f"{(statistics.mean(a_samples) - exact) / exact:+7.2%} | "
            f"{b['seconds']:7.2f} {b['n']:6d} {b_error:>7s}",
            flush=True,
        )
    return rows


def rms(values: list[float]) -> float:
    return statistics.fmean(v * v for v in values) ** 0.5 if values else math.nan


def summarise(name: str, rows: dict[str, list], exact: float) -> list[dict]:
    """Medians and RMS errors over seeds: printed, and returned as figures."""
    ours_s = statistics.median(r[0] for r in rows["ours"])
    a_s = statistics.median(r[0] for r in rows["a"])
    b_s = statistics.median(b["seconds"] for b in rows["b"])
    ours_err = rms([(r[2] - exact) / exact for r in rows["ours"]])
    ours_z = rms([(r[2] - exact) / r[3] for r in rows["ours"]])
    a_err = rms([(r[2] - exact) / exact for r in rows["a"]])
    real_b = [b for b in rows["b"] if not b["extrapolated"]]
    b_err = rms([(statistics.mean(b["samples"]) - exact) / exact for b in real_b])
    speedup, a_ratio = b_s / ours_s, a_s / ours_s
    met = "met" if speedup >= TARGET else "MISSED"
    print(
        f"  medians: ours {ours_s:.2f} s ({statistics.median(r[1] for r in rows['ours']):.0f} "
        f"HVPs, {rows['method'][0]}); PyHessian (a) {a_s:.2f} s "
        f"({statistics.median(r[1] for r in rows['a']):.0f} probes); (b) {b_s:.2f} s "
        f"({statistics.median(b['n'] for b in rows['b']):.0f} probes, "
        f"{len(rows['b']) - len(real_b)} of {len(rows['b'])} extrapolated)\n"
        f"  (b) / ours = {speedup:.1f}x (target >= {TARGET}: {met}); (a) / ours = {a_ratio:.2f}x\n"
        f"  RMS relative error: ours {ours_err:.2%} (RMS z {ours_z:.2f}), (a) {a_err:.2%}, "
        f"(b) {b_err:.2%} ({len(real_b)} timed in full)",
        flush=True,
    )
    return [
        figure(
            f"{name}: PyHessian Hutchinson to 1% / ours Hutch++ (time)",
            round(speedup, 2),
            "x",
            f">= {TARGET}",
            speedup >= TARGET,
        ),
        figure(f"{name}: ours, time to 1% ({rows['method'][0]})", round(ours_s, 3), "s"),
        figure(f"{name}: PyHessian own rule (tol 1e-3) / ours (time)", round(a_ratio, 3), "x"),
        figure(f"{name}: RMS relative error, ours", round(100 * ours_err, 3), "%"),
        figure(f"{name}: RMS relative error, PyHessian own rule", round(100 * a_err, 3), "%"),
        figure(f"{name}: RMS z-score, ours", round(ours_z, 2)),
    ]


def main() -> None:
    steady_malloc()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TRAINING), choices=TRAINING)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rtol", type=float, default=0.01, help="target relative stderr")
    parser.add_argument("--reference-rtol", type=float, default=0.002)
    parser.add_argument("--pilot", type=int, default=32, help="PyHessian (b) pilot probes")
    parser.add_argument("--pyhessian-seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    print(set_threads(args.threads))
    start = time.perf_counter()
    figures = []
    for name in args.models:
        net, x, y, loss = trained(name)
        exact = describe(name, net, x, y, loss, args)
        figures += summarise(name, run_seeds(net, x, y, exact, args), exact)
    print(f"\ndone in {time.perf_counter() - start:.0f} s; {set_threads(args.threads)}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_result("bench_accuracy", MEASURES, figures, settings, args.results_dir)


if __name__ == "__main__":
    main()
