"""Stationarity along a training run by Yaida's fluctuation-dissipation relation (W&S 2020, A.5).

Wei & Schwab assume a separation of timescales: the steep Hessian directions equilibrate
long before the whole parameter vector does. The FDR stage tests this on a stored trajectory.
It replays the run exactly (``determinism.reproducing``), window by window: window c runs
from evaluation checkpoint c (every ``fdr.every``-th, see ``schedule.every_kth``) to the
next one, with U_c, the top-max(k) Hessian eigenvectors at the window's start (Lanczos on
the Hessian factory's operator), held fixed over it. Per step t it records θ_t · g̃_t (g̃ the
gradient the optimizer used: mini-batch gradient plus weight decay) and
O_R = η (1 + μ) / (2 (1 − ν)) |v_{t+1}|² (v the momentum buffer after the step, which is
(θ_t − θ_{t+1}) / η), raw and projected on span(U_k) for each k of ``fdr.k``. (torch's very
first step sets the buffer to g̃ undamped: a boundary term of the first window only.)

Averaging (a choice; stored as attrs ``averaging``): per window, the means over the window's
steps, so a projected mean never mixes two projections; the criterion |Ō_L / Ō_R − 1| with a
standard error from batch means over ``fdr.blocks`` (default 4) contiguous sub-blocks and
the delta method (``fdr_terms.fdr_criterion``). W&S and Yaida use half-running averages
over [t/2, t] instead; the raw per-step series is stored with that average beside it as the
reference.
Each finished window is kept on disk (``PartialRows``): a killed job resumes after it and
writes the same store bit for bit. The replayed parameters must equal every stored
checkpoint they pass, bit for bit, or the job stops.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hessvalley import determinism, store
from hessvalley.curvature import lanczos_extremes
from hessvalley.curvature.factory import hessian_attrs
from hessvalley.errors import HessvalleyError
from hessvalley.fdr_terms import fdr_criterion, fdr_prefactor, half_running_criterion
from hessvalley.flat import flatten
from hessvalley.hessian_keys import hessian_keys
from hessvalley.partial_rows import PartialRows
from hessvalley.progress import progress
from hessvalley.schedule import every_kth
from hessvalley.train import Trainer
from hessvalley.trajectory_curvature import CheckpointHessians

STAGE_KEYS = ("every", "k", "lanczos")  # with ``blocks``, the fdr keys the store depends on
DEFAULT_BLOCKS = 4  # sub-blocks per window for the standard error (``fdr.blocks``)
AVERAGING = (
    "per window (evaluation checkpoint to the next): means over the window's steps with the "
    "top-k eigenvectors fixed at the window's start; standard error by batch means over "
    "`blocks` contiguous sub-blocks of the window and the delta method. Reference: raw-space "
    "half-running average over steps [t/2, t] (Yaida 2019), criterion_half_running."
)


@dataclass(frozen=True)
class SGDConstants:
    """The optimizer's constants in the relation: η, μ, ν (effective), weight decay."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float

    @property
    def prefactor(self) -> float:
        return fdr_prefactor(self.lr, self.momentum, self.dampening)


def sgd_constants(run: Mapping[str, Any], setting: str) -> SGDConstants:
    """The run's SGD constants; refuses Nesterov momentum (another relation) and ν = 1.

    torch applies dampening only to a momentum buffer, so without momentum ν is 0 here."""
    opt = run["optimizer"]
    if opt.get("nesterov", False):
        raise HessvalleyError(
            f"run {setting!r} uses Nesterov momentum (runs.{setting}.optimizer.nesterov: "
            "true): the fluctuation-dissipation relation of the FDR stage is that of plain "
            "momentum SGD and differs under Nesterov's update; set it to false or leave the "
            "run out of fdr.runs"
        )
    momentum = float(opt.get("momentum", 0.0))
    dampening = float(opt.get("dampening", 0.0)) if momentum > 0 else 0.0
    if dampening >= 1.0:
        raise HessvalleyError(
            f"run {setting!r}: runs.{setting}.optimizer.dampening = 1 with momentum leaves no "
            "gradient in the update after the first step; the relation has no finite O_R"
        )
    return SGDConstants(float(opt["lr"]), momentum, dampening, float(opt.get("weight_decay", 0.0)))


