"""The gather stage: the segment stores of one run and seed joined into its projected path.

Torch-free, so the gather job (one per run and seed) starts in half a second rather than
the two seconds an import of torch takes. The kept states' parameters are copied a chunk at a
time (``store.Streamed``): at paper scale they are ~100 MB a state, ~15 GB a path, more than a
job's memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from hessvalley import store
from hessvalley.errors import HessvalleyError
from hessvalley.projection.outcomes import counts


def gather_path(setting: str, seed: int, segments: Sequence[str], output: str) -> None:
    """Join the segment stores of one run and seed into its projected path (in step order).

    Neighbouring segments share a checkpoint, whose projection both take from the same grid
    store (``max_endpoint_mismatch`` checks that their losses there agree: 0, unless
    segments were made apart from the workflow); the copy of the segment it starts is kept,
    which alone stores its parameters."""
    parts = [store.open_store(path) for path in segments]
    parts.sort(key=lambda g: g.attrs["segment"])
    indices = [int(g.attrs["segment"]) for g in parts]
    if indices != list(range(len(parts))):
        raise HessvalleyError(f"segments of {setting} seed {seed}: got indices {indices}")
    point_names = [name for name, dims in _dims(parts[0]).items() if dims and dims[0] == "point"]
    edge_names = [name for name, dims in _dims(parts[0]).items() if dims and dims[0] == "edge"]
    columns: dict[str, list[np.ndarray]] = {n: [] for n in (*point_names, *edge_names)}
    owner, local_rows, state_point = [], [], []
    offset = 0
    mismatch = 0.0
    shared: tuple[int, float] | None = None  # step and loss of the previous segment's end
    for i, part in enumerate(parts):
        steps = np.asarray(part["step"][...])
        train_loss = np.asarray(part["train_loss"][...])
        if shared is not None:
            if steps[0] != shared[0]:
                raise HessvalleyError(
                    f"segment {i} starts at step {steps[0]}, segment {i - 1} ends at {shared[0]}"
                )
            mismatch = max(mismatch, abs(float(train_loss[0]) - shared[1]))
        last = i == len(parts) - 1
        n_keep = len(steps) if last else len(steps) - 1  # the shared end comes with the next
        shared = None if last else (int(steps[-1]), float(train_loss[-1]))
        for name in point_names:
            columns[name].append(np.asarray(part[name][...])[:n_keep])
        for name in edge_names:
            columns[name].append(np.asarray(part[name][...]))
        local = np.asarray(part["state_point"][...])
        keep = np.flatnonzero(local < n_keep)
        owner.append(np.full(len(keep), i))
        local_rows.append(keep)
        state_point.append(local[keep] + offset)
        offset += n_keep
    rows = (np.concatenate(owner), np.concatenate(local_rows))
    arrays = {
        name: (_dims(parts[0])[name], np.concatenate(columns[name]))
        for name in (*point_names, *edge_names)
    }
    arrays["alpha"] = (("alpha",), np.asarray(parts[0]["alpha"][...]))
    arrays["state_point"] = (("state",), np.concatenate(state_point))
    arrays["params"] = (("state", "param"), _state_rows(parts, "params", *rows))
    arrays["buffers"] = (("state", "buffer"), _state_rows(parts, "buffers", *rows))
    step = arrays["step"][1]
    if np.any(np.diff(step) <= 0):
        raise HessvalleyError(f"projected path of {setting} seed {seed} is not ordered by step")
    left, right = arrays["edge_left_step"][1], arrays["edge_right_step"][1]
    if not (np.array_equal(left, step[:-1]) and np.array_equal(right, step[1:])):
        raise HessvalleyError(f"edges of {setting} seed {seed} do not join neighbouring points")
    summary = counts(arrays["converged"][1], arrays["cause"][1])
    attrs = _path_attrs(parts, setting, seed, mismatch, summary)
    store.write_store(output, arrays, attrs)
    print(
        f"{setting} seed {seed}: {summary['n_points']} projected points, "
        f"{summary['n_failed_connections']} failed connections "
        f"({summary['n_barrier_failures']} barriers, "
        f"{summary['n_not_converged_failures']} with a non-converged end), "
        f"{summary['n_not_converged']} non-converged projections"
    )


def _path_attrs(
    parts: Sequence[zarr.Group], setting: str, seed: int, mismatch: float, summary: dict
) -> dict[str, Any]:
    first = parts[0].attrs
    return {
        **store.provenance(first["config"], seed),
        "setting": setting,
        "n_segments": len(parts),
        "loss_threshold": first["loss_threshold"],
        "n_bisections": int(sum(p.attrs["n_bisections"] for p in parts)),
        "max_endpoint_mismatch": mismatch,
        "steps_per_epoch": first["steps_per_epoch"],
        "run": first["run"],
        "param_layout": first["param_layout"],
        "buffer_layout": first["buffer_layout"],
        "timings_s": {
            key: float(sum(p.attrs["timings_s"][key] for p in parts)) for key in first["timings_s"]
        },
        **summary,
    }


def _state_rows(
    parts: Sequence[zarr.Group], name: str, owner: np.ndarray, local: np.ndarray
) -> store.Streamed:
    """Array ``name`` of the path: its row i is row ``local[i]`` of part ``owner[i]``'s (rows in
    path order: ``owner`` does not decrease), read one region at a time."""
    sources = [part[name] for part in parts]
    dtype = np.result_type(*(source.dtype for source in sources))  # np.concatenate's

    def read(region: tuple[slice, ...]) -> np.ndarray:
        which, at = owner[region[0]], local[region[0]]
        pieces = [
            np.asarray(sources[p][(_rows(at[which == p]), *region[1:])]) for p in np.unique(which)
        ]
        return np.concatenate(pieces).astype(dtype, copy=False)

    return store.Streamed((len(owner), *sources[0].shape[1:]), dtype, read)


def _rows(rows: np.ndarray) -> np.ndarray | slice:
    """Consecutive rows as a slice: Zarr reads a slice faster than a list of rows."""
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return slice(int(rows[0]), int(rows[0]) + len(rows))
    return rows


def _dims(group: zarr.Group) -> dict[str, tuple[str, ...]]:
    return {name: tuple(group[name].metadata.dimension_names or ()) for name in group.array_keys()}
