"""Sagun et al. 2017 §3.1, Table 1: outlier counts of the Hessian at the end of training,
beside the counts of the data's PCA, one row per (run, seed) of a family of runs.

Each row reads three stores: the exact spectrum at the run's checkpoints (the curvature
stage, ``spectrum_along_trajectory``; its last checkpoint must be the trajectory's last), the
trajectory (the run spec: model, optimizer, loss; the training-set size) and the dataset (its
spec: classes, covariance scale; the training inputs whose covariance gives the PCA). The
three counters of ``hessvalley.outliers`` run on both spectra with the same window
(``outliers.max_outliers``) and floor (``outliers.ratio_floor``).

Writes ``results/sagun2017/outliers.zarr`` (dimension ``row``; top Hessian eigenvalues
``(row, rank)`` and the PCA spectrum ``(row, component)``, padded with NaN) and the table
``results/tables/sagun2017_table1.csv``. Torch-free: it reads the stores' arrays directly
(the training inputs as ``load_dataset`` would, split A only for ``train_on: A``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.data import SPLIT_A
from hessvalley.errors import HessvalleyError
from hessvalley.outliers import COUNTERS, DEFAULT_FLOOR, count_outliers, pca_spectrum

TOP_MIN = 100  # the store keeps at least this many of the largest Hessian eigenvalues
TOP_PER_CLASS = 4  # ... and at least this many per class (the figure shows 3 per class)
SCALARS = {  # name -> dtype of the per-row arrays
    "run": str,
    "seed": np.int64,
    "k": np.int64,
    "method": str,
    "activation": str,
    "cov_scale": np.float64,
    "n_params": np.int64,
    "n_train": np.int64,
    "epoch": np.int64,
    "train_loss": np.float64,
    "hessian_n_positive": np.int64,
    "pca_n_positive": np.int64,
    **{f"{s}_{c}_count": np.int64 for s in ("hessian", "pca") for c in COUNTERS},
    **{f"{s}_{c}_cutoff": np.float64 for s in ("hessian", "pca") for c in COUNTERS},
}
CSV_COLUMNS = (
    "run",
    "seed",
    "k",
    "method",
    "activation",
    "cov_scale",
    "P",
    *(f"hessian_{c}" for c in COUNTERS),
    *(f"pca_{c}" for c in COUNTERS),
    "train_loss",
    "n_train",
    *(f"hessian_{c}_cutoff" for c in COUNTERS),
)


def _read_spectrum(path: str) -> tuple[store.CheckedGroup, np.ndarray]:
    """The spectrum store and the eigenvalues at its last checkpoint; refuses an SLQ one."""
    group = store.open_store(path)
    if group.attrs.get("method") != "exact":
        spec = group.attrs.get("config", {}).get("spectrum", {})
        raise HessvalleyError(
            f"{path}: the spectrum is a stochastic Lanczos density (the net has "
            f"{group.attrs.get('n_params')} parameters, more than curvature.spectrum.max_params "
            f"= {spec.get('max_params')}); counting outliers needs every eigenvalue: raise "
            f"curvature.spectrum.max_params to at least {group.attrs.get('n_params')}"
        )
    return group, np.asarray(group["eigenvalues"][-1], dtype=np.float64)


def _check_pairing(spectrum: str, group: Any, trajectory: str, run: Any) -> None:
    """The spectrum was computed from this trajectory, at its last checkpoint."""
    if group.attrs.get("trajectory_config_hash") != run.attrs["config_hash"]:
        raise HessvalleyError(
            f"{spectrum} was computed from another trajectory than {trajectory} "
            "(their config hashes differ): re-run the curvature stage"
        )
    last = int(np.asarray(group["checkpoint"][-1]))
    n_checkpoints = int(run.attrs["n_checkpoints"])
    if last != n_checkpoints - 1:
        raise HessvalleyError(
            f"{spectrum}: its last checkpoint is {last}, not the trajectory's last "
            f"({n_checkpoints - 1}): the outlier counts are taken at the end of training; "
            "measure the run's spectrum at its last checkpoint (curvature.runs.<run>.every)"
        )


def _training_inputs(dataset: str, train_on: str) -> tuple[np.ndarray, Mapping[str, Any]]:
    """The run's training inputs (as ``load_dataset``) and the dataset store's attrs."""
    group = store.open_store(dataset)
    x = np.asarray(group["x_train"][...])
    if train_on == "A":
        x = x[np.asarray(group["split"][...]) == SPLIT_A]
    return x, group.attrs


def _method(traj: Any) -> str:
    """GD when a step sees the whole training set (``batch_size: full``, or as large)."""
    return "GD" if int(traj.attrs["batch_size"]) >= int(traj.attrs["n_train"]) else "SGD"


def _cov_scale(data_attrs: Mapping[str, Any]) -> float:
    """The clusters' covariance multiplier; NaN for other sources (the key has a default
    there too, but means nothing)."""
    if data_attrs.get("source") != "gaussian_clusters":
        return float("nan")
    return float(data_attrs["config"]["cov_scale"])


def read_row(
    spectrum: str, trajectory: str, dataset: str, outliers: Mapping[str, Any]
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One (run, seed): its scalars by name (``SCALARS``), the Hessian spectrum and the PCA
    spectrum (both descending)."""
    group, eigenvalues = _read_spectrum(spectrum)
    traj = store.open_store(trajectory)
    _check_pairing(spectrum, group, trajectory, traj)
    run = traj.attrs["run"]
    x, data_attrs = _training_inputs(dataset, run.get("train_on", "all"))
    if data_attrs.get("name") != run["dataset"]:
        raise HessvalleyError(
            f"{dataset} holds dataset {data_attrs.get('name')!r}, but {trajectory} was "
            f"trained on {run['dataset']!r}"
        )
    pca = pca_spectrum(x)
    window = outliers.get("max_outliers")
    floor = float(outliers.get("ratio_floor") or DEFAULT_FLOOR)
    counts = {
        "hessian": count_outliers(eigenvalues, window, floor=floor),
        "pca": count_outliers(pca, window, floor=floor),
    }
    row: dict[str, Any] = {
        "run": str(traj.attrs["setting"]),
        "seed": int(traj.attrs["seed"]),
        "k": int(data_attrs["n_classes"]),
        "method": _method(traj),
        "activation": str(run["model"].get("activation", "relu")),
        "cov_scale": _cov_scale(data_attrs),
        "n_params": int(eigenvalues.size),
        "n_train": int(traj.attrs["n_train"]),
        "epoch": int(np.asarray(group["epoch"][-1])),
        "train_loss": float(np.asarray(group["train_loss"][-1])),
        "hessian_n_positive": int(np.sum(eigenvalues > 0)),
        "pca_n_positive": int(np.sum(pca > 0)),
    }
    for source, found in counts.items():
        for counter, result in found.items():
            row[f"{source}_{counter}_count"] = result.count
            row[f"{source}_{counter}_cutoff"] = result.cutoff
    return row, np.sort(eigenvalues)[::-1], pca


