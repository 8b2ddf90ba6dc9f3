"""Training curves of one run setting: train/val loss (and accuracy) vs epoch over seeds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.figures.common import new_figure, plot_mean_band, save_figure


def load_curves(trajectories: Sequence[str]) -> dict[str, np.ndarray]:
    """Epoch and metrics of each seed, cut to the checkpoints all seeds have."""
    runs = [
        store.read_arrays(p, ["epoch", "train_loss", "val_loss", "train_acc", "val_acc"])
        for p in trajectories
    ]
    n = min(len(r["epoch"]) for r in runs)
    curves = {name: np.stack([r[name][:n] for r in runs]) for name in runs[0]}
    curves["epoch"] = curves["epoch"][0]
    return curves


def training_figure(
    trajectories: Sequence[str], setting: str, output: str, figures: Mapping[str, Any]
) -> None:
    """Training curves of one run setting: loss and accuracy vs epoch, mean ± band over seeds."""
    curves = load_curves(trajectories)
    band = figures.get("band", "std")
    n_seeds = len(trajectories)
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(9.0, 3.6))
    epoch = curves["epoch"]
    plot_mean_band(ax_loss, epoch, curves["train_loss"], "train", band)
    plot_mean_band(ax_loss, epoch, curves["val_loss"], "validation", band)
    if figures.get("training_log_scale", True) and np.all(curves["train_loss"] > 0):
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss $L$ (full set, eval mode)")
    ax_loss.legend()
    plot_mean_band(ax_acc, epoch, 100 * curves["train_acc"], "train", band)
    plot_mean_band(ax_acc, epoch, 100 * curves["val_acc"], "validation", band)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    what = "mean" if n_seeds == 1 else f"mean ± {band} over {n_seeds} seeds"
    fig.suptitle(f"{setting}: training curves ({what})")
    save_figure(fig, output, dpi=figures.get("dpi", 150))
