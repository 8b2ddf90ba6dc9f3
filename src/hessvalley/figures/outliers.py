"""Sagun et al. 2017 §3.1 (Figs 2-3, Table 1): the data's PCA scree and the Hessian's scree
at the end of training, one column per number of classes k (its first run and seed drawn with
each counter's cut-off, the family's other runs of that k, e.g. GD or tanh, as grey lines
behind it: Table 1 has them all); and the claim, tested from the table's counts.

The claim has two parts per run. Hessian (every seed): at least one of the three counters
(gap, ratio, elbow; ``hessvalley.outliers``) is within ±1 of k, the paper's Table 1 marking
off-by-one counts. Data (the run's first seed; the PCA is the dataset's): no counter of the
PCA spectrum gives exactly k, the paper's "the number of large principal components do not
match the number of clusters exactly". A part is not testable when the counters cannot reach
the count it needs (``max_outliers`` too small, or fewer positive eigenvalues than that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hessvalley import store
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, Claim, Number, Verdict, combine, write_claim
from hessvalley.figures.common import new_figure, save_figure
from hessvalley.outliers import COUNTERS

SOURCE = "Sagun et al. 2017, §3.1, Table 1"
STYLES = {  # distinct dashes: two counters often share a cut-off
    "gap": {"color": "tab:red", "ls": (0, (6, 3)), "lw": 1.2},
    "ratio": {"color": "tab:blue", "ls": (3, (3, 6)), "lw": 1.6},
    "elbow": {"color": "tab:green", "ls": (0, (1, 2)), "lw": 1.8},
}
RANKS_PER_CLASS = 3  # the screes show the top 3k ranks
MIN_RANKS = 10
PAPER_VALUE = (
    "Table 1, SGD, ReLU, cov 1.0 (P = 3960 + 31k): k = 2, 5, 10, 20, 50 counted gap 3, 6, 2, "
    "2, 50; ratio 4, 7, 14, 3, 51; elbow 2, 7, 15, 21, 49 (elbow cut-off 0.002; by this test "
    "its k = 10 row fails); §3.1: the large eigenvalues above the gap match k, the large "
    "principal components do not exactly"
)
TEST = (
    "per run and seed, Hessian at the last checkpoint: at least one counter (largest gap, "
    "largest ratio above ratio_floor·λ_max, largest bend of the log scree) within ±1 of k; per "
    "run, the data's PCA (training inputs): no counter equals k; a part whose counters cannot "
    "reach that count (max_outliers, positive eigenvalues) is not testable"
)


def _counts(table: Mapping[str, np.ndarray], source: str, i: int) -> dict[str, int]:
    return {c: int(table[f"{source}_{c}_count"][i]) for c in COUNTERS}


def _reach(n_positive: int, max_outliers: int | None) -> int:
    """The largest count the counters can give on a spectrum with ``n_positive`` positive
    eigenvalues (a count needs a value below it)."""
    reach = max(int(n_positive) - 1, 0)
    return reach if max_outliers is None else min(reach, int(max_outliers))


def hessian_part(counts: Mapping[str, int], k: int, reach: int) -> Verdict:
    """At least one counter within ±1 of k."""
    text = ", ".join(f"{c} {n}" for c, n in counts.items())
    if reach < k - 1:
        return Verdict(UNTESTABLE, f"counts reach at most {reach}, k = {k} needs {k - 1}")
    hits = [c for c, n in counts.items() if abs(n - k) <= 1]
    if hits:
        return Verdict(HOLDS, f"{text}: {', '.join(hits)} within ±1 of k = {k}")
    return Verdict(FAILS, f"{text}: none within ±1 of k = {k}")


def data_part(counts: Mapping[str, int], k: int, reach: int) -> Verdict:
    """No counter of the PCA spectrum equals k."""
    text = ", ".join(f"{c} {n}" for c, n in counts.items())
    if reach < k:
        return Verdict(UNTESTABLE, f"PCA counts reach at most {reach} < k = {k}")
    exact = [c for c, n in counts.items() if n == k]
    if exact:
        return Verdict(FAILS, f"{text}: {', '.join(exact)} gives exactly k = {k}")
    return Verdict(HOLDS, f"{text}: none gives exactly k = {k}")


def _nearest(counts: Mapping[str, int], k: int) -> int:
    return min(counts.values(), key=lambda n: (abs(n - k), n))


def outliers_claim(table: Mapping[str, np.ndarray], max_outliers: int | None) -> Claim:
    """The claim from the table store's arrays (``hessvalley.outlier_table``)."""
    parts: dict[str, Verdict] = {}
    numbers: list[Number] = []
    seen: set[str] = set()
    for i, run in enumerate(str(r) for r in table["run"]):
        k, seed = int(table["k"][i]), int(table["seed"][i])
        hessian = _counts(table, "hessian", i)
        reach = _reach(table["hessian_n_positive"][i], max_outliers)
        parts[f"{run} seed {seed} (k = {k}): Hessian"] = hessian_part(hessian, k, reach)
        label = "/".join(str(n) for n in hessian.values())
        numbers.append(
            Number(
                f"{run} seed {seed}, k = {k}: Hessian count nearest k (gap/ratio/elbow {label})",
                _nearest(hessian, k),
            )
        )
        if run in seen:
            continue
        seen.add(run)
        pca = _counts(table, "pca", i)
        reach = _reach(table["pca_n_positive"][i], max_outliers)
        parts[f"{run} (k = {k}): PCA"] = data_part(pca, k, reach)
        label = "/".join(str(n) for n in pca.values())
        numbers.append(
            Number(
                f"{run}, k = {k}: PCA count nearest k (gap/ratio/elbow {label})", _nearest(pca, k)
            )
        )
    return Claim(
        id="sagun2017_outliers",
        source=SOURCE,
        claim="At the end of training the Hessian has as many outlier eigenvalues as the data "
        "has classes (k, or off by one), while the data's PCA does not show k.",
        test=TEST,
        numbers=numbers,
        verdict=combine(parts),
        paper_value=PAPER_VALUE,
        parts=parts,
    )


