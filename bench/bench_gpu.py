"""GPU readiness in one run: the curvature engine and training on one CUDA device, in under
8 minutes on one H100/H200, written to ``<results dir>/bench_gpu.json``.

  bash bench/gpu.sh [results dir]                          # on a GPU machine (checks nvidia-smi)
  python bench/bench_gpu.py --device cuda [--results-dir DIR]
  python bench/bench_gpu.py --device cpu --quick           # CPU smoke run, about 2 minutes
  python bench/bench_gpu.py --device cpu --tiny            # the test's sizes (seconds)

Sections (each timed with the device synchronised inside the timed call, medians of
interleaved repeats, the first call timed apart):
1. HVP / gradient per method: a CIFAR-shaped PreAct-ResNet18 (width 64, 512 samples) and a
   784-1024-1024-10 tanh MLP (4096 samples), all data in one chunk: per-probe HVP time (one
   ``op.matmat`` of a (P, k) block / k, k = 16 (ResNet) or 32) / one full-data gradient, for
   every method of ``HVP_METHODS`` and ``"auto"`` (and what it chose, ``op.method`` after the
   first matmat). If the operator keeps its gradient graph between calls, the steady figure
   leaves out the forward and backward it shares; the first call is recorded too.
2. Probes vmapped vs looped: ``double_backward_batched`` / ``double_backward_loop`` and
   ``forward_over_reverse_vmap`` / ``forward_over_reverse_loop`` at k = 1, 8, 32, on 64
   (ResNet) and 512 (MLP) samples, so that k x samples fit vmapped (``double_backward_batched``
   vmaps at most a set number of samples x probes at once, in sub-blocks of the sweep's).
3. Trace vs PyHessian 0.1: ``hutchinson_trace`` with 32 probes on the ResNet (512 samples) in
   one graph and in batches of 128, set-up included, against ``hessian(...).trace()`` on the
   same data; "skipped: pyhessian not installed" without it (``pip install -e ".[bench]"``).
4. One training epoch: 50,000 device-resident CIFAR-shaped images, batch 128, SGD lr 0.1,
   momentum 0.9, weight decay 5e-4: the project's step (``Trainer.train_step`` under
   ``determinism.reproducing``, as ``train_run``) / a bare torch loop on the same batches
   from the same initial weights; on CUDA against the bare loop under the same deterministic
   settings, and the bare loop's deterministic / default. No hard target (for scale: the
   project's target for checkpointing overhead on the CPU is <= 1.05).
5. Bit-exact replay: ``train_run`` (PreAct-ResNet18 width 16, 2048 images, 320 steps,
   checkpoints every 40) into a temporary store, ``replay`` from the middle checkpoint to the
   end; parameters, momentum and buffers compared with ``torch.equal``.
Then ``torch.compile`` (section 1's models): ``torch.compile(lambda v: jvp(grad(f), (theta,),
(v,))[1])`` and a compiled model inside a double backward, each against its eager self;
compile time recorded apart, "failed: <reason>" where compiling does not work.

A time budget (``--budget``, 435 s) keeps the run under 8 minutes: repeats adapt to each
section's share, and a section that would overrun it is recorded "skipped: time budget".
Every section is recorded in the JSON's ``details.sections`` with a ``status`` ("done",
"skipped: ..." or "failed: ..."); the figures (numbers only) feed README's table once the
file is in ``bench/results`` (``python bench/readme_table.py --write``).

CUDA: ``CUBLAS_WORKSPACE_CONFIG`` is set before any CUDA work (``resolve_device``), as the
project does, so that the deterministic sections (4, 5) are deterministic. Not run on a GPU yet.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from curvature_common import set_threads
from gpu_common import PRESETS, Bench, Budget, Skipped, reason, release_memory
from gpu_compile import section_compile
from gpu_curvature import section_hvp, section_trace, section_vmap
from gpu_training import section_epoch, section_replay
from record import RESULTS, write_result

from hessvalley.device import resolve_device

MEASURES = "one CUDA device: HVP / gradient, vmap, trace vs PyHessian, epoch, replay (medians)"
SECTIONS = {
    "hvp": ("1. HVP / gradient per method", section_hvp),
    "vmap": ("2. probes vmapped vs looped", section_vmap),
    "trace": ("3. trace vs PyHessian", section_trace),
    "epoch": ("4. one training epoch, project vs bare torch", section_epoch),
    "replay": ("5. bit-exact replay", section_replay),
    "compile": ("1b. torch.compile", section_compile),
}


def run_sections(bench: Bench) -> dict[str, dict[str, Any]]:
    """Each section in turn, with what later sections need kept in reserve; a failure is
    recorded and the next section goes on."""
    sizes, budget = bench.sizes, bench.budget
    names = list(SECTIONS)
    results: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        title, section = SECTIONS[name]
        budget.reserve = sum(sizes.need_s[later] for later in names[i + 1 :])
        left = budget.left()
        print(f"[{budget.elapsed():5.0f} s] {title} ({left:.0f} s of the budget for it)")
        start = time.perf_counter()
        if left < sizes.need_s[name]:
            results[name] = {"status": f"skipped: time budget ({left:.0f} s left)"}
            print(f"  {results[name]['status']}")
            continue
        try:
            results[name] = {"status": "done", **section(bench, min(sizes.plan_s[name], left))}
        except Skipped as skipped:
            results[name] = {"status": f"skipped: {skipped}"}
        except Exception as error:  # recorded, the next section goes on
            traceback.print_exc()
            results[name] = {"status": reason(error)}
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        release_memory()
    return results


def settings_of(device: torch.device) -> dict[str, Any]:
    """What the figures depend on beyond ``record.machine``."""
    info: dict[str, Any] = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(device).total_memory / 2**30
        )
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cpu or auto")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="small sizes: the CPU smoke run")
    sizes.add_argument("--tiny", action="store_true", help="smallest sizes: the test")
    parser.add_argument("--budget", type=float, help="seconds (default: the preset's)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 on the CPU, where a thread waiting for a shared "
        "core stalls every parallel op; torch's own on CUDA)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="where bench_gpu.json goes (default: bench/results, or a temporary directory "
        "with --quick / --tiny, so a smoke run never reaches README's table)",
    )
    args = parser.parse_args()
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = PRESETS[preset]
    budget = Budget(args.budget or sizes.budget_s)
    device = resolve_device(args.device)  # sets CUBLAS_WORKSPACE_CONFIG before any CUDA work
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    if args.threads or device.type == "cpu":
        print(set_threads(args.threads or 1))
    print(f"{preset} sizes on {device}, budget {budget.seconds:.0f} s")
    results_dir = args.results_dir
    if results_dir is None:
        results_dir = RESULTS if preset == "full" else Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    bench = Bench(device, sizes, budget)
    sections = run_sections(bench)
    print(f"[{budget.elapsed():5.0f} s] done")
    details = {"preset": preset, "sizes": asdict(sizes), "sections": sections}
    details["elapsed_s"] = round(budget.elapsed(), 1)
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings = {**arguments, **settings_of(device)}
    write_result("bench_gpu", MEASURES, bench.figures, settings, results_dir, details=details)


if __name__ == "__main__":
    main()
