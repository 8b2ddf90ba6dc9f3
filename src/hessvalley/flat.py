"""Flattened parameter and buffer vectors with their layout (names, shapes, offsets).

Stores hold one float32 row per checkpoint; the layout in attrs maps it back to tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, named: Iterable[tuple[str, torch.Tensor]]) -> Layout:
        items = list(named)
        return cls(
            tuple(n for n, _ in items),
            tuple(tuple(t.shape) for _, t in items),
            tuple(str(t.dtype).removeprefix("torch.") for _, t in items),
        )

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def offsets(self) -> list[int]:
        offsets, total = [], 0
        for size in self.sizes:
            offsets.append(total)
            total += size
        return offsets

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def to_attrs(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "offsets": self.offsets,
            "dtypes": list(self.dtypes),
            "numel": self.numel,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Layout:
        return cls(
            tuple(attrs["names"]),
            tuple(tuple(s) for s in attrs["shapes"]),
            tuple(attrs["dtypes"]),
        )


def flatten(tensors: Iterable[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Concatenate tensors (detached) into one vector of ``dtype`` (exact for float32/ints
    into float64 and for float32 into float32)."""
    parts = [t.detach().reshape(-1).to(dtype) for t in tensors]
    if not parts:
        return torch.zeros(0, dtype=dtype)
    return torch.cat(parts)


def unflatten_into(vector: torch.Tensor, tensors: Iterable[torch.Tensor]) -> None:
    """Copy consecutive slices of ``vector`` into ``tensors`` in place (casting to their dtype)."""
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(vector[offset : offset + n].reshape(t.shape).to(t.dtype))
            offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, tensors take {offset}")


def param_layout(model: nn.Module) -> Layout:
    return Layout.of(model.named_parameters())


def buffer_layout(model: nn.Module) -> Layout:
    return Layout.of(model.named_buffers())
