"""The engine suite: our Hutchinson trace against PyHessian's on nets the engine was not tuned
on, at equal probes, in one graph and in mini-batches; and each one's per-probe HVP cost as a
multiple of one full-data gradient.

Models (bench/suite_models.py; synthetic data, float32, cross-entropy, BatchNorm in eval mode
with running statistics, as PyHessian's ``model.eval()``):
- ``mlp``: MLP 784-256-10 tanh, P = 203,530, N = 2048, 32 probes;
- ``cnn``: conv 16-32-32 (3x3, ReLU, max-pool 2) + linear 512-10, P = 19,466, N = 512 images
  3x32x32, 32 probes;
- ``resnet``: PreAct-ResNet18 of width 4 (CIFAR-shaped), P = 44,510, N = 512, 8 probes (one HVP
  costs ~2 s there at one thread);
- ``bn``: the cnn with BatchNorm2d after each convolution, P = 19,626, N = 512, 16 probes.
(``PROBES_CAP``: ``--probes`` above the cap is cut to it, so that a default run stays ~15 min.)

Modes, each side under the same memory bound:
- ``one graph``: ours with ``chunk_size`` = N; PyHessian ``hessian(model, loss, data=(x, y))``,
  which builds the whole-data graph once and reuses it for every probe.
- ``batches of B`` (``--batch-size``, 256): ours with ``chunk_size`` = B, the probes of a sweep
  sharing each chunk's forward and backward; PyHessian ``hessian(..., dataloader=[batches])``,
  which redoes every batch's forward and backward for every probe.
Ours always runs ``probes_per_sweep`` = probes and ``method="auto"``; the method it ran is read
from the operator after its first matmat, printed and written to the json.

Timed in turns, wall clock, medians of ``--repeats`` interleaved rounds:
- a full trace with exactly the model's probes, set-up included: ours ``HessianOperator(...)`` +
  ``hutchinson_trace``; PyHessian ``hessian(...)`` + ``trace(maxIter=probes, tol=-1)`` (tol < 0
  disables its early stop). Targets: PyHessian time / ours >= 1.0 in one graph ("never
  slower"), >= 1.5 in batches. The first round's results give the estimates: the two of each
  mode (same data, other random probes) must agree, a difference over 4 combined standard
  errors is flagged. An A/A control times PyHessian's trace twice, as two entries of
  the same rounds: the ratio of the two (ideally 1.00) is the noise a ratio near 1 is read
  against.
- per-probe HVP / full-data gradient. The gradient is the same for both: a plain torch forward
  and backward of the whole data in one graph (one-graph mode) or accumulated over the batches
  (batch mode). Ours = one ``op.matmat`` of a (P, probes) block on an operator built (and
  warmed up by one matmat) beforehand, / probes: with one graph a double backward through the
  kept graph, with batches also the probes' share of each chunk's forward and first backward.
  PyHessian's = one probe of its trace loop on a ``hessian`` object built beforehand: with one
  graph ``hessian_vector_product`` through the graph it keeps, with batches
  ``dataloader_hv_product`` (a forward, backward and double backward per batch). Both timed
  directly, in the same rounds. Target: ours <= PyHessian's.
Only the persistent operator's matmat and the gradients get a warm-up call; the traces' first
(cold) round is one of the repeats (the median discards it when slow): warming them too would
add a fourth round of ~4 min.

PyHessian 0.1 under torch 2.x runs unmodified, on a deep copy (it switches the model to eval and
leaves .grad fields holding a double-backward graph, cleared after each call to break that
reference cycle); torch's warning about ``backward(create_graph=True)`` is silenced. Needs
``pip install -e ".[bench]"``.

  python bench/bench_engine.py [--models mlp cnn resnet bn] [--modes graph batches]
      [--probes 32] [--batch-size 256] [--repeats 3] [--threads 1] [--results-dir DIR]

Repeats default to 3, not 5: at one thread on the 2-core development CPU a round of the four
models takes ~4-5 min (a CNN HVP ~0.5 s, a ResNet one ~2 s), so 3 rounds are the ~15 min a
default run may take.

Recorded on one machine, one run each (2-core Intel Xeon 2.8 GHz shared with other jobs, load
average ~1.0; torch 2.14.1, 1 thread, steady malloc, defaults: ~1040 s each; wall, medians of 3
rounds; HVP/g = per-probe HVP / gradient; A/A = PyHessian against itself; db_ =
double_backward_, fwd_vmap = forward_over_reverse_vmap, the method "auto" ran).
Before (engine of 0c117ae: size rule for the method, the graph rebuilt every sweep):
  model  mode        ours ms  PyH ms  PyH/ours  HVP/g ours  PyH   A/A   method
  mlp    one graph      1059     762  0.72        1.68     1.40  1.04  db_batched
  mlp    batches 256    1575    1996  1.27        2.17     2.82  1.03  db_batched
  cnn    one graph     12138   11619  0.96        1.51     1.51  1.02  db_loop
  cnn    batches 256   12430   19687  1.58        1.47     2.52  0.99  db_loop
  resnet one graph     12683   12557  0.99        2.61     2.42  0.96  db_loop
  resnet batches 256   12383   17683  1.43        2.48     3.53  0.96  db_loop
  bn     one graph      8374    8662  1.03        1.98     1.91  0.96  db_loop
  bn     batches 256    8733   13553  1.55        1.98     2.90  1.02  db_loop
After (graph kept across sweeps in one graph, method measured, rows grouped by 4):
  mlp    one graph       705     727  1.03        1.07     0.99  0.90  db_loop
  mlp    batches 256     874    1759  2.01        1.28     2.68  0.98  db_loop
  cnn    one graph     11435   11377  0.99        1.54     1.56  0.99  db_loop
  cnn    batches 256   12112   19294  1.59        1.56     2.36  1.00  db_loop
  resnet one graph     12174   12684  1.04        2.66     2.71  1.03  db_loop
  resnet batches 256    9363   16007  1.71        1.98     3.08  0.95  fwd_vmap
  bn     one graph      9178    9197  1.00        1.93     1.85  1.02  db_loop
  bn     batches 256    8742   13861  1.59        1.94     2.95  1.01  db_loop
(targets: PyH/ours >= 1.0 in one graph, >= 1.5 in batches; HVP/g ours <= PyHessian's.) Every
pair of estimates agreed (<= 1.8 combined stderr). In one graph both sides build the graph once
and pay one double backward per probe through it: a tie by construction, read against the A/A
column (0.90-1.03): 0.99-1.04 after, where the MLP was 0.72 before (its size rule picked the
batched variant, 1.68 gradients per probe). The MLP's and the BN net's per-probe HVP stays 4-8%
above PyHessian's (ours differentiates one flat parameter vector: its views add to each
backward). In batches ours shares each chunk's forward and backward among a sweep's probes,
PyHessian redoes them per probe, so the ratio is bounded by (gradient + HVP) / HVP per chunk:
1.6-1.7 on the conv nets, 2.0 on the MLP. The trial (once per process and shape) costs 0.1-0.4 s
on the MLP, 2.6-25 s on the conv nets, outside these medians.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from curvature_common import interleaved_medians, set_threads, steady_malloc
from pyhessian import hessian
from pyhessian.utils import hessian_vector_product
from record import RESULTS, figure, write_result
from suite_models import SUITE, suite_model
from torch import Tensor, nn

from hessvalley.curvature import HessianOperator, hutchinson_trace
from hessvalley.losses import cross_entropy

LOSS = cross_entropy()
TARGET = 1.0
TARGET_BATCHES = 1.5
PROBES_CAP = {"resnet": 8, "bn": 16}  # one run of the default suite in ~15 min (docstring)
MEASURES = (
    "suite: Hutchinson trace ours vs PyHessian at equal probes (set-up included), per-probe "
    "HVP / gradient (wall, medians)"
)
Batches = list[tuple[Tensor, Tensor]]


def split(x: Tensor, y: Tensor, batch_size: int | None) -> Batches:
    """The data as PyHessian's dataloader: a list of (x, y) batches (one when None)."""
    if batch_size is None:
        return [(x, y)]
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


