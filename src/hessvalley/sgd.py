"""SGD with momentum, dampening, weight decay and Nesterov: ``torch.optim.SGD``'s update, bit
for bit, without its start-up cost.

Constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` (its methods are wrapped
by ``torch._disable_dynamo``): about 2.5 s on a CPU core, as long as importing torch itself,
paid by every job that builds a trainer, most of which (curvature, lines, projections) never
take a step. The arithmetic below is torch's own, in its order: the per-tensor loop torch
uses on the CPU, the ``_foreach`` kernels it uses on CUDA. tests/test_sgd.py holds the two
equal bit for bit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class SGD:
    """The parts of the ``torch.optim.SGD`` interface this project uses: ``step``,
    ``zero_grad``, ``state[p]["momentum_buffer"]``, ``defaults`` and one param group (whose
    ``lr`` may be changed between steps, as torch's)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.params = [p for p in params if p.requires_grad]
        self.defaults: dict[str, Any] = {
            "lr": float(lr),
            "momentum": float(momentum),
            "dampening": float(dampening),
            "weight_decay": float(weight_decay),
            "nesterov": bool(nesterov),
        }
        self.param_groups = [{"params": self.params, **self.defaults}]
        self.state: defaultdict[Tensor, dict[str, Tensor]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return
        if all(p.device.type == "cuda" for p in params):
            self._step_foreach(params)
        else:
            self._step_each(params)

    def _step_each(self, params: list[Tensor]) -> None:
        """torch's single-tensor path (its default on the CPU)."""
        lr, momentum, dampening, decay, nesterov = self._constants()
        for p in params:
            grad = p.grad
            if decay != 0:
                grad = grad.add(p, alpha=decay)
            if momentum != 0:
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                grad = grad.add(buf, alpha=momentum) if nesterov else buf
            p.add_(grad, alpha=-lr)

    def _step_foreach(self, params: list[Tensor]) -> None:
        """torch's multi-tensor path (its default on CUDA), per (device, dtype) group."""
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
        for p in params:
            groups[(p.device, p.dtype)].append(p)
        lr, momentum, dampening, decay, nesterov = self._constants()
        for group in groups.values():
            grads = [p.grad for p in group]
            if decay != 0:
                grads = torch._foreach_add(grads, group, alpha=decay)
            if momentum != 0:
                bufs = [self.state[p].get("momentum_buffer") for p in group]
                if all(b is not None for b in bufs):
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, grads, alpha=1 - dampening)
                else:
                    for i, (p, grad) in enumerate(zip(group, grads, strict=True)):
                        if bufs[i] is None:
                            bufs[i] = self.state[p]["momentum_buffer"] = grad.detach().clone()
                        else:
                            bufs[i].mul_(momentum).add_(grad, alpha=1 - dampening)
                if nesterov:
                    torch._foreach_add_(grads, bufs, alpha=momentum)
                else:
                    grads = bufs
            torch._foreach_add_(group, grads, alpha=-lr)

    def _constants(self) -> tuple[float, float, float, float, bool]:
        d = self.param_groups[0]
        return d["lr"], d["momentum"], d["dampening"], d["weight_decay"], d["nesterov"]
