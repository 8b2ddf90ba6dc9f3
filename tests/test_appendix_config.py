"""Config of the per-run curvature plans (``curvature.runs`` as a mapping) and of the sections
behind W&S Figs 2a, 5 and 6: what each form means, and errors that name the key."""

from __future__ import annotations

import copy

import pytest

from hessvalley.config import ConfigError, validate_config
from hessvalley.curvature_runs import curvature_runs
from hessvalley.schedule import chosen_checkpoints

DIGITS = {"digits": {"source": "digits", "n_train": 100, "n_val": 50}}
RUN = {
    "dataset": "digits",
    "model": {"name": "mlp", "widths": [8]},
    "optimizer": {"lr": 0.1, "momentum": 0.9, "batch_size": 20},
    "epochs": 4,
    "seeds": [0, 1],
}  # 5 steps an epoch, a checkpoint per epoch: 5 checkpoints


def config(**sections) -> dict:
    runs = {"a": copy.deepcopy(RUN), "b": copy.deepcopy(RUN)}
    return {"datasets": copy.deepcopy(DIGITS), "runs": runs, **copy.deepcopy(sections)}


def problems(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    return str(err.value)


def test_chosen_checkpoints_every_list_and_last():
    assert chosen_checkpoints(10, 4) == [0, 4, 8, 9]
    assert chosen_checkpoints(10, "last") == [9]
    assert chosen_checkpoints(10, [7, 0, -1, 9]) == [0, 7, 9]
    with pytest.raises(ValueError, match="checkpoint 10 out of range: the trajectory has 10"):
        chosen_checkpoints(10, [10])
    with pytest.raises(ValueError, match="every must be an integer, a list or 'last'"):
        chosen_checkpoints(10, "first")


def test_list_and_null_forms_keep_their_meaning():
    section = {"every": 2, "spectrum": {"runs": ["b"], "every": 3}, "eigen": {"k": 4}}
    listed = curvature_runs(validate_config(config(curvature={**section, "runs": ["a", "b"]})))
    everything = curvature_runs(validate_config(config(curvature=section)))
    assert listed == everything
    assert listed["a"]["measurements"] == ["trace", "eigen"]
    assert listed["b"]["measurements"] == ["trace", "eigen", "spectrum"]
    assert listed["b"]["every"] == {"trace": 2, "eigen": 2, "spectrum": 3}
    assert listed["a"]["eigen"]["k"] == 4 and listed["a"]["eigen"]["which"] == "both"


def test_mapping_gives_each_run_only_what_it_names():
    runs = {
        "a": None,
        "b": {
            "measurements": ["eigen"],
            "every": "last",
            "eigen": {"k": 1, "which": "largest"},
            "figure": False,
        },
    }
    plans = curvature_runs(validate_config(config(curvature={"runs": runs, "every": 2})))
    assert plans["a"] == {
        "measurements": ["trace", "eigen"],
        "every": {"trace": 2, "eigen": 2},
        "eigen": plans["a"]["eigen"],
        "figure": True,
    }
    assert plans["b"]["figure"] is False
    assert plans["b"]["measurements"] == ["eigen"] and plans["b"]["every"] == {"eigen": "last"}
    assert plans["b"]["eigen"]["k"] == 1 and plans["b"]["eigen"]["which"] == "largest"
    assert plans["b"]["eigen"]["tol"] == plans["a"]["eigen"]["tol"]  # the rest: the section's


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ({"a": {"every": [0, 5]}}, "curvature.runs.a.every: checkpoint 5 out of range"),
        ({"a": {"every": "first"}}, "curvature.runs.a.every: 'first' is not valid: which check"),
        ({"a": {"every": 0}}, "curvature.runs.a.every: 0 is not valid"),
        ({"a": {"measurements": ["hess"]}}, "curvature.runs.a.measurements.0: 'hess' is not one"),
        ({"a": {"measurement": ["trace"]}}, "curvature.runs.a: Additional properties"),
        ({"a": {"eigen": {"which": "top"}}}, "curvature.runs.a.eigen.which: 'top' is not one"),
        ({"c": None}, "curvature.runs: unknown run 'c'"),
        (["a", "$(x)"], "curvature.runs.1: '$(x)' is not a valid name"),
        ("a", "curvature.runs: 'a' is not valid: run settings whose trajectories"),
    ],
)
def test_bad_curvature_runs_are_named(runs, message):
    assert message in problems(config(curvature={"runs": runs}))


def test_appendix_sections_name_the_key():
    text = problems(
        config(
            equilibrium={"runs": ["a", "c"], "batch_sizes": [10, 200], "steps": 5, "snapshots": 4},
            alignment={"runs": ["b"]},
            curvature={"batch_norm": "train"},
            fdr={"runs": ["a"], "seeds": [0, 7]},
        )
    )
    assert "equilibrium.runs: unknown run 'c'" in text
    assert "equilibrium.batch_sizes: [200] exceed the 100 training samples of run 'a'" in text
    assert "equilibrium.snapshots: 4 snapshots do not fit in the second half of" in text
    assert "curvature.batch_norm: 'train' gives no per-sample gradients" in text
    assert "fdr.seeds: [7] are not seeds of run 'a' ([0, 1])" in text
    raw = config(fdr={"runs": ["b"]})
    raw["runs"]["b"]["optimizer"]["nesterov"] = True
    assert "runs.b.optimizer.nesterov: fdr.runs measures" in problems(raw)


def test_appendix_defaults_are_filled():
    filled = validate_config(config(equilibrium={"runs": ["a"]}))
    assert filled["equilibrium"]["dtype"] == "float64" and filled["equilibrium"]["momentum"] == 0
    assert filled["fdr"]["k"] == [1, 10] and filled["fdr"]["threshold"] == 0.01
    assert filled["alignment"]["runs"] == [] and filled["alignment"]["from_epoch"] is None
