"""The Hessian of the mean training loss as a linear operator on flat parameter vectors.

``HessianOperator`` evaluates the model through ``torch.func.functional_call`` on a private
copy of the module, so the caller's parameters, BatchNorm buffers and train/eval mode are
never touched. The data are swept in chunks (memory stays bounded by one chunk); each sweep
applies H to a block of probe vectors, so k probes cost one forward/backward of the data
plus k second-order passes instead of k full sweeps.

Flat vectors follow ``hessvalley.flat``: ``model.named_parameters()`` order, each tensor
reshaped to 1-d, concatenated (the layout of the trajectory stores).

BatchNorm policy (``bn_policy``):
- ``"eval"`` (default): running statistics, as at test time. The loss is a mean of
  per-sample terms, independent of chunking, and per-sample gradients exist.
- ``"train"``: batch statistics of each chunk, with no running-statistic update. The loss
  then depends on how the data are cut into chunks (a chunk of 500 is one "batch"), so keep
  ``chunk_size`` fixed when comparing values; per-sample quantities (noise covariance) are
  undefined and refuse this policy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from hessvalley.flat import flatten, unflatten_into

LossFn = Callable[[Tensor, Tensor], Tensor]
BNPolicy = Literal["eval", "train"]
HVP_METHODS = (
    "double_backward_loop",
    "double_backward_batched",
    "forward_over_reverse_vmap",
    "forward_over_reverse_loop",
)
# Chosen by bench/bench_hvp.py on the 2-core CPU development machine, one thread (the default
# config's ``threads: 1``), float32, 1347 digits in one chunk, 32 probes per sweep, medians of
# 7 interleaved repeats; per-probe HVP time / one-chunk full-data gradient time, with glibc
# malloc keeping freed memory (the bench's default) | glibc's default malloc:
#   mlp (64-32-10 tanh, 2410 params): double_backward_batched 0.70 | 0.69,
#       double_backward_loop 0.63 | 0.61, forward_over_reverse_vmap 0.52 | 0.84,
#       forward_over_reverse_loop 3.2 | 3.1
#   cnn (ws_cnn 8-8-8 relu, 1338 params): double_backward_loop 2.2 | 2.8,
#       double_backward_batched 2.3 | 3.1, forward_over_reverse_vmap 1.8 | 6.3,
#       forward_over_reverse_loop 3.4 | 4.5
# Reverse-over-reverse is the robust choice: the forward and first backward pass of a chunk
# are shared by all probes of a sweep. forward_over_reverse_vmap is fastest only when freed
# memory is kept: its tensors are 32x a chunk's activations, which glibc's default malloc
# returns to the OS and page-faults back in on every sweep (~1e6 faults per CNN sweep); it
# also needs that 32x memory. For matmuls, vmap over the second backward (batched) costs
# about the same per probe however the data are chunked, while the loop's per-chunk overhead
# grows with the number of chunks (at chunks of 256: batched ~0.7-1.0x, loop ~1.3-1.5x of
# the one-chunk gradient). For convolutions every method costs about two gradients, the flop
# count of an exact HVP (tangent forward + tangent backward, each twice the convolutions of
# the gradient's; vmap's bigger batched kernels get to 1.8 only with kept memory), and the
# loop needs no extra memory. Not measured on GPU: pass ``method``
# there to override.
DEFAULT_HVP_METHOD = {"mlp": "double_backward_batched", "cnn": "double_backward_loop"}
# ``double_backward_batched`` vmaps the second backward over at most this many
# (samples in the chunk) x (probes) at once, in sub-blocks of the sweep's probes: past it the
# batched tangents leave the cache and a sweep slows down (MLP above, one thread: one chunk
# of 1347 samples, all 32 probes at once 0.70-0.92x a gradient per probe, in sub-blocks of
# 3-4 0.47-0.66x; at chunks of 256, sub-blocks of 16 and all 32 are alike).
BATCHED_SAMPLE_PROBES = 4096


class LinearOperator(Protocol):
    """What the estimators need: a symmetric P x P operator applied to (P, k) blocks."""

    size: int
    dtype: torch.dtype
    device: torch.device

    def matmat(self, vectors: Tensor) -> Tensor: ...


class MatrixOperator:
    """An explicit symmetric matrix as a ``LinearOperator`` (references and tests)."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.size = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device

    def matmat(self, vectors: Tensor) -> Tensor:
        return self.matrix @ vectors


