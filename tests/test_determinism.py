"""The determinism record and the conditions ``reproducing`` sets up and restores."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hessvalley import determinism
from hessvalley.device import resolve_device
from hessvalley.errors import HessvalleyError
from hessvalley.losses import build_loss
from hessvalley.models import FACTORIES, build_model

CPU = torch.device("cpu")


@pytest.fixture
def threads():
    """Restore the torch thread count a test changes."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_record_names_threads_torch_device_and_deterministic_mode(threads):
    torch.set_num_threads(3)
    assert determinism.record(CPU) == {
        "torch_threads": 3,
        "torch_version": torch.__version__,
        "device_type": "cpu",
        "device_name": None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def test_reproducing_runs_at_the_recorded_threads_and_restores_them(threads, capsys):
    torch.set_num_threads(1)
    recorded = determinism.record(CPU)
    torch.set_num_threads(2)
    reproducing = determinism.reproducing(recorded, CPU, "replaying x")
    with pytest.raises(RuntimeError, match="inside"), reproducing:
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2
    assert capsys.readouterr().out == (
        "replaying x: running at the recorded 1 torch thread(s) (this process has 2), "
        "as bit-exactness requires\n"
    )
    with determinism.reproducing(determinism.record(CPU), CPU, "replaying x"):
        assert torch.get_num_threads() == 2
    assert capsys.readouterr().out == ""  # nothing to say when nothing differs


def test_reproducing_without_a_record_warns_and_keeps_the_threads(threads, capsys):
    torch.set_num_threads(2)
    with determinism.reproducing(None, CPU, "resuming old.zarr.partial"):
        assert torch.get_num_threads() == 2
    out = capsys.readouterr().out
    assert out.startswith("resuming old.zarr.partial: the store predates the record")
    assert "exactness is not guaranteed" in out


@pytest.mark.parametrize(("key", "value"), [("torch_version", "2.0.0"), ("device_type", "cuda")])
def test_reproducing_refuses_another_torch_version_or_device_type(key, value):
    recorded = {**determinism.record(CPU), key: value}
    refused = pytest.raises(HessvalleyError, match=r"^replaying t\.zarr: cannot be reproduced")
    with refused, determinism.reproducing(recorded, CPU, "replaying t.zarr"):
        pytest.fail("the body must not run")


def test_on_cuda_deterministic_algorithms_and_cublas_workspace_are_requested(
    threads, monkeypatch, capsys
):
    """The CUDA path, checked on CPU: nothing in it launches a CUDA kernel."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU A")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda")
    recorded = determinism.record(cuda)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    with determinism.reproducing(recorded, cuda, "replaying t.zarr"):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
        assert determinism.record(cuda)["deterministic_algorithms"] is True
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.benchmark
    assert determinism.record(cuda)["device_name"] == "GPU A"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert capsys.readouterr().out == ""

    with determinism.reproducing({**recorded, "device_name": "GPU B"}, cuda, "replaying t.zarr"):
        pass  # another GPU model: said, not refused
    assert capsys.readouterr().out == (
        "replaying t.zarr: recorded on GPU B, running on GPU A: another GPU model may give "
        "other bits\n"
    )


def test_choosing_cuda_requests_the_deterministic_cublas_workspace(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert resolve_device("cuda") == torch.device("cuda")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # a user's choice is kept
    resolve_device("auto")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


# Ops that raise under torch.use_deterministic_algorithms(True) on CUDA, having no
# deterministic CUDA kernel (torch.use_deterministic_algorithms' documentation).
NO_DETERMINISTIC_CUDA_KERNEL = {
    "_adaptive_avg_pool2d_backward",
    "_adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward",
    "avg_pool3d_backward",
    "fractional_max_pool2d_backward",
    "fractional_max_pool3d_backward",
    "max_unpool2d",
    "max_unpool3d",
    "upsample_linear1d_backward",
    "upsample_bilinear2d_backward",
    "upsample_bicubic2d_backward",
    "upsample_trilinear3d_backward",
    "reflection_pad1d_backward",
    "reflection_pad2d_backward",
    "reflection_pad3d_backward",
    "nll_loss2d_forward",
    "_ctc_loss_backward",
    "_embedding_bag_backward",
    "put_",
    "histc",
    "bincount",
    "median",
    "grid_sampler_2d_backward",
    "grid_sampler_3d_backward",
}


SMALL = {
    "densenet": {"blocks": [1, 1]},
    "preact_resnet18": {"width": 8},
    "resnet56": {"width": 4},
    "vgg11": {"width": 8},
    "vgg16": {"width": 8},
}


class _OpNames(TorchDispatchMode):
    """Records the aten ops a computation dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_model_trains_through_ops_with_deterministic_cuda_kernels(name):
    """Training on CUDA runs with deterministic algorithms, which raise on an op without a
    deterministic kernel (e.g. adaptive_avg_pool2d's backward unless the output is 1x1, when
    it is a mean). The ops are recorded on CPU: the choice between such kernels and their
    alternatives is made above the device (composite ops)."""
    model = build_model({"name": name, **SMALL.get(name, {})}, (3, 8, 8), 10)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    for loss in ({"name": "ce", "label_smoothing": 0.1}, {"name": "mse"}):
        with _OpNames() as ops:
            build_loss(loss)(model(x), y).backward()
        assert "convolution_backward" in ops.names or name == "mlp"  # it records the backward
        assert not ops.names & NO_DETERMINISTIC_CUDA_KERNEL, (name, loss)
