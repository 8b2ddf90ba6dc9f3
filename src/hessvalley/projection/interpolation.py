"""Losses at many points of one model's parameter space: the test of line connectedness and
the lines between states.

``interpolation_alphas`` places ``n_points`` evenly spaced points strictly between the ends;
``line_points`` builds the parameters (and BatchNorm buffers) there; ``PointLosses`` gives the
full-data loss (and accuracy) at many such points in batched calls. It is the one point
evaluator of the package: the projection's connectedness test, the line between two stored
states (``hessvalley.line``) and the loss between consecutive iterates
(``hessvalley.iterate_interpolation``) all call it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hessvalley.losses import LossFn

BATCH_NORM_MODES = ("eval", "train")


def without_running_statistics(module: nn.Module) -> nn.Module:
    """``module`` (in place) with BatchNorm that normalises with the statistics of each batch
    it sees and updates nothing, in eval mode too: the running statistics are removed."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return module


class PointLosses:
    """Full-data losses and accuracies at many flat parameter (and buffer) vectors of one model.

    ``batch`` points share one call: ``torch.func.functional_call`` vmapped over stacked
    parameter sets, so a small net's matmuls become one batched matmul per layer
    (bench/bench_projection.py measures the gain). A batched call rounds differently from a
    plain forward pass (last bits); ``batch=1`` is the plain forward pass, bit for bit the
    ``loss_and_accuracy`` of the training curves over the same chunks. Activations of
    ``batch`` points times ``chunk`` samples are alive at once.

    ``batch_norm``: ``eval`` uses the running statistics of the buffers given; ``train``
    normalises each chunk of ``chunk`` samples (in data order) with its own statistics, so
    the result depends on the chunking but is deterministic, and the buffers given are not
    read (pass any (k, Q) rows of the model's buffer layout).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: int = 8,
        chunk: int = 2048,
        batch_norm: str = "eval",
    ):
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"batch_norm must be eval or train, got {batch_norm!r}")
        layout = [(n, b.shape, b.dtype) for n, b in model.named_buffers()]
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        if batch_norm == "train":
            without_running_statistics(self.module)
        self.loss_fn = loss_fn
        self.batch = max(int(batch), 1)
        self.chunk = max(int(chunk), 1)
        self.batch_norm = batch_norm
        self.params = _layout((n, p.shape, p.dtype) for n, p in self.module.named_parameters())
        kept = {n for n, _ in self.module.named_buffers()}
        self.buffers = [entry for entry in _layout(layout) if entry[0] in kept]

        def point_metrics(params, buffers, x, y):
            logits = functional_call(self.module, (params, buffers), (x,))
            return self.loss_fn(logits, y), (logits.argmax(-1) == y).sum()

        def point_loss(params, buffers, x, y):
            return (self.loss_fn(functional_call(self.module, (params, buffers), (x,)), y),)

        # accuracy costs a third more under vmap: computed only when asked for
        self._functions = {
            accuracy: (function, vmap(function, in_dims=(0, 0, None, None)))
            for accuracy, function in ((True, point_metrics), (False, point_loss))
        }

    @staticmethod
    def _split(flat: Tensor, layout) -> dict[str, Tensor]:
        """(k, N) rows -> {name: (k, *shape)} in each tensor's dtype, for the entries of
        ``layout`` (name, shape, dtype, offset)."""
        out = {}
        for name, shape, dtype, offset in layout:
            n = math.prod(shape)
            out[name] = flat[:, offset : offset + n].reshape(flat.shape[0], *shape).to(dtype)
        return out

    @torch.no_grad()
    def metrics(
        self, params: Tensor, buffers: Tensor, x: Tensor, y: Tensor, accuracy: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean loss and accuracy over (x, y) at each row of ``params`` (k, P) / ``buffers``
        (k, Q), as two (k,) float64 arrays (the accuracies 0 unless ``accuracy``)."""
        one, many = self._functions[accuracy]
        device = x.device
        params = params.to(device)
        buffers = buffers.to(device)
        losses, accuracies = np.zeros(params.shape[0]), np.zeros(params.shape[0])
        n = len(y)
        for first in range(0, params.shape[0], self.batch):
            rows = slice(first, first + self.batch)
            p = self._split(params[rows], self.params)
            b = self._split(buffers[rows], self.buffers)
            k = params[rows].shape[0]
            total = torch.zeros(k, dtype=torch.float64, device=device)
            correct = torch.zeros(k, dtype=torch.int64, device=device)
            for start in range(0, n, self.chunk):
                xs, ys = x[start : start + self.chunk], y[start : start + self.chunk]
                if k == 1:
                    points = {m: v[0] for m, v in p.items()}, {m: v[0] for m, v in b.items()}
                    values = [value[None] for value in one(*points, xs, ys)]
                else:
                    values = many(p, b, xs, ys)
                total += values[0].double() * len(ys)
                if accuracy:
                    correct += values[1]
            losses[rows] = (total / n).cpu().numpy()
            accuracies[rows] = (correct.double() / max(n, 1)).cpu().numpy()
        return losses, accuracies

    def __call__(self, params: Tensor, buffers: Tensor, x: Tensor, y: Tensor) -> np.ndarray:
        """Mean loss over (x, y) at each row of ``params`` (k, P) / ``buffers`` (k, Q)."""
        return self.metrics(params, buffers, x, y, accuracy=False)[0]


def _layout(entries) -> list[tuple[str, torch.Size, torch.dtype, int]]:
    """(name, shape, dtype) entries with their offsets in the flat vector."""
    out, offset = [], 0
    for name, shape, dtype in entries:
        out.append((name, shape, dtype, offset))
        offset += math.prod(shape)
    return out


def interpolation_alphas(n_points: int) -> np.ndarray:
    """``n_points`` evenly spaced points strictly between the ends (the ends are the
    projected points themselves)."""
    return np.arange(1, n_points + 1) / (n_points + 1)


def line_points(
    a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], alphas: np.ndarray
) -> tuple[Tensor, Tensor]:
    """Stacked (params, buffers) at (1 - alpha) a + alpha b for each alpha."""
    t = torch.as_tensor(alphas, dtype=torch.float64)
    params = torch.lerp(a[0][None].double(), b[0][None].double(), t[:, None].to(a[0].device))
    buffers = torch.lerp(a[1][None], b[1][None], t[:, None].to(a[1].device, a[1].dtype))
    return params.float(), buffers