def _columns(table: Mapping[str, np.ndarray]) -> list[tuple[int, list[int]]]:
    """Per k (ascending): the row of each of its runs' first seeds, in table order."""
    columns: dict[int, list[int]] = {}
    seen = set()
    for i, run in enumerate(str(r) for r in table["run"]):
        if run not in seen:
            seen.add(run)
            columns.setdefault(int(table["k"][i]), []).append(i)
    return sorted(columns.items())


def _scree(ax, values: np.ndarray, k: int, cutoffs: Mapping[str, float], title: str) -> None:
    """Top ~3k positive eigenvalues (log y), rank k marked, each counter's cut-off drawn."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    shown = values[: max(RANKS_PER_CLASS * k, MIN_RANKS)]
    ranks = np.arange(1, shown.size + 1)
    ax.semilogy(ranks, shown, "o", ms=3, color="black")
    ax.axvline(k + 0.5, color="gray", lw=0.8, alpha=0.6)
    for counter, cutoff in cutoffs.items():
        if cutoff > 0:
            ax.axhline(cutoff, label=counter, **STYLES[counter])
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("rank")


def outliers_figure(table_store: str, output: str, figures: Mapping[str, Any]) -> None:
    """Top: the data's PCA scree; bottom: the Hessian's; a column per k."""
    table = store.read_arrays(table_store)
    attrs = store.open_store(table_store).attrs
    columns = _columns(table)
    n = len(columns)
    fig, axes = new_figure(2, n, figsize=(2.6 * n + 0.6, 5.6), squeeze=False, layout="constrained")
    for col, (k, rows) in enumerate(columns):
        i, others = rows[0], rows[1:]
        for other in others:
            values = np.asarray(table["hessian_top"][other], dtype=float)
            values = values[np.isfinite(values) & (values > 0)]
            shown = values[: max(RANKS_PER_CLASS * k, MIN_RANKS)]
            axes[1, col].semilogy(np.arange(1, shown.size + 1), shown, color="0.7", lw=0.8)
        for row, source, values in (
            (0, "pca", table["pca_spectrum"][i]),
            (1, "hessian", table["hessian_top"][i]),
        ):
            counts = _counts(table, source, i)
            cutoffs = {c: float(table[f"{source}_{c}_cutoff"][i]) for c in COUNTERS}
            name = "data PCA" if source == "pca" else "Hessian"
            more = f" (+{len(others)} runs, grey)" if source == "hessian" and others else ""
            title = f"{table['run'][i]}, k = {k}{more}\n{name}: " + ", ".join(
                f"{c} {m}" for c, m in counts.items()
            )
            _scree(axes[row, col], values, k, cutoffs, title)
    axes[0, 0].set_ylabel("covariance eigenvalue")
    axes[1, 0].set_ylabel("Hessian eigenvalue (last checkpoint)")
    axes[0, 0].legend(fontsize=7, title="cut-off", title_fontsize=7)
    claim = outliers_claim(table, attrs.get("max_outliers"))
    fig.suptitle(
        f"Sagun et al. 2017 §3.1: outliers vs classes (grey: k outliers); "
        f"claim {claim.verdict.verdict}",
        fontsize=9,
    )
    save_figure(fig, output, dpi=int(figures["dpi"]))
    write_claim(output, claim)