def step_terms(
    theta: torch.Tensor, grad: torch.Tensor, velocity: torch.Tensor, vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """θ·g̃ and |v|² (float64), raw first, then projected on the span of the first k columns
    of the orthonormal (P, K) ``vectors`` for k = 1..K: P(θ)·P(g̃) = (Uᵀθ)·(Uᵀg̃) and
    |P(v)|² = |Uᵀv|². Returns two (K + 1,) tensors."""
    theta, grad, velocity = (t.to(torch.float64) for t in (theta, grad, velocity))
    coefficients = vectors.T @ torch.stack([theta, grad, velocity], dim=1)  # (K, 3)
    left = torch.cumsum(coefficients[:, 0] * coefficients[:, 1], 0)
    right = torch.cumsum(coefficients[:, 2] ** 2, 0)
    return (
        torch.cat([(theta @ grad)[None], left]),
        torch.cat([(velocity @ velocity)[None], right]),
    )


def _velocity(trainer: Trainer, grad: torch.Tensor) -> torch.Tensor:
    """v_{t+1}: torch's momentum buffer after the step, or g̃ itself without momentum."""
    if trainer.optimizer.defaults["momentum"] == 0:
        return grad
    state = trainer.optimizer.state
    return flatten((state[p]["momentum_buffer"] for p in trainer.params), torch.float32)


def replay_window(
    hessians: CheckpointHessians,
    start: int,
    end: int,
    vectors: torch.Tensor,
    constants: SGDConstants,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay from checkpoint ``start`` (already loaded into the trainer) to ``end``; the
    per-step (θ·g̃, |v|²), each (n_steps, K + 1). Every checkpoint passed is checked."""
    trainer, group = hessians.trainer, hessians.group
    steps = np.asarray(group["step"][...])
    stored = {int(steps[k]): k for k in range(start + 1, end + 1)}
    lefts, squares = [], []
    for step in range(int(steps[start]), int(steps[end])):
        theta = flatten(trainer.params, torch.float32)
        trainer.gradient(step)
        grad = trainer.flat_grad()
        if constants.weight_decay:
            grad = grad.add(theta, alpha=constants.weight_decay)  # as torch.optim.SGD does
        trainer.optimizer.step()
        left, square = step_terms(theta, grad, _velocity(trainer, grad), vectors)
        lefts.append(left)
        squares.append(square)
        if step + 1 in stored:
            _check_replay(hessians, trainer, stored[step + 1], step + 1)
    return torch.stack(lefts).cpu().numpy(), torch.stack(squares).cpu().numpy()


def _check_replay(hessians: CheckpointHessians, trainer: Trainer, k: int, step: int) -> None:
    replayed = flatten(trainer.params, torch.float32).cpu().numpy()
    recorded = np.asarray(hessians.group["params"][k])
    if not np.array_equal(replayed, recorded):
        difference = float(np.max(np.abs(replayed.astype(np.float64) - recorded)))
        raise HessvalleyError(
            f"replaying trajectory {hessians.group.path}: the parameters after step {step} "
            f"differ from its checkpoint {k} (max |difference| {difference:.3g}); the run "
            "cannot be replayed exactly (a changed store, or other torch threads, version or "
            "device than it recorded): delete the trajectory and train it again"
        )


def window_row(
    hessians: CheckpointHessians,
    start: int,
    end: int,
    lanczos: Mapping[str, Any],
    n_vectors: int,
    constants: SGDConstants,
    width: int,
) -> dict[str, np.ndarray]:
    """One window's row: the top eigenpairs at ``start`` and the per-step series (O_L and
    O_R, raw and projected), padded with nan to ``width`` steps."""
    op = hessians.operator(start)  # also loads checkpoint ``start`` into the trainer
    pairs = lanczos_extremes(
        op,
        n_vectors,
        torch.Generator().manual_seed(int(lanczos["seed"])),
        which="largest",
        tol=float(lanczos["tol"]),
        max_dim=lanczos["max_dim"],
        block_size=int(lanczos["block_size"]),
        return_vectors=True,
    )
    vectors = pairs.largest_vectors.to(hessians.device, torch.float64)
    left, square = replay_window(hessians, start, end, vectors, constants)
    pad = ((0, width - len(left)), (0, 0))
    return {
        "o_left": np.pad(left, pad, constant_values=np.nan),
        "o_right": np.pad(square * constants.prefactor, pad, constant_values=np.nan),
        "eigenvalue": pairs.largest.numpy(),
        "eigenvalue_residual": pairs.largest_residuals.numpy(),
        "lanczos_matvecs": np.int64(pairs.n_matvecs),
        "lanczos_converged": np.bool_(pairs.converged),
    }


def subspaces(k: Sequence[int], n_params: int) -> list[int]:
    """The subspace dimensions, checked against the number of parameters."""
    ks = sorted({int(v) for v in k})
    if not ks or ks[0] < 1 or ks[-1] > n_params:
        raise HessvalleyError(f"fdr.k must be in 1..{n_params} (the run's parameters), got {k}")
    return ks


def fdr_along_trajectory(
    fdr: Mapping[str, Any],
    hessian: Mapping[str, Any],
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """Raw and top-k criteria |Ō_L / Ō_R − 1| per window of one trajectory, with the per-step
    series (see the module docstring)."""
    hessians = CheckpointHessians(trajectory, data, hessian, device)
    constants = sgd_constants(hessians.run, setting)
    ks = subspaces(fdr["k"], hessians.n_params)
    chosen = np.asarray(every_kth(hessians.n_checkpoints, int(fdr["every"])))
    if len(chosen) < 2:
        raise HessvalleyError(f"trajectory {trajectory} has one checkpoint: no step to replay")
    steps = np.asarray(hessians.group["step"][...])
    width = int(np.max(np.diff(steps[chosen])))
    blocks = int(fdr.get("blocks", DEFAULT_BLOCKS))
    spec = {
        **{key: fdr[key] for key in STAGE_KEYS},
        "blocks": blocks,
        "hessian": hessian_keys(hessian),
        "trajectory": hessians.group.attrs["config_hash"],
        "chosen": chosen,
    }
    partial = PartialRows(output, {**spec, "seed": seed}, "windows")
    rows = defaultdict(list, partial.rows())
    if len(partial):
        print(f"resuming: {len(partial)} of {len(chosen) - 1} windows from an earlier attempt")
    recorded = hessians.group.attrs.get("determinism")
    bar = {"initial": len(partial), "total": len(chosen) - 1, "unit": "window"}
    with determinism.reproducing(recorded, hessians.device, f"replaying {trajectory}"):
        for w in progress(range(len(partial), len(chosen) - 1), desc=f"{setting} fdr", **bar):
            row = window_row(
                hessians, chosen[w], chosen[w + 1], fdr["lanczos"], ks[-1], constants, width
            )
            partial.add(row)
            for name, value in row.items():
                rows[name].append(value)
    arrays = fdr_arrays(hessians, chosen, rows, ks, blocks)
    attrs = {
        **store.provenance(spec, seed=seed),
        "setting": setting,
        **hessian_attrs(hessian, len(hessians.y)),
        "lr": constants.lr,
        "momentum": constants.momentum,
        "dampening": constants.dampening,
        "weight_decay": constants.weight_decay,
        "prefactor": constants.prefactor,
        "averaging": AVERAGING,
        "blocks": blocks,
        "n_params": hessians.n_params,
        "steps_per_epoch": int(hessians.group.attrs["steps_per_epoch"]),
        "trajectory_config_hash": hessians.group.attrs["config_hash"],
    }
    store.write_store(output, arrays, attrs)
    partial.remove()
    criterion, projected = arrays["criterion"][1], arrays["criterion_projected"][1]
    print(
        f"{setting} seed {seed}: last window criterion raw {criterion[-1]:.3g}, "
        + ", ".join(f"top-{k} {projected[-1, i]:.3g}" for i, k in enumerate(ks))
    )


def fdr_arrays(
    hessians: CheckpointHessians,
    chosen: np.ndarray,
    rows: Mapping[str, list[np.ndarray]],
    ks: list[int],
    blocks: int,
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """The store's arrays: per window (criteria, eigenvalues), per subspace, per step."""
    coords = hessians.coords(chosen[:-1])
    arrays: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    for name, (_, values) in coords.items():
        arrays[name] = (("window",), values)
    ends = hessians.coords(chosen[1:])
    for name in ("checkpoint", "step", "epoch"):
        arrays[f"end_{name}"] = (("window",), ends[name][1])
    columns = [0, *ks]  # 0: the raw space; k: the top-k subspace (cumulative column k)
    left, right = np.stack(rows["o_left"]), np.stack(rows["o_right"])  # (window, width, K+1)
    n_steps = np.sum(np.isfinite(left[:, :, 0]), axis=1)
    windows = [
        fdr_criterion([(left[w, :n][:, columns], right[w, :n][:, columns])], blocks)
        for w, n in enumerate(n_steps)
    ]
    arrays["subspace"] = (("subspace",), np.asarray(ks, np.int64))
    arrays["n_steps"] = (("window",), n_steps.astype(np.int64))
    for field in ("o_left", "o_right", "ratio", "criterion"):
        values = np.stack([getattr(c, field) for c in windows])
        arrays[field] = (("window",), values[:, 0])
        arrays[f"{field}_projected"] = (("window", "subspace"), values[:, 1:])
    stderr = np.stack([c.stderr for c in windows])
    arrays["criterion_stderr"] = (("window",), stderr[:, 0])
    arrays["criterion_projected_stderr"] = (("window", "subspace"), stderr[:, 1:])
    arrays["eigenvalue"] = (("window", "rank"), np.stack(rows["eigenvalue"]))
    arrays["eigenvalue_residual"] = (("window", "rank"), np.stack(rows["eigenvalue_residual"]))
    arrays["lanczos_matvecs"] = (("window",), np.asarray(rows["lanczos_matvecs"]))
    arrays["lanczos_converged"] = (("window",), np.asarray(rows["lanczos_converged"]))
    return {**arrays, **_series(hessians, chosen, left, right, n_steps, columns)}


def _series(
    hessians: CheckpointHessians,
    chosen: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    n_steps: np.ndarray,
    columns: list[int],
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """The per-step series over all windows (dimension ``iteration``: the global step)."""
    start = int(np.asarray(hessians.group["step"][int(chosen[0])]))
    o_left = np.concatenate([left[w, :n][:, columns] for w, n in enumerate(n_steps)])
    o_right = np.concatenate([right[w, :n][:, columns] for w, n in enumerate(n_steps)])
    iteration = start + np.arange(len(o_left), dtype=np.int64)
    per_epoch = int(hessians.group.attrs["steps_per_epoch"])
    return {
        "iteration": (("iteration",), iteration),
        "iteration_window": (("iteration",), np.repeat(np.arange(len(n_steps)), n_steps)),
        "iteration_epoch": (("iteration",), (iteration + 1) / per_epoch),
        "o_left_series": (("iteration",), o_left[:, 0]),
        "o_right_series": (("iteration",), o_right[:, 0]),
        "o_left_series_projected": (("iteration", "subspace"), o_left[:, 1:]),
        "o_right_series_projected": (("iteration", "subspace"), o_right[:, 1:]),
        "criterion_half_running": (
            ("iteration",),
            half_running_criterion(o_left[:, 0], o_right[:, 0]),
        ),
    }
