"""The one Hessian factory: the operator the curvature keys describe, and the attrs recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessvalley.curvature import HessianOperator, hessian_at, hessian_attrs
from hessvalley.hessian_keys import HESSIAN_KEYS, hessian_keys

KEYS = {
    "n_samples": None,
    "subset_seed": 0,
    "batch_norm": "eval",
    "dtype": "float32",
    "chunk_size": 2048,
    "probes_per_sweep": 32,
    "hvp_method": "auto",
}


@pytest.fixture
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))
    model[1].running_mean.uniform_(-0.5, 0.5)  # eval and train BatchNorm must differ
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    return model, nn.functional.cross_entropy, x, y


def test_factory_builds_the_operator_the_keys_describe(problem):
    model, loss_fn, x, y = problem
    keys = {**KEYS, "n_samples": 25, "subset_seed": 3, "batch_norm": "train", "dtype": "float64",
            "chunk_size": 7, "probes_per_sweep": 2, "hvp_method": "double_backward_loop",
            "every": 5}  # fmt: skip
    op = hessian_at(model, loss_fn, x, y, keys)
    keep = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:25].sort().values
    reference = HessianOperator(
        model, loss_fn, x[keep], y[keep], chunk_size=7, probes_per_sweep=2, bn_policy="train",
        dtype=torch.float64, method="double_backward_loop",
    )  # fmt: skip
    assert (op.n_samples, op.chunk_size, op.probes_per_sweep) == (25, 7, 2)
    assert (op.bn_policy, op.dtype) == ("train", torch.float64)
    assert torch.equal(op.x, reference.x) and torch.equal(op.y, reference.y)
    probes = torch.randn(op.size, 3, dtype=torch.float64)
    assert torch.equal(op.matmat(probes), reference.matmat(probes))
    attrs = hessian_attrs(keys, 40)
    assert attrs["hessian"] == hessian_keys(keys) and attrs["n_samples"] == 25
    assert "double_backward_loop" in attrs["hvp_methods"]  # this process used it
    assert set(hessian_attrs(keys, 40)["hessian"]) == set(HESSIAN_KEYS)  # not "every"


def test_all_samples_unless_a_smaller_subset_is_asked_for(problem):
    model, loss_fn, x, y = problem
    for n in (None, 40, 100):
        op = hessian_at(model, loss_fn, x, y, {**KEYS, "n_samples": n})
        assert op.x is x and op.n_samples == 40
        assert hessian_attrs({**KEYS, "n_samples": n}, 40)["n_samples"] == 40
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    moved = hessian_at(model, loss_fn, x, y, KEYS, params=flat + 1.0)
    assert torch.equal(moved.theta, flat + 1.0)  # flat parameters of a stored state


def test_missing_keys_are_named():
    with pytest.raises(KeyError, match="curvature keys missing: dtype, chunk_size"):
        hessian_keys({k: v for k, v in KEYS.items() if k not in ("dtype", "chunk_size")})
