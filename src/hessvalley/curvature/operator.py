"""The Hessian of the mean training loss as a linear operator on flat parameter vectors.

``HessianOperator`` evaluates the model through ``torch.func.functional_call`` on a private
copy of the module, so the caller's parameters, BatchNorm buffers and train/eval mode are
never touched. The data are swept in chunks (memory stays bounded by one chunk); each sweep
applies H to a block of probe vectors, so k probes cost one forward/backward of the data
plus k second-order passes instead of k full sweeps.

Flat vectors follow ``hessvalley.flat``: ``model.named_parameters()`` order, each tensor
reshaped to 1-d, concatenated (the layout of the trajectory stores), over the parameters the
Hessian is taken in: the trainable ones (frozen parameters are constants of the loss, as in
training), or all with ``include_frozen=True``.

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
from torch.func import functional_call

from hessvalley.curvature.hvp import (
    HVP_METHODS,
    TRIAL_PROBES,
    GradientGraph,
    batched_group,
    double_backward,
    fastest,
    forward_over_reverse,
    gradient_graph,
    measure_methods,
)
from hessvalley.flat import flatten, unflatten_into

LossFn = Callable[[Tensor, Tensor], Tensor]
BNPolicy = Literal["eval", "train"]


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
    rows = vectors.to(op.device, op.dtype).T.contiguous()  # (k, P): rows contiguous, as
    # autograd's grad_outputs run slower strided (+25% per HVP measured on a 203k MLP)
    out = torch.cat([sweep(group) for group in rows.split(op.probes_per_sweep)])  # (k, P)
    return out.T.to(vectors.dtype)


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

    theta are the model's trainable parameters (``requires_grad``): frozen ones are held at
    their values and left out of H, as training leaves them out; ``include_frozen=True``
    takes every parameter. ``params`` is a flat vector in the layout of ``hessvalley.flat``
    (``param_layout``, every parameter, e.g. one checkpoint row of a trajectory store) or of
    theta alone; ``buffers`` (BatchNorm running statistics) default to the model's own.

    ``chunk_size`` samples are processed at once; ``probes_per_sweep`` vectors share one
    sweep over the data (more probes are split over several sweeps, bounding memory). When
    the data fit in one chunk the gradient graph is built once and every later product only
    differentiates it again (``reuse_graph``; default: whenever there is one chunk). ``method``
    picks the HVP implementation (``HVP_METHODS``); ``"auto"`` times the candidates on the
    first matmat's first chunk and rows and takes the fastest (``hessvalley.curvature.hvp``),
    once per process for a given model shape, data shape and settings; ``method`` then names
    the choice and ``method_timings`` the seconds per row measured.
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
        include_frozen: bool = False,
        reuse_graph: bool | None = None,
    ) -> None:
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"x and y need the same non-zero length, got {len(x)}, {len(y)}")
        if chunk_size < 1 or probes_per_sweep < 1:
            raise ValueError("chunk_size and probes_per_sweep must be positive")
        if method != "auto" and method not in HVP_METHODS:
            raise ValueError(
                f"unknown HVP method {method!r}; known: auto, {', '.join(HVP_METHODS)}"
            )
        self.device = torch.device(device) if device is not None else x.device
        self.module = _private_copy(model, bn_policy, buffers, dtype, self.device)
        every = list(self.module.named_parameters())
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        named = [(n, p) for n, p in every if include_frozen or n in trainable]
        if not named:
            raise ValueError(
                "the model has no trainable parameters (every requires_grad is False); "
                "pass include_frozen=True for the Hessian in all of them"
            )
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dtype = named[0][1].dtype
        self.buffers = dict(self.module.named_buffers())
        self.size = sum(self.sizes)
        self.theta = self._theta(model, params, every)
        self.loss_fn = loss_fn
        self.x = x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)
        self.y = y.to(self.device)
        self.n_samples = x.shape[0]
        self.chunk_size = chunk_size
        self.probes_per_sweep = probes_per_sweep
        self.bn_policy = bn_policy
        self.method = method
        self.method_timings: dict[str, float] = {}
        self.reuse_graph = self.n_samples <= chunk_size if reuse_graph is None else reuse_graph
        self._graph: GradientGraph | None = None

    def _theta(self, model: nn.Module, params: Tensor | None, every: list) -> Tensor:
        """theta from ``params`` in the full layout (frozen values go into the private copy)
        or in theta's own, or from the model."""
        if params is None:
            named = dict(model.named_parameters())
            return flatten((named[n] for n in self.names), self.dtype).to(self.device)
        params = params.detach().to(device=self.device, dtype=self.dtype)
        full = sum(p.numel() for _, p in every)
        if params.shape == (full,) and full != self.size:
            with torch.no_grad():
                unflatten_into(params, (p for _, p in every))
            named = dict(every)
            return flatten((named[n] for n in self.names), self.dtype).to(self.device)
        if params.shape != (self.size,):
            raise ValueError(
                f"params has shape {tuple(params.shape)}, the model needs ({self.size},)"
                + (f" (or ({full},) with its frozen parameters)" if full != self.size else "")
            )
        return params

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

    def release(self) -> None:
        """Free the kept gradient graph (it is rebuilt by the next product if needed)."""
        self._graph = None

    def _sweep(self, rows: Tensor) -> Tensor:
        """One pass over the data applying H to the (k, P) rows."""
        if self.method == "auto":
            self._choose_method(rows)
        _USED.setdefault(self.method, self.method_timings)
        if self.reuse_graph and self.method.startswith("double_backward"):
            group = batched_group(self.method, self.n_samples)
            return double_backward(self._kept_graph(), rows, group, keep_graph=True)
        total = torch.zeros_like(rows)
        for x, y, weight in self.chunks():
            total.add_(self._chunk_hvp(rows, x, y), alpha=weight)
        return total

    def _kept_graph(self) -> GradientGraph:
        """The whole data's gradient graph, built on first use and kept until ``release``."""
        if self._graph is None:
            self._graph = gradient_graph(self.chunk_loss, self.theta, self.x, self.y)
        return self._graph

    def _chunk_hvp(self, rows: Tensor, x: Tensor, y: Tensor) -> Tensor:
        if self.method.startswith("forward_over_reverse"):
            vectorised = self.method == "forward_over_reverse_vmap"
            return forward_over_reverse(self.chunk_loss, self.theta, x, y, rows, vectorised)
        graph = gradient_graph(self.chunk_loss, self.theta, x, y)
        return double_backward(graph, rows, batched_group(self.method, len(y)), keep_graph=False)

    def _choose_method(self, rows: Tensor) -> None:
        """Set ``method`` to the fastest ``AUTO_CANDIDATES`` method on the first chunk and the
        first ``TRIAL_PROBES`` rows, for sweeps of ``len(rows)`` (measured once per process and
        ``_trial_key``)."""
        trial = rows[:TRIAL_PROBES]
        key = self._trial_key(len(rows))
        if key not in _MEASURED:
            x, y = self.x[: self.chunk_size], self.y[: self.chunk_size]
            reused = self._kept_graph() if self.reuse_graph else None
            _MEASURED[key] = measure_methods(
                self.chunk_loss, self.theta, x, y, trial, reused, width=len(rows)
            )
        self.method_timings = dict(_MEASURED[key])
        self.method = fastest(self.method_timings)
        if not self.method.startswith("double_backward"):
            self.release()

    def _trial_key(self, n_rows: int) -> tuple:
        """What the measured speeds depend on: the model's layers and shapes, the chunk,
        the rows, the dtype, device, BatchNorm policy and graph reuse."""
        layers = tuple(type(m).__qualname__ for m in self.module.modules())
        return (
            type(self.loss_fn).__qualname__,
            getattr(self.loss_fn, "__qualname__", ""),
            layers,
            tuple(self.shapes),
            tuple(self.x[: self.chunk_size].shape),
            n_rows,
            self.dtype,
            str(self.device),
            self.bn_policy,
            self.reuse_graph,
            torch.get_num_threads(),
        )


# The measured seconds per row of every trial so far in this process (``_trial_key``), and
# the methods operators have used, each with its trial's timings ({} when named).
_MEASURED: dict[tuple, dict[str, float]] = {}
_USED: dict[str, dict[str, float]] = {}


def methods_used() -> dict[str, dict[str, float]]:
    """The HVP methods this process's operators have applied, each with the seconds per row
    its ``auto`` trial measured for every candidate ({} when the method was named)."""
    return {method: dict(timings) for method, timings in _USED.items()}
