"""The curvature sections of ``bench_gpu.py``: HVP / gradient per method, probes vmapped vs
looped, the trace against PyHessian, and ``torch.compile``. Each returns what it found (a
JSON-able dict) and adds its figures to ``bench.figures``."""

from __future__ import annotations

import copy
import statistics
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from gpu_common import Bench, mlp, resnet, synthetic, timed_medians
from record import figure
from torch import Tensor, nn

from hessvalley.curvature import HessianOperator, hutchinson_trace
from hessvalley.curvature.operator import HVP_METHODS

IMAGE = (3, 32, 32)
MNIST = (784,)
# vmapped method -> its looped counterpart (section 2)
PAIRS = {
    "double_backward_batched": "double_backward_loop",
    "forward_over_reverse_vmap": "forward_over_reverse_loop",
}


def model_and_data(bench: Bench, name: str, samples: int) -> tuple[nn.Module, Tensor, Tensor]:
    """The section's ``preact_resnet18`` (CIFAR-shaped) or ``mlp`` (MNIST-shaped) with
    ``samples`` synthetic samples, all on the bench's device."""
    sizes = bench.sizes
    if name == "preact_resnet18":
        net, shape = resnet(sizes.resnet_width), IMAGE
    else:
        net, shape = mlp(sizes.mlp_widths), MNIST
    x, y = synthetic(samples, shape, bench.device)
    return net.to(bench.device), x, y


def operator(bench: Bench, net: nn.Module, x: Tensor, y: Tensor, method: str, k: int):
    """The whole data in one chunk, ``k`` probes per sweep."""
    return HessianOperator(
        net,
        F.cross_entropy,
        x,
        y,
        chunk_size=len(y),
        probes_per_sweep=k,
        method=method,
        device=bench.device,
    )


def probe_block(size: int, k: int, device: torch.device) -> Tensor:
    return torch.randn(size, k, generator=torch.Generator().manual_seed(1)).to(device)


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def section_hvp(bench: Bench, seconds: float) -> dict[str, Any]:
    """1. Per-probe HVP time (one ``op.matmat`` of a (P, k) block / k) / one full-data
    gradient, per method in ``HVP_METHODS`` and ``"auto"``; the data in one chunk."""
    sizes = bench.sizes
    samples = {"preact_resnet18": sizes.hvp_samples, "mlp": sizes.mlp_samples}
    share = {"preact_resnet18": 0.75, "mlp": 0.25}
    return {
        name: hvp_per_method(bench, name, samples[name], seconds * share[name]) for name in samples
    }


def hvp_per_method(bench: Bench, name: str, samples: int, seconds: float) -> dict[str, Any]:
    net, x, y = model_and_data(bench, name, samples)
    k = bench.sizes.probes[name]
    ops = {method: operator(bench, net, x, y, method, k) for method in (*HVP_METHODS, "auto")}
    probes = probe_block(ops["auto"].size, k, bench.device)
    outputs: dict[str, Tensor] = {}

    def apply(method: str):
        return lambda: outputs.__setitem__(method, ops[method].matmat(probes))

    functions = {"gradient": operator(bench, net, x, y, HVP_METHODS[0], k).gradient}
    functions.update({method: apply(method) for method in ops})
    medians, first, failures = timed_medians(bench, functions, seconds)
    if "gradient" not in medians:
        raise RuntimeError(f"the gradient {failures['gradient']}")
    gradient = medians["gradient"]
    reference = outputs.get(HVP_METHODS[0])
    found: dict[str, Any] = {
        "n_params": ops["auto"].size,
        "samples": samples,
        "k": k,
        "gradient_ms": ms(gradient),
        "gradient_first_call_ms": ms(first["gradient"]),
        "auto_chose": ops["auto"].method,
        "methods": {},
    }
    for method in ops:
        if method in failures:
            found["methods"][method] = failures[method]
            continue
        ratio = medians[method] / k / gradient
        found["methods"][method] = {
            "per_probe_ms": ms(medians[method] / k),
            "hvp_over_gradient": round(ratio, 3),
            "first_call_ms": ms(first[method]),
            "max_rel_diff_to_" + HVP_METHODS[0]: relative_difference(outputs[method], reference),
        }
        label = f"auto (chose {found['auto_chose']})" if method == "auto" else method
        bench.figures.append(
            figure(f"1 HVP, {name}: {label} per-probe HVP / gradient", round(ratio, 3), "x")
        )
    print(
        f"  {name}: P={found['n_params']}, gradient {ms(gradient)} ms, auto chose "
        f"{found['auto_chose']}"
    )
    return found


