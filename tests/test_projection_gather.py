"""The gather stage streams the kept states: its peak memory does not grow with the number of
states (a paper-scale path holds ~15 GB of parameters), and its store is the one a gather
concatenating everything in memory writes, file for file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from hessvalley import store
from hessvalley.projection.gather import gather_path
from hessvalley.projection.outcomes import CONNECTED

N_PARAMS = 250_000  # float32: 1 MB a state
N_SEGMENTS = 7
MARGIN_MB = 16  # a concatenating gather of 64 states needs > 56 MB more than of 8


def segment_stores(directory: Path, m: int, grid: bool = False) -> list[str]:
    """Segment stores of m intervals each, in the stage's format. Each stores every point
    (neighbours share an end: the path keeps N_SEGMENTS * m + 1 states), or with ``grid`` its
    first point only (and the last segment its end too), as ``store_params: grid`` does."""
    rng = np.random.default_rng(m)
    paths = []
    for segment in range(N_SEGMENTS):
        step = np.arange(segment * m, (segment + 1) * m + 1, dtype=np.int64)
        stored = (
            np.arange(m + 1) if not grid else np.array([0, m][: 1 + (segment == N_SEGMENTS - 1)])
        )
        loss = np.round(0.1 + 0.01 * np.cos(step), 12)  # the shared ends agree exactly
        arrays = {
            "step": (("point",), step),
            "epoch": (("point",), step / 4),
            "on_grid": (("point",), step % m == 0),
            "converged": (("point",), np.ones(m + 1, dtype=bool)),
            "train_loss": (("point",), loss),
            "val_loss": (("point",), loss + 0.05),
            "alpha": (("alpha",), np.linspace(0, 1, 5)[1:-1]),
            "edge_left_step": (("edge",), step[:-1]),
            "edge_right_step": (("edge",), step[1:]),
            "interp_train_loss": (("edge", "alpha"), rng.random((m, 3))),
            "cause": (("edge",), np.full(m, CONNECTED, dtype=np.int8)),
            "state_point": (("state",), stored),
            "params": (("state", "param"), rng.standard_normal((len(stored), N_PARAMS), "f4")),
            "buffers": (("state", "buffer"), rng.standard_normal((len(stored), 3))),
        }
        attrs = {
            **store.provenance({"projection": {"n_points": 3}}, 0),
            "segment": segment,
            "loss_threshold": 1.0,
            "n_bisections": 0,
            "steps_per_epoch": 4,
            "run": {"model": "synthetic"},
            "param_layout": {"names": ["w"]},
            "buffer_layout": {"names": ["b"]},
            "timings_s": {"total": 1.0},
        }
        paths.append(str(store.write_store(directory / f"segment_{segment}.zarr", arrays, attrs)))
    return paths


# VmHWM, not getrusage's ru_maxrss: that keeps the forking parent's (pytest's) peak over exec.
GATHER = """
import json, sys
from hessvalley.projection.gather import gather_path
gather_path("r", 0, json.loads(sys.argv[1]), sys.argv[2])
status = open("/proc/self/status").read() if sys.platform == "linux" else "VmHWM: -1 kB"
print(status[status.index("VmHWM:"):].split("\\n")[0])
"""


def gather_peak_mb(segments: list[str], output: Path) -> float:
    """Gather in a fresh process; its peak resident memory (MB; negative off Linux)."""
    command = [sys.executable, "-c", GATHER, json.dumps(segments), str(output)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return int(out.split("VmHWM:")[-1].split()[0]) / 1024


def concatenated(segments: list[str], name: str) -> np.ndarray:
    """Array ``name`` of the path as the gather used to build it: every segment's kept rows
    (all but the shared end, which the next segment stores) loaded and concatenated."""
    parts = [np.asarray(store.open_store(path)[name][...]) for path in segments]
    return np.concatenate([part[:-1] for part in parts[:-1]] + [parts[-1]])


def store_files(path: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()
    }


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[int, tuple[list[str], Path, float]]:
    """Segments of 8 and 64 kept states (plus the final end), each gathered once."""
    found = {}
    for m, n_states in ((1, 8), (9, 64)):
        directory = tmp_path_factory.mktemp(f"states{n_states}")
        segments = segment_stores(directory, m)
        output = directory / "projected_path.zarr"
        found[n_states] = (segments, output, gather_peak_mb(segments, output))
    return found


def test_gather_peak_memory_does_not_grow_with_the_states(paths):
    small, large = paths[8][2], paths[64][2]
    if small < 0:
        pytest.skip("the peak is read from Linux's /proc/self/status")
    assert zarr.open_group(paths[64][1], mode="r")["params"].shape == (64, N_PARAMS)
    assert large < small + MARGIN_MB, f"peak {small:.0f} MB (8 states), {large:.0f} MB (64)"


def test_streamed_gather_writes_the_concatenated_store(paths, tmp_path):
    """Every array equals the concatenation, and a store written by ``write_store`` with the
    concatenated arrays in memory is byte for byte the streamed one."""
    segments, output, _ = paths[64]
    group = store.open_store(output)
    want = {name: concatenated(segments, name) for name in ("params", "buffers")}
    for name, values in want.items():
        got = np.asarray(group[name][...])
        assert got.dtype == values.dtype and np.array_equal(got, values), name
    np.testing.assert_array_equal(group["state_point"][...], np.arange(64))
    arrays = {
        name: (tuple(group[name].metadata.dimension_names), want.get(name, group[name][...]))
        for name in group.array_keys()
    }
    reference = tmp_path / "projected_path.zarr"
    store.write_store(reference, arrays, dict(group.attrs))
    assert store_files(output) == store_files(reference)


def test_gather_keeps_only_the_stored_states(tmp_path):
    """store_params 'grid': a segment stores some points only; the path keeps those, once."""
    segments = segment_stores(tmp_path, 2, grid=True)
    output = tmp_path / "projected_path.zarr"
    gather_path("r", 0, segments, str(output))
    path = store.read_arrays(output)
    assert path["step"][path["state_point"]].tolist() == [*range(0, 2 * N_SEGMENTS, 2), 14]
    first = [np.asarray(store.open_store(p)["params"][0]) for p in segments]
    last = np.asarray(store.open_store(segments[-1])["params"][1])
    np.testing.assert_array_equal(path["params"], np.stack([*first, last]))
