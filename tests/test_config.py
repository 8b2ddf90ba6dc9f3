"""Config validation: malformed configs fail before any job, naming the key."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from hessvalley.config import (
    NAME_PATTERN,
    NAME_RULE,
    ConfigError,
    sections_given,
    validate_config,
)
from hessvalley.resources import job_resource

from .snakemake_runner import REPO, snakemake

TINY = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
NAN, INF = float("nan"), float("inf")


def with_change(path: str, value, base=None) -> dict:
    """Copy of the tiny config with the dotted key set (or removed when value is ...)."""
    config = copy.deepcopy(base or TINY)
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    if value is ...:
        node.pop(last)
    else:
        node[last] = value
    return config


MALFORMED = [
    ("runs.tiny_mlp.optimizer.lr", -0.1, "runs.tiny_mlp.optimizer.lr: -0.1 is less than or equal"),
    ("runs.tiny_mlp.optimizer.lr", "fast", "runs.tiny_mlp.optimizer.lr: 'fast' is not of type"),
    ("runs.tiny_mlp.epochs", 2.5, "runs.tiny_mlp.epochs: 2.5 is not of type 'integer'"),
    ("runs.tiny_mlp.epochs", ..., "runs.tiny_mlp: 'epochs' is a required property"),
    (
        "runs.tiny_mlp.model.name",
        "resnet9000",
        "runs.tiny_mlp.model.name: 'resnet9000' is not one of",
    ),
    (
        "runs.tiny_mlp.model.depth",
        3,
        "runs.tiny_mlp.model: Additional properties are not allowed ('depth'",
    ),
    (
        "runs.tiny_mlp.model.blocks",
        [1, 2],
        "runs.tiny_mlp.model: blocks not accepted by model 'mlp'",
    ),
    ("runs.tiny_mlp.dataset", "imagenet", "runs.tiny_mlp.dataset: unknown dataset 'imagenet'"),
    (
        "runs.tiny_mlp.optimizer.batch_size",
        512,
        "runs.tiny_mlp.optimizer.batch_size: 512 is larger than the 256 training samples",
    ),
    (
        "runs.tiny_mlp.optimizer.batch_size",
        "half",
        "runs.tiny_mlp.optimizer.batch_size: 'half' is not valid",
    ),
    (
        "runs.tiny_mlp.optimizer.momentum",
        1.0,
        "runs.tiny_mlp.optimizer.momentum: 1.0 is greater than or equal to the maximum of 1",
    ),
    ("runs.tiny_mlp.loss.name", "hinge", "runs.tiny_mlp.loss.name: 'hinge' is not one of"),
    ("runs.tiny_mlp.seeds", [], "runs.tiny_mlp.seeds: [] should be non-empty"),
    ("runs.tiny_mlp.seeds", [1, 1], "runs.tiny_mlp.seeds: [1, 1] has non-unique elements"),
    ("runs.tiny_mlp.init_from", "nope", "runs.tiny_mlp.init_from: unknown run 'nope'"),
    ("runs.tiny_mlp.init_from", "tiny_mlp", "runs.tiny_mlp.init_from: cycle tiny_mlp -> tiny_mlp"),
    (
        "runs.tiny_mlp.train_on",
        "A",
        "runs.tiny_mlp.train_on: 'A' needs datasets.digits.randomized_labels",
    ),
    (
        "runs.tiny_mlp.checkpoint_every",
        10_000,
        "runs.tiny_mlp.checkpoint_every: 10000 steps exceeds the run's 24 steps",
    ),
    ("datasets.digits.source", "svhn", "datasets.digits.source: 'svhn' is not one of"),
    (
        "datasets.cifar",
        {"source": "cifar10"},
        "datasets.cifar.data_root: required for source cifar10 when download is false",
    ),
    (
        "datasets.cifar",
        {"source": "cifar10", "data_root": "/no/such/dir"},
        "datasets.cifar.data_root: directory '/no/such/dir' does not exist",
    ),
    (
        "datasets.folder",
        {"source": "imagefolder"},
        "datasets.folder.root: required for source imagefolder",
    ),
    (
        "datasets.blobs",
        {"source": "gaussian_clusters", "dim": 10, "n_train": 100},
        "datasets.blobs.n_classes: required for source gaussian_clusters",
    ),
    (
        "datasets.digits.randomized_labels",
        {"split_a": 256},
        "datasets.digits.randomized_labels.split_a: 256 leaves no samples for split B",
    ),
    (
        "datasets.digits.val_fraction",
        1.5,
        "datasets.digits.val_fraction: 1.5 is greater than or equal to the maximum of 1",
    ),
    (
        "toy.fig7",
        {"steps": 100, "average_from": 100},
        "toy.fig7.average_from: 100 must be below toy.fig7.steps (100)",
    ),
    ("curvature.runs", ["nope"], "curvature.runs: unknown run 'nope'"),
    (
        "curvature",
        {"runs": [], "spectrum": {"runs": ["tiny_mlp"]}},
        "curvature.spectrum.runs: 'tiny_mlp' is not in curvature.runs",
    ),
    ("curvature.trace", {"method": "girard"}, "curvature.trace.method: 'girard' is not one of"),
    ("curvature.every", 0, "curvature.every: 0 is less than the minimum of 1"),
    ("device", "tpu", "device: 'tpu' is not one of ['cpu', 'cuda', 'auto']"),
    ("gpu", -1, "gpu: -1 is less than the minimum of 0"),
    ("threads", "two", "threads: 'two' is not of type 'integer'"),
    (
        "checkpoint_flush_seconds",
        -5,
        "checkpoint_flush_seconds: -5 is less than the minimum of 0",
    ),
    ("unknown_key", 1, "Additional properties are not allowed ('unknown_key' was unexpected)"),
    # every number finite (YAML .nan, .inf, -.inf)
    ("runs.tiny_mlp.optimizer.lr", NAN, "runs.tiny_mlp.optimizer.lr: nan is not a finite number"),
    ("runs.tiny_mlp.optimizer.lr", INF, "runs.tiny_mlp.optimizer.lr: inf is not a finite number"),
    ("toy.fig2b.etas", [0.01, -INF], "toy.fig2b.etas.1: -inf is not a finite number"),
    ("checkpoint_flush_seconds", INF, "checkpoint_flush_seconds: inf is not a finite number"),
    # strings are read as the numbers the schema wants, then checked as numbers
    ("figures.dpi", "10", "figures.dpi: 10 is less than the minimum of 30"),
    ("runs.tiny_mlp.optimizer.lr", ".nan", "runs.tiny_mlp.optimizer.lr: nan is not a finite"),
    # resources: known rules, within the limits
    ("resources.trian", {"runtime": 5}, "resources.trian: no rule of that name (rules: alignment,"),
    (
        "resources.train",
        {"mem_mb": 20000},
        "resources.train.mem_mb: 20000 is above resources.limits.mem_mb (16000)",
    ),
    (
        "resources.default",
        {"runtime": 2000},
        "resources.default.runtime: 2000 is above resources.limits.runtime (1440)",
    ),
    ("resources.train", {"runtime": 0}, "resources.train.runtime: 0 is less than the minimum of 1"),
]


@pytest.mark.parametrize(
    ("key", "value", "message"), MALFORMED, ids=[m[0] + ":" + repr(m[1])[:20] for m in MALFORMED]
)
def test_malformed_config_names_the_key(key, value, message):
    with pytest.raises(ConfigError) as info:
        validate_config(with_change(key, value))
    assert message in str(info.value)


def test_valid_config_gets_defaults():
    config = validate_config(TINY)
    run = config["runs"]["tiny_mlp"]
    assert run["optimizer"]["dampening"] == 0.0 and run["optimizer"]["weight_decay"] == 0.0
    assert run["checkpoint_every"] is None and run["train_on"] == "all"
    assert config["datasets"]["digits"]["normalize"] is True
    assert config["checkpoint_flush_seconds"] == 30
    assert TINY["runs"]["tiny_mlp"].get("train_on") is None, "the input must not be mutated"


def test_all_problems_reported_at_once():
    config = with_change("runs.tiny_mlp.optimizer.lr", -1.0)
    config = with_change("runs.tiny_mlp.epochs", 0, config)
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    text = str(info.value)
    assert "2 problem(s)" in text and "optimizer.lr" in text and "epochs" in text


def test_shipped_configs_are_valid():
    for name in ("config/config.yaml", "tests/configs/tiny.yaml", "config/paper.yaml"):
        validate_config(yaml.safe_load((REPO / name).read_text()))


# -- user-chosen names: one pattern, checked where each is defined and where it is referenced --

HOSTILE_NAMES = ["$(touch X)", "`touch X`", "d;touch X", "my run", "a{b}", "", "../../x"]


def named(slot: str, name: str, base: dict | None = None) -> tuple[dict, str]:
    """Copy of the tiny config with `name` in one slot, and the message that must refuse it."""
    config = copy.deepcopy(base or TINY)
    run = config["runs"]["tiny_mlp"]
    invalid = f"{name!r} is not a valid name: {NAME_RULE}"
    if slot == "runs":
        config["runs"][name] = copy.deepcopy(run)
        return config, f"runs.{name!r}: {NAME_RULE}"
    if slot == "datasets":
        config["datasets"][name] = copy.deepcopy(config["datasets"]["digits"])
        return config, f"datasets.{name!r}: {NAME_RULE}"
    if slot == "projection.runs":
        config.setdefault("projection", {}).setdefault("runs", {})[name] = None
        return config, f"projection.runs.{name!r}: {NAME_RULE}"
    if slot in ("dataset", "init_from"):
        referrer = f"{slot}_{HOSTILE_NAMES.index(name)}"  # one run per name
        config["runs"][referrer] = {**copy.deepcopy(run), slot: name}
        return config, f"runs.{referrer}.{slot}: {invalid}"
    *parents, last = slot.split(".")  # a list of run names
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = [*(node.get(last) or []), name]
    return config, f"{slot}.{len(node[last]) - 1}: {invalid}"


NAME_SLOTS = [
    "runs",
    "datasets",
    "projection.runs",
    "dataset",
    "init_from",
    "curvature.runs",
    "curvature.spectrum.runs",
    "projection.figures.fig1",
]


@pytest.mark.parametrize("slot", NAME_SLOTS)
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_naming_the_key(slot, name):
    config, message = named(slot, name)
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert message in str(info.value)


def test_every_name_slot_of_the_schema_uses_the_one_pattern():
    """NAME_PATTERN is the only pattern on names: the schema's copies are the same string."""
    schema_text = (REPO / "workflow/schemas/config.schema.yaml").read_text()
    patterns = set(re.findall(r'pattern: "(.*?)"', schema_text))
    assert patterns == {NAME_PATTERN.replace("\\", "\\\\")}


