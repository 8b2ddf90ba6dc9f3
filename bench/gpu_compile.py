"""``bench_gpu.py``'s ``torch.compile`` section: the HVP with compiled code, where compiling
works, against the same code eager; compile time recorded apart from the steady figure."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from gpu_common import Bench, Skipped, reason, timed_medians
from gpu_curvature import model_and_data, ms, operator, relative_difference
from record import figure
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from hessvalley.curvature.operator import HVP_METHODS

SAMPLES = {"preact_resnet18": "hvp_samples", "mlp": "mlp_samples"}
# variant -> the eager variant it is compared with
COMPILED = {
    "forward_over_reverse, torch.compile": "forward_over_reverse, eager",
    "double backward, torch.compile model": "double backward, eager model",
}


def section_compile(bench: Bench, seconds: float) -> dict[str, Any]:
    """Per model: a torch.func forward-over-reverse HVP, ``torch.compile(lambda v:
    jvp(grad(f), (theta,), (v,))[1])``, and a double backward through a compiled model, each
    against its eager self and one full-data gradient. A compiled variant that failed on the
    MLP is not tried again on the ResNet, which needs three times the MLP's minimum time left
    (its compilation takes longest)."""
    found: dict[str, Any] = {}
    models = bench.sizes.compile_models
    if not models:
        raise Skipped("not at these sizes (compiling takes tens of seconds)")
    failed: dict[str, str] = {}
    for name in models:
        need = bench.sizes.need_s["compile"] * (3 if name == "preact_resnet18" else 1)
        if bench.budget.left() < need:
            found[name] = f"skipped: time budget ({bench.budget.left():.0f} s left)"
            continue
        try:
            found[name] = compiled_hvps(bench, name, seconds / len(models), failed)
        except Exception as error:  # recorded, the next model goes on
            found[name] = reason(error)
        finally:
            torch._dynamo.reset()
        if isinstance(found[name], dict):
            for variant in COMPILED:
                result = found[name].get(variant)
                if isinstance(result, str) and result.startswith("failed"):
                    failed[variant] = f"skipped: {name} {result}"
        print(f"  {name}: {found[name]}")
    return found


def hvp_variants(net: nn.Module, x: Tensor, y: Tensor, rows: Tensor, backend: str):
    """The (k, P) ``rows`` times H, four ways: forward-over-reverse with torch.func and
    reverse-over-reverse through the model, each eager and with ``torch.compile``."""
    module = copy.deepcopy(net).eval()
    named = list(module.named_parameters())
    names, shapes = [n for n, _ in named], [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    buffers = dict(module.named_buffers())
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(th: Tensor) -> Tensor:
        tensors = {n: t.view(s) for n, t, s in zip(names, th.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(module, (tensors, buffers), (x,)), y)

    def forward_over_reverse(v: Tensor) -> Tensor:
        return jvp(grad(loss), (theta,), (v,))[1]

    compiled = torch.compile(forward_over_reverse, backend=backend)
    eager_model = copy.deepcopy(net).eval()
    compiled_model = torch.compile(copy.deepcopy(net).eval(), backend=backend)
    return {
        "forward_over_reverse, eager": lambda: torch.stack([forward_over_reverse(v) for v in rows]),
        "forward_over_reverse, torch.compile": lambda: torch.stack([compiled(v) for v in rows]),
        "double backward, eager model": lambda: double_backward(eager_model, x, y, rows),
        "double backward, torch.compile model": lambda: double_backward(compiled_model, x, y, rows),
    }


def compiled_hvps(bench: Bench, name: str, seconds: float, skip: dict[str, str]) -> dict[str, Any]:
    """Time ``hvp_variants`` but those in ``skip`` (variant: reason) on section 1's data."""
    samples = getattr(bench.sizes, SAMPLES[name])
    net, x, y = model_and_data(bench, name, samples)
    k = bench.sizes.probes[name]
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(k, sum(p.numel() for p in net.parameters()), generator=generator)
    backend = bench.sizes.compile_backend
    variants = hvp_variants(net, x, y, rows.to(bench.device), backend)
    outputs: dict[str, Tensor] = {}
    functions = {"gradient": operator(bench, net, x, y, HVP_METHODS[0], k).gradient}
    for key, run in variants.items():
        if key not in skip:
            functions[key] = lambda key=key, run=run: outputs.__setitem__(key, run())
    medians, first, failures = timed_medians(bench, functions, seconds)
    if "gradient" not in medians:
        raise RuntimeError(f"the gradient {failures['gradient']}")
    failures.update(skip)
    found: dict[str, Any] = {"k": k, "samples": samples, "backend": backend}
    found["gradient_ms"] = ms(medians["gradient"])
    for variant in variants:
        if variant in failures:
            found[variant] = failures[variant]
            continue
        ratio = medians[variant] / k / medians["gradient"]
        found[variant] = {
            "per_probe_ms": ms(medians[variant] / k),
            "hvp_over_gradient": round(ratio, 3),
            "first_call_s": round(first[variant], 3),
        }
        if variant in COMPILED:
            label = f"1 HVP, {name}: {variant} ({backend}), per-probe HVP / gradient"
            bench.figures.append(figure(label, round(ratio, 3), "x"))
            found[variant].update(compile_figures(bench, name, variant, medians, first, outputs))
    return found


def compile_figures(
    bench: Bench,
    name: str,
    variant: str,
    medians: dict[str, float],
    first: dict[str, float],
    outputs: dict[str, Tensor],
) -> dict[str, Any]:
    """Compile time (first call less a steady one) and the compiled variant against eager."""
    eager = COMPILED[variant]
    compile_s = first[variant] - medians[variant]
    found: dict[str, Any] = {"compile_s": round(compile_s, 3)}
    if eager in outputs:
        found["max_rel_diff_to_eager"] = relative_difference(outputs[variant], outputs[eager])
        found["over_eager"] = round(medians[variant] / medians[eager], 3)
    backend = bench.sizes.compile_backend
    label = f"1 HVP, {name}: {variant} ({backend}), compile time"
    bench.figures.append(figure(label, round(compile_s, 1), "s"))
    return found


def double_backward(model: nn.Module, x: Tensor, y: Tensor, rows: Tensor) -> Tensor:
    """H v for each row by reverse-over-reverse through ``model``: one gradient graph, one
    backward per probe (what PyHessian does)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    gradient = torch.autograd.grad(loss, params, create_graph=True)
    sizes = [p.numel() for p in params]
    out = []
    for i, v in enumerate(rows):
        parts = [t.view_as(p) for t, p in zip(v.split(sizes), params, strict=True)]
        hv = torch.autograd.grad(gradient, params, parts, retain_graph=i < len(rows) - 1)
        out.append(torch.cat([h.reshape(-1) for h in hv]))
    return torch.stack(out)
