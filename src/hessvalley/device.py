"""Choosing the torch device a job computes on."""

from __future__ import annotations

import torch

from hessvalley.determinism import use_deterministic_cublas
from hessvalley.errors import HessvalleyError


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback.

    Choosing CUDA also asks cuBLAS for its deterministic workspace, before the first CUDA
    computation reads it, so that library callers get exact training and replay too."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HessvalleyError(
                "device 'cuda' requested but torch sees no CUDA device: run on a GPU node "
                "(SLURM: config key gpu >= 1) or set device: cpu or auto"
            )
        use_deterministic_cublas()
    return device
