"""A store is trusted only after it is checked.

Every array is written with Zarr's crc32c checksum codec and every chunk is written, even one
that equals the fill value (``store.create``). So a store is whole exactly when each array
has all its chunks (``nchunks_initialized == nchunks``) and every chunk decodes; a trajectory
also records that it is complete and how many checkpoints it holds. Without these checks a
deleted chunk reads as the fill value and becomes a wrong number downstream.

``open_checked`` checks completeness and returns a read view of the group whose array reads
turn any decoding error (checksum mismatch, bad compressed data, wrong chunk size) into a
one-line ``StoreError`` naming the store, the array and what to do. ``damage`` reads every
chunk of a store (``hessvalley verify``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from hessvalley.errors import StoreError

PARTIAL_SUFFIX = ".partial"


def remedy(path: str | os.PathLike) -> str:
    """What to do about a damaged store: a partial one is the job's own work in progress."""
    quoted = shlex.quote(os.fspath(path))
    if os.fspath(path).endswith(PARTIAL_SUFFIX):
        return f"delete it (rm -r {quoted}) and re-run the job, which then starts afresh"
    return (
        f"delete it (rm -r {quoted}) and re-run snakemake, which rebuilds it and what was "
        "computed from it"
    )


def damaged(path: str | os.PathLike, what: str) -> StoreError:
    return StoreError(f"store {os.fspath(path)} is damaged: {what}; {remedy(path)}")


def decoding_problem(err: BaseException) -> str:
    """One line saying why a chunk did not decode."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "checksum" in text.lower():
        return "a chunk's checksum does not match its data (the file changed after it was written)"
    return f"a chunk does not decode ({type(err).__name__}: {text[:200]})"


@contextlib.contextmanager
def _decoding(path: str | os.PathLike, name: str) -> Iterator[None]:
    """Name the store and the array in a read that failed to decode. Selection errors (an
    index out of range: IndexError, TypeError) are the caller's and pass unchanged."""
    try:
        yield
    except (IndexError, TypeError, StoreError):
        raise
    except Exception as err:
        raise damaged(path, f"array {name!r}: {decoding_problem(err)}") from err


class CheckedArray:
    """An array of a checked store: reads that fail to decode raise ``StoreError``; anything
    else is the Zarr array's."""

    def __init__(self, array: zarr.Array, path: str | os.PathLike, name: str) -> None:
        self._array = array
        self._path = path
        self._name = name

    def __getitem__(self, selection: Any) -> Any:
        with _decoding(self._path, self._name):
            return self._array[selection]

    def __setitem__(self, selection: Any, value: Any) -> None:
        with _decoding(self._path, self._name):  # a partial chunk is read before it is written
            self._array[selection] = value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __len__(self) -> int:
        return len(self._array)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copy, pickle): never delegate our own
            raise AttributeError(name)
        return getattr(self._array, name)

    def __repr__(self) -> str:
        return f"<checked {self._array!r}>"


class CheckedGroup:
    """A Zarr group whose arrays are ``CheckedArray`` views; it answers ``attrs``, ``in``,
    ``array_keys`` and the rest as the group does."""

    def __init__(self, group: zarr.Group, path: str | os.PathLike) -> None:
        self._group = group
        self._path = path

    @property
    def path(self) -> str:
        return os.fspath(self._path)

    def __getitem__(self, name: str) -> CheckedArray | CheckedGroup:
        member = self._group[name]
        if isinstance(member, zarr.Group):
            return CheckedGroup(member, self._path)
        return CheckedArray(member, self._path, name)

    def __contains__(self, name: object) -> bool:
        return name in self._group

    def __iter__(self) -> Iterator[str]:
        return iter(self._group)

    def __len__(self) -> int:
        return len(self._group)

    def __delitem__(self, name: str) -> None:
        del self._group[name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._group, name)

    def __repr__(self) -> str:
        return f"<checked {self._group!r}>"


def arrays(group: zarr.Group) -> Iterator[tuple[str, zarr.Array]]:
    """(path inside the store, array) of every array, nested groups included."""
    for name, member in group.members(max_depth=None):
        if isinstance(member, zarr.Array):
            yield name, member


