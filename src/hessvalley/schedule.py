"""Step, epoch and checkpoint arithmetic shared by config validation, training, projection
and curvature (torch-free, so the workflow can plan every job from the config alone).

Conventions: an epoch is ``steps_per_epoch`` SGD steps (the last incomplete mini-batch is
dropped; full-batch GD is one step per epoch); a checkpoint is taken every
``checkpoint_every`` steps and at the last step; later stages look at every k-th checkpoint
and always at the last one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

TORCHVISION_SOURCES = {"mnist": 60000, "cifar10": 50000, "cifar100": 50000}
TORCHVISION_VAL_SIZES = {"mnist": 10000, "cifar10": 10000, "cifar100": 10000}
DIGITS_SIZE = 1797


def steps_per_epoch(n_train: int, batch_size: int | str) -> int:
    """Mini-batches per epoch: the last incomplete batch is dropped; full batch is one step."""
    if batch_size == "full":
        return 1
    return max(n_train // int(batch_size), 1)


def every_kth(n: int, k: int) -> list[int]:
    """Indices 0, k, 2k, ... below ``n``, and always ``n - 1`` (the last one)."""
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 and k >= 1, got n={n}, k={k}")
    chosen = list(range(0, n, k))
    if chosen[-1] != n - 1:
        chosen.append(n - 1)
    return chosen


def chosen_checkpoints(n: int, every: int | str | Sequence[int]) -> list[int]:
    """The checkpoints (of ``n``) a stage measures: every k-th and the last (an integer),
    only the last (``"last"``), or the listed indices (negative ones count from the end),
    sorted and without repeats."""
    if isinstance(every, str):
        if every != "last":
            raise ValueError(f"every must be an integer, a list or 'last', got {every!r}")
        return [n - 1]
    if isinstance(every, int):
        return every_kth(n, every)
    chosen = set()
    for k in every:
        if not -n <= int(k) < n:
            raise ValueError(f"checkpoint {k} out of range: the trajectory has {n} checkpoints")
        chosen.add(int(k) % n)
    return sorted(chosen)


def checkpoint_steps(total_steps: int, every: int) -> list[int]:
    """Steps at which checkpoints are taken: 0, every, 2*every, ..., and the last step."""
    return every_kth(total_steps + 1, every)


def train_size(dataset: Mapping[str, Any]) -> int | None:
    """Number of training samples the dataset rule will store (None if only known later)."""
    source = dataset["source"]
    if source == "gaussian_clusters":
        full = dataset["n_train"]
    elif source == "digits":
        full = DIGITS_SIZE - math.ceil(DIGITS_SIZE * dataset["val_fraction"])  # as sklearn
    elif source in TORCHVISION_SOURCES:
        full = TORCHVISION_SOURCES[source]
    else:
        full = None
    if dataset.get("n_train") is not None and source != "gaussian_clusters":
        full = dataset["n_train"] if full is None else min(full, dataset["n_train"])
    return full


def run_train_size(config: Mapping[str, Any], run: Mapping[str, Any]) -> int | None:
    """Training samples a run sees (split A only for ``train_on: A``), None if unknown."""
    dataset = config["datasets"][run["dataset"]]
    if run["train_on"] == "A":
        split = dataset["randomized_labels"]
        return None if split is None else split["split_a"]
    return train_size(dataset)


def run_checkpoint_steps(config: Mapping[str, Any], setting: str) -> list[int] | None:
    """Steps of run ``setting``'s checkpoints, or None when the config does not determine
    them (early stop, training-set size unknown before the dataset is built)."""
    run = config["runs"][setting]
    if run.get("stop_below_loss") is not None:
        return None
    size = run_train_size(config, run)
    if size is None:
        return None
    per_epoch = steps_per_epoch(size, run["optimizer"]["batch_size"])
    return checkpoint_steps(run["epochs"] * per_epoch, run.get("checkpoint_every") or per_epoch)
