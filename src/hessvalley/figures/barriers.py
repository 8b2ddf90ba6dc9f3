"""Xing et al. 2018 §3, Figs 1-3: the training loss between consecutive SGD iterates.

Reads the interpolation stores of the reference run (the first of ``barriers.runs``;
``hessvalley.iterate_interpolation``). One panel per epoch of ``panel_epochs``: its first
``iterations`` steps, each step's loss at α = 0, 1/n, ..., 1 drawn over [t, t + 1] (vertical
grey lines at the iterates), the dashed orange floor through each segment's minimum, steps
crossing a barrier in red; the title gives the fraction of steps with an interior minimum,
the floor's ups and the step's η · g_Bᵀ H g_B / |g_B|² (median over the measured steps, and
how often it exceeds 1: where the quadratic model puts the minimum inside the segment).
The claim (``barrier_claims.fig1_claim``) is tested from the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection

from hessvalley.claims import write_claim
from hessvalley.errors import HessvalleyError
from hessvalley.figures.barrier_claims import RunSteps, fig1_claim, floor_turns, read_runs
from hessvalley.figures.common import new_figure, save_figure


def loss_label(attrs: Mapping[str, Any]) -> str:
    """The y label: which loss, and which BatchNorm mode it was evaluated in."""
    if not attrs.get("has_batch_norm"):
        return "training loss (full set)"
    return f"training loss (full set, BatchNorm {attrs['batch_norm']} mode)"


def describe_run(run: RunSteps) -> str:
    a = run.attrs
    momentum = f", momentum {a['momentum']:g}" if a.get("momentum") else ""
    return f"{run.setting} seed {run.seed} (lr {a['lr']:g}, batch {a['batch_size']}{momentum})"


def alignment_text(lr_alignment: np.ndarray) -> str:
    finite = lr_alignment[np.isfinite(lr_alignment)]
    if not len(finite):
        return "η·gᵀHg/|g|² not measured"
    above = float(np.mean(finite > 1.0))
    return f"η·gᵀHg/|g|² median {np.median(finite):.2g} (> 1 on {100 * above:.0f} %)"


def draw_panel(ax, run: RunSteps, epoch: int, iterations: int) -> None:
    """One epoch's first ``iterations`` steps: profiles, iterates, floor, barriers."""
    steps = run.epoch_steps(epoch, iterations)
    if not len(steps["iteration"]):
        raise HessvalleyError(f"barriers.panel_epochs: epoch {epoch} of {run.setting} not replayed")
    x = steps["iteration"][:, None] + run.alpha[None, :]
    colors = np.where(steps["barrier"].astype(bool), "tab:red", "tab:blue")
    ax.add_collection(
        LineCollection(np.stack([x, steps["profile"]], axis=-1), colors=colors, lw=1.0)
    )
    ax.autoscale_view()
    ax.vlines(
        [*steps["iteration"], steps["iteration"][-1] + 1],
        0,
        1,
        transform=ax.get_xaxis_transform(),
        color="0.8",
        lw=0.5,
        zorder=0,
    )
    floor_x = steps["iteration"] + steps["segment_min_alpha"]
    ax.plot(
        floor_x,
        steps["segment_min"],
        "--",
        color="tab:orange",
        lw=1.2,
        label="floor (segment minima)",
    )
    ups, downs = floor_turns(steps["segment_min"])
    interior = int(np.sum(steps["interior_min"]))
    n = len(steps["iteration"])
    ax.set_title(
        f"epoch {epoch}, steps {steps['iteration'][0]}-{steps['iteration'][-1] + 1}: interior "
        f"minimum in {interior}/{n}, barriers {int(np.sum(steps['barrier']))}, floor {ups} up / "
        f"{downs} down\n{alignment_text(steps['lr_alignment'])}",
        fontsize=8,
    )
    ax.set_xlabel("iteration")
    ax.legend(fontsize=7, loc="upper right")


def fig1_figure(
    stores: Sequence[str], output: str, figures: Mapping[str, Any], barriers: Mapping[str, Any]
) -> None:
    """Fig 1 of the reference run (panels of consecutive iterations at several epochs) and
    its claim."""
    runs = read_runs(stores)
    reference = barriers["runs"][0]
    if reference not in runs:
        raise HessvalleyError(
            f"barriers.runs: no interpolation store of {reference!r} among {list(stores)}"
        )
    run = runs[reference]
    claim = fig1_claim(run, barriers)
    epochs = list(barriers["panel_epochs"])
    cols = min(2, len(epochs))
    rows = math.ceil(len(epochs) / cols)
    fig, axes = new_figure(
        rows, cols, figsize=(6.5 * cols, 3.6 * rows), layout="constrained", squeeze=False
    )
    for ax, epoch in zip(axes.flat, epochs, strict=False):
        draw_panel(ax, run, int(epoch), int(barriers["iterations"]))
        ax.set_ylabel(loss_label(run.attrs))
    for ax in list(axes.flat)[len(epochs) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Xing et al. 2018 Fig 1: loss between consecutive iterates ({int(run.attrs['points'])} "
        f"evaluations per step), {describe_run(run)}; claim: {claim.verdict.verdict}",
        fontsize=10,
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
