"""Shared fixtures: small dataset stores, validated run specs, one torch thread."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from hessvalley.config import validate_config
from hessvalley.data import build_dataset_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, as the embedded default's jobs: tiny nets run faster on one, and on
    a busy 2-core machine two threads per process mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(runs: dict, datasets: dict | None = None) -> dict:
    """A validated config (defaults filled) with the given runs over a 256-sample digits set."""
    datasets = datasets or {"digits": {"source": "digits", "n_train": 256, "n_val": 128}}
    return validate_config({"datasets": copy.deepcopy(datasets), "runs": copy.deepcopy(runs)})


def run_spec(**overrides) -> dict:
    """A validated run spec: tiny tanh MLP on digits, label-smoothed CE, SGD with momentum."""
    run = {
        "dataset": "digits",
        "model": {"name": "mlp", "widths": [16], "activation": "tanh"},
        "loss": {"name": "ce", "label_smoothing": 0.1},
        "optimizer": {"lr": 0.1, "momentum": 0.9, "batch_size": 32},
        "epochs": 2,
    }
    for key, value in overrides.items():
        run[key] = value
    config = make_config({"r": run})
    spec = config["runs"]["r"]
    spec.pop("seeds")
    return spec


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory) -> str:
    config = make_config({})
    path = tmp_path_factory.mktemp("data") / "digits.zarr"
    build_dataset_store(config["datasets"]["digits"], "digits", str(path))
    return str(path)


@pytest.fixture(scope="session")
def digits_spec() -> dict:
    return make_config({})["datasets"]["digits"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first, for `--dist loadfile` (a file per worker): the SLURM file (long, mostly
    waiting) starts at once, then the files running Snakemake most often; each file's tests
    stay together and in order."""
    slurm: set[Path] = set()
    workflow_tests: dict[Path, int] = {}
    for item in items:
        if item.get_closest_marker("slurm"):
            slurm.add(item.path)
        workflow = item.get_closest_marker("workflow") is not None
        workflow_tests[item.path] = workflow_tests.get(item.path, 0) + workflow
    items.sort(key=lambda item: (item.path not in slurm, -workflow_tests[item.path]))
