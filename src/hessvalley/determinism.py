"""What a bit-for-bit resume or replay depends on, recorded with a run and enforced when reused.

The same code, data order and state give the same bits only under the same conditions: the
torch intra-op thread count (CPU kernels split their sums across threads, so a mini-batch
gradient at 2 threads can differ in the last bit from one at 1), the torch version (kernels
change between releases), the device type and, on CUDA, the GPU model and deterministic
algorithms (cuBLAS and cuDNN otherwise pick kernels and reduction orders freely). ``record``
captures these in a trajectory's attrs; ``reproducing`` runs a resume or replay under the
recorded thread count and with deterministic algorithms on CUDA, and refuses what it cannot
reproduce (another torch version or device type) instead of silently differing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from hessvalley.errors import HessvalleyError

# A fixed cuBLAS workspace, which torch's reproducibility notes ask for (or ":16:8") with
# deterministic algorithms on CUDA >= 10.2; read once, when torch creates its first handle.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def use_deterministic_cublas() -> None:
    """Ask cuBLAS for a deterministic workspace unless the user chose one; call before any
    CUDA computation of the process (it is read once)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)


def record(device: torch.device) -> dict[str, Any]:
    """The conditions the bits computed on ``device`` by this process depend on (JSON-able)."""
    device = torch.device(device)
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "device_type": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


@contextlib.contextmanager
def reproducing(
    recorded: Mapping[str, Any] | None, device: torch.device, what: str
) -> Iterator[None]:
    """Run the body under the ``recorded`` conditions, restoring this process's afterwards.

    Sets torch's intra-op thread count to the recorded one and, on CUDA, turns on
    deterministic algorithms (with cuDNN benchmarking off). Raises ``HessvalleyError`` when
    the torch version or device type differ, since no setting can reproduce those; a
    different GPU model is reported but not refused. ``recorded=None`` (a store written
    before conditions were recorded) proceeds with a warning that exactness is not checked.
    """
    device = torch.device(device)
    if recorded is None:
        print(
            f"{what}: the store predates the record of torch threads, version and device, so "
            "exactness is not guaranteed (it holds if they match the original run's)"
        )
    else:
        _refuse_what_cannot_be_reproduced(recorded, device, what)
    threads = torch.get_num_threads()
    wanted = threads if recorded is None else int(recorded["torch_threads"])
    if wanted != threads:
        print(
            f"{what}: running at the recorded {wanted} torch thread(s) (this process has "
            f"{threads}), as bit-exactness requires"
        )
    with contextlib.ExitStack() as restore:
        torch.set_num_threads(wanted)
        restore.callback(torch.set_num_threads, threads)
        if device.type == "cuda":
            restore.enter_context(_deterministic_cuda())
        yield


def _refuse_what_cannot_be_reproduced(
    recorded: Mapping[str, Any], device: torch.device, what: str
) -> None:
    now = record(device)
    was = (recorded["torch_version"], recorded["device_type"])
    if was != (now["torch_version"], now["device_type"]):
        raise HessvalleyError(
            f"{what}: cannot be reproduced exactly here: it was computed with torch {was[0]} "
            f"on {was[1]}, this process has torch {now['torch_version']} on "
            f"{now['device_type']}; run it with torch {was[0]} on a {was[1]} device, or delete "
            "the store and re-run what produced it"
        )
    if recorded.get("device_name") != now["device_name"]:
        print(
            f"{what}: recorded on {recorded.get('device_name')}, running on "
            f"{now['device_name']}: another GPU model may give other bits"
        )


@contextlib.contextmanager
def _deterministic_cuda() -> Iterator[None]:
    """Deterministic algorithms (an error for an op that has none) and no cuDNN benchmarking,
    which could pick another convolution algorithm from one run to the next."""
    use_deterministic_cublas()
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]
