"""Short measurements on the compute device of what every stage's cost is made of.

For one model (spec, input shape, class count, loss) on random inputs of the right shape:
seconds per sample of a training-mode gradient (forward + backward; an SGD step adds one
optimizer step per mini-batch, timed on its own), of an eval forward pass, and of a
Hessian-vector product through the engine's own operator (``hessian_at``, reverse over
reverse), split into the part shared by the probes of a data sweep (forward and first
backward) and the part each probe adds; plus the activation memory per sample (bytes of the
tensors autograd keeps for backward, device-agnostic, from the difference of two batch
sizes so that parameters cancel; on CUDA also the allocator's peak). Medians of a few
repeats after a warm-up: a CPU's first call pays for allocation and kernel selection.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hessvalley.curvature.factory import hessian_at
from hessvalley.losses import build_loss
from hessvalley.models import build_model, has_batch_norm
from hessvalley.sgd import SGD

SAMPLES = 16  # calibration batch: small enough for a CPU, big enough to amortise overheads
# A GPU runs a batch of 16 in about the time of one of hundreds (it is latency-bound there),
# so per-sample figures measured at 16 would overstate every GPU job many times over; the
# stages run chunks of hundreds to thousands of samples.
GPU_SAMPLES = 256
MAX_SAMPLES = 256  # for small models, grown until a gradient takes about TARGET_SECONDS
TARGET_SECONDS = 0.02
MEMORY_SAMPLES = 8  # saved-tensor bytes at 4 and 8 samples: their difference is per sample
REPEATS = 2


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def best_seconds(fn: Callable[[], Any], device: torch.device, repeats: int = REPEATS) -> float:
    """Fastest wall time of ``fn`` after one warm-up call, synchronised on CUDA: the least
    disturbed by other processes."""
    sync = _sync(device)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def saved_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def _per_sample_bytes(measure: Callable[[int], int], n: int) -> float:
    """Slope of ``measure(batch)`` between n/2 and n samples: what each sample adds."""
    half = max(n // 2, 1)
    return max(measure(n) - measure(half), 0) / max(n - half, 1)


def _peak_bytes(fn: Callable[[], Any], device: torch.device) -> float | None:
    """CUDA allocator peak above the memory in use before ``fn`` (None on other devices)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return float(torch.cuda.max_memory_allocated(device) - before)


