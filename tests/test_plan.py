"""``hessvalley plan``: the estimator's arithmetic against hand-computed numbers, limits and
the exit status, the calibration cache, config errors, and the calibration's figures."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from hessvalley import cli
from hessvalley.config import validate_config
from hessvalley.costs import (
    estimate,
    estimate_appendix,
    estimate_lines,
    estimate_minibatch,
    report,
)
from hessvalley.costs.facts import dataset_facts
from hessvalley.costs.model import Assumptions, Job
from hessvalley.costs.plan import make_plan

# Round figures, so every number below is checked by hand.
FIG = {
    "n_params": 1000,
    "n_buffers": 0,
    "grad_s_per_sample": 1e-3,
    "optimizer_step_s": 0.01,
    "eval_s_per_sample": 1e-4,
    "hvp_sweep_s_per_sample": 2e-3,
    "hvp_probe_s_per_sample": 1e-3,
    "train_act_bytes_per_sample": 1000.0,
    "eval_act_bytes_per_sample": 100.0,
    "hvp_act_bytes_per_sample": 2000.0,
}


def small_config(**run_overrides) -> dict:
    run = {
        "dataset": "digits",
        "model": {"name": "mlp", "widths": [8]},
        "optimizer": {"lr": 0.1, "momentum": 0.9, "batch_size": 100},
        "epochs": 2,
        "seeds": [0, 1],
        **run_overrides,
    }
    return {
        "datasets": {"digits": {"source": "digits"}},
        "runs": {"m": run},
        "projection": {
            "runs": {"m": None},
            "loss_threshold": 0.03,
            "n_points": 3,
            "max_gd_steps": 5,
            "trace": {"probes": 9},
        },
        "curvature": {"n_samples": 100, "probes_per_sweep": 2},
    }


def rows_by_stage(config: dict, speedup: float = 2.0) -> dict:
    config = validate_config(config)
    facts = {n: dataset_facts(n, s) for n, s in config["datasets"].items()}
    assumptions = Assumptions(gd_steps=10, bisections=1, speedup=speedup)
    runs = estimate.run_costs(config, facts, {"m": FIG}, assumptions)
    rows = estimate.train_rows(config, runs)
    rows += estimate.projection_rows(config, runs, config["curvature"])
    return {row.stage: row for row in rows}


def test_estimator_arithmetic_matches_hand_computation():
    rows = rows_by_stage(small_config())
    # digits: 1797 - ceil(0.25 * 1797) = 1347 train, 450 val; batch 100 -> 13 steps/epoch,
    # 26 steps, checkpoints at 0, 13, 26; speedup 2.
    train = rows["train"].jobs[0]
    assert train.count == 2
    expected = (26 * (100 * 1e-3 + 0.01) + 3 * 1797 * 1e-4) / 2
    assert train.seconds == pytest.approx(expected)  # 1.69955 s
    # 3 checkpoints of params + momentum (8000 B) and 26 batch losses (8 B)
    assert train.disk_mb == pytest.approx((3 * 8000 + 26 * 8) / 1e6)

    # one projection: G = min(10, max_gd_steps 5) steps, 6 gradients over 1347 samples,
    # 5 optimizer steps, then an evaluation of 1797 samples
    projection = (6 * 1347 * 1e-3 + 5 * 0.01) / 2 + 1797 * 1e-4 / 2
    grid = {job.label: job for job in rows["projection_grid"].jobs}
    assert sum(job.count for job in grid.values()) == 4  # 2 segments x 2 seeds
    assert grid["segment 0"].seconds == pytest.approx(projection)  # its left end only
    assert grid["segment 1"].seconds == pytest.approx(2 * projection)  # both ends
    assert grid["segment 1"].disk_mb == pytest.approx(2 * 4000 / 1e6)

    # segment: 1 bisection, a replay of 13 SGD steps, 2 edges x 3 points x one evaluation
    segment = {job.label: job for job in rows["projection_segment"].jobs}
    replay = 13 * (100 * 1e-3 + 0.01) / 2
    interpolation = 2 * 3 * 1797 * 1e-4 / 2
    for job in segment.values():
        assert job.count == 2
        assert job.seconds == pytest.approx(projection + replay + interpolation)
    # store_params all: the left end and the midpoint; the last segment also its right end
    assert segment["segment 0"].disk_mb == pytest.approx(2 * 4000 / 1e6)
    assert segment["segment 1"].disk_mb == pytest.approx(3 * 4000 / 1e6)

    # trace: Hutch++ of 9 HVPs = blocks of 3, 3, 3 -> 6 sweeps of 2 probes, 100 samples, 3 points
    trace = rows["projected_trace"].jobs[0]
    assert trace.count == 2
    assert trace.seconds == pytest.approx(3 * 100 * (6 * 2e-3 + 9 * 1e-3) / 2)
    path = rows["projected_path"].jobs[0]
    # store_params all: 3 grid states and 2 midpoints
    assert path.kind == "io" and path.disk_mb == pytest.approx(5 * 4000 / 1e6)


def test_bisections_are_capped_by_depth_and_interval_length():
    config = small_config()
    config["projection"]["max_depth"] = 0
    segment = rows_by_stage(config)["projection_segment"].jobs[0]
    assert segment.seconds == pytest.approx(3 * 1797 * 1e-4 / 2)  # one edge, no bisection


def test_a_job_fitting_only_at_a_retry_and_one_over_the_limit():
    resources = {"runtime": 60}
    config = validate_config(
        {
            "resources": {
                "train": resources,
                "dataset": resources,
                "limits": {"runtime": 150, "mem_mb": 16000},
            }
        }
    )
    # A job that starts over: each attempt (60, 120, then 150 min: the limit) on its own.
    fits_at_3 = Job("x", 1, 130 * 60, 100.0)
    assert report.attempt_needed(config, "dataset", Job("x", 1, 50 * 60, 100.0), 3) == 1
    assert report.attempt_needed(config, "dataset", Job("x", 1, 70 * 60, 100.0), 3) == 2
    assert report.attempt_needed(config, "dataset", fits_at_3, 3) == 3
    assert report.attempt_needed(config, "dataset", Job("x", 1, 151 * 60, 100.0), 3) == 0
    # A job that resumes (training): the attempts add up, 60 + 120 + 150 min.
    assert report.attempt_needed(config, "train", Job("x", 1, 151 * 60, 100.0), 3) == 2
    assert report.attempt_needed(config, "train", Job("x", 1, 330 * 60, 100.0), 3) == 3
    assert report.attempt_needed(config, "train", Job("x", 1, 331 * 60, 100.0), 3) == 0
    # memory: 2000 MB default, x attempt, capped at 16000 (a resumed job needs it all again)
    assert report.attempt_needed(config, "train", Job("x", 1, 60, 5000.0), 3) == 3
    assert report.attempt_needed(config, "train", Job("x", 1, 60, 5000.0), 2) == 0


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("calibration")


def write_config(path, **run_overrides) -> str:
    config = small_config(**run_overrides)
    config["datasets"]["digits"]["n_train"] = 300
    config["runs"]["m"]["seeds"] = [0]
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_plan_calibrates_once_and_reuses_the_cache(tmp_path, cache_dir):
    configfile = write_config(tmp_path / "c.yaml")
    first = make_plan(configfile, cache_dir=cache_dir)
    assert first["measured"] == ["mlp(widths=[8]) on 1x8x8, 10 classes"]
    (cached,) = cache_dir.glob("cpu-*.json")
    stamp = cached.stat().st_mtime_ns
    second = make_plan(configfile, cache_dir=cache_dir)
    assert second["measured"] == [] and cached.stat().st_mtime_ns == stamp
    assert second["calibration"] == first["calibration"]
    again = make_plan(configfile, cache_dir=cache_dir, recalibrate=True)
    assert again["measured"] == first["measured"]

    (figures,) = again["calibration"].values()
    assert figures["n_params"] == 64 * 8 + 8 + 8 * 10 + 10
    for key in (
        "grad_s_per_sample",
        "eval_s_per_sample",
        "hvp_s_per_sample",
        "hvp_probe_s_per_sample",
    ):
        # an 8-wide MLP: microseconds per sample; the bound catches a unit slip (per batch,
        # milliseconds), with room for a loaded machine (20 ms measured at load 6 on 2 cores)
        assert 1e-8 < figures[key] < 1e-1, key
    # activations kept for backward: input (64 floats), hidden layer, logits: ~0.1-2 kB
    assert 50 < figures["train_act_bytes_per_sample"] < 5000
    assert figures["hvp_act_bytes_per_sample"] > figures["train_act_bytes_per_sample"] / 2


def test_cli_exit_status_flags_a_job_over_its_limit(tmp_path, cache_dir, capsys):
    configfile = write_config(tmp_path / "ok.yaml")
    out = tmp_path / "plan.json"
    args = ["plan", "--configfile", configfile, "--cache-dir", str(cache_dir)]
    assert cli.main([*args, "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["over"] == 0 and plan["totals"]["jobs"] > 0
    assert "every estimated job fits" in capsys.readouterr().out

    config = yaml.safe_load((tmp_path / "ok.yaml").read_text())
    del config["projection"], config["curvature"]
    config["runs"]["m"].update(epochs=10**7, checkpoint_every=10**6)  # 3e7 steps: hours
    config["resources"] = {"train": {"runtime": 1}, "limits": {"runtime": 20, "mem_mb": 16000}}
    (tmp_path / "over.yaml").write_text(yaml.safe_dump(config))
    args[2] = str(tmp_path / "over.yaml")
    assert cli.main([*args, "--json", str(out)]) == 2
    text = capsys.readouterr().out
    assert "OVER: train m" in text and "resources.train.runtime" in text
    plan = json.loads(out.read_text())
    (train,) = [row for row in plan["rows"] if row["stage"] == "train"]
    assert train["attempt"] == 0 and train["hours_per_job"] > 20 / 60


def test_config_error_names_the_key(tmp_path, capsys):
    config = small_config()
    config["runs"]["m"]["optimizer"]["lr"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["plan", "--configfile", str(path)]) == 3
    assert "runs.m.optimizer.lr" in capsys.readouterr().err


def test_dataset_facts_without_building_the_dataset():
    cifar = dataset_facts(
        "c", {"source": "cifar10", "grey": True, "resize": 7, "n_train": 500, "n_val": None}
    )
    assert (cifar.input_shape, cifar.n_classes, cifar.n_train, cifar.n_val) == (
        (1, 7, 7),
        10,
        500,
        10000,
    )
    spec = validate_config({"datasets": {"d": {"source": "digits"}}})["datasets"]["d"]
    digits = dataset_facts("d", spec)
    assert (digits.input_shape, digits.n_train, digits.n_val) == ((1, 8, 8), 1347, 450)
    assert digits.store_bytes() == 1797 * (4 * 64 + 24)
    folder = dataset_facts(
        "f",
        {
            "source": "imagefolder",
            "root": "/nonexistent",
            "resize": None,
            "val_root": None,
            "val_fraction": 0.25,
            "n_train": None,
            "n_val": None,
            "grey": False,
        },
    )
    assert folder.input_shape is None and any("not a directory" in u for u in folder.unknown)
    assert math.prod(cifar.input_shape) * 4 == cifar.sample_bytes


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [("--gd-steps", "-1", "must be non-negative"), ("--bisections", "x", "invalid int value"),
     ("--speedup", "0", "must be positive")],
)  # fmt: skip
def test_plan_options_refuse_bad_values(option, value, problem, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plan", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: {problem}" in capsys.readouterr().err


def test_appendix_rows_match_hand_computation():
    """equilibrium_sweep, alignment and fdr on the small config (speedup 2, FIG's figures)."""
    config = validate_config(
        {
            **small_config(),
            "equilibrium": {
                "runs": ["m"],
                "batch_sizes": [10, 50],
                "lrs": [0.1],
                "steps": 20,
                "snapshots": 2,
                "gd_points": 1,
            },
            "alignment": {"runs": ["m"], "every": "last", "max_params": 10, "probes": 8},
            "fdr": {"runs": ["m"], "seeds": [1], "every": 2, "k": [1, 5], "n_samples": 50},
        }
    )
    facts = {n: dataset_facts(n, s) for n, s in config["datasets"].items()}
    runs = estimate.run_costs(config, facts, {"m": FIG}, Assumptions(speedup=2.0))
    eigh = {"seconds": 0.5, "size": 500}
    given = {"equilibrium", "alignment", "fdr"}
    rows = {r.stage: r for r in estimate_appendix.appendix_rows(config, given, runs, eigh)}

    # 2 cells x 20 steps of S (10, 50) samples; 2 x 2 snapshots + 1 GD point, each a dense
    # Hessian over all 1347 samples (1000 HVPs in sweeps of 2 probes: 500 sweeps) and an eigh
    # of 1000 (0.5 s x 2^3, not sped up), and an evaluation of 1797 samples
    sweep = rows["equilibrium_sweep"].jobs[0]
    training = 20 * ((10 * 1e-3 + 0.01) + (50 * 1e-3 + 0.01)) / 2
    hessian = 1347 * (500 * 2e-3 + 1000 * 1e-3) / 2 + 0.5 * 8
    assert sweep.count == 2
    assert sweep.seconds == pytest.approx(training + 5 * (hessian + 1797 * 1e-4 / 2))
    # 1000 parameters > max_params 10: 8 probes of H and of C (4 sweeps each, 2 probes a sweep)
    # over the 100 curvature samples, at the last checkpoint only
    alignment = rows["alignment"].jobs[0]
    assert alignment.seconds == pytest.approx(2 * 100 * (4 * 2e-3 + 8 * 1e-3) / 2)
    # fdr: seed 1 only; a replay of all 26 steps, Lanczos at checkpoints 0 and 2 up to
    # max(100, 20 x 5) = 100 single-vector blocks over fdr.n_samples = 50
    fdr = rows["fdr"].jobs[0]
    lanczos = 50 * (100 * 2e-3 + 100 * 1e-3) / 2
    assert fdr.count == 1
    assert fdr.seconds == pytest.approx(26 * (100 * 1e-3 + 0.01) / 2 + 2 * lanczos)


def test_line_rows_match_hand_computation():
    """A line of 9 points between two states of run m: 9 evaluation passes over the training
    and validation sets (1347 + 450 digits at 1e-4 s a sample, speedup 2)."""
    config = small_config()
    config["runs"]["m2"] = {**config["runs"]["m"], "init_from": "m"}
    config["lines"] = {
        "m_to_m2": {"from": {"run": "m"}, "to": {"run": "m2"}, "alpha": {"points": 9}}
    }
    config = validate_config(config)
    facts = {n: dataset_facts(n, s) for n, s in config["datasets"].items()}
    runs = estimate.run_costs(config, facts, {"m": FIG, "m2": FIG}, Assumptions(speedup=2.0))
    (row,) = estimate_lines.line_rows(config, {"lines"}, runs)
    (job,) = row.jobs
    assert (row.stage, row.setting, job.count) == ("line", "m_to_m2", 1)
    assert job.seconds == pytest.approx(9 * 1797 * 1e-4 / 2)
    assert estimate_lines.line_rows(config, set(), runs) == []


# -- Xing et al. 2018 Figs 5-6 ------------------------------------------------------------------


def test_minibatch_alignment_rows_match_hand_computation():
    """Run m (1000 parameters, 3 checkpoints), its first and last checkpoint, batches of 10,
    50 and all 100 curvature samples (4 each), 6 prediction probes, speedup 2: per checkpoint
    H products [4, 4, 1] + Lanczos 100 x [1] + Hutch++ [20, 20, 20] + H and C [6, 6] in
    sweeps of 2 over 100 samples, and 40 + 200 + 100 + 100 gradient samples."""
    config = small_config()
    config["minibatch_alignment"] = {
        "runs": ["m"],
        "checkpoints": [0, -1],
        "batch_sizes": [10, 50, "full"],
        "n_batches": 4,
        "probes": 6,
    }
    config = validate_config(config)
    facts = {n: dataset_facts(n, s) for n, s in config["datasets"].items()}
    runs = estimate.run_costs(config, facts, {"m": FIG}, Assumptions(speedup=2.0))
    (row,) = estimate_minibatch.minibatch_rows(config, {"minibatch_alignment"}, runs)
    (job,) = row.jobs
    assert (row.stage, row.setting, job.count) == ("minibatch_alignment", "m", 2)
    sweeps, products = (2 + 2 + 1) + 100 + 3 * 10 + 2 * 3, 9 + 100 + 60 + 12
    per_checkpoint = 100 * (sweeps * 2e-3 + products * 1e-3) / 2 + 440 * 1e-3 / 2
    assert job.seconds == pytest.approx(2 * per_checkpoint)  # 46.74 s
    assert job.disk_mb == pytest.approx(3 * 8 * 2 * 3 * 4 / 1e6)
    assert estimate_minibatch.minibatch_rows(config, set(), runs) == []
    config["minibatch_alignment"]["epochs"] = [1.0]  # one checkpoint, at the end of epoch 1
    (row,) = estimate_minibatch.minibatch_rows(config, {"minibatch_alignment"}, runs)
    assert row.jobs[0].seconds == pytest.approx(per_checkpoint)


# -- Xing et al. 2018 §3 (Figs 1-4, Table 1) --------------------------------------------------


def test_interpolation_rows_match_hand_computation():
    """Run m (13 steps an epoch, a checkpoint per epoch), epochs 1 and 2 in one job, 4
    evaluations a step: 26 replayed steps, 2 x (13 x 4 + 1) = 106 evaluations of the 1347
    training digits, and eta a at steps 0, 5, 10 of each epoch (6 HVPs and gradients over the
    curvature's 100 samples, 2 probes a sweep), speedup 2."""
    config = small_config()
    config["barriers"] = {
        "runs": ["m"],
        "table_epochs": [1, 2],
        "panel_epochs": [1],
        "every_epoch_to": None,
        "early_epochs": 1,
        "points": 4,
        "alignment_every": 5,
    }
    config = validate_config(config)
    facts = {n: dataset_facts(n, s) for n, s in config["datasets"].items()}
    runs = estimate.run_costs(config, facts, {"m": FIG}, Assumptions(speedup=2.0))
    (row,) = estimate_lines.interpolation_rows(config, {"barriers"}, runs)
    (job,) = row.jobs
    assert (row.stage, row.setting, job.count) == ("iterate_interpolation", "m", 1)
    steps = 26 * (100 * 1e-3 + 0.01) / 2
    evaluations = 106 * 1347 * 1e-4 / 2
    hvp = 100 * (2e-3 + 1e-3) / 2  # one sweep: its shared passes and one probe
    assert job.seconds == pytest.approx(steps + evaluations + 6 * (hvp + 100 * 1e-3 / 2))
    assert job.disk_mb == pytest.approx(2 * 13 * (4 + 1 + 16) * 8 / 1e6)
    config["barriers"]["epochs_per_job"] = 1  # two alike jobs of one epoch, counted together
    (row,) = estimate_lines.interpolation_rows(config, {"barriers"}, runs)
    assert [(job.label, job.count) for job in row.jobs] == [("1 epoch(s)", 2)]
    assert estimate_lines.interpolation_rows(config, set(), runs) == []