def our_operator(net: nn.Module, x: Tensor, y: Tensor, chunk: int, probes: int):
    return HessianOperator(
        net, LOSS, x, y, chunk_size=chunk, probes_per_sweep=probes, method="auto", bn_policy="eval"
    )


def our_trace(net: nn.Module, x: Tensor, y: Tensor, chunk: int, probes: int):
    """Set-up + trace; returns (samples, the method the operator ran)."""
    op = our_operator(net, x, y, chunk, probes)
    samples = hutchinson_trace(op, torch.Generator().manual_seed(0), probes).samples.tolist()
    return samples, op.method


def pyhessian_trace(net: nn.Module, batches: Batches, probes: int, one_graph: bool):
    """PyHessian on a copy of ``net``: one graph of the data, or a dataloader of batches."""
    net = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
        if one_graph:
            h = hessian(net, LOSS, data=batches[0], cuda=False)
        else:
            h = hessian(net, LOSS, dataloader=batches, cuda=False)
        samples = h.trace(maxIter=probes, tol=-1.0)
    for p in net.parameters():
        p.grad = None
    return samples, "pyhessian"


def pyhessian_probe(net: nn.Module, batches: Batches, one_graph: bool) -> Callable[[], object]:
    """One probe of PyHessian's trace loop on a persistent ``hessian`` object: with one graph
    a double backward through the graph it keeps (``hessian_vector_product``), with batches
    its ``dataloader_hv_product`` (every batch's forward, backward and double backward)."""
    net = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
        if one_graph:
            h = hessian(net, LOSS, data=batches[0], cuda=False)
        else:
            h = hessian(net, LOSS, dataloader=batches, cuda=False)
    v = [torch.randint_like(p, high=2) * 2 - 1 for p in h.params]

    def probe() -> object:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
            if one_graph:
                return hessian_vector_product(h.gradsH, h.params, v)
            return h.dataloader_hv_product(v)

    return probe


