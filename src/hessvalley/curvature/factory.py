"""One Hessian factory: every curvature computation at stored parameters builds its operator here.

The curvature stages along a trajectory (``hessvalley.trajectory_curvature``) and the trace
along a projected path (``hessvalley.projection.trace``) take the Hessian of the mean
training loss over the same samples, with the same BatchNorm policy, precision, chunking and
probes per sweep, all from the ``curvature`` keys in ``hessvalley.hessian_keys``; so two
figures' "trace" are estimates of one operator and can be compared. Each store records
``hessian_attrs``: the keys and the number of samples the Hessian was taken over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hessvalley.curvature.operator import HessianOperator, LossFn, methods_used
from hessvalley.hessian_keys import hessian_keys

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def n_hessian_samples(n_train: int, hessian: Mapping[str, Any]) -> int:
    """Samples the Hessian is taken over: all ``n_train``, or ``n_samples`` of them."""
    n = hessian["n_samples"]
    return n_train if n is None else min(int(n), n_train)


def hessian_samples(x: Tensor, y: Tensor, hessian: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    """All training samples, or the subset of ``n_samples`` drawn with ``subset_seed`` (kept
    in data order, so the chunks of a sweep do not depend on the draw's order)."""
    n = n_hessian_samples(len(y), hessian)
    if n == len(y):
        return x, y
    generator = torch.Generator().manual_seed(int(hessian["subset_seed"]))
    keep = torch.randperm(len(y), generator=generator)[:n].sort().values.to(x.device)
    return x[keep], y[keep]


def hessian_at(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    hessian: Mapping[str, Any],
    *,
    params: Tensor | None = None,
    buffers: Tensor | None = None,
    reuse_graph: bool | None = None,
) -> HessianOperator:
    """The Hessian of the mean ``loss_fn`` over the training samples ``x``, ``y`` (or their
    seeded subset) at the model's parameters and buffers (or the flat ``params`` and
    ``buffers``), as the ``curvature`` keys ``hessian`` say (``HESSIAN_KEYS``; other keys
    are ignored). ``reuse_graph`` as in ``HessianOperator``."""
    keys = hessian_keys(hessian)
    x, y = hessian_samples(x, y, keys)
    return HessianOperator(
        model,
        loss_fn,
        x,
        y,
        params=params,
        buffers=buffers,
        chunk_size=int(keys["chunk_size"]),
        probes_per_sweep=int(keys["probes_per_sweep"]),
        bn_policy=keys["batch_norm"],
        dtype=DTYPES[keys["dtype"]],
        method=keys["hvp_method"],
        reuse_graph=reuse_graph,
    )


def hessian_attrs(hessian: Mapping[str, Any], n_train: int) -> dict[str, Any]:
    """What a store records about its Hessian: the keys (``hessian``), the number of samples
    it was taken over (``n_samples``) out of a training set of ``n_train``, and the HVP
    methods this process's operators used with the seconds per row ``auto`` measured
    (``hvp_methods``)."""
    keys = hessian_keys(hessian)
    return {
        "hessian": keys,
        "n_samples": n_hessian_samples(n_train, keys),
        "hvp_methods": methods_used(),
    }
