"""Results a long job computes one row at a time (a point, a checkpoint), kept on disk as each
row finishes, so a job killed at its time limit or preempted resumes instead of starting over.

``PartialRows`` is ``<output>.<name>.partial`` (zarr, one row per finished item, in order),
keyed by the hash of everything the rows depend on: a later attempt with the same spec loads
the rows and computes only the rest, a store made by another spec is discarded. Rows count
once ``n_complete`` (written after them) covers them, and zarr writes each chunk file
atomically, so a kill mid-append loses at most the row in progress. The values round-trip
exactly, so a resumed job writes the store an uninterrupted one would, bit for bit.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from hessvalley import store, store_lock

SMALL_ROW = 1024  # rows up to this many values share chunks of 64 rows; larger ones get one


class PartialRows:
    """The finished rows of one job (``name`` tells its kinds of rows apart)."""

    def __init__(
        self, output: str | os.PathLike, spec: Mapping[str, Any], name: str = "rows"
    ) -> None:
        self.base = f"{os.fspath(output)}.{name}"
        self.path = store.partial_path(self.base)
        self.group, resumed = store.open_partial(self.base, store.config_hash(spec))
        if not resumed:
            self.group.update_attributes({**store.provenance(spec), "n_complete": 0})

    def __len__(self) -> int:
        return int(self.group.attrs["n_complete"])

    def rows(self) -> dict[str, list[Any]]:
        """The finished rows' values by column, in order (no columns before the first row)."""
        n = len(self)
        if not n:
            return {}
        return {name: list(np.asarray(self.group[name][:n])) for name in self.group.array_keys()}

    def add(self, row: Mapping[str, Any]) -> None:
        """Append ``row`` ({column: scalar or array}, the same columns and shapes every time)
        and commit it."""
        n = len(self)
        for name, value in row.items():
            value = np.asarray(value)
            if name not in self.group:
                rows = 64 if value.size <= SMALL_ROW else 1
                store.create(
                    self.group,
                    name,
                    ("row", *(f"{name}_{i}" for i in range(value.ndim))),
                    shape=(0, *value.shape),
                    dtype=value.dtype,
                    chunks=(rows, *(max(size, 1) for size in value.shape)),
                )
            array = self.group[name]
            array.resize((n + 1, *array.shape[1:]))
            array[n] = value
        self.group.attrs["n_complete"] = n + 1

    def remove(self) -> None:
        """Delete the store (once the job's output is published) and drop its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        store_lock.release(self.base)