@pytest.mark.workflow
def test_hostile_names_execute_nothing(tmp_path):
    """Every hostile name in every slot at once: Snakemake refuses the config naming each key,
    in a dry run and in a real run, and no command of any name runs."""
    config, messages = copy.deepcopy(TINY), []
    for name in HOSTILE_NAMES:
        for slot in NAME_SLOTS:
            config, message = named(slot, name, config)
            messages.append(message)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    for args in (["-n"], []):
        result = snakemake(
            workdir, *args, configfile=workdir / "config.yaml", cores=1, check=False, cwd=workdir
        )
        assert result.returncode != 0
        missing = [m for m in messages if m not in result.output]
        assert not missing, f"{missing[:3]} not in:\n{result.output[-3000:]}"
        created = [p for p in tmp_path.rglob("*") if p.name in ("X", "x", "x.zarr")]
        assert not created and not (workdir / "results").exists(), created


# -- nested --config overrides arrive as strings ---------------------------------------------


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("figures.dpi", "80", 80),
        ("runs.tiny_mlp.optimizer.lr", "0.05", 0.05),
        ("runs.tiny_mlp.optimizer.batch_size", "32", 32),
        ("runs.tiny_mlp.seeds", ["0", "3"], [0, 3]),
        ("toy.fig2b.stationary_start", "false", False),
        ("toy.fig7.noise_strength", "0.5", 0.5),
        ("projection.max_depth", "null", None),
        ("datasets.digits.n_train", "100", 100),
        ("datasets.digits.randomized_labels", {"split_a": "100"}, {"split_a": 100, "seed": 0}),
        (
            "toy.fig7.noise_strength",
            {"batch_size": "8", "n_samples": "64"},
            {"batch_size": 8, "n_samples": 64},
        ),
    ],
)
def test_strings_are_read_as_the_numbers_the_schema_wants(key, text, value):
    config = validate_config(with_change(key, text))
    node = config
    for part in key.split("."):
        node = node[part]
    assert node == value and type(node) is type(value)
    if isinstance(node, dict):
        assert all(type(node[k]) is type(value[k]) for k in value)


