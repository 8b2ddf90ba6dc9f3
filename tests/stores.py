"""Checks shared by the resume tests: two stores identical, and jobs stopped after n rows."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pytest
import zarr

from hessvalley import store
from hessvalley.partial_rows import PartialRows

ADD = PartialRows.add  # the real one, whatever a test patches later


def assert_identical_stores(
    got: str | os.PathLike, want: str | os.PathLike, ignore_attrs: Iterable[str] = ()
) -> None:
    """Same arrays (names, dtypes, values bit for bit) and the same attrs but ``ignore_attrs``."""
    a, b = store.read_arrays(got), store.read_arrays(want)
    assert sorted(a) == sorted(b)
    for name in b:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    attrs = [dict(zarr.open_group(path, mode="r").attrs) for path in (got, want)]
    for found in attrs:
        for key in ignore_attrs:
            found.pop(key)
    assert attrs[0] == attrs[1]


def count_rows(monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> list[int]:
    """Count the rows jobs persist (``PartialRows.add``) in the returned list; with
    ``stop_after``, the next row raises KeyboardInterrupt instead (a job stopped there)."""
    calls: list[int] = []

    def add(self: PartialRows, row) -> None:
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(1)
        ADD(self, row)

    monkeypatch.setattr(PartialRows, "add", add)
    return calls