def missing_chunks(array: zarr.Array, root: Path, name: str) -> list[str]:
    """Keys of the chunks array ``name`` of the store at ``root`` should have and lacks."""
    expected = (
        array.metadata.encode_chunk_key(coords)
        for coords in itertools.product(*(range(n) for n in array.cdata_shape))
    )
    return [key for key in expected if not (root / name / key).is_file()]


def completeness_problems(group: zarr.Group, root: str | os.PathLike) -> list[str]:
    """What makes a published store incomplete: arrays short of chunks, a trajectory that
    does not record itself complete or whose checkpoint arrays disagree with its count."""
    problems = []
    for name, array in arrays(group):
        have, want = array.nchunks_initialized, array.nchunks
        if have < want:
            lost = missing_chunks(array, Path(root), name)
            shown = ", ".join(lost[:3]) + (", ..." if len(lost) > 3 else "")
            problems.append(f"array {name!r} has {have} of {want} chunks (missing {shown})")
    attrs = group.attrs
    if attrs.get("complete") is False:
        problems.append("its attrs say it is not complete (a writer stopped mid-way)")
    n = attrs.get("n_checkpoints")
    if n is not None:
        if int(attrs.get("n_complete", n)) < int(n):
            problems.append(f"{attrs['n_complete']} of its {n} checkpoints are complete")
        for name, array in arrays(group):
            dims = array.metadata.dimension_names or ()
            if dims and dims[0] == "checkpoint" and array.shape[0] != int(n):
                problems.append(f"array {name!r} has {array.shape[0]} of {n} checkpoints")
    return problems


def _unreadable(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return f"its metadata cannot be read ({type(err).__name__}: {text})"


def open_group(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """The group at ``path``; unreadable metadata is damage, not a traceback."""
    try:
        return zarr.open_group(path, mode=mode)
    except Exception as err:
        raise damaged(path, _unreadable(err)) from err


def check_complete(group: zarr.Group, path: str | os.PathLike) -> None:
    """Raise ``StoreError`` naming the first thing that makes the store incomplete."""
    problems = completeness_problems(group, path)
    if problems:
        raise damaged(path, problems[0])


def open_checked(path: str | os.PathLike) -> CheckedGroup:
    """A store, read-only, whose reads name damage; a published one is checked complete first.
    A ``.partial`` store (opened to inspect a diverged or killed run's checkpoints) is work in
    progress, incomplete by definition: only its reads are checked."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {path} does not exist (has the rule producing it run?)")
    group = open_group(path)
    if not path.name.endswith(PARTIAL_SUFFIX):
        check_complete(group, path)
    return CheckedGroup(group, path)


def chunk_regions(array: zarr.Array) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """(chunk key, region) of every chunk of an array."""
    for coords in itertools.product(*(range(n) for n in array.cdata_shape)):
        region = tuple(
            slice(c * size, min((c + 1) * size, extent))
            for c, size, extent in zip(coords, array.chunks, array.shape, strict=True)
        )
        yield array.metadata.encode_chunk_key(coords), region


def damage(path: str | os.PathLike) -> list[str]:
    """Everything wrong with the store at ``path``: incompleteness, then every chunk that does
    not decode (each chunk is read, so every checksum is verified). Empty when it is good."""
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as err:
        return [_unreadable(err)]
    problems = completeness_problems(group, path)
    for name, array in arrays(group):
        for key, region in chunk_regions(array):
            try:
                array[region]
            except Exception as err:
                problems.append(f"array {name!r} chunk {key}: {decoding_problem(err)}")
    return problems


def unchecked_arrays(group: zarr.Group) -> list[str]:
    """Arrays written without the checksum codec (stores made before it, or with the
    benchmarking switch off): their damage shows only when a chunk no longer decodes."""
    return [
        name
        for name, array in arrays(group)
        if not any(isinstance(codec, Crc32cCodec) for codec in array.metadata.codecs)
    ]