@pytest.mark.workflow
def test_nested_config_override_reaches_the_job_as_a_number(tmp_path):
    """`--config 'figures={dpi: 80}'` (Snakemake passes 80 as a string) gives the figure job
    the integer 80."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(TINY))
    output = snakemake(
        tmp_path,
        "results/figures/tiny_mlp_training.pdf",
        "-n",
        "-p",
        "--config",
        "figures={dpi: 80, band: sem}",
        configfile=config,
    ).output
    [kwargs] = re.findall(r"hessvalley run training_figure --kwargs '(.*?)'", output)
    assert json.loads(kwargs)["figures"] == {"band": "sem", "dpi": 80, "training_log_scale": True}


# -- optional sections and resources ---------------------------------------------------------


def test_sections_given_are_those_the_config_states():
    assert sections_given(TINY) == {"toy.fig2b", "toy.fig2cd", "toy.fig7", "curvature"}
    assert sections_given({"toy": {"fig7": {}}, "projection": {}}) == {"toy.fig7", "projection"}
    assert sections_given({}) == set()
    assert validate_config({})["toy"]["fig7"]["eta"] == 0.01, "absent sections keep defaults"


def test_requests_grow_with_the_attempt_up_to_the_limits():
    config = validate_config(
        with_change(
            "resources",
            {
                "default": {"runtime": 10, "mem_mb": 1000},
                "train": {"mem_mb": 3000},
                "limits": {"runtime": 25, "mem_mb": 8000},
            },
        )
    )
    runtime = [job_resource(config, "train", "runtime", attempt) for attempt in (1, 2, 3)]
    memory = [job_resource(config, "train", "mem_mb", attempt) for attempt in (1, 2, 3)]
    assert runtime == [10, 20, 25] and memory == [3000, 6000, 8000]
    assert job_resource(config, "dataset", "mem_mb", 2) == 2000


@pytest.mark.workflow
def test_snakemake_refuses_bad_config_before_any_job(tmp_path):
    bad = with_change("runs.tiny_mlp.optimizer.batch_size", 512)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = snakemake(tmp_path, configfile=tmp_path / "bad.yaml", cores=1, check=False)
    assert result.returncode != 0
    assert "runs.tiny_mlp.optimizer.batch_size: 512 is larger than the 256" in result.output
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def dry_run_jobs(workdir: Path, *args: str) -> str:
    return snakemake(workdir, "-n", *args).output


def test_configfile_replaces_the_embedded_default(tmp_path):
    """With config/config.yaml present (a run from the repository root), --configfile must
    not merge into it: the default's runs would otherwise join the given config's."""
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config/config.yaml", tmp_path / "config/config.yaml")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    given = dry_run_jobs(tmp_path, "--configfile", str(tmp_path / "tiny.yaml"))
    assert "results/tiny_mlp/seed1/trajectory.zarr" in given and "digits_mlp" not in given
    embedded = dry_run_jobs(tmp_path, "--config", "threads=1")
    assert "results/digits_mlp/seed0/trajectory.zarr" in embedded and "tiny_mlp" not in embedded


@pytest.mark.workflow
def test_config_values_reach_the_job_quoted(tmp_path):
    """A path with shell syntax in it (valid: paths are the user's) reaches the job as one
    argument: the job runs, reads that directory, finds no MNIST there and says so; no command
    hidden in the path runs."""
    data_root = tmp_path / "d $(touch X);`touch Y` 'q'"
    data_root.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = {"datasets": {"mnist": {"source": "mnist", "data_root": str(data_root)}}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(
        workdir,
        "resources/data/mnist.zarr",
        configfile=workdir / "config.yaml",
        cores=1,
        check=False,
        cwd=workdir,
    )
    assert result.returncode != 0
    assert "hessvalley dataset: " in result.output and str(data_root) in result.output
    assert "exit status 3" in result.output, result.output[-3000:]
    created = [p.name for p in tmp_path.rglob("*") if p.name in ("X", "Y")]
    assert not created and (workdir / "logs/data/mnist.log").exists()
