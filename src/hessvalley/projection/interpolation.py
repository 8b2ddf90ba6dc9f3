"""Losses on the line between two projected states: the test of line connectedness.

``interpolation_alphas`` places ``n_points`` evenly spaced points strictly between the ends;
``line_points`` builds the parameters (and BatchNorm buffers) there; ``PointLosses`` gives the
full-data eval-mode loss at many such points in batched calls.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hessvalley.losses import LossFn


class PointLosses:
    """Full-data eval-mode losses at many flat parameter (and buffer) vectors of one model.

    ``batch`` points share one call: ``torch.func.functional_call`` vmapped over stacked
    parameter sets, so a small net's matmuls become one batched matmul per layer
    (bench/bench_projection.py measures the gain). Activations of ``batch`` points times
    ``chunk`` samples are alive at once.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: int = 8, chunk: int = 2048):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.loss_fn = loss_fn
        self.batch = max(int(batch), 1)
        self.chunk = max(int(chunk), 1)
        self.params = [(n, p.shape, p.dtype) for n, p in self.module.named_parameters()]
        self.buffers = [(n, b.shape, b.dtype) for n, b in self.module.named_buffers()]

        def point_loss(params, buffers, x, y):
            return self.loss_fn(functional_call(self.module, (params, buffers), (x,)), y)

        self._one = point_loss
        self._many = vmap(point_loss, in_dims=(0, 0, None, None))

    @staticmethod
    def _split(flat: Tensor, layout) -> dict[str, Tensor]:
        """(k, N) rows -> {name: (k, *shape)} in each tensor's dtype."""
        out, offset = {}, 0
        for name, shape, dtype in layout:
            n = math.prod(shape)
            out[name] = flat[:, offset : offset + n].reshape(flat.shape[0], *shape).to(dtype)
            offset += n
        return out

    @torch.no_grad()
    def __call__(self, params: Tensor, buffers: Tensor, x: Tensor, y: Tensor) -> np.ndarray:
        """Mean loss over (x, y) at each row of ``params`` (k, P) / ``buffers`` (k, Q)."""
        device = x.device
        params = params.to(device)
        buffers = buffers.to(device)
        out = np.zeros(params.shape[0])
        n = len(y)
        for first in range(0, params.shape[0], self.batch):
            rows = slice(first, first + self.batch)
            p = self._split(params[rows], self.params)
            b = self._split(buffers[rows], self.buffers)
            total = torch.zeros(p[self.params[0][0]].shape[0], dtype=torch.float64, device=device)
            for start in range(0, n, self.chunk):
                xs, ys = x[start : start + self.chunk], y[start : start + self.chunk]
                if params[rows].shape[0] == 1:
                    one = {k: v[0] for k, v in p.items()}, {k: v[0] for k, v in b.items()}
                    losses = self._one(*one, xs, ys)[None]
                else:
                    losses = self._many(p, b, xs, ys)
                total += losses.double() * len(ys)
            out[rows] = (total / n).cpu().numpy()
        return out


def interpolation_alphas(n_points: int) -> np.ndarray:
    """``n_points`` evenly spaced points strictly between the ends (the ends are the
    projected points themselves)."""
    return np.arange(1, n_points + 1) / (n_points + 1)


def line_points(
    a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], alphas: np.ndarray
) -> tuple[Tensor, Tensor]:
    """Stacked (params, buffers) at (1 - alpha) a + alpha b for each alpha."""
    t = torch.as_tensor(alphas)
    params = torch.lerp(a[0][None].double(), b[0][None].double(), t[:, None]).float()
    buffers = torch.lerp(a[1][None], b[1][None], t[:, None].to(a[1].dtype))
    return params, buffers
