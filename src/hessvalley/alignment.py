"""Hessian-noise alignment along a training trajectory (W&S appendix A.4, Fig 5).

W&S assume that, after an early phase of training, the gradient-noise covariance C is aligned
with the Hessian H (C proportional to H, as in the SGD-like toy noise); A.4 tests it by
cos(H, C) = tr(HC) / (|H|_F |C|_F) during training. This stage measures it at the chosen
checkpoints of one trajectory, with H the Hessian of the mean training loss built by the one
Hessian factory (the ``curvature`` keys, as every curvature stage) and C the centred
covariance of the per-sample gradients over the same samples; also the uncentred variant
(second moment C + g g^T), tr H, tr C and the Frobenius norms, which say what moves the
cosine. Nets up to ``alignment.max_params`` get the dense float64 matrices (no sampling
error); larger ones the stochastic estimator (Rademacher probes, the same seed at every
checkpoint, delta-method standard errors). Each finished checkpoint is kept on disk
(``PartialRows``) and a killed job resumes after it, writing the store an uninterrupted one
would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from hessvalley import store
from hessvalley.curvature.noise import (
    ALIGNMENT_QUANTITIES,
    AlignmentSummary,
    exact_alignment_summary,
    stochastic_alignment_summary,
)
from hessvalley.curvature.operator import HessianOperator
from hessvalley.errors import HessvalleyError
from hessvalley.hessian_keys import hessian_keys
from hessvalley.schedule import chosen_checkpoints
from hessvalley.trajectory_curvature import CheckpointHessians

# The ``alignment`` keys a store depends on (``from_epoch`` is read by the figure only).
ALIGNMENT_KEYS = ("every", "max_params", "probes", "seed")
COLUMNS = (
    *ALIGNMENT_QUANTITIES,
    *(f"{name}_stderr" for name in ALIGNMENT_QUANTITIES),
    "gradient_norm_sq",
    "n_matvecs",
)
COVARIANCE = (
    "C = (1/M) sum_k (g_k - g)(g_k - g)^T over the M samples of the Hessian (the covariance "
    "of one-sample gradients; a mini-batch mean of S has (M - S) / (S (M - 1)) times it, "
    "which cancels in the cosine); uncentred: the second moment C + g g^T"
)
STDERR = (
    "0 for the exact method (dense float64 H and C: no sampling error); for the stochastic "
    "method the delta-method standard error over the probes"
)
PAPER_LEFT_OPEN = [
    "centred covariance or uncentred second moment of the gradients: both are reported",
    "the samples H and C are taken over (here: the curvature keys, all training samples "
    "unless curvature.n_samples)",
    "the number of epochs, checkpoints and what 'several epochs' means (alignment.from_epoch)",
    "momentum, initialisation and number of seeds of the two runs",
]


def _refuse_batch_statistics(hessian: Mapping[str, Any], setting: str) -> None:
    if hessian["batch_norm"] != "eval":
        raise HessvalleyError(
            f"the alignment of {setting} needs per-sample gradients, which exist only with "
            f"BatchNorm on running statistics: set curvature.batch_norm to eval (it is "
            f"{hessian['batch_norm']!r}; batch statistics couple the samples of a chunk)"
        )


def measure(op: HessianOperator, spec: Mapping[str, Any]) -> AlignmentSummary:
    """Exact for nets up to ``max_params``, else the stochastic estimator with ``probes``
    probes drawn from ``seed`` (the same probes at every checkpoint of the same net)."""
    if op.size <= int(spec["max_params"]):
        return exact_alignment_summary(op, int(spec["max_params"]))
    generator = torch.Generator().manual_seed(int(spec["seed"]))
    return stochastic_alignment_summary(op, generator, int(spec["probes"]))


def summary_row(summary: AlignmentSummary) -> dict[str, Any]:
    """One checkpoint's values under the store's column names (``COLUMNS``)."""
    row: dict[str, Any] = {}
    for name in ALIGNMENT_QUANTITIES:
        row[name] = np.float64(summary.estimates[name])
        row[f"{name}_stderr"] = np.float64(summary.stderrs[name])
    row["gradient_norm_sq"] = np.float64(summary.gradient_norm_sq)
    row["n_matvecs"] = np.int64(summary.n_matvecs)
    return row


def alignment_along_trajectory(
    alignment: Mapping[str, Any],
    hessian: Mapping[str, Any],
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """cos(H, C), centred and uncentred, tr H, tr C and the Frobenius norms, each with a
    standard error, at the checkpoints of ``trajectory`` that ``alignment.every`` chooses
    (every n-th and the last, a list, or the last only)."""
    keys = hessian_keys(hessian)
    _refuse_batch_statistics(keys, setting)
    spec = {key: alignment[key] for key in ALIGNMENT_KEYS}
    hessians = CheckpointHessians(trajectory, data, {**keys, "alignment": spec}, device)
    exact = hessians.n_params <= int(spec["max_params"])
    chosen = np.asarray(chosen_checkpoints(hessians.n_checkpoints, spec["every"]))
    desc = f"{setting} seed {seed} alignment"
    partial, rows, todo = hessians.rows(output, "alignment", seed, chosen, desc)
    for k in todo:
        row = summary_row(measure(hessians.operator(k), spec))
        partial.add(row)
        for name, value in row.items():
            rows[name].append(value)
    arrays = {
        **hessians.coords(chosen),
        **{name: (("checkpoint",), np.asarray(rows[name])) for name in COLUMNS},
    }
    run = hessians.run
    attrs = {
        **hessians.attrs("alignment", setting, seed),
        "loss": run["loss"]["name"],
        "loss_config": run["loss"],
        "optimizer": run["optimizer"],
        "method": "exact" if exact else "stochastic",
        "covariance": COVARIANCE,
        "stderr": STDERR,
        "paper_left_open": PAPER_LEFT_OPEN,
    }
    store.write_store(output, arrays, attrs)
    partial.remove()
    cosine = rows["cosine"]
    print(
        f"{setting} seed {seed}: cos(H, C) {cosine[0]:.3f} -> {cosine[-1]:.3f} at "
        f"{len(chosen)} checkpoints ({attrs['method']}, {hessians.n_params} parameters)"
    )
