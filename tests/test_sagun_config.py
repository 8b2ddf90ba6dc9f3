"""Config of the Sagun sections (outliers, width, batch) and of lines: errors name the key and
say what to add; a curvature run can opt out of its figure; training figures can be chosen."""

from __future__ import annotations

import copy

import pytest

from hessvalley.config import ConfigError, validate_config
from hessvalley.curvature_runs import curvature_runs

DIGITS = {"digits": {"source": "digits", "n_train": 100, "n_val": 50}}
RUN = {
    "dataset": "digits",
    "model": {"name": "mlp", "widths": [8]},
    "optimizer": {"lr": 0.1, "batch_size": 20},
    "epochs": 4,
    "seeds": [0],
}  # 5 steps an epoch: 20 steps, 5 checkpoints


def config(**sections) -> dict:
    runs = {name: copy.deepcopy(RUN) for name in ("sb", "lb", "sw", "w")}
    runs["lb"]["optimizer"]["batch_size"] = 50  # 2 steps an epoch
    runs["lb"]["epochs"] = 10  # 20 steps, as sb
    runs["sw"]["init_from"] = "lb"
    return {"datasets": copy.deepcopy(DIGITS), "runs": runs, **copy.deepcopy(sections)}


def problems(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    return str(err.value)


LINE = {"from": {"run": "lb"}, "to": {"run": "sw"}}
CURVATURE = {
    "runs": {
        "sb": {"measurements": ["eigen"], "every": "last", "figure": False},
        "lb": {"measurements": ["eigen"], "every": "last", "figure": False},
        "w": {"measurements": ["spectrum"], "every": [0, -1], "figure": False},
    }
}
GOOD = {
    "curvature": CURVATURE,
    "lines": {"lb_sw": LINE},
    "batch": {"small": "sb", "large": "lb", "switched": "sw", "line": "lb_sw"},
    "width": {"runs": ["w"]},
    "outliers": {"runs": ["w"]},
    "figures": {"training_runs": ["sb"]},
}


def test_a_consistent_config_is_accepted_with_defaults():
    filled = validate_config(config(**GOOD))
    assert filled["lines"]["lb_sw"]["alpha"] == {"start": -0.5, "stop": 1.5, "points": 41}
    assert filled["lines"]["lb_sw"]["chunk_size"] is None
    assert filled["lines"]["lb_sw"]["from"] == {"run": "lb", "seed": 0, "checkpoint": -1}
    assert filled["width"]["top"] == 10 and filled["outliers"]["ratio_floor"] == 1e-3
    assert [name for name, p in curvature_runs(filled).items() if p["figure"]] == []


def test_family_runs_need_the_curvature_they_read():
    raw = config(**{**GOOD, "curvature": {"runs": {"w": {"measurements": ["trace"]}}}})
    text = problems(raw)
    assert "width.runs: run 'w' gets no curvature spectrum: add it to curvature.runs" in text
    assert "outliers.runs: run 'w' gets no curvature spectrum" in text
    assert "batch.small: run 'sb' gets no curvature eigen" in text
    runs = copy.deepcopy(CURVATURE["runs"])
    runs["w"]["every"] = "last"
    text = problems(config(**{**GOOD, "curvature": {"runs": runs}}))
    assert "curvature.runs.w.every: the width figure compares the spectrum at the first" in text


def test_batch_roles_must_fit_together():
    raw = config(**GOOD)
    raw["runs"]["sw"]["init_from"] = None
    raw["runs"]["lb"]["optimizer"]["lr"] = 0.2
    raw["runs"]["lb"]["epochs"] = 8
    text = problems(raw)
    assert "batch.switched: run 'sw' must continue the large-batch run" in text
    assert "batch.large: the small- and large-batch runs must share the learning rate" in text
    assert "batch.large: run 'lb' takes 16 steps and 'sb' 20" in text
    text = problems(config(**{**GOOD, "batch": {"small": "sb", "line": "nope"}}))
    assert "batch.large: missing" in text and "batch.line: unknown line 'nope'" in text


def test_lines_name_the_bad_end():
    bad = {
        "from": {"run": "lb", "checkpoint": 99, "seed": 3},
        "to": {"run": "ghost"},
        "alpha": {"start": 1.0, "stop": 0.0},
    }
    text = problems(config(lines={"x": bad}))
    assert "lines.x.from.checkpoint: 99 is out of range (run 'lb' has 11 checkpoints)" in text
    assert "lines.x.from.seed: 3 is not a seed of 'lb'" in text
    assert "lines.x.to.run: unknown run 'ghost'" in text
    assert "lines.x.alpha: [1.0, 0.0] must cover [0, 1] (start <= 0, stop >= 1)" in text
    raw = config(lines={"y": LINE})
    raw["runs"]["sw"]["model"] = {"name": "mlp", "widths": [4]}
    raw["runs"]["sw"]["init_from"] = None
    assert "lines.y: the two runs differ in model or dataset" in problems(raw)


def test_training_runs_are_checked():
    assert "figures.training_runs: unknown run 'zz'" in problems(
        config(figures={"training_runs": ["zz"]})
    )
