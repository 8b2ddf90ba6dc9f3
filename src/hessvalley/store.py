"""Zarr stores: self-describing arrays, provenance attrs, atomic publication, integrity.

Every rule writes one store. A store is built under ``<path>.partial`` and renamed onto
``<path>`` only when complete, so a killed job never leaves a store that looks finished
(Snakemake's ``--rerun-incomplete`` and a human reading ``results/`` both see either
nothing or the whole thing). Long jobs resume from what the partial store holds.

The job writing a store holds its lock (``store_lock``) from the moment it opens the partial
store until it publishes it, so a second writer fails before it touches either. Every chunk
carries a crc32c checksum and is written even when it equals the fill value, and readers open
published stores through ``open_store``, which checks them complete and names the store and
the array when a chunk does not decode (``integrity``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from hessvalley import integrity, store_lock
from hessvalley.integrity import CheckedGroup

PACKAGE_ROOT = Path(__file__).resolve().parent
_VERSIONED = ("torch", "numpy", "zarr", "hessvalley", "torchvision", "snakemake")

# Benchmarking switch, never off in the workflow: bench/bench_checkpoint.py --checksums turns
# it off to measure what the crc32c codec costs on checkpoint writes.
CHECKSUMS = True


def code_version() -> str:
    """Content hash of the package source: changes exactly when the code does."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def config_hash(spec: Any) -> str:
    """Stable hash of a JSON-able config subset (key order does not matter)."""
    text = json.dumps(jsonable(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def provenance(spec: Mapping[str, Any], seed: int | None = None) -> dict[str, Any]:
    """The attrs every store carries: what made it, from which code, with which seed."""
    return {
        "config": jsonable(spec),
        "config_hash": config_hash(spec),
        "seed": seed,
        "code_version": code_version(),
        "versions": package_versions(),
    }


def partial_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + integrity.PARTIAL_SUFFIX)


def open_partial(path: str | os.PathLike, spec_hash: str) -> tuple[CheckedGroup, bool]:
    """Lock ``path`` for this job (``StoreBusyError`` if another job holds it) and open
    ``<path>.partial`` for writing; reuse it only if it was made by the same config.

    Returns the group and whether an earlier attempt's content was kept (resume). Reads of a
    kept store that fail to decode raise ``StoreError`` telling to delete it: Zarr writes each
    chunk file atomically, so a killed writer leaves whole chunks, and a damaged one means
    the disk or a person changed it (not something to discard silently).
    """
    store_lock.acquire(path)
    tmp = partial_path(path)
    if tmp.exists():
        try:
            group = zarr.open_group(tmp, mode="r+")
            if group.attrs.get("config_hash") == spec_hash:
                return CheckedGroup(group, tmp), True
        except Exception:  # unreadable leftovers of a killed writer: start afresh
            pass
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return CheckedGroup(zarr.open_group(tmp, mode="w"), tmp), False


def publish(path: str | os.PathLike) -> Path:
    """Check ``<path>.partial`` complete, consolidate its metadata and move it onto ``path``
    atomically; then release the store's lock."""
    path = Path(path)
    store_lock.acquire(path)  # this job's own lock (re-entrant); refuses another's store
    tmp = partial_path(path)
    problems = integrity.completeness_problems(zarr.open_group(tmp, mode="r"), tmp)
    if problems:
        raise integrity.damaged(tmp, f"it is incomplete at publication: {problems[0]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes consolidated metadata is a v3 extension
        zarr.consolidate_metadata(str(tmp))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    store_lock.release(path)
    return path


def codecs(compress: bool) -> dict[str, Any]:
    """Zstd (if ``compress``), then the crc32c checksum of the stored bytes: a chunk that
    changed after it was written fails to read instead of decoding to wrong numbers."""
    compressors = [ZstdCodec(level=0)] if compress else []
    if CHECKSUMS:
        compressors.append(Crc32cCodec())
    return {"compressors": compressors or None}


def create(
    group: zarr.Group | CheckedGroup,
    name: str,
    dims: Sequence[str],
    data: np.ndarray | None = None,
    *,
    shape: Sequence[int] | None = None,
    dtype: Any = None,
    chunks: Sequence[int] | None = None,
    fill_value: Any = None,
    attrs: Mapping[str, Any] | None = None,
    compress: bool = True,
) -> zarr.Array:
    """Create an array with dimension names (xarray reads them) and optional data.

    Every chunk is written, even one equal to the fill value, so a complete store has all its
    chunks (``integrity``); float arrays are filled with NaN, so a chunk never written cannot
    pass for zeros. ``compress=False`` for arrays of trained weights: they barely compress
    and the compressor would cost time on every checkpoint."""
    if data is not None:
        data = np.asarray(data)
        shape, dtype = data.shape, data.dtype
    if dtype is not None and np.dtype(dtype).kind == "U":
        dtype = str  # zarr 3 variable-length strings
    if len(dims) != len(shape):
        raise ValueError(f"array {name!r}: {len(dims)} dimension names for shape {shape}")
    if fill_value is None and dtype is not str and np.dtype(dtype).kind in "fc":
        fill_value = math.nan
    kwargs: dict[str, Any] = {"chunks": tuple(chunks) if chunks else "auto", **codecs(compress)}
    if fill_value is not None:
        kwargs["fill_value"] = fill_value
    array = group.create_array(
        name,
        shape=tuple(shape),
        dtype=dtype,
        dimension_names=list(dims),
        attributes=dict(attrs or {}),
        overwrite=True,
        config={"write_empty_chunks": True},
        **kwargs,
    )
    if data is not None and data.size:
        array[...] = data
    return array


@dataclass(frozen=True)
class Streamed:
    """An array for ``write_store`` too large to hold in memory: ``read(region)`` returns its
    values in ``region`` (one slice per dimension), and it is written a chunk at a time."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[tuple[slice, ...]], np.ndarray]


def chunk_regions(shape: Sequence[int], chunks: Sequence[int]) -> Iterator[tuple[slice, ...]]:
    """The regions of an array's chunks, in row-major order (none for an empty array)."""
    starts = [range(0, size, step) for size, step in zip(shape, chunks, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(
            slice(start, min(start + step, size))
            for start, step, size in zip(corner, chunks, shape, strict=True)
        )


def write_store(
    path: str | os.PathLike,
    arrays: Mapping[str, tuple[Sequence[str], np.ndarray | Streamed]],
    attrs: Mapping[str, Any],
) -> Path:
    """Write a store in one go: ``{name: (dims, data)}`` plus attrs, then publish. A
    ``Streamed`` array is copied chunk by chunk into the layout its data would have had, so
    the store is the same as if it had been passed whole."""
    held = store_lock.holds(path)
    store_lock.acquire(path)
    try:
        tmp = partial_path(path)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(tmp, mode="w")
        for name, (dims, data) in arrays.items():
            if isinstance(data, Streamed):
                array = create(group, name, dims, shape=data.shape, dtype=data.dtype)
                for region in chunk_regions(array.shape, array.chunks):
                    array[region] = data.read(region)
            else:
                create(group, name, dims, data)
        group.update_attributes(jsonable(dict(attrs)))
        return publish(path)
    except BaseException:
        if not held:
            store_lock.release(path)
        raise


def open_store(path: str | os.PathLike | CheckedGroup) -> CheckedGroup:
    """Open a published store read-only, checked complete (``StoreError`` naming the store and
    the array otherwise); its array reads name the store and the array when a chunk does not
    decode. An already opened store is returned as it is; a ``.partial`` one is not checked
    complete (see ``integrity.open_checked``)."""
    if isinstance(path, CheckedGroup):
        return path
    return integrity.open_checked(path)


def read_arrays(
    path: str | os.PathLike, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    group = open_store(path)
    names = names if names is not None else sorted(group.array_keys())
    return {name: np.asarray(group[name][...]) for name in names}
