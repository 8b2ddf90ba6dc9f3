"""hessvalley.sgd.SGD against torch.optim.SGD: the same parameters and momentum buffers, bit
for bit, on both of torch's code paths (per tensor, as on the CPU; foreach, as on CUDA)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hessvalley.sgd import SGD

SETTINGS = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 5e-4},
    {"lr": 0.2, "momentum": 0.5, "weight_decay": 1e-2, "nesterov": True},
]


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Tanh(),
        torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5),
    )  # fmt: skip
    return model


def trained(make, steps: int = 25) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters and momentum buffers after ``steps`` mini-batch steps with ``make(params)``."""
    model = net()
    optimizer = make(model.parameters())
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 1, 6, 6, generator=generator)
        y = torch.randint(0, 5, (8,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [optimizer.state[p].get("momentum_buffer") for p in model.parameters()]
    return params, buffers


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_the_update_is_torch_sgd_bit_for_bit(setting, foreach):
    ours_made = []

    def ours(params):
        optimizer = SGD(params, **setting)
        if foreach:  # the CUDA path, run on the CPU
            optimizer._step_each = optimizer._step_foreach
        ours_made.append(optimizer)
        return optimizer

    expected, expected_buffers = trained(
        lambda params: torch.optim.SGD(params, **setting, foreach=foreach)
    )
    got, got_buffers = trained(ours)
    assert ours_made and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    for a, b in zip(got_buffers, expected_buffers, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert (got_buffers[0] is not None) == ("momentum" in setting)


def test_a_changed_learning_rate_takes_effect_as_in_torch():
    def lowered(optimizer_class, **extra):
        def make(params):
            optimizer = optimizer_class(params, lr=0.5, momentum=0.9, **extra)
            optimizer.param_groups[0]["lr"] = 0.01
            return optimizer

        return make

    expected, _ = trained(lowered(torch.optim.SGD, foreach=False), steps=5)
    got, _ = trained(lowered(SGD), steps=5)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_frozen_parameters_are_left_alone_and_nesterov_needs_momentum():
    model = net()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    model(torch.randn(2, 1, 6, 6)).sum().backward()
    optimizer.step()
    assert torch.equal(frozen, before) and frozen not in optimizer.state
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        SGD(model.parameters(), lr=0.1, nesterov=True)


def test_a_trainer_starts_without_importing_torch_dynamo():
    code = (
        "import sys\n"
        "from hessvalley.sgd import SGD\n"
        "import torch\n"
        "model = torch.nn.Linear(3, 2)\n"
        "optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)\n"
        "model(torch.randn(4, 3)).sum().backward()\n"
        "optimizer.step()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
