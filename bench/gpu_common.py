"""Shared pieces of ``bench_gpu.py``: the sizes of a run, the time budget, timing that waits
for the device, and the models and synthetic data every section uses."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from curvature_common import interleaved_medians
from torch import nn

from hessvalley.models import build_model
from hessvalley.models.preact_resnet import preact_resnet18


@dataclass(frozen=True)
class Sizes:
    """What each section runs on; ``plan_s`` is each section's share of the time budget (its
    repeats adapt to it) and ``need_s`` the least it must have left to start at all."""

    resnet_width: int
    hvp_samples: int  # ResNet samples in one chunk (sections 1 and compile)
    mlp_widths: tuple[int, ...]
    mlp_samples: int
    probes: dict[str, int]  # k of section 1's (P, k) block, per model
    vmap_ks: tuple[int, ...]
    vmap_samples: dict[str, int]  # small enough for k x samples to fit vmapped
    trace_samples: int
    trace_batch: int
    trace_probes: int
    epoch_images: int
    epoch_batch: int
    replay_width: int
    replay_images: int
    replay_steps: int
    max_repeats: int
    budget_s: float
    plan_s: dict[str, float] = field(default_factory=dict)
    need_s: dict[str, float] = field(default_factory=dict)
    compile_models: tuple[str, ...] = ("mlp", "preact_resnet18")
    compile_backend: str = "inductor"  # torch.compile's default, which generates kernels


PRESETS = {
    # one H100/H200: the whole script in under 8 minutes
    "full": Sizes(
        resnet_width=64,
        hvp_samples=512,
        mlp_widths=(1024, 1024),
        mlp_samples=4096,
        probes={"preact_resnet18": 16, "mlp": 32},
        vmap_ks=(1, 8, 32),
        vmap_samples={"preact_resnet18": 64, "mlp": 512},
        trace_samples=512,
        trace_batch=128,
        trace_probes=32,
        epoch_images=50_000,
        epoch_batch=128,
        replay_width=16,
        replay_images=2048,
        replay_steps=320,
        max_repeats=5,
        budget_s=435.0,
        plan_s={"hvp": 110, "vmap": 50, "trace": 70, "epoch": 90, "replay": 40, "compile": 60},
        need_s={"hvp": 30, "vmap": 15, "trace": 20, "epoch": 30, "replay": 15, "compile": 30},
    ),
    # the CPU smoke run (--device cpu --quick): every code path in about two minutes
    "quick": Sizes(
        resnet_width=8,
        hvp_samples=32,
        mlp_widths=(64, 64),
        mlp_samples=256,
        probes={"preact_resnet18": 4, "mlp": 16},
        vmap_ks=(1, 4, 16),
        vmap_samples={"preact_resnet18": 4, "mlp": 64},
        trace_samples=32,
        trace_batch=16,
        trace_probes=4,
        epoch_images=256,
        epoch_batch=64,
        replay_width=4,
        replay_images=256,
        replay_steps=20,
        max_repeats=3,
        budget_s=150.0,
        plan_s={"hvp": 20, "vmap": 10, "trace": 15, "epoch": 5, "replay": 10, "compile": 60},
        need_s={"hvp": 5, "vmap": 5, "trace": 5, "epoch": 5, "replay": 5, "compile": 20},
        # the graph capture and autograd of torch.compile without inductor's C++ build,
        # which takes about a minute per model on a small CPU
        compile_models=("mlp",),
        compile_backend="aot_eager",
    ),
    # the test (tests/test_bench_gpu.py): the smallest sizes that still run every section
    "tiny": Sizes(
        resnet_width=2,
        hvp_samples=8,
        mlp_widths=(16,),
        mlp_samples=32,
        probes={"preact_resnet18": 2, "mlp": 2},
        vmap_ks=(1, 2),
        vmap_samples={"preact_resnet18": 4, "mlp": 16},
        trace_samples=8,
        trace_batch=4,
        trace_probes=2,
        epoch_images=64,
        epoch_batch=32,
        replay_width=2,
        replay_images=32,
        replay_steps=8,
        max_repeats=1,
        budget_s=300.0,
        plan_s={"hvp": 1, "vmap": 1, "trace": 1, "epoch": 1, "replay": 1, "compile": 1},
        need_s={"hvp": 0, "vmap": 0, "trace": 0, "epoch": 0, "replay": 0, "compile": 0},
        compile_models=(),
    ),
}


class Skipped(Exception):
    """A section that does not run at these sizes; its message is the reason."""


class Budget:
    """Seconds left of the run's budget, less ``reserve`` (what later sections need)."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds
        self.reserve = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed() - self.reserve


@dataclass
class Bench:
    """A run's device, sizes, budget and the figures the sections add."""

    device: torch.device
    sizes: Sizes
    budget: Budget
    figures: list[dict[str, Any]] = field(default_factory=list)

    def sync(self) -> None:
        """Wait for the device: a CUDA call returns before its kernels have run."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def synced(self, function: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            out = function()
            self.sync()
            return out

        return run


def reason(error: BaseException) -> str:
    """``failed: <type>: <first line>``, short enough for a JSON field; frees what the
    failure left on the device (an out-of-memory error leaves the cache full)."""
    lines = str(error).strip().splitlines() or [""]
    release_memory()
    return f"failed: {type(error).__name__}: {lines[0][:300]}"


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed_medians(
    bench: Bench, functions: dict[str, Callable[[], object]], seconds: float
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """Median wall time (s) of each function over interleaved repeats, each call waited for
    on the device; repeats fill ``seconds`` (at least one, at most the sizes' ``max_repeats``).

    Returns (medians, first-call times, failures): each function is first called once alone,
    which also catches the ones that fail (out of memory, no compile) and times the first call
    (autotuning, compilation, lazy set-up); the rest are timed after that."""
    first, failures = {}, {}
    for name, function in functions.items():
        if bench.budget.left() <= 0:
            failures[name] = "skipped: time budget"
            continue
        start = time.perf_counter()
        try:
            bench.synced(function)()
        except Exception as error:  # recorded, the other variants go on
            failures[name] = reason(error)
            continue
        first[name] = time.perf_counter() - start
    working = {name: bench.synced(functions[name]) for name in first}
    if not working:
        return {}, first, failures
    cost = sum(first.values())
    repeats = int(min(seconds, bench.budget.left()) / max(cost, 1e-9))
    repeats = max(1, min(bench.sizes.max_repeats, repeats))
    medians = interleaved_medians(working, repeats, warmup=0)["wall"]
    return medians, first, failures


def resnet(width: int, seed: int = 0) -> nn.Module:
    """PreAct-ResNet18 for 3x32x32 images and 10 classes (``width`` 64 is the paper's)."""
    torch.manual_seed(seed)
    return preact_resnet18((3, 32, 32), 10, width=width)


def mlp(widths: tuple[int, ...], seed: int = 0) -> nn.Module:
    """An MNIST-shaped tanh MLP, 784 - widths - 10."""
    torch.manual_seed(seed)
    return build_model({"name": "mlp", "widths": list(widths), "activation": "tanh"}, (784,), 10)


def synthetic(
    n: int, shape: tuple[int, ...], device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` standard-normal inputs of ``shape`` and uniform labels of 10 classes, drawn on
    the CPU (the same on every device) and moved to ``device``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return x.to(device), y.to(device)