def gradient_function(net: nn.Module, batches: Batches) -> Callable[[], None]:
    """The reference full-data gradient: plain torch forward + backward of the mean loss, in
    one graph (one batch) or accumulated over the batches, on an eval-mode copy."""
    net = copy.deepcopy(net).eval().requires_grad_(True)
    total = sum(len(yb) for _, yb in batches)

    def gradient() -> None:
        net.zero_grad(set_to_none=True)
        for xb, yb in batches:
            (LOSS(net(xb), yb) * (len(yb) / total)).backward()

    return gradient


def mode_functions(
    net: nn.Module, x: Tensor, y: Tensor, probes: int, mode: str, batch_size: int | None
) -> tuple[dict[tuple[str, str], Callable[[], object]], HessianOperator]:
    """The timed functions of one mode, keyed (what, mode), and our persistent operator."""
    batches = split(x, y, batch_size)
    chunk = batch_size or len(y)
    one_graph = batch_size is None
    op = our_operator(net, x, y, chunk, probes)
    signs = torch.randint(0, 2, (op.size, probes), generator=torch.Generator().manual_seed(1))
    block = 2.0 * signs - 1.0
    functions = {
        ("ours trace", mode): lambda: our_trace(net, x, y, chunk, probes),
        ("PyHessian trace", mode): lambda: pyhessian_trace(net, batches, probes, one_graph),
        ("PyHessian trace, A/A", mode): lambda: pyhessian_trace(net, batches, probes, one_graph),
        ("PyHessian probe", mode): pyhessian_probe(net, batches, one_graph),
        ("ours matmat", mode): lambda: op.matmat(block),
        ("gradient", mode): gradient_function(net, batches),
    }
    return functions, op