def in_sweeps(op: HessianOperator, vectors: Tensor, sweep: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``sweep`` (one pass over ``op``'s data mapping (k, P) rows to (k, P) rows) to a
    (P, k) block, ``op.probes_per_sweep`` columns at a time, in ``op``'s dtype and device."""
    if vectors.ndim != 2 or vectors.shape[0] != op.size:
        raise ValueError(f"need a ({op.size}, k) block, got {tuple(vectors.shape)}")
    rows = vectors.to(op.device, op.dtype).T  # (k, P)
    out = torch.cat([sweep(group) for group in rows.split(op.probes_per_sweep)])  # (k, P)
    return out.T.to(vectors.dtype)


def model_family(model: nn.Module) -> str:
    """``"cnn"`` when the model convolves, else ``"mlp"``: the key of ``DEFAULT_HVP_METHOD``."""
    convolutions = (nn.modules.conv._ConvNd,)
    return "cnn" if any(isinstance(m, convolutions) for m in model.modules()) else "mlp"


def _private_copy(
    model: nn.Module,
    bn_policy: BNPolicy,
    buffers: Tensor | None,
    dtype: torch.dtype | None,
    device: torch.device,
) -> nn.Module:
    """An eval-mode copy (dropout off) holding ``buffers`` if given; under ``"train"``
    BatchNorm keeps no running statistics, so it normalises with the statistics of each
    batch it sees and updates nothing."""
    if bn_policy not in ("eval", "train"):
        raise ValueError(f"bn_policy must be 'eval' or 'train', got {bn_policy!r}")
    module = copy.deepcopy(model).eval()
    if buffers is not None:
        unflatten_into(buffers, module.buffers())
    if bn_policy == "train":
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats = False
                m.running_mean = None
                m.running_var = None
                m.num_batches_tracked = None
    module.requires_grad_(False)
    return module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)


class HessianOperator:
    """H = d^2/dtheta^2 (1/M) sum_k loss(model(x_k; theta), y_k) at ``params`` (default: the
    model's current parameters), applied to (P, k) blocks of vectors.

    ``params`` and ``buffers`` are flat vectors in the layouts of ``hessvalley.flat``
    (``param_layout``, ``buffer_layout``), e.g. one checkpoint row of a trajectory store;
    ``buffers`` (BatchNorm running statistics) default to the model's own.

    ``chunk_size`` samples are processed at once; ``probes_per_sweep`` vectors share one
    sweep over the data (more probes are split over several sweeps, bounding memory).
    ``method`` picks the HVP implementation (``HVP_METHODS``); ``"auto"`` takes the one
    measured fastest for the model family (``DEFAULT_HVP_METHOD``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        x: Tensor,
        y: Tensor,
        *,
        params: Tensor | None = None,
        buffers: Tensor | None = None,
        chunk_size: int = 2048,
        probes_per_sweep: int = 32,
        bn_policy: BNPolicy = "eval",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        method: str = "auto",
    ) -> None:
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"x and y need the same non-zero length, got {len(x)}, {len(y)}")
        if chunk_size < 1 or probes_per_sweep < 1:
            raise ValueError("chunk_size and probes_per_sweep must be positive")
        if method == "auto":
            method = DEFAULT_HVP_METHOD[model_family(model)]
        if method not in HVP_METHODS:
            raise ValueError(
                f"unknown HVP method {method!r}; known: auto, {', '.join(HVP_METHODS)}"
            )
        self.device = torch.device(device) if device is not None else x.device
        self.module = _private_copy(model, bn_policy, buffers, dtype, self.device)
        named = list(self.module.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dtype = named[0][1].dtype
        self.buffers = dict(self.module.named_buffers())
        if params is None:
            params = flatten((p for _, p in model.named_parameters()), self.dtype)
        self.theta = params.detach().to(device=self.device, dtype=self.dtype)
        self.size = sum(self.sizes)
        if self.theta.shape != (self.size,):
            raise ValueError(
                f"params has shape {tuple(params.shape)}, the model needs ({self.size},)"
            )
        self.loss_fn = loss_fn
        self.x = x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)
        self.y = y.to(self.device)
        self.n_samples = x.shape[0]
        self.chunk_size = chunk_size
        self.probes_per_sweep = probes_per_sweep
        self.bn_policy = bn_policy
        self.method = method

    # -- the model and loss as functions of the flat parameter vector --------------------------

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        return {
            name: part.view(shape)
            for name, part, shape in zip(
                self.names, theta.split(self.sizes), self.shapes, strict=True
            )
        }

    def outputs(self, theta: Tensor, x: Tensor) -> Tensor:
        """Model outputs (B, n_classes) at flat parameters ``theta``."""
        return functional_call(self.module, (self.unflatten(theta), self.buffers), (x,))

    def chunk_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_fn(self.outputs(theta, x), y)

    def chunks(self, indices: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor, float]]:
        """(x, y, weight) per chunk, weight = chunk length / total, so weighted chunk means
        sum to the mean over all (or the ``indices``) samples."""
        total = self.n_samples if indices is None else len(indices)
        for start in range(0, total, self.chunk_size):
            if indices is None:
                x, y = (
                    self.x[start : start + self.chunk_size],
                    self.y[start : start + self.chunk_size],
                )
            else:
                index = indices[start : start + self.chunk_size].to(self.device)
                x, y = self.x[index], self.y[index]
            yield x, y, len(y) / total

    # -- zeroth and first order ------------------------------------------------------------------

    def loss(self, indices: Tensor | None = None) -> Tensor:
        """Mean loss over the data (or over the samples ``indices``)."""
        with torch.no_grad():
            return sum(w * self.chunk_loss(self.theta, x, y) for x, y, w in self.chunks(indices))

    def gradient(self, indices: Tensor | None = None) -> Tensor:
        """Gradient (P,) of the mean loss over the data (or over the samples ``indices``:
        a mini-batch gradient g_B)."""
        total = torch.zeros_like(self.theta)
        theta = self.theta.detach().requires_grad_(True)
        with torch.enable_grad():
            for x, y, weight in self.chunks(indices):
                (g,) = torch.autograd.grad(self.chunk_loss(theta, x, y), theta)
                total.add_(g, alpha=weight)
        return total

    # -- second order ------------------------------------------------------------------------------

    def matvec(self, vector: Tensor) -> Tensor:
        return self.matmat(vector[:, None])[:, 0]

    def matmat(self, vectors: Tensor) -> Tensor:
        """H @ vectors for a (P, k) block; ``probes_per_sweep`` columns share a data sweep."""
        return in_sweeps(self, vectors, self._sweep)

    def _sweep(self, rows: Tensor) -> Tensor:
        """One pass over the data applying H to the (k, P) rows."""
        total = torch.zeros_like(rows)
        for x, y, weight in self.chunks():
            total.add_(self._chunk_hvp(rows, x, y), alpha=weight)
        return total

    def _chunk_hvp(self, rows: Tensor, x: Tensor, y: Tensor) -> Tensor:
        if self.method.startswith("forward_over_reverse"):

            def hvp(v: Tensor) -> Tensor:
                return jvp(lambda th: grad(self.chunk_loss)(th, x, y), (self.theta,), (v,))[1]

            if self.method == "forward_over_reverse_vmap":
                return vmap(hvp)(rows)
            return torch.stack([hvp(v) for v in rows])
        theta = self.theta.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.chunk_loss(theta, x, y), theta, create_graph=True)
            group = 1
            if self.method == "double_backward_batched":
                group = max(1, BATCHED_SAMPLE_PROBES // len(y))
            blocks = rows.split(group)
            out = []
            for i, block in enumerate(blocks):
                retain = i < len(blocks) - 1
                if len(block) == 1:
                    out.append(
                        torch.autograd.grad(g, theta, block[0], retain_graph=retain)[0][None]
                    )
                else:
                    out.append(
                        torch.autograd.grad(
                            g, theta, block, retain_graph=retain, is_grads_batched=True
                        )[0]
                    )
            return torch.cat(out)
