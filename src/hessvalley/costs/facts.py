"""What a dataset will hold, known without building it (torch-free): input shape, classes,
training and validation sizes.

Every source but an ImageFolder fixes these in the config (torchvision sources have known
shapes and sizes); an ImageFolder is read from its folders (class sub-folders, one image's
size), or from its store when one was built already. What stays unknown is reported as
such, never guessed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hessvalley.schedule import (
    DIGITS_SIZE,
    TORCHVISION_VAL_SIZES,
    train_size,
)

SOURCE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
SOURCE_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100, "digits": 10}
DIGITS_SHAPE = (1, 8, 8)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
DATA_DIR = "resources/data"


@dataclass(frozen=True)
class DatasetFacts:
    """Shape of one sample (C, H, W) or (D,), class count and split sizes; None = unknown,
    with the reasons in ``unknown``."""

    name: str
    input_shape: tuple[int, ...] | None
    n_classes: int | None
    n_train: int | None
    n_val: int | None
    unknown: list[str] = field(default_factory=list)
    origin: str = "config"

    @property
    def sample_bytes(self) -> int | None:
        """float32 bytes of one input sample."""
        return None if self.input_shape is None else 4 * math.prod(self.input_shape)

    def store_bytes(self) -> int | None:
        """Inputs (float32) and labels (int64, plus split and index arrays) of both splits."""
        if self.sample_bytes is None or self.n_train is None or self.n_val is None:
            return None
        return (self.n_train + self.n_val) * (self.sample_bytes + 8 * 3)


def _transformed(shape: tuple[int, ...], spec: Mapping[str, Any]) -> tuple[int, ...]:
    if len(shape) != 3:
        return shape
    channels = 1 if spec.get("grey") else shape[0]
    size = spec.get("resize")
    return (channels, size, size) if size is not None else (channels, *shape[1:])


def _subset(full: int | None, keep: int | None) -> int | None:
    if full is None:
        return keep
    return full if keep is None else min(full, keep)


def _from_store(name: str, data_dir: str | Path) -> dict[str, Any] | None:
    """Attributes of an existing dataset store (Zarr v3 keeps them in ``zarr.json``)."""
    path = Path(data_dir) / f"{name}.zarr" / "zarr.json"
    if not path.is_file():
        return None
    attrs = json.loads(path.read_text()).get("attributes", {})
    return attrs if "input_shape" in attrs else None


def _image_folder(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """(shape, classes, n_train, n_val, unknown) of an ImageFolder read from its folders."""
    root = Path(spec["root"] or "")
    if not root.is_dir():
        return None, None, None, None, [f"root {spec['root']!r} is not a directory"]
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    images = [f for c in classes for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
    unknown = []
    shape = None
    if spec.get("resize") is not None:
        shape = (1 if spec.get("grey") else 3, spec["resize"], spec["resize"])
    elif images:
        try:
            from PIL import Image

            with Image.open(images[0]) as image:
                width, height = image.size
            shape = _transformed((3, height, width), spec)
            unknown.append(f"image size taken from {images[0].name} (all assumed alike)")
        except (ImportError, OSError) as err:
            unknown.append(f"image size unreadable ({err}); set resize")
    n_train, n_val = len(images), None
    if spec.get("val_root") is not None and Path(spec["val_root"]).is_dir():
        val_root = Path(spec["val_root"])
        n_val = sum(
            f.suffix.lower() in IMAGE_SUFFIXES
            for c in val_root.iterdir()
            if c.is_dir()
            for f in c.iterdir()
        )
    elif spec.get("val_root") is None:
        n_val = math.ceil(n_train * spec["val_fraction"])
        n_train -= n_val
    return shape, len(classes) or None, n_train, n_val, unknown


def dataset_facts(
    name: str, spec: Mapping[str, Any], data_dir: str | Path = DATA_DIR
) -> DatasetFacts:
    """Facts of dataset ``name`` (a validated ``datasets`` entry)."""
    source = spec["source"]
    unknown: list[str] = []
    if source == "gaussian_clusters":
        n_val = spec["n_val"] if spec["n_val"] is not None else spec["n_train"]
        return DatasetFacts(name, (spec["dim"],), spec["n_classes"], spec["n_train"], n_val)
    if source == "digits":
        shape, classes = _transformed(DIGITS_SHAPE, spec), 10
        n_val = _subset(math.ceil(DIGITS_SIZE * spec["val_fraction"]), spec["n_val"])
        return DatasetFacts(name, shape, classes, train_size(spec), n_val)
    if source in SOURCE_SHAPES:
        shape = _transformed(SOURCE_SHAPES[source], spec)
        n_val = _subset(TORCHVISION_VAL_SIZES[source], spec["n_val"])
        return DatasetFacts(name, shape, SOURCE_CLASSES[source], train_size(spec), n_val)
    attrs = _from_store(name, data_dir)
    if attrs is not None:
        return DatasetFacts(
            name,
            tuple(attrs["input_shape"]),
            int(attrs["n_classes"]),
            int(attrs["n_train"]),
            int(attrs["n_val"]),
            [f"read from its store in {data_dir} (may predate a config change)"],
            "store",
        )
    shape, classes, n_train, n_val, unknown = _image_folder(spec)
    n_train = _subset(n_train, spec.get("n_train"))
    n_val = _subset(n_val, spec.get("n_val"))
    for what, value in (("input shape", shape), ("class count", classes), ("n_val", n_val)):
        if value is None:
            unknown.append(f"{what} unknown before the dataset is built")
    return DatasetFacts(name, shape, classes, n_train, n_val, unknown, "folders")


def run_sizes(
    config: Mapping[str, Any], setting: str, facts: DatasetFacts
) -> tuple[int | None, int | None]:
    """(training samples the run sees, validation samples it evaluates)."""
    run = config["runs"][setting]
    if run["train_on"] == "A":
        split = config["datasets"][run["dataset"]]["randomized_labels"]
        return (None if split is None else split["split_a"]), facts.n_val
    return facts.n_train, facts.n_val