def keeping_first(functions: dict) -> tuple[dict, dict]:
    """The functions wrapped so that each one's first result is kept (in the second dict):
    the first timed round gives the estimates without a round of its own."""
    first: dict = {}

    def keeping(key, function):
        def run():
            result = function()
            first.setdefault(key, result)
            return result

        return run

    return {key: keeping(key, function) for key, function in functions.items()}, first


def stats(samples: list[float]) -> tuple[float, float]:
    return statistics.mean(samples), statistics.stdev(samples) / len(samples) ** 0.5


def print_estimates(first: dict, modes: list[str], methods: dict[str, str]) -> None:
    """Both estimates of each mode (mean +- stderr) and whether they agree within 4 stderr."""
    print("  trace estimates, mean +- stderr of the probes:")
    for mode in modes:
        (ours, ours_se), (theirs, theirs_se) = (
            stats(first[(who, mode)][0]) for who in ("ours trace", "PyHessian trace")
        )
        z = abs(ours - theirs) / (ours_se**2 + theirs_se**2) ** 0.5
        flag = "agree" if z <= 4 else "DISAGREE (> 4 combined stderr)"
        print(
            f"    {mode:15s} ours {ours:10.4f} +- {ours_se:.4f} [{methods[mode]}]   "
            f"PyHessian {theirs:10.4f} +- {theirs_se:.4f}   |diff| = {z:.1f} stderr: {flag}"
        )


def mode_figures(
    name: str, mode: str, wall: dict, probes: int, method: str
) -> tuple[list[dict], str]:
    """The figures of one model and mode from the wall medians, and the printed row."""
    ours, theirs = wall[("ours trace", mode)], wall[("PyHessian trace", mode)]
    speedup = theirs / ours
    target = TARGET if mode == "one graph" else TARGET_BATCHES
    gradient = wall[("gradient", mode)]
    ours_hvp = wall[("ours matmat", mode)] / probes / gradient
    theirs_hvp = wall[("PyHessian probe", mode)] / gradient
    control = wall[("PyHessian trace, A/A", mode)] / theirs
    prefix = f"{name}, {mode}"
    figures = [
        figure(f"{prefix}: A/A control, PyHessian trace time / itself", round(control, 3), "x"),
        figure(
            f"{prefix}: PyHessian trace time / ours ({probes} probes)",
            round(speedup, 3),
            "x",
            f">= {target}",
            speedup >= target,
        ),
        figure(f"{prefix}: per-probe HVP / gradient, PyHessian", round(theirs_hvp, 3), "x"),
        figure(
            f"{prefix}: per-probe HVP / gradient, ours ({method})",
            round(ours_hvp, 3),
            "x",
            f"<= {theirs_hvp:.3g} (PyHessian's)",
            ours_hvp <= theirs_hvp,
        ),
    ]
    row = (
        f"  {mode:15s} {ours * 1e3:9.0f} {theirs * 1e3:9.0f} {speedup:6.2f}x "
        f"{'met' if speedup >= target else 'MISSED':6s}  {gradient * 1e3:8.1f} "
        f"{ours_hvp:7.2f} {theirs_hvp:7.2f} {'met' if ours_hvp <= theirs_hvp else 'MISSED':6s} "
        f"{method:26s} {control:5.2f}"
    )
    return figures, row


