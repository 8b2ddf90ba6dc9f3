"""Hessian-vector products of one chunk's loss, four ways, and the measured choice among them.

Every method applies the exact Hessian of a chunk's loss to a (k, P) block of rows; they
differ only in speed and memory, which depend on the model, the data and the device more than
any size rule can say (a rule tuned on a 2,410-parameter MLP picked the slower variant on a
203,530-parameter one). So ``method="auto"`` times the candidates on the operator's own first
chunk and probes (``measure_methods``) and keeps the fastest (``fastest``); the result is then
computed by that method alone, bit for bit as if it had been named.

- ``double_backward_loop``: reverse over reverse, one backward of the gradient per row. The
  forward and first backward (the gradient graph) are shared by all rows of a sweep, and
  across sweeps when the data fit in one chunk (``GradientGraph`` is then kept).
- ``double_backward_batched``: the same, rows vmapped (``is_grads_batched``) in groups of
  ``ROWS_PER_CALL`` (fewer when samples x rows would pass ``BATCHED_SAMPLE_PROBES``, past which
  the batched tangents leave the cache and a sweep slows down).
- ``forward_over_reverse_vmap``: ``jvp`` of ``grad``, vmapped over groups of ``ROWS_PER_CALL``
  rows: that many times the activation memory of a chunk, no graph to reuse.
- ``forward_over_reverse_loop``: the same, one row at a time (never the fastest measured; it
  is not an ``auto`` candidate).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

HVP_METHODS = (
    "double_backward_loop",
    "double_backward_batched",
    "forward_over_reverse_vmap",
    "forward_over_reverse_loop",
)
AUTO_CANDIDATES = HVP_METHODS[:3]
# Rows per call of the vectorised methods, and rows each candidate is timed on (after one
# untimed row): the trial times one call of each, so its per-row cost is the one a sweep pays
# whatever the sweep's width. (Vmapping a whole sweep's 16 rows at once measured 40% slower per
# row than groups of 4 on the suite's BatchNorm CNN, bench_engine.py.) The whole trial,
# 3 x (1 + 4) products of one chunk, costs about half a sweep of 32 probes.
ROWS_PER_CALL = 4
TRIAL_PROBES = ROWS_PER_CALL
BATCHED_SAMPLE_PROBES = 4096
# A trial times each candidate once, and such single timings of one method differed by 5-10%
# between runs of bench_engine.py (on a ResNet, 1341 against 1409 ms per row picked the batched
# variant, which then ran 9% slower than the loop): another method replaces the plain loop only
# if measured faster by more than this fraction.
SWITCH_MARGIN = 0.1

ChunkLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class GradientGraph:
    """A chunk's gradient at ``theta`` with the graph that differentiates it again."""

    theta: Tensor
    gradient: Tensor


def gradient_graph(chunk_loss: ChunkLoss, theta: Tensor, x: Tensor, y: Tensor) -> GradientGraph:
    leaf = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(chunk_loss(leaf, x, y), leaf, create_graph=True)
    return GradientGraph(leaf, gradient)


def double_backward(graph: GradientGraph, rows: Tensor, group: int, keep_graph: bool) -> Tensor:
    """H rows (k, P) through the graph, ``group`` rows per backward; the graph survives the
    last backward only if ``keep_graph``."""
    blocks = rows.split(max(1, group))
    out = []
    with torch.enable_grad():
        for i, block in enumerate(blocks):
            retain = keep_graph or i < len(blocks) - 1
            if len(block) == 1:
                (product,) = torch.autograd.grad(
                    graph.gradient, graph.theta, block[0], retain_graph=retain
                )
                out.append(product[None])
            else:
                (product,) = torch.autograd.grad(
                    graph.gradient, graph.theta, block, retain_graph=retain, is_grads_batched=True
                )
                out.append(product)
    return torch.cat(out)


def forward_over_reverse(
    chunk_loss: ChunkLoss, theta: Tensor, x: Tensor, y: Tensor, rows: Tensor, vectorised: bool
) -> Tensor:
    """H rows (k, P) as jvp(grad): vmapped over groups of ``ROWS_PER_CALL`` rows, or one row
    at a time."""

    def hvp(v: Tensor) -> Tensor:
        return jvp(lambda th: grad(chunk_loss)(th, x, y), (theta,), (v,))[1]

    if vectorised:
        return torch.cat([vmap(hvp)(group) for group in rows.split(ROWS_PER_CALL)])
    return torch.stack([hvp(v) for v in rows])


def fastest(timings: dict[str, float]) -> str:
    """The measured fastest method, unless ``double_backward_loop`` is within
    ``SWITCH_MARGIN`` of it (a difference the trial's noise can make)."""
    best = min(timings, key=timings.__getitem__)
    loop = timings.get("double_backward_loop")
    if loop is not None and loop <= (1 + SWITCH_MARGIN) * timings[best]:
        return "double_backward_loop"
    return best


def batched_group(method: str, n_samples: int) -> int:
    """Rows per backward: a group for the batched method, else one."""
    if method != "double_backward_batched":
        return 1
    return max(1, min(ROWS_PER_CALL, BATCHED_SAMPLE_PROBES // n_samples))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(function: Callable[[], object], device: torch.device) -> float:
    synchronise(device)
    start = time.perf_counter()
    function()
    synchronise(device)
    return time.perf_counter() - start


def measure_methods(
    chunk_loss: ChunkLoss,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    rows: Tensor,
    reused: GradientGraph | None = None,
    width: int | None = None,
) -> dict[str, float]:
    """Seconds per row of each ``AUTO_CANDIDATES`` method on this chunk and these rows, as a
    sweep of ``width`` rows (default: these) would pay them: with the ``reused`` gradient graph
    (kept across sweeps) the double-backward methods pay only their backward, otherwise also
    the graph, once per chunk, so its share of a row is 1 / ``width``. Each candidate
    first runs on one row untimed (allocation and first-call costs would otherwise fall on
    whichever runs first). A candidate that runs out of memory is left out."""
    device = theta.device
    graph = reused
    shared = 0.0
    if graph is None:
        holder: list[GradientGraph] = []
        shared = seconds_of(lambda: holder.append(gradient_graph(chunk_loss, theta, x, y)), device)
        graph = holder[0]
    timings: dict[str, float] = {}
    failure: BaseException | None = None
    for method in AUTO_CANDIDATES:
        if method.startswith("double_backward"):
            group = batched_group(method, len(y))

            def run(block: Tensor, group: int = group) -> Tensor:
                return double_backward(graph, block, group, keep_graph=True)

        else:

            def run(block: Tensor) -> Tensor:
                return forward_over_reverse(chunk_loss, theta, x, y, block, vectorised=True)

        try:
            run(rows[:1])
            seconds = seconds_of(lambda run=run: run(rows), device)
        except torch.OutOfMemoryError as error:
            failure = error
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        extra = shared / (width or len(rows)) if method.startswith("double_backward") else 0.0
        timings[method] = seconds / len(rows) + extra
    if not timings:
        raise failure if failure is not None else RuntimeError("no HVP method could be timed")
    return timings
