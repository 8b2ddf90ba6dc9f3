"""Xing et al. 2018 §4.2, eq. 4, Figs 5-6: how well mini-batch gradients align with the
sharp directions, g_B^T H g_B / |g_B|^2, against the batch size, at chosen checkpoints of one
trajectory (no extra training: only the evaluation batch size varies).

H is the Hessian of the mean training loss over M samples, built by the one Hessian factory
(``hessian_at``, the ``curvature`` keys; ``minibatch_alignment.n_samples`` may override
their ``n_samples``); the batches are drawn without replacement from the same M samples
(``draw_batches``: ``n_batches`` per size from a generator seeded by ``seed``, the same
batches at every checkpoint), ``full`` being all M (one gradient, repeated: no spread). Per
checkpoint the store also holds two reference lines of the same H: λmax (Lanczos, the
``curvature.eigen`` tolerance and limits) bounds every ratio, and tr(H)/P (the
``curvature.trace`` estimator, with its standard error) is the ratio's mean over random
directions; and, with ``prediction``, what g, C and H predict
(``hessvalley.curvature.batch_prediction``). Each finished checkpoint is kept on disk
(``PartialRows``): a killed job resumes after it and writes the store an uninterrupted one
would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hessvalley import store
from hessvalley.batch_noise import predicted_ratio
from hessvalley.curvature import (
    HessianOperator,
    draw_batches,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_extremes,
    minibatch_alignment,
    minibatch_prediction,
)
from hessvalley.curvature.trace import trace_budget
from hessvalley.errors import HessvalleyError
from hessvalley.hessian_keys import hessian_keys
from hessvalley.schedule import chosen_checkpoints
from hessvalley.trajectory_curvature import CheckpointHessians

KEY = "minibatch_alignment"
# The section's keys a store depends on (runs, seeds and n_samples are passed otherwise).
SECTION_KEYS = ("checkpoints", "epochs", "batch_sizes", "n_batches", "seed", "prediction", "probes")
PER_BATCH = ("ratio", "curvature", "norm_sq")  # (checkpoint, size, batch)
REFERENCE = ("lambda_max", "lambda_max_residual", "trace", "trace_stderr", "n_matvecs")
PREDICTION = (
    "gradient_curvature",
    "gradient_norm_sq",
    "trace_hc",
    "trace_hc_stderr",
    "trace_c",
    "trace_c_stderr",
)
PAPER_LEFT_OPEN = [
    "BatchNorm mode of the Hessian and the batch gradients (here: curvature.batch_norm)",
    "whether the 50 batches of a size are drawn with or without replacement between batches "
    "(here: each batch without replacement, batches independent)",
    "the Hessian's precision and whether it is over all 45,000 samples (here: the curvature "
    "keys, minibatch_alignment.n_samples)",
]


def resolve_checkpoints(group: Any, spec: Mapping[str, Any], setting: str) -> np.ndarray:
    """The checkpoints measured: those at the end of ``epochs`` (each must be a stored
    checkpoint's epoch), else those ``checkpoints`` chooses (``chosen_checkpoints``; null:
    the last)."""
    n = int(group.attrs["n_checkpoints"])
    if spec.get("epochs") is None:
        every = spec.get("checkpoints")
        try:
            return np.asarray(chosen_checkpoints(n, "last" if every is None else every))
        except ValueError as err:
            raise HessvalleyError(f"{KEY}.checkpoints: run {setting!r}: {err}") from None
    stored = np.asarray(group["epoch"][...], dtype=float)
    chosen = []
    for epoch in spec["epochs"]:
        found = np.flatnonzero(np.abs(stored - float(epoch)) < 1e-9)
        if not found.size:
            raise HessvalleyError(
                f"{KEY}.epochs: run {setting!r} has no checkpoint at the end of epoch {epoch} "
                f"(its checkpoints are at epochs {stored.tolist()}): set its checkpoint_every"
            )
        chosen.append(int(found[0]))
    return np.asarray(sorted(set(chosen)))


def resolve_sizes(requested: Sequence[int | str], n_samples: int) -> list[int]:
    """Batch sizes as sample counts: ``full`` is all ``n_samples``; none may exceed it."""
    sizes = [n_samples if size == "full" else int(size) for size in requested]
    too_large = [size for size in sizes if size > n_samples]
    if too_large:
        raise HessvalleyError(
            f"{KEY}.batch_sizes: {too_large} exceed the {n_samples} samples the Hessian and "
            "the batches are taken over (curvature.n_samples, minibatch_alignment.n_samples)"
        )
    return sizes


def reference_lines(op: HessianOperator, reference: Mapping[str, Any]) -> dict[str, Any]:
    """λmax (Lanczos, its Ritz residual) and tr(H) with its standard error."""
    eigen, trace = reference["eigen"], reference["trace"]
    pairs = lanczos_extremes(
        op,
        1,
        torch.Generator().manual_seed(int(eigen["seed"])),
        which="largest",
        tol=float(eigen["tol"]),
        max_dim=eigen["max_dim"],
        block_size=int(eigen["block_size"]),
    )
    estimator = hutchpp_trace if trace["method"] == "hutchpp" else hutchinson_trace
    budget = trace_budget(trace["method"], int(trace["matvecs"]), op.size)
    result = estimator(op, torch.Generator().manual_seed(int(trace["seed"])), **budget)
    return {
        "lambda_max": np.float64(pairs.largest[0]),
        "lambda_max_residual": np.float64(pairs.largest_residuals[0]),
        "trace": np.float64(result.estimate),
        "trace_stderr": np.float64(result.stderr),
        "n_matvecs": np.int64(pairs.n_matvecs + result.n_matvecs),
    }


def prediction_row(op: HessianOperator, spec: Mapping[str, Any], sizes: list[int]) -> dict:
    """g^T H g, |g|^2, tr(HC), tr(C) and the predicted ratio (with errors) at each size."""
    generator = torch.Generator().manual_seed(int(spec["seed"]))
    found = minibatch_prediction(op, generator, int(spec["probes"]))
    terms = (found.gradient_curvature, found.gradient_norm_sq, found.trace_hc, found.trace_c)
    covariance = found.covariance.numpy()
    predicted = [predicted_ratio(*terms, op.n_samples, size, covariance) for size in sizes]
    return {
        **{name: np.float64(getattr(found, name)) for name in PREDICTION},
        "trace_covariance": covariance,
        "predicted": np.asarray([p[0] for p in predicted]),
        "predicted_stderr": np.asarray([p[1] for p in predicted]),
    }


def measure_checkpoint(
    op: HessianOperator,
    sizes: list[int],
    batches: list[torch.Tensor | None],
    spec: Mapping[str, Any],
    reference: Mapping[str, Any],
) -> dict[str, Any]:
    """One checkpoint's row: per-batch ratios, numerators and denominators, the reference
    lines and (with ``prediction``) the prediction."""
    found = minibatch_alignment(op, sizes, int(spec["n_batches"]), batches=batches)
    row: dict[str, Any] = {
        "ratio": found.values.numpy(),
        "curvature": found.curvatures.numpy(),
        "norm_sq": found.norms_sq.numpy(),
        **reference_lines(op, reference),
    }
    row["n_matvecs"] = np.int64(row["n_matvecs"] + found.n_matvecs)
    if spec["prediction"]:
        prediction = prediction_row(op, spec, sizes)
        row["n_matvecs"] += np.int64(2 * int(spec["probes"]) + 1)
        row.update(prediction)
    return row


def _refuse_batch_statistics(hessian: Mapping[str, Any], spec: Mapping[str, Any]) -> None:
    if spec["prediction"] and hessian["batch_norm"] != "eval":
        raise HessvalleyError(
            f"{KEY}.prediction: the prediction needs per-sample gradients, which exist only "
            f"with BatchNorm on running statistics: set curvature.batch_norm to eval (it is "
            f"{hessian['batch_norm']!r}) or minibatch_alignment.prediction to false"
        )


def _arrays(hessians: CheckpointHessians, chosen: np.ndarray, sizes: list[int], rows) -> dict:
    arrays = {
        **hessians.coords(chosen),
        "batch_size": (("size",), np.asarray(sizes, dtype=np.int64)),
        **{n: (("checkpoint", "size", "batch"), np.stack(rows[n])) for n in PER_BATCH},
        **{n: (("checkpoint",), np.asarray(rows[n])) for n in REFERENCE},
    }
    if "predicted" in rows:
        arrays.update({n: (("checkpoint",), np.asarray(rows[n])) for n in PREDICTION})
        for name in ("predicted", "predicted_stderr"):
            arrays[name] = (("checkpoint", "size"), np.stack(rows[name]))
        arrays["trace_covariance"] = (
            ("checkpoint", "term", "term_"),
            np.stack(rows["trace_covariance"]),
        )
    return arrays


def minibatch_alignment_along_trajectory(
    section: Mapping[str, Any],
    hessian: Mapping[str, Any],
    reference: Mapping[str, Any],
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """g_B^T H g_B / |g_B|^2 for ``n_batches`` batches of each size at the checkpoints of
    ``trajectory`` that ``epochs`` or ``checkpoints`` choose, with λmax and tr(H)/P of the
    same H (``reference``: the curvature section's eigen and trace keys) and, with
    ``prediction``, what g, C and H predict."""
    keys = hessian_keys(hessian)
    spec = {key: section[key] for key in SECTION_KEYS}
    _refuse_batch_statistics(keys, spec)
    config = {**keys, KEY: {**spec, "reference": dict(reference)}}
    hessians = CheckpointHessians(trajectory, data, config, device)
    chosen = resolve_checkpoints(hessians.group, spec, setting)
    n_samples = int(hessians.attrs(KEY, setting, seed)["n_samples"])
    sizes = resolve_sizes(spec["batch_sizes"], n_samples)
    generator = torch.Generator().manual_seed(int(spec["seed"]))
    batches = draw_batches(n_samples, sizes, int(spec["n_batches"]), generator)
    desc = f"{setting} seed {seed} mini-batch alignment"
    partial, rows, todo = hessians.rows(output, KEY, seed, chosen, desc)
    for k in todo:
        row = measure_checkpoint(hessians.operator(k), sizes, batches, spec, reference)
        partial.add(row)
        for name, value in row.items():
            rows[name].append(value)
    attrs = {
        **hessians.attrs(KEY, setting, seed),
        "loss": hessians.run["loss"]["name"],
        "optimizer": hessians.run["optimizer"],
        "batch_sizes_requested": list(spec["batch_sizes"]),
        "n_batches": int(spec["n_batches"]),
        "batches": "each drawn without replacement from the M Hessian samples (torch.randperm, "
        "generator seeded by seed, sizes in order); the same batches at every checkpoint; the "
        "full set is one gradient repeated n_batches times",
        "reference": "lambda_max: Lanczos top Ritz value (curvature.eigen tol, max_dim, "
        "block_size, seed); trace: curvature.trace estimator (per parameter: / n_params)",
        "prediction": "E[g_B^T H g_B] / E|g_B|^2 = (g^T H g + f tr(HC)) / (|g|^2 + f tr(C)), "
        "f = (M - S) / (S (M - 1)); tr(HC), tr(C) from Rademacher probes (seed, probes)"
        if spec["prediction"]
        else None,
        "paper_left_open": PAPER_LEFT_OPEN,
    }
    store.write_store(output, _arrays(hessians, chosen, sizes, rows), attrs)
    partial.remove()
    means = np.stack(rows["ratio"]).mean(axis=2)
    for k, mean in zip(chosen, means, strict=True):
        text = ", ".join(f"{s}: {m:.4g}" for s, m in zip(sizes, mean, strict=True))
        print(f"{setting} seed {seed} checkpoint {k}: mean ratio by batch size {text}")
