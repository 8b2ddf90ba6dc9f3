"""Per-stage estimate of the ``line`` stage (loss and accuracy along a straight line between
two stored states), torch-free; see ``hessvalley.costs.estimate`` for the units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hessvalley.costs.estimate import _unknown
from hessvalley.costs.model import MB, Job, Row, RunCost, split_memory


def line_rows(
    config: Mapping[str, Any], given: set[str], runs: Mapping[str, RunCost | str]
) -> list[Row]:
    """One job per line: an evaluation pass (training and validation sets) per alpha."""
    if "lines" not in given:
        return []
    rows = []
    for name, line in config["lines"].items():
        cost = runs[line["from"]["run"]]
        if isinstance(cost, str):
            rows.append(_unknown("line", name, 1, cost))
            continue
        points = int(line["alpha"]["points"])
        activations = cost.chunk * cost.fig["eval_act_bytes_per_sample"] / MB
        host, device = split_memory(
            cost.assumptions, cost.data_mb() + cost.model_mb() + activations,
            3 * cost.state_bytes / MB, cost.data_mb(),
        )  # fmt: skip
        job = Job("line", 1, points * cost.eval_pass(), host, device, points * 32 / MB)
        rows.append(Row("line", name, [job], [f"{points} points x one evaluation pass"]))
    return rows