def _padded(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of different lengths as one float64 array, padded with NaN."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan)
    for i, values in enumerate(rows):
        out[i, : len(values)] = values
    return out


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        line = {f"{s}_{c}": row[f"{s}_{c}_count"] for s in ("hessian", "pca") for c in COUNTERS}
        line |= {f"hessian_{c}_cutoff": f"{row[f'hessian_{c}_cutoff']:.4g}" for c in COUNTERS}
        line |= {name: row[name] for name in ("run", "seed", "k", "method", "activation")}
        line |= {"cov_scale": f"{row['cov_scale']:g}", "P": row["n_params"]}
        line |= {"train_loss": f"{row['train_loss']:.3g}", "n_train": row["n_train"]}
        writer.writerow(line)
    return text.getvalue()


def _write_text(path: str, text: str) -> None:
    """Atomically: a reader (or a killed job) never leaves half a table."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, target)


def outlier_table(
    outliers: Mapping[str, Any],
    spectra: list[str],
    trajectories: list[str],
    datasets: list[str],
    output: str,
    table: str,
) -> None:
    """The ``sagun2017_outliers`` table: ``spectra[i]``, ``trajectories[i]`` and
    ``datasets[i]`` belong to one (run, seed); rows sorted by (k, run, seed)."""
    if not (len(spectra) == len(trajectories) == len(datasets)) or not spectra:
        raise HessvalleyError(
            f"outlier table: {len(spectra)} spectra, {len(trajectories)} trajectories and "
            f"{len(datasets)} datasets; need one of each per (run, seed), at least one"
        )
    read = [
        read_row(*paths, outliers) for paths in zip(spectra, trajectories, datasets, strict=True)
    ]
    read.sort(key=lambda r: (r[0]["k"], r[0]["run"], r[0]["seed"]))
    rows = [r[0] for r in read]
    tops = [h[: min(h.size, max(TOP_MIN, TOP_PER_CLASS * r["k"]))] for r, h, _ in read]
    arrays: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
        name: (("row",), np.asarray([r[name] for r in rows], dtype=dtype))
        for name, dtype in SCALARS.items()
    }
    arrays["hessian_top"] = (("row", "rank"), _padded(tops))
    arrays["pca_spectrum"] = (("row", "component"), _padded([p for _, _, p in read]))
    attrs = {
        **store.provenance(outliers),
        "counters": list(COUNTERS),
        "max_outliers": outliers.get("max_outliers"),
        "ratio_floor": float(outliers.get("ratio_floor") or DEFAULT_FLOOR),
        "sources": [list(paths) for paths in zip(spectra, trajectories, datasets, strict=True)],
    }
    store.write_store(output, arrays, attrs)
    _write_text(table, _csv_text(rows))
    for r in rows:
        hessian = "/".join(str(r[f"hessian_{c}_count"]) for c in COUNTERS)
        pca = "/".join(str(r[f"pca_{c}_count"]) for c in COUNTERS)
        print(f"{r['run']} seed {r['seed']}: k = {r['k']}, Hessian {hessian}, PCA {pca}")
