"""SGD equilibria around a GD minimum: the sum of negative Hessian eigenvalues against the
training loss (Wei & Schwab 2020 §4.1, Fig 2a; Appendix A.3).

A.3 predicts that SGD started at a minimum of the valley settles at ⟨L⟩ = L* + C Σλ_i with
C = η/(4S)(1 − S/M), and that the valley-direction curvature, hence the sum of the negative
eigenvalues, is proportional to ⟨L⟩ − L* ≈ ⟨L⟩. ``equilibrium_sweep`` tests this: from the last
checkpoint of a GD run it trains each (batch size S, learning rate η) cell for ``steps`` SGD
steps with a fresh optimizer, and at ``snapshots`` evenly spaced steps of the second half (the
first half equilibrates) takes the full training loss and every eigenvalue of the exact
Hessian; the GD run's own checkpoints are measured the same way.

The Hessian is built by the one factory (``hessian_at``) from the curvature keys, but over the
whole training set (the loss on the x axis is over it) and in ``equilibrium.dtype`` (float64 by
default: float32 products put spurious negative eigenvalues on the ~P − N(K−1) zero modes).
Each finished point is kept on disk (``PartialRows``); a resumed job replays a cell's SGD from
the minimum, checks the replay against the kept states bit for bit, and writes the store an
uninterrupted job would have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hessvalley import determinism, store
from hessvalley.curvature import exact_spectrum
from hessvalley.curvature.factory import hessian_at, hessian_attrs
from hessvalley.data import DeviceDataset, load_dataset
from hessvalley.device import resolve_device
from hessvalley.equilibrium_plan import Point, cell_seed, plan_points
from hessvalley.errors import HessvalleyError
from hessvalley.evaluation import loss_and_accuracy
from hessvalley.flat import flatten
from hessvalley.hessian_keys import hessian_keys
from hessvalley.partial_rows import PartialRows
from hessvalley.progress import progress
from hessvalley.train import Trainer
from hessvalley.trajectory_store import TrainState, open_trajectory, read_state

VALUES = (
    "train_loss",
    "train_acc",
    "negative_sum",
    "n_negative",
    "lambda_min",
    "lambda_max",
    "trace",
    "diverged",
)
INTEGER_VALUES = {"n_negative": np.int64, "diverged": np.bool_}  # stored as these types

# What the paper leaves open and this stage fixes (recorded in every store's attrs).
CHOICES = {
    "start": "the GD run's last checkpoint, fresh optimizer state (no momentum buffer)",
    "batches": "without replacement: epoch e of a cell is epoch_order(cell seed, e), the last "
    "incomplete mini-batch dropped; cell seed from (equilibrium.seed, run seed, cell)",
    "snapshots": "K steps evenly spaced over the second half of the cell's steps, the last one "
    "included; the first half equilibrates",
    "loss": "the run's loss over the whole training set in eval mode; label-smoothed CE is "
    "reported as KL(q || p) = CE − H(q), minimum 0 (same gradients and Hessian)",
    "C": "η_eff/(4S)(1 − S/M), η_eff = η/(1 − momentum) (= η for plain SGD as in the paper)",
    "negative": "eigenvalues below −P·eps·max|λ|, eps of equilibrium.dtype (the round-off "
    "of the exact zero modes is not counted)",
    "trace": "sum of all eigenvalues of the exact Hessian (A.3's Σλ_i over the non-degenerate "
    "directions, plus the small negative ones)",
    "gd_points": "GD checkpoints (n−1)·j/gd_points rounded, j = 1..gd_points (the last included)",
    "divergence": "a cell whose full training loss turns non-finite is kept with diverged=True "
    "and NaN measurements from that snapshot on",
}


def measure(trainer: Trainer, keys: Mapping[str, Any], max_params: int) -> dict[str, Any]:
    """Full training loss and the exact spectrum at the trainer's state (NaNs and
    ``diverged`` when the loss is not finite), as a row: the ``VALUES`` in one float64
    vector (one array per column keeps each kept row to a few writes), the eigenvalues and
    the state."""
    data = trainer.data
    loss, accuracy = loss_and_accuracy(
        trainer.model, trainer.loss_fn, data.x_train, data.y_train, trainer.chunk
    )
    values = dict.fromkeys(VALUES, np.nan) | {"train_loss": loss, "train_acc": accuracy}
    values |= {"n_negative": -1, "diverged": float(not np.isfinite(loss))}
    eigenvalues = np.full(sum(p.numel() for p in trainer.params), np.nan)
    if np.isfinite(loss):
        op = hessian_at(trainer.model, trainer.loss_fn, data.x_train, data.y_train, keys)
        eigenvalues = exact_spectrum(op, max_params).numpy()
        negative = eigenvalues[eigenvalues < -zero_tolerance(eigenvalues, keys["dtype"])]
        values |= {"negative_sum": negative.sum(), "n_negative": negative.size}
        values |= {"lambda_min": eigenvalues[0], "lambda_max": eigenvalues[-1]}
        values["trace"] = eigenvalues.sum()
    row = {"values": np.asarray([values[name] for name in VALUES], dtype=np.float64)}
    return row | {"eigenvalues": eigenvalues} | _state(trainer)


def zero_tolerance(eigenvalues: np.ndarray, dtype: str) -> float:
    """|λ| below P·eps·max|λ| (eps of the Hessian's ``dtype``) is round-off, NumPy's
    matrix_rank rule: the exact zero modes (e.g. weights of pixels blank in every sample)
    come out at ±1e-20 in float64."""
    eps = np.finfo(np.dtype(dtype)).eps
    return float(eigenvalues.size * eps * np.abs(eigenvalues).max())


def diverged(row: Mapping[str, Any]) -> bool:
    """Whether a row's cell had left every valley (its loss turned non-finite)."""
    return bool(row["values"][VALUES.index("diverged")])


def _state(trainer: Trainer) -> dict[str, np.ndarray]:
    """The parameters (and BatchNorm buffers, if any) the point was measured at."""
    state = {"params": flatten(trainer.params, torch.float32).cpu().numpy()}
    if trainer.buffers:
        state["buffers"] = flatten(trainer.buffers, torch.float64).cpu().numpy()
    return state


class EquilibriumSweep:
    """The GD run, its dataset at the minimum and the sweep's points and Hessian keys."""

    def __init__(
        self,
        sweep: Mapping[str, Any],
        hessian: Mapping[str, Any],
        seed: int,
        trajectory: str,
        data: str,
        device: str,
    ) -> None:
        self.sweep, self.seed = sweep, int(seed)
        self.device = resolve_device(device)
        self.group = open_trajectory(trajectory)
        self.run = dict(self.group.attrs["run"])
        self.n_params = int(self.group.attrs["param_layout"]["numel"])
        self.max_params = int(sweep["max_params"])
        if self.n_params > self.max_params:
            raise HessvalleyError(
                f"the equilibrium sweep takes every eigenvalue of the exact Hessian, but the "
                f"net of {trajectory} has {self.n_params} parameters, above "
                f"equilibrium.max_params = {self.max_params} (a {self.n_params}² float64 matrix "
                "per point): use a smaller net or raise equilibrium.max_params"
            )
        self.data: DeviceDataset = load_dataset(data, self.device, self.run["train_on"])
        # the loss on the x axis is over the whole training set: so is its Hessian
        self.keys = hessian_keys(hessian) | {"n_samples": None, "dtype": sweep["dtype"]}
        self.points = plan_points(sweep, self.group, self.data.n_train)
        self.minimum = read_state(self.group, -1)

    def trainer(self, batch_size: int | str, lr: float, seed: int) -> Trainer:
        """A Trainer like the run's with the cell's batch size, lr and momentum."""
        optimizer = dict(self.run["optimizer"])
        momentum = float(self.sweep["momentum"])
        optimizer |= {"lr": lr, "batch_size": batch_size, "momentum": momentum}
        optimizer["nesterov"] = bool(optimizer.get("nesterov", False)) and momentum > 0
        return Trainer({**self.run, "optimizer": optimizer}, self.data, seed, self.device)

    def valley(self) -> dict[str, Any]:
        """A valley floor at loss 0 needs more parameters P than fitted outputs N(K − 1)."""
        p, n, k = self.n_params, self.data.n_train, self.data.n_classes
        valley = dict(P=p, N=n, K=k, N_times_K_minus_1=n * (k - 1))
        return valley | {"overparameterised": p > n * (k - 1)}

    def identity(self) -> dict[str, Any]:
        """Everything the points depend on (the key of the kept rows)."""
        return {
            "equilibrium": {k: v for k, v in self.sweep.items() if k != "runs"},
            "hessian": self.keys,
            "trajectory": self.group.attrs["config_hash"],
            "seed": self.seed,
            "determinism": determinism.record(self.device),
        }

    def gd_point(self, point: Point) -> dict[str, Any]:
        """The GD run at one of its own checkpoints, measured as the SGD snapshots are."""
        trainer = self.trainer("full", point.lr, self.seed)
        trainer.load_state(read_state(self.group, point.checkpoint))
        return measure(trainer, self.keys, self.max_params)

    def cell(
        self, points: Sequence[Point], kept: Sequence[dict[str, Any] | None]
    ) -> list[dict[str, Any]]:
        """SGD from the minimum through one cell's snapshots: a snapshot with a ``kept`` row
        (an earlier attempt's) is replayed to and checked against it, not measured again."""
        i, j = points[0].cell or (0, 0)
        seed = cell_seed(int(self.sweep["seed"]), self.seed, i, j)
        trainer = self.trainer(points[0].batch_size, points[0].lr, seed)
        trainer.load_state(TrainState(self.minimum.params, None, self.minimum.buffers, 0))
        rows: list[dict[str, Any]] = []
        step = 0
        for point, row in zip(points, kept, strict=True):
            if rows and diverged(rows[-1]):  # nothing moves any more: repeat the last
                rows.append(row if row is not None else dict(rows[-1]))
                continue
            while step < point.step:
                trainer.train_step(step)
                step += 1
            if row is None:
                row = measure(trainer, self.keys, self.max_params)
            elif not diverged(row):
                self.check_replay(trainer, row, point)
            rows.append(row)
        return rows

    def check_replay(self, trainer: Trainer, row: Mapping[str, Any], point: Point) -> None:
        """A resumed cell must reach the kept states bit for bit (else the rows would mix
        two computations)."""
        if _state(trainer)["params"].tobytes() != np.asarray(row["params"]).tobytes():
            raise HessvalleyError(
                f"resuming the equilibrium sweep: the replay of cell batch {point.batch_size}, "
                f"lr {point.lr} differs from the kept state at step {point.step}; delete the "
                "partial rows (<output>.points.partial) and run again"
            )


def _measure_all(sweep: EquilibriumSweep, partial: PartialRows, desc: str) -> list[dict[str, Any]]:
    """Every point's row in plan order: the kept ones, then the rest, each kept as it ends."""
    columns = partial.rows()
    done = len(partial)
    kept: list[dict[str, Any] | None] = [
        {name: values[k] for name, values in columns.items()} for k in range(done)
    ]
    kept += [None] * (len(sweep.points) - done)
    if done:
        print(f"resuming: {done} of {len(sweep.points)} points from an earlier attempt")
    rows: list[dict[str, Any]] = []
    bar = progress(total=len(sweep.points), initial=done, desc=desc, unit="point")
    with bar:
        index = 0
        while index < len(sweep.points):
            point = sweep.points[index]
            group = [
                k for k in range(index, len(sweep.points)) if sweep.points[k].cell == point.cell
            ]
            group = group if point.source == "sgd" else [index]
            if all(kept[k] is not None for k in group):
                new = [kept[k] for k in group]
            elif point.source == "gd":
                new = [sweep.gd_point(point)]
            else:
                new = sweep.cell([sweep.points[k] for k in group], [kept[k] for k in group])
            for k, row in zip(group, new, strict=True):
                if kept[k] is None:
                    partial.add(row)
                    bar.update(1)
                rows.append(row)
            index += len(group)
    return rows


def _arrays(sweep: EquilibriumSweep, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The store's arrays: per-point coordinates and measurements, spectra and states."""
    points = sweep.points

    def column(name: str) -> np.ndarray:
        return np.asarray([row[name] for row in rows])

    arrays: dict[str, Any] = {
        "source": (("point",), np.asarray([p.source for p in points], dtype=str)),
        "batch_size": (("point",), np.asarray([p.batch_size for p in points], dtype=np.int64)),
        "lr": (("point",), np.asarray([p.lr for p in points], dtype=np.float64)),
        "C": (("point",), np.asarray([p.noise for p in points], dtype=np.float64)),
        "step": (("point",), np.asarray([p.step for p in points], dtype=np.int64)),
        "checkpoint": (("point",), np.asarray([p.checkpoint for p in points], dtype=np.int64)),
    }
    values = np.stack(column("values"))
    for index, name in enumerate(VALUES):
        arrays[name] = (("point",), values[:, index].astype(INTEGER_VALUES.get(name, np.float64)))
    arrays["eigenvalues"] = (("point", "eigen"), np.stack(column("eigenvalues")))
    arrays["params"] = (("point", "param"), np.stack(column("params")))
    if "buffers" in rows[0]:
        arrays["buffers"] = (("point", "buffer"), np.stack(column("buffers")))
    return arrays


def equilibrium_sweep(
    sweep: Mapping[str, Any],
    hessian: Mapping[str, Any],
    setting: str,
    seed: int,
    trajectory: str,
    data: str,
    output: str,
    device: str = "cpu",
) -> None:
    """W&S Fig 2a's measurements for one seed of a GD run: loss and exact spectrum at SGD
    equilibria around its minimum and at its own checkpoints (see the module docstring)."""
    runner = EquilibriumSweep(sweep, hessian, seed, trajectory, data, device)
    valley = runner.valley()
    if not valley["overparameterised"]:
        print(
            f"warning: {setting} has P = {valley['P']} parameters, not more than "
            f"N(K − 1) = {valley['N_times_K_minus_1']} fitted outputs: there may be no valley "
            "floor at loss 0 for SGD to equilibrate around"
        )
    identity = runner.identity()
    partial = PartialRows(output, identity, "points")
    arrays = _arrays(runner, _measure_all(runner, partial, f"{setting} seed {seed} equilibrium"))
    attrs = {
        **store.provenance({**runner.keys, "equilibrium": identity["equilibrium"]}, seed=seed),
        "setting": setting,
        **hessian_attrs(runner.keys, runner.data.n_train),
        "hessian_overrides": {
            "n_samples": "null: the whole training set, as the loss on the x axis",
            "dtype": f"{runner.keys['dtype']} (equilibrium.dtype): float32 products put "
            "spurious negative eigenvalues on the zero modes",
        },
        "n_params": runner.n_params,
        "n_train": runner.data.n_train,
        "n_classes": runner.data.n_classes,
        "valley": valley,
        "trajectory_config_hash": runner.group.attrs["config_hash"],
        "run": runner.run,
        "determinism": identity["determinism"],
        "choices": CHOICES,
        "source_legend": {"sgd": "snapshot of an SGD cell", "gd": "GD run checkpoint"},
    }
    store.write_store(output, arrays, attrs)
    partial.remove()
    sgd = arrays["source"][1] == "sgd"
    losses = arrays["train_loss"][1][sgd]
    print(
        f"{setting} seed {seed}: {len(sgd)} points; SGD snapshot losses "
        f"{np.nanmin(losses, initial=np.inf):.3g} to {np.nanmax(losses, initial=-np.inf):.3g}; "
        f"{int(arrays['diverged'][1][sgd].sum())} diverged snapshot(s)"
    )
