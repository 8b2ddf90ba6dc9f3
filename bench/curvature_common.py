"""Shared pieces of the curvature benchmarks: the embedded-default models on real digits data
and interleaved timing (other processes share this machine, so methods are timed in turns and
medians reported)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from sklearn.datasets import load_digits
from torch import nn

from hessvalley.losses import cross_entropy
from hessvalley.models import build_model

MODEL_SPECS = {
    "mlp": {"name": "mlp", "widths": [32], "activation": "tanh"},
    "cnn": {"name": "ws_cnn", "channels": [8, 8, 8]},
}
LOSS = cross_entropy(label_smoothing=0.1)


def digits(n_samples: int = 1347) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits scaled to [0, 1] as (N, 1, 8, 8) float32, int64 labels."""
    data = load_digits()
    x = torch.tensor(data.images[:n_samples] / 16.0, dtype=torch.float32)[:, None]
    return x, torch.tensor(data.target[:n_samples], dtype=torch.int64)


def model(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(MODEL_SPECS[family], (1, 8, 8), 10)


def train(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, adam: bool = False
) -> nn.Module:
    """Full-batch GD with momentum 0.9 (or Adam: the small CNN barely moves under plain GD): a
    trained net has the spiked spectrum."""
    if adam:
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        LOSS(net(x), y).backward()
        optimizer.step()
    return net


def interleaved_medians(
    functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Median wall and CPU time (s) of each function, timed round-robin so that load changes
    hit all alike: ``{"wall": {name: s}, "cpu": {name: s}}``. The CPU clock (this process)
    leaves out the time other processes hold the core, which on this shared 2-core machine
    makes single-thread figures repeatable; it does not undo their cache sharing."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {clock: {name: [] for name in functions} for clock in ("wall", "cpu")}
    for _ in range(repeats):
        for name, function in functions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            function()
            times["wall"][name].append(time.perf_counter() - wall)
            times["cpu"][name].append(time.process_time() - cpu)
    return {
        clock: {name: statistics.median(values) for name, values in by_name.items()}
        for clock, by_name in times.items()
    }


STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def steady_malloc() -> None:
    """Re-run this script with glibc malloc keeping freed memory (no mmap or trim below 1 GiB).

    By default glibc hands large freed blocks back to the OS, and the next call page-faults
    them in again: on this machine that added up to ~1/3 to a CNN gradient (3.3k faults per
    call) and 1 s of system time to a vmapped sweep, by amounts that depend on what ran just
    before, i.e. on the interleaving order. Keeping the memory takes that cost out of every
    variant alike. Set HESSVALLEY_BENCH_DEFAULT_MALLOC=1 to measure with the default."""
    if os.environ.get("HESSVALLEY_BENCH_DEFAULT_MALLOC") == "1" or not sys.platform.startswith(
        "linux"
    ):
        return
    if all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC})


def set_threads(threads: int) -> str:
    """Torch intra-op threads, and a line saying so with the machine's load average (other
    processes on this 2-core machine make two-thread timings erratic)."""
    torch.set_num_threads(threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    steady = all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items())
    malloc = "steady malloc (no mmap/trim < 1 GiB)" if steady else "default malloc"
    return f"torch {torch.__version__}, {threads} thread(s), {malloc}, load average {load}"