def _largest_output_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Largest output of any module in one no-grad eval forward pass."""
    largest = [0]

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return largest[0]


def _inputs(
    shape: tuple[int, ...], n_classes: int, n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((n, *shape), generator=generator).to(device)
    y = torch.randint(0, n_classes, (n,), generator=generator).to(device)
    return x, y


def _training_figures(model, loss_fn, x, y, device) -> dict[str, float]:
    """Gradient, optimizer step and eval pass per sample; training activations per sample."""
    n = len(y)
    optimizer = SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def gradient(batch: int = n) -> torch.Tensor:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[:batch]), y[:batch])
        loss.backward()
        return loss

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            loss_fn(model(x), y)

    grad_s = best_seconds(gradient, device)
    step_s = best_seconds(optimizer.step, device)
    eval_s = best_seconds(evaluate, device)
    train_bytes = _per_sample_bytes(lambda b: saved_bytes(lambda: gradient(b)), MEMORY_SAMPLES)
    peak = _peak_bytes(gradient, device)
    return {
        "grad_s_per_sample": grad_s / n,
        "optimizer_step_s": step_s,
        "sgd_step_s_per_sample": (grad_s + step_s) / n,
        "eval_s_per_sample": eval_s / n,
        "train_act_bytes_per_sample": max(train_bytes, (peak or 0) / n),
        "eval_act_bytes_per_sample": 3 * _largest_output_bytes(model, x) / n,
    }


def _hvp_figures(model, loss_fn, x, y, hessian: Mapping[str, Any], device) -> dict[str, float]:
    """One sweep with one probe and with two: the shared part (forward + first backward with
    graph) and each probe's part, per sample; the double-backward graph's bytes per sample."""
    n = len(y)
    keys = {
        "n_samples": None,
        "subset_seed": 0,
        "batch_norm": hessian["batch_norm"],
        "dtype": hessian["dtype"],
        "chunk_size": n,
        "probes_per_sweep": 2,
        "hvp_method": hessian.get("hvp_method", "auto"),
    }

    def operator(batch: int = n):
        # every product pays its sweep's forward and backward, as with several chunks
        return hessian_at(model, loss_fn, x[:batch], y[:batch], keys, reuse_graph=False)

    op = operator()
    generator = torch.Generator().manual_seed(1)
    probes = torch.randn(op.size, 2, generator=generator).to(device, op.dtype)
    one = best_seconds(lambda: op.matmat(probes[:, :1]), device)
    two = best_seconds(lambda: op.matmat(probes), device, 1 if one > 1 else REPEATS)
    per_probe = max(two - one, 0.25 * one)  # timing noise must not make a probe free
    shared = max(one - per_probe, 0.0)

    def graph_bytes(batch: int) -> int:
        # bytes of the reverse-over-reverse graph: torch.func (the forward-over-reverse
        # methods) refuses the saved-tensor hooks that count them
        small = hessian_at(
            model, loss_fn, x[:batch], y[:batch], keys | {"hvp_method": "double_backward_loop"}
        )
        return saved_bytes(lambda: small.matmat(probes[:, :1]))

    hvp_bytes = _per_sample_bytes(graph_bytes, MEMORY_SAMPLES)
    peak = _peak_bytes(lambda: op.matmat(probes[:, :1]), device)
    return {
        "hvp_s_per_sample": one / n,
        "hvp_sweep_s_per_sample": shared / n,
        "hvp_probe_s_per_sample": per_probe / n,
        "hvp_act_bytes_per_sample": max(hvp_bytes, (peak or 0) / n),
        "hvp_method": op.method,
    }


def _batch_for(model, loss_fn, shape, n_classes: int, n: int, device) -> int:
    """``n``, or more samples for a model so small that per-call overheads would dominate
    the per-sample cost at ``n`` (a full-batch pass over thousands of samples has none)."""
    x, y = _inputs(shape, n_classes, n, device)

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    seconds = best_seconds(gradient, device, 1)
    if seconds >= TARGET_SECONDS:
        return n
    return int(min(MAX_SAMPLES, n * 2 ** math.ceil(math.log2(TARGET_SECONDS / max(seconds, 1e-6)))))


def calibrate_model(
    identity: Mapping[str, Any], device: torch.device, n: int = SAMPLES
) -> dict[str, Any]:
    """Per-sample figures of one model (``identity``: model, input_shape, n_classes, loss,
    hessian {batch_norm, dtype}) on ``n`` random samples."""
    shape = tuple(identity["input_shape"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(identity["model"], shape, identity["n_classes"]).to(device)
    loss_fn = build_loss(identity["loss"])
    start = time.perf_counter()
    if device.type == "cuda":
        n = max(n, GPU_SAMPLES)
    n = _batch_for(model, loss_fn, shape, identity["n_classes"], n, device)
    x, y = _inputs(shape, identity["n_classes"], n, device)
    figures: dict[str, Any] = {
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_buffers": sum(b.numel() for b in model.buffers()),
        "batch_norm": has_batch_norm(model),
        "samples": n,
    }
    figures.update(_training_figures(model, loss_fn, x, y, device))
    figures.update(_hvp_figures(model, loss_fn, x, y, identity["hessian"], device))
    figures["calibration_s"] = time.perf_counter() - start
    figures["measured_at"] = datetime.datetime.now().isoformat(timespec="seconds")
    return figures


def eigh_seconds(device: torch.device, size: int = 400) -> dict[str, Any]:
    """Seconds of a dense float64 ``eigvalsh`` of ``size`` x ``size`` (exact spectra scale
    it by (P / size)^3; run on the CPU, as ``exact_spectrum`` is)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator, dtype=torch.float64)
    matrix = a + a.T
    seconds = best_seconds(lambda: torch.linalg.eigvalsh(matrix), torch.device("cpu"))
    return {"size": size, "seconds": seconds}


def toy_step_seconds(name: str, spec: Mapping[str, Any], steps: int = 200) -> dict[str, Any]:
    """Seconds per simulated step of a toy figure (all its conditions and runs at once)."""
    from hessvalley.toy.noise import Noise
    from hessvalley.toy.simulator import simulate
    from hessvalley.toy.valleys import DTYPE, AbsValley, GaussianValley, TiltedValley

    losses = {"fig2b": AbsValley, "fig2cd": GaussianValley}
    loss = losses[name]() if name in losses else TiltedValley(spec["alpha"])
    conditions = len(spec["etas"]) if name == "fig2b" else 2
    eta = float(spec["etas"][0]) if name == "fig2b" else float(spec["eta"])
    theta0 = torch.as_tensor(spec["init"], dtype=DTYPE).expand(conditions, spec["runs"], -1)
    noise = Noise("sgd", 1e-3)  # the cost does not depend on the noise's strength

    def run() -> None:
        generator = torch.Generator().manual_seed(0)
        simulate(loss, theta0, [eta] * conditions, [noise] * conditions, steps, generator, steps)

    return {"step_s": best_seconds(run, torch.device("cpu"), 1) / steps, "steps": steps}
