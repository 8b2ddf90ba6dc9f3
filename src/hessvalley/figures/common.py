"""Shared figure helpers: consistent style, mean +- band over seeds, PDF + PNG output."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

STYLE = {
    "figure.figsize": (6.0, 4.0),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "font.size": 10,
    "savefig.bbox": "tight",
}


def new_figure(*args, **kwargs):
    """plt.subplots under the project style."""
    with plt.rc_context(STYLE):
        return plt.subplots(*args, **kwargs)


def save_figure(fig, pdf_path: str | os.PathLike, dpi: int = 150) -> tuple[Path, Path]:
    """Write ``<id>.pdf`` and ``<id>.png`` side by side and close the figure."""
    pdf_path = Path(pdf_path)
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    png_path = pdf_path.with_suffix(".png")
    with plt.rc_context(STYLE):
        fig.savefig(pdf_path)
        fig.savefig(png_path, dpi=dpi)
    plt.close(fig)
    return pdf_path, png_path


def mean_band(
    values: np.ndarray, band: str = "std", axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Mean over ``axis`` and the band half-width: std over seeds, or its standard error."""
    values = np.asarray(values, dtype=float)
    n = np.sum(np.isfinite(values), axis=axis)
    mean = np.nanmean(values, axis=axis)
    std = np.nanstd(values, axis=axis, ddof=1) if values.shape[axis] > 1 else np.zeros_like(mean)
    if band == "sem":
        return mean, std / np.sqrt(np.maximum(n, 1))
    return mean, std


def plot_mean_band(ax, x, values, label: str, band: str = "std", **kwargs) -> None:
    """Line at the mean over seeds (rows) with a shaded band."""
    mean, half = mean_band(values, band)
    (line,) = ax.plot(x, mean, label=label, **kwargs)
    if np.asarray(values).shape[0] > 1:
        ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.25, lw=0)
