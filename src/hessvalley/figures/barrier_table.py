"""Xing et al. 2018 §3, Table 1 and Fig 4: barriers crossed per epoch.

Reads the interpolation stores of every run of ``barriers.runs``. Writes the table
``results/tables/xing2018_table1.csv`` (one row per run and Table 1 epoch: steps, barriers
crossed, their fraction, the fractions of steps with an interior minimum and of steps whose
floor goes up, η · g_Bᵀ H g_B / |g_B|², the largest barrier height relative to the loss;
an epoch a run does not reach is "-") and the figure: the table (barriers / steps per cell)
and Fig 4, the barriers of each epoch of the reference run up to ``every_epoch_to`` with the
interior-minimum fraction beside them. The claim (``barrier_claims.table_claim``) is tested
from the same numbers.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hessvalley.claims import write_claim
from hessvalley.errors import HessvalleyError
from hessvalley.figures.barrier_claims import RunSteps, read_runs, table_claim
from hessvalley.figures.common import new_figure, save_figure

CSV_COLUMNS = (
    "run",
    "seed",
    "model",
    "lr",
    "batch_size",
    "epoch",
    "steps",
    "barriers",
    "barrier_fraction",
    "interior_fraction",
    "floor_up_fraction",
    "lr_alignment_median",
    "largest_relative_height",
)
MISSING = "-"


def table_rows(runs: Mapping[str, RunSteps], epochs: Sequence[int]) -> list[dict[str, Any]]:
    """One row per run and Table 1 epoch (``MISSING`` where the run was not replayed there)."""
    rows = []
    for setting, run in runs.items():
        base = {
            "run": setting,
            "seed": run.seed,
            "model": run.attrs.get("model", ""),
            "lr": f"{run.attrs['lr']:g}",
            "batch_size": run.attrs["batch_size"],
        }
        for epoch in epochs:
            row = run.epoch_row(epoch)
            if row is None:
                rows.append({**base, "epoch": epoch, **dict.fromkeys(CSV_COLUMNS[6:], MISSING)})
                continue
            steps = run.epoch_steps(epoch)
            crossed = steps["barrier"].astype(bool)
            relative = steps["height"][crossed] / steps["profile"][crossed, 0]
            n, count = int(row["epoch_n_steps"]), int(row["epoch_barriers"])
            rows.append(
                {
                    **base,
                    "epoch": epoch,
                    "steps": n,
                    "barriers": count,
                    "barrier_fraction": f"{count / n:.4g}",
                    "interior_fraction": f"{row['epoch_interior_fraction']:.4g}",
                    "floor_up_fraction": f"{row['epoch_floor_up_fraction']:.4g}",
                    "lr_alignment_median": f"{row['epoch_lr_alignment_median']:.4g}",
                    "largest_relative_height": f"{np.max(relative):.3g}" if len(relative) else "",
                }
            )
    return rows


def write_table(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """The CSV, atomically (a reader or a killed job never leaves half a table)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    tmp.write_text(text.getvalue())
    os.replace(tmp, target)


def _table_panel(ax, rows: Sequence[Mapping[str, Any]], epochs: Sequence[int]) -> None:
    """Barriers / steps per run and epoch, the interior-minimum fraction below."""
    settings = list(dict.fromkeys(r["run"] for r in rows))
    cells = []
    for setting in settings:
        line = []
        for epoch in epochs:
            r = next(r for r in rows if r["run"] == setting and r["epoch"] == epoch)
            if r["steps"] == MISSING:
                line.append(MISSING)
            else:
                interior = 100 * float(r["interior_fraction"])
                line.append(f"{r['barriers']} / {r['steps']}\n(interior {interior:.0f} %)")
        cells.append(line)
    table = ax.table(
        cellText=cells,
        rowLabels=settings,
        colLabels=[f"epoch {e}" for e in epochs],
        loc="center",
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 2.6)
    ax.axis("off")
    ax.set_title("Table 1: barriers crossed / steps of the epoch", fontsize=9)


def _fig4_panel(ax, run: RunSteps, last: int | None) -> None:
    """Barriers in each epoch 1..last of the reference run; interior fraction on a twin axis."""
    epochs = run.epochs["epochs"]
    chosen = (epochs >= 1) & (epochs <= (last or 0))
    if not np.any(chosen):
        ax.text(
            0.5,
            0.5,
            "no Fig 4 epochs (barriers.every_epoch_to)",
            ha="center",
            transform=ax.transAxes,
        )
        ax.axis("off")
        return
    x = epochs[chosen]
    ax.bar(
        x,
        run.epochs["epoch_barriers"][chosen],
        color="tab:red",
        alpha=0.7,
        label="barriers crossed",
    )
    ax.set_xlabel("epoch")
    ax.set_ylabel("number of barriers")
    ax.set_ylim(bottom=0, top=max(1.0, 1.2 * float(np.max(run.epochs["epoch_barriers"][chosen]))))
    twin = ax.twinx()
    twin.plot(
        x,
        run.epochs["epoch_interior_fraction"][chosen],
        "o-",
        color="tab:blue",
        ms=3,
        label="interior minimum",
    )
    twin.plot(
        x,
        run.epochs["epoch_floor_up_fraction"][chosen],
        "s--",
        color="tab:orange",
        ms=3,
        label="floor goes up",
    )
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("fraction of the epoch's steps")
    n = int(np.max(run.epochs["epoch_n_steps"][chosen]))
    ax.set_title(f"Fig 4: barriers in each epoch of {run.setting} ({n} steps an epoch)", fontsize=9)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")


def table1_figure(
    stores: Sequence[str],
    output: str,
    table: str,
    figures: Mapping[str, Any],
    barriers: Mapping[str, Any],
) -> None:
    """Table 1 (CSV and drawn) and Fig 4 of the ``barriers`` runs, and the claim."""
    found = read_runs(stores)
    missing = [r for r in barriers["runs"] if r not in found]
    if missing:
        raise HessvalleyError(f"barriers.runs: no interpolation store of {missing}")
    runs = {name: found[name] for name in barriers["runs"]}
    epochs = list(barriers["table_epochs"])
    rows = table_rows(runs, epochs)
    write_table(table, rows)
    claim = table_claim(runs, barriers)
    fig, (left, right) = new_figure(1, 2, figsize=(13.0, 4.2), layout="constrained")
    _table_panel(left, rows, epochs)
    _fig4_panel(right, runs[barriers["runs"][0]], barriers["every_epoch_to"])
    fig.suptitle(
        "Xing et al. 2018 Table 1 and Fig 4: barriers crossed per epoch; claim: "
        + claim.verdict.verdict,
        fontsize=10,
    )
    save_figure(fig, output, dpi=figures.get("dpi", 150))
    write_claim(output, claim)