def relative_difference(a: Tensor, b: Tensor | None) -> float | None:
    if b is None:
        return None
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def section_vmap(bench: Bench, seconds: float) -> dict[str, Any]:
    """2. Per-probe time of each vmapped method against its looped counterpart at several
    k, on few enough samples that k x samples fit vmapped."""
    found: dict[str, Any] = {}
    pairs = {v: loop for v, loop in PAIRS.items() if v in HVP_METHODS and loop in HVP_METHODS}
    missing = sorted(set(PAIRS) - set(pairs))
    if missing:
        found["not_in_HVP_METHODS"] = missing
    methods = [m for pair in pairs.items() for m in pair]
    for name, samples in bench.sizes.vmap_samples.items():
        net, x, y = model_and_data(bench, name, samples)
        ops = {
            (method, k): operator(bench, net, x, y, method, k)
            for k in bench.sizes.vmap_ks
            for method in methods
        }
        size = next(iter(ops.values())).size
        blocks = {k: probe_block(size, k, bench.device) for k in bench.sizes.vmap_ks}
        functions = {key: (lambda op=op, v=blocks[key[1]]: op.matmat(v)) for key, op in ops.items()}
        medians, _, failures = timed_medians(bench, functions, seconds / 2)
        rows: dict[str, Any] = {"samples": samples, "per_probe_ms": {}, "vmapped_over_looped": {}}
        for (method, k), reason in failures.items():
            rows["per_probe_ms"][f"{method}, k={k}"] = reason
        for (method, k), median in medians.items():
            rows["per_probe_ms"][f"{method}, k={k}"] = ms(median / k)
        for vmapped, looped in pairs.items():
            for k in bench.sizes.vmap_ks:
                if (vmapped, k) not in medians or (looped, k) not in medians:
                    continue
                ratio = round(medians[(vmapped, k)] / medians[(looped, k)], 3)
                rows["vmapped_over_looped"][f"{vmapped} / {looped}, k={k}"] = ratio
                label = f"2 vmap, {name}, k={k}: {vmapped} / {looped} time"
                bench.figures.append(figure(label, ratio, "x"))
        found[name] = rows
        print(f"  {name}: {rows['vmapped_over_looped']}")
    return found


def section_trace(bench: Bench, seconds: float) -> dict[str, Any]:
    """3. ``hutchinson_trace`` against PyHessian 0.1's ``trace()``: the ResNet, the same data
    and probe count, in one graph and in batches; set-up included on both sides."""
    sizes = bench.sizes
    net, x, y = model_and_data(bench, "preact_resnet18", sizes.trace_samples)
    modes = {"one graph": None, f"batches of {sizes.trace_batch}": sizes.trace_batch}
    targets = {"one graph": 1.0, f"batches of {sizes.trace_batch}": 1.5}
    try:
        from pyhessian import hessian
    except ImportError:
        hessian = None
    runs = {}
    for mode, batch in modes.items():
        runs[("ours", mode)] = lambda b=batch: ours_trace(bench, net, x, y, b)
        if hessian is not None:
            runs[("PyHessian", mode)] = lambda b=batch: pyhessian_trace(
                bench, hessian, net, x, y, b
            )
    estimates: dict[tuple[str, str], list[float]] = {}
    functions = {
        key: (lambda key=key, run=run: estimates.__setitem__(key, run()))
        for key, run in runs.items()
    }
    medians, _, failures = timed_medians(bench, functions, seconds)
    found: dict[str, Any] = {"samples": sizes.trace_samples, "probes": sizes.trace_probes}
    if hessian is None:
        found["pyhessian"] = "skipped: pyhessian not installed"
    for key in runs:
        if key in failures:
            found[", ".join(key)] = failures[key]
            continue
        samples = estimates[key]
        stderr = statistics.stdev(samples) / len(samples) ** 0.5
        found[", ".join(key)] = {
            "ms": ms(medians[key]),
            "estimate": round(statistics.mean(samples), 4),
            "stderr": round(stderr, 4),
        }
    for mode in modes:
        if ("ours", mode) in medians and ("PyHessian", mode) in medians:
            speedup = medians[("PyHessian", mode)] / medians[("ours", mode)]
            target = targets[mode]
            label = f"3 trace, ResNet, {mode}: PyHessian time / ours"
            met = speedup >= target
            bench.figures.append(figure(label, round(speedup, 3), "x", f">= {target}", met))
            found[f"PyHessian / ours, {mode}"] = round(speedup, 3)
    return found


def ours_trace(bench: Bench, net: nn.Module, x: Tensor, y: Tensor, batch: int | None):
    probes = bench.sizes.trace_probes
    op = HessianOperator(
        net,
        F.cross_entropy,
        x,
        y,
        chunk_size=batch or len(y),
        probes_per_sweep=probes,
        device=bench.device,
    )
    return hutchinson_trace(op, torch.Generator().manual_seed(0), probes).samples.tolist()


def pyhessian_trace(bench: Bench, hessian, net: nn.Module, x: Tensor, y: Tensor, batch):
    """PyHessian on a deep copy (it switches the model to eval and leaves ``.grad`` holding a
    double-backward graph, cleared after), its early stop off so it draws every probe."""
    net = copy.deepcopy(net)
    cuda = bench.device.type == "cuda"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
        if batch is None:
            h = hessian(net, nn.CrossEntropyLoss(), data=(x, y), cuda=cuda)
        else:
            batches = list(zip(x.split(batch), y.split(batch), strict=True))
            h = hessian(net, nn.CrossEntropyLoss(), dataloader=batches, cuda=cuda)
        samples = h.trace(maxIter=bench.sizes.trace_probes, tol=-1.0)
    for p in net.parameters():
        p.grad = None
    return [float(s) for s in samples]
