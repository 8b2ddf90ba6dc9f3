"""Config validation: malformed configs fail before any job, naming the key."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hessvalley.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())


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
    for name in ("config/config.yaml", "tests/configs/tiny.yaml"):
        validate_config(yaml.safe_load((REPO / name).read_text()))


@pytest.mark.workflow
def test_snakemake_refuses_bad_config_before_any_job(tmp_path):
    bad = with_change("runs.tiny_mlp.optimizer.batch_size", 512)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "bad.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "runs.tiny_mlp.optimizer.batch_size: 512 is larger than the 256" in result.stderr
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def dry_run_jobs(workdir: Path, *args: str) -> str:
    command = [sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"),
               "--directory", str(workdir), *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


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
