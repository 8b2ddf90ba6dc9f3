"""The gather stage: the segment stores of one run and seed joined into its projected path.

Torch-free, so the gather job (one per run and seed) starts in half a second rather than
the two seconds an import of torch takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zarr

from hessvalley import store
from hessvalley.errors import HessvalleyError
from hessvalley.projection.outcomes import counts


def gather_path(setting: str, seed: int, segments: Sequence[str], output: str) -> None:
    """Join the segment stores of one run and seed into its projected path (in step order).

    Neighbouring segments share a checkpoint, projected by both (deterministically, so the
    two agree; ``max_endpoint_mismatch`` records any difference); the copy of the segment it
    starts is kept, which alone stores its parameters."""
    parts = [store.open_store(path) for path in segments]
    parts.sort(key=lambda g: g.attrs["segment"])
    indices = [int(g.attrs["segment"]) for g in parts]
    if indices != list(range(len(parts))):
        raise HessvalleyError(f"segments of {setting} seed {seed}: got indices {indices}")
    point_names = [name for name, dims in _dims(parts[0]).items() if dims and dims[0] == "point"]
    edge_names = [name for name, dims in _dims(parts[0]).items() if dims and dims[0] == "edge"]
    columns: dict[str, list[np.ndarray]] = {n: [] for n in (*point_names, *edge_names)}
    params, buffers, state_point = [], [], []
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
        keep = local < n_keep
        params.append(np.asarray(part["params"][...])[keep])
        buffers.append(np.asarray(part["buffers"][...])[keep])
        state_point.append(local[keep] + offset)
        offset += n_keep
    arrays = {
        name: (_dims(parts[0])[name], np.concatenate(columns[name]))
        for name in (*point_names, *edge_names)
    }
    arrays["alpha"] = (("alpha",), np.asarray(parts[0]["alpha"][...]))
    arrays["state_point"] = (("state",), np.concatenate(state_point))
    arrays["params"] = (("state", "param"), np.concatenate(params))
    arrays["buffers"] = (("state", "buffer"), np.concatenate(buffers))
    step = arrays["step"][1]
    if np.any(np.diff(step) <= 0):
        raise HessvalleyError(f"projected path of {setting} seed {seed} is not ordered by step")
    left, right = arrays["edge_left_step"][1], arrays["edge_right_step"][1]
    if not (np.array_equal(left, step[:-1]) and np.array_equal(right, step[1:])):
        raise HessvalleyError(f"edges of {setting} seed {seed} do not join neighbouring points")
    summary = counts(arrays["converged"][1], arrays["cause"][1])
    first = parts[0].attrs
    attrs = {
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
    store.write_store(output, arrays, attrs)
    print(
        f"{setting} seed {seed}: {summary['n_points']} projected points, "
        f"{summary['n_failed_connections']} failed connections "
        f"({summary['n_barrier_failures']} barriers, "
        f"{summary['n_not_converged_failures']} with a non-converged end), "
        f"{summary['n_not_converged']} non-converged projections"
    )


def _dims(group: zarr.Group) -> dict[str, tuple[str, ...]]:
    return {name: tuple(group[name].metadata.dimension_names or ()) for name in group.array_keys()}