def bench_model(name: str, args: argparse.Namespace, modes: dict[str, int | None]) -> dict:
    """Time one suite model in every mode; returns its figures, methods and medians (ms)."""
    start = time.perf_counter()
    net, x, y = suite_model(name)
    probes = min(args.probes, PROBES_CAP.get(name, args.probes))
    functions, ops = {}, {}
    for mode, batch_size in modes.items():
        mode_fns, ops[mode] = mode_functions(net, x, y, probes, mode, batch_size)
        functions.update(mode_fns)
    print(
        f"\n{name}: {SUITE[name].description}; P = {ops[next(iter(modes))].size}, {probes} probes",
        flush=True,
    )
    for key, function in functions.items():  # warm-up: "auto" resolves on the first matmat
        if key[0] in ("ours matmat", "gradient"):
            function()
    trials = auto_trials(ops, probes)
    timed, first = keeping_first(functions)
    wall = interleaved_medians(timed, args.repeats, warmup=0)["wall"]
    methods = {}
    for mode, op in ops.items():
        trace_method = first[("ours trace", mode)][1]
        methods[mode] = trace_method + (f" / {op.method}" if op.method != trace_method else "")
    print_estimates(first, list(modes), methods)
    print(
        f"  {'mode':15s} {'ours ms':>9s} {'PyH ms':>9s} {'PyH/ours':>7s} {'':6s}  "
        f"{'grad ms':>8s} {'HVP/g':>7s} {'PyH':>7s} {'':6s} {'method (ours)':26s} A/A"
    )
    figures = []
    for mode in modes:
        mode_figs, row = mode_figures(name, mode, wall, probes, methods[mode])
        figures += mode_figs
        print(row)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    medians = {f"{what}, {mode}": round(s * 1e3, 2) for (what, mode), s in wall.items()}
    return {
        "figures": figures,
        "methods": methods,
        "medians_ms": medians,
        "probes": probes,
        "auto_trials": trials,
    }


def trial_probes() -> int:
    """Probes each candidate of ``auto``'s trial is timed on (0 for an engine without it,
    e.g. the "before" engine of 0c117ae, which this suite also runs on)."""
    try:
        from hessvalley.curvature.hvp import TRIAL_PROBES
    except ImportError:
        return 0
    return TRIAL_PROBES


def auto_trials(ops: dict, probes: int) -> dict[str, dict[str, float]]:
    """What ``method="auto"`` measured (ms per probe of each candidate) on each mode's
    operator, printed with the trial's approximate one-off cost (each candidate on one
    untimed and up to TRIAL_PROBES timed probes, once per process; the timed rounds reuse its
    choice).
    Empty with an engine that does not measure."""
    trials = {}
    for mode, op in ops.items():
        timings = getattr(op, "method_timings", {})
        if not timings:
            continue
        rows = min(probes, trial_probes())
        cost = sum(timings.values()) * (rows + 1)
        listed = ", ".join(f"{m} {t * 1e3:.1f}" for m, t in timings.items())
        print(f"  auto, {mode}: {listed} ms per probe -> {op.method}; trial ~{cost:.1f} s once")
        trials[mode] = {m: round(t * 1e3, 3) for m, t in timings.items()}
    return trials


def main() -> None:
    steady_malloc()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SUITE), choices=SUITE)
    parser.add_argument(
        "--modes", nargs="+", default=["graph", "batches"], choices=["graph", "batches"]
    )
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    print(set_threads(args.threads))
    modes: dict[str, int | None] = {}
    if "graph" in args.modes:
        modes["one graph"] = None
    if "batches" in args.modes:
        modes[f"batches of {args.batch_size}"] = args.batch_size
    print(
        f"float32, cross-entropy, {args.probes} Rademacher probes (at most {PROBES_CAP}); "
        f"medians of {args.repeats} interleaved repeats, set-up included; wall clock"
    )
    start = time.perf_counter()
    runs = {name: bench_model(name, args, modes) for name in args.models}
    print(f"\nsuite done in {time.perf_counter() - start:.0f} s; {set_threads(args.threads)}")
    settings = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "methods": {name: run["methods"] for name, run in runs.items()},
        "probes_used": {name: run["probes"] for name, run in runs.items()},
        "medians_ms": {name: run["medians_ms"] for name, run in runs.items()},
        "auto_trials_ms_per_probe": {name: run["auto_trials"] for name, run in runs.items()},
    }
    figures = [f for run in runs.values() for f in run["figures"]]
    write_result("bench_engine", MEASURES, figures, settings, args.results_dir)


if __name__ == "__main__":
    main()
