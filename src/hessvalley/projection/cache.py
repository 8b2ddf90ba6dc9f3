"""The resume cache of a projection job (grid or segment): finished projections kept on disk
as each completes, and the one in progress."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from hessvalley import store, store_lock
from hessvalley.projection.gd import GDProgress, Projection
from hessvalley.trajectory_store import METRICS


class ProjectionCache:
    """The finished projections of one job, kept on disk as each one completes.

    A grid or segment job spends nearly all its time in GD projections; a job killed by SLURM
    (time limit, preemption, scancel) and resubmitted would otherwise redo every one. Each
    projection is appended to ``<output>.projections.partial`` (zarr, one row per projection,
    keyed by its SGD step) as soon as it finishes, and a later attempt with the same spec
    (projection settings, trajectory config hash, seed, segment) loads them and skips their GD;
    a store made by another spec is discarded. Rows count once ``n_complete`` (written after
    them) covers them, and zarr writes each file atomically, so a kill mid-append loses
    nothing finished. The projection in progress is saved beside them (``progress``), so a
    kill loses at most the GD steps since its last save. The bisection is deterministic given
    the projections, so a resumed job's store is bit for bit an uninterrupted one's.
    """

    SCALARS = (
        ("step", "int64"),
        ("gd_steps", "int64"),
        ("status", "int8"),
        ("start_loss", "float64"),
        *((name, "float64") for name in METRICS),
    )

    def __init__(
        self, output: str | os.PathLike, spec: Mapping[str, Any], n_params: int, n_buffers: int
    ) -> None:
        base = f"{os.fspath(output)}.projections"
        self.base = base
        self.path = store.partial_path(base)
        self.group, resumed = store.open_partial(base, store.config_hash(spec))
        self.n_buffers = n_buffers
        if not resumed:
            self._create(spec, n_params)
        self.projections: dict[int, Projection] = self._load()

    def _create(self, spec: Mapping[str, Any], n_params: int) -> None:
        for name, dtype in self.SCALARS:
            store.create(self.group, name, ("projection",), shape=(0,), dtype=dtype, chunks=(64,))
        rows = {
            "params": ("param", n_params, "float32"),
            "buffers": ("buffer", self.n_buffers, "float64"),
        }
        for name, (dim, size, dtype) in rows.items():
            if size:
                store.create(
                    self.group,
                    name,
                    ("projection", dim),
                    shape=(0, size),
                    dtype=dtype,
                    chunks=(1, size),
                    compress=False,
                )
        # The hash goes in last: a store killed before it is complete is never reused.
        self.group.update_attributes({**store.provenance(spec), "n_complete": 0})

    @classmethod
    def for_segment(
        cls,
        output: str | os.PathLike,
        settings: Mapping[str, Any],
        trajectory: zarr.Group,
        seed: int,
        segment: int,
    ) -> ProjectionCache:
        """The cache of the (grid or segment) job ``segment`` of ``trajectory`` projecting
        with ``settings``."""
        spec = {
            "projection": dict(settings),
            "trajectory": trajectory.attrs["config_hash"],
            "seed": seed,
            "segment": segment,
        }
        n_buffers = trajectory["buffers"].shape[1] if "buffers" in trajectory else 0
        return cls(output, spec, trajectory["params"].shape[1], n_buffers)

    def progress(self, step: int) -> GDProgress:
        """Where the projection of SGD step ``step`` saves its state while it runs (inside
        the cache store, so a store of another spec takes it along when discarded)."""
        return GDProgress(Path(self.path) / "gd_in_progress.npz", step)

    def __len__(self) -> int:
        return len(self.projections)

    def __contains__(self, step: int) -> bool:
        return step in self.projections

    def __getitem__(self, step: int) -> Projection:
        return self.projections[step]

    def _load(self) -> dict[int, Projection]:
        n = int(self.group.attrs["n_complete"])
        columns = {name: np.asarray(self.group[name][:n]) for name, _ in self.SCALARS}
        columns["params"] = np.asarray(self.group["params"][:n])
        columns["buffers"] = (
            np.asarray(self.group["buffers"][:n]) if self.n_buffers else np.zeros((n, 0))
        )
        return projections_by_step(columns)

    def add(self, step: int, projection: Projection) -> None:
        """Append ``projection`` of the SGD state at ``step`` and commit it."""
        n = int(self.group.attrs["n_complete"])
        row = {
            "step": step,
            "gd_steps": projection.gd_steps,
            "status": projection.status,
            "start_loss": projection.start_loss,
            **{name: projection.metrics[name] for name in METRICS},
            "params": projection.params.numpy(),
        }
        if self.n_buffers:
            row["buffers"] = projection.buffers.numpy()
        for name, value in row.items():
            array = self.group[name]
            array.resize((n + 1, *array.shape[1:]))
            array[n] = value
        self.group.attrs["n_complete"] = n + 1
        self.projections[step] = projection

    def remove(self) -> None:
        """Delete the store (once the segment's output is published) and drop its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        store_lock.release(self.base)


def projections_by_step(columns: Mapping[str, np.ndarray]) -> dict[int, Projection]:
    """Projections from columns (``step``, ``gd_steps``, ``status``, ``start_loss``, the
    metrics, ``params`` and ``buffers`` rows) as a cache or a grid store holds them."""
    return {
        int(step): Projection(
            torch.from_numpy(columns["params"][i]),
            torch.from_numpy(columns["buffers"][i]),
            int(columns["gd_steps"][i]),
            int(columns["status"][i]),
            float(columns["start_loss"][i]),
            {name: float(columns[name][i]) for name in METRICS},
        )
        for i, step in enumerate(columns["step"])
    }
