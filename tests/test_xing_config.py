"""Config of the Xing et al. 2018 Figs 5-7 sections (minibatch_alignment, gradient_cosine):
defaults, and errors that name the key and say what is wrong."""

from __future__ import annotations

import copy
import re

import pytest

from hessvalley.config import ConfigError, sections_given, validate_config

DIGITS = {"digits": {"source": "digits", "n_train": 100, "n_val": 50}}
RUN = {
    "dataset": "digits",
    "model": {"name": "mlp", "widths": [8]},
    "optimizer": {"lr": 0.1, "batch_size": 20},
    "epochs": 4,
    "log_grad_cosine": True,
    "seeds": [0],
}  # 5 steps an epoch: 20 steps, a checkpoint per epoch


def config(**sections) -> dict:
    runs = {name: copy.deepcopy(RUN) for name in ("sb", "lb", "gd")}
    runs["lb"]["optimizer"]["batch_size"] = 50  # 2 steps an epoch
    runs["lb"]["epochs"] = 10  # 20 steps, as sb
    runs["gd"]["optimizer"]["batch_size"] = "full"
    runs["gd"]["epochs"] = 20
    raw = {"datasets": copy.deepcopy(DIGITS), "runs": runs}
    return raw | copy.deepcopy(sections)


def problems(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    return str(err.value)


GOOD = {
    "minibatch_alignment": {"runs": ["sb"], "epochs": [2, 4], "batch_sizes": [5, 20, "full"]},
    "gradient_cosine": {"runs": ["sb", "lb", "gd"]},
}


def test_a_consistent_config_is_accepted_with_defaults():
    raw = config(**GOOD)
    filled = validate_config(raw)
    section = filled["minibatch_alignment"]
    assert section["n_batches"] == 50 and section["prediction"] and section["probes"] == 64
    assert section["checkpoints"] is None and section["seeds"] is None
    assert filled["gradient_cosine"] == {
        "runs": ["sb", "lb", "gd"],
        "from_fraction": 0.5,
        "smooth": None,
        "blocks": 10,
    }
    assert {"minibatch_alignment", "gradient_cosine"} <= sections_given(raw)
    assert validate_config(config())["minibatch_alignment"]["batch_sizes"] == [
        100,
        1000,
        10000,
        "full",
    ]
    indices = {"runs": ["sb"], "checkpoints": [1, -1], "batch_sizes": [5, "full"]}
    validate_config(config(minibatch_alignment=indices))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(runs=["nope"]), r"minibatch_alignment\.runs: unknown run 'nope'"),
        (lambda s: s.update(checkpoints=[1]), r"minibatch_alignment\.epochs: give epochs or"),
        (lambda s: s.update(epochs=[2.5]), r"minibatch_alignment\.epochs: run 'sb' has no"),
        (lambda s: s.update(batch_sizes=[5, 500]), r"minibatch_alignment\.batch_sizes: \[500\]"),
        (lambda s: s.update(batch_sizes=[5]), r"minibatch_alignment\.batch_sizes"),
        (lambda s: s.update(batch_sizes=[5, "all"]), r"minibatch_alignment\.batch_sizes\.1"),
        (lambda s: s.update(seeds=[3]), r"minibatch_alignment\.seeds: \[3\] are not seeds"),
        (
            lambda s: s.update(epochs=None, checkpoints=[9]),
            r"minibatch_alignment\.checkpoints: \[9\] out of range",
        ),
        (lambda s: s.update(n_batches=1), r"minibatch_alignment\.n_batches"),
        (lambda s: s.update(n_samples=10), r"batch_sizes: \[20\] exceed the 10 samples"),
    ],
)
def test_minibatch_alignment_errors_name_the_key(change, message):
    raw = config(**GOOD)
    change(raw["minibatch_alignment"])
    found = problems(raw)
    assert re.search(message, found), found


def test_the_prediction_needs_per_sample_gradients():
    raw = config(**GOOD, curvature={"batch_norm": "train"})
    assert "curvature.batch_norm: 'train' gives no per-sample" in problems(raw)
    raw["minibatch_alignment"]["prediction"] = False
    validate_config(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["gradient_cosine"].update(runs=["sb", "x"]), "gradient_cosine.runs: unknown"),
        (
            lambda c: c["runs"]["lb"].update(log_grad_cosine=False),
            "runs.lb.log_grad_cosine: must be true",
        ),
        (
            lambda c: c["runs"]["lb"]["optimizer"].update(lr=0.2),
            "gradient_cosine.runs: the runs must share the learning rate",
        ),
        (
            lambda c: c["runs"]["lb"].update(epochs=5),
            "gradient_cosine.runs: the runs must take equal iteration counts",
        ),
        (
            lambda c: c["gradient_cosine"].update(runs=["sb"]),
            "gradient_cosine.runs: at least two batch sizes",
        ),
        (
            lambda c: c["runs"]["lb"]["model"].update(widths=[4]),
            "gradient_cosine.runs: the runs must share model",
        ),
        (
            lambda c: c["runs"]["gd"].update(stop_below_loss=0.1),
            "gradient_cosine.runs: ['gd'] may stop early",
        ),
        (lambda c: c["gradient_cosine"].update(from_fraction=1.0), "gradient_cosine.from_fraction"),
    ],
)
def test_gradient_cosine_errors_name_the_key(change, message):
    raw = config(**GOOD)
    change(raw)
    assert message in problems(raw)
