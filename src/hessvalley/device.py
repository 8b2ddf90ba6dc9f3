"""Choosing the torch device a job computes on."""

from __future__ import annotations

import torch

from hessvalley.errors import HessvalleyError


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HessvalleyError(
            "device 'cuda' requested but torch sees no CUDA device: run on a GPU node "
            "(SLURM: config key gpu >= 1) or set device: cpu or auto"
        )
    return device
