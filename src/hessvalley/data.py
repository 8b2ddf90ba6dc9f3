"""Datasets: built once into ``resources/data/<name>.zarr``, loaded whole onto the device.

Sources: Gaussian clusters (Sagun et al. 2017 §3.1), scikit-learn's handwritten digits (ships
with the install: the embedded default's stand-in for MNIST/CIFAR), torchvision MNIST /
CIFAR-10 / CIFAR-100 and any ImageFolder. Options: subsets, grey + resize (W&S A.4 uses 7x7
grey CIFAR-10), per-channel standardisation, and the randomized-label split of W&S A.2.2.
Torch is imported only where a tensor is made (loading onto a device, resizing) and
torchvision only where a torchvision dataset is read: building a dataset store is a job of
about a second, not the 2.5 s torch's import alone takes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hessvalley import store
from hessvalley.errors import HessvalleyError

if TYPE_CHECKING:
    import torch

SPLIT_A, SPLIT_B = 0, 1
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL "L"


@dataclass
class RawData:
    """Images in [0, 1] as (N, C, H, W) float32 (or features as (N, D)), int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    classes: list[str]
    train_index: np.ndarray  # position of each training sample in the source's training set
    val_index: np.ndarray


def cluster_means(spec: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The k cluster centres in d dims. ``generator: normal`` (the default): N(0, I).
    ``generator: box``: uniform in the box ``center_box`` = [low, high] in every coordinate,
    as the authors' code (scikit-learn's ``make_blobs``, whose default box is [-10, 10])."""
    k, d = spec["n_classes"], spec["dim"]
    generator = spec.get("generator", "normal")
    if generator == "normal":
        return rng.standard_normal((k, d))
    if generator == "box":
        low, high = spec.get("center_box", (-10.0, 10.0))
        if not low < high:
            raise HessvalleyError(f"gaussian_clusters: center_box [{low}, {high}] is empty")
        return rng.uniform(low, high, size=(k, d))
    raise HessvalleyError(f"gaussian_clusters: unknown generator {generator!r} (normal, box)")


def gaussian_clusters(spec: Mapping[str, Any]) -> RawData:
    """k clusters in d dims: centres from ``cluster_means``, samples ~ N(centre, cov_scale *
    I) (standard deviation sqrt(cov_scale) in every coordinate), balanced."""
    rng = np.random.default_rng(spec["seed"])
    k, d = spec["n_classes"], spec["dim"]
    n_train = spec["n_train"]
    n_val = spec["n_val"] if spec["n_val"] is not None else n_train
    means = cluster_means(spec, rng)
    scale = np.sqrt(spec["cov_scale"])

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % k)
        x = means[labels] + scale * rng.standard_normal((n, d))
        return x.astype(np.float32), labels.astype(np.int64)

    x_train, y_train = sample(n_train)
    x_val, y_val = sample(n_val)
    return RawData(
        x_train,
        y_train,
        x_val,
        y_val,
        k,
        [f"cluster{i}" for i in range(k)],
        np.arange(n_train),
        np.arange(n_val),
    )


def _split_off(n: int, fraction: float, labels: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified train/val split of indices 0..n-1."""
    from sklearn.model_selection import train_test_split

    return tuple(
        np.sort(i)
        for i in train_test_split(
            np.arange(n), test_size=fraction, stratify=labels, random_state=seed
        )
    )


def digits(spec: Mapping[str, Any]) -> RawData:
    """scikit-learn's 1797 8x8 handwritten digits (grey levels 0..16 scaled to [0, 1])."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    train, val = _split_off(len(labels), spec["val_fraction"], labels, spec["subset_seed"])
    return RawData(
        images[train],
        labels[train],
        images[val],
        labels[val],
        10,
        [str(i) for i in range(10)],
        train,
        val,
    )


def _torchvision_arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(dataset.data)
    # MNIST is (N, H, W), CIFAR (N, H, W, C); both become (N, C, H, W).
    data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
    return (data.astype(np.float32) / 255.0), np.asarray(dataset.targets, dtype=np.int64)


def torchvision_source(spec: Mapping[str, Any]) -> RawData:
    """MNIST / CIFAR-10 / CIFAR-100 via torchvision: from data_root, downloading if allowed."""
    import torchvision

    classes = {
        "mnist": torchvision.datasets.MNIST,
        "cifar10": torchvision.datasets.CIFAR10,
        "cifar100": torchvision.datasets.CIFAR100,
    }
    source = spec["source"]
    root = spec["data_root"] or os.path.join("resources", "torchvision")
    try:
        train = classes[source](root, train=True, download=spec["download"])
        val = classes[source](root, train=False, download=spec["download"])
    except (RuntimeError, OSError) as err:
        hint = (
            "set download: true on a networked machine"
            if not spec["download"]
            else "the download failed: is this machine offline? copy the files into data_root"
        )
        raise HessvalleyError(
            f"dataset source {source}: cannot read it from data_root {root!r} ({err}); {hint}"
        ) from err
    x_train, y_train = _torchvision_arrays(train)
    x_val, y_val = _torchvision_arrays(val)
    return RawData(
        x_train,
        y_train,
        x_val,
        y_val,
        len(train.classes),
        list(train.classes),
        np.arange(len(y_train)),
        np.arange(len(y_val)),
    )


def _image_folder_arrays(root: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import torchvision

    folder = torchvision.datasets.ImageFolder(root)
    images, labels = [], []
    for path, label in folder.samples:
        image = np.asarray(folder.loader(path).convert("RGB"), dtype=np.float32) / 255.0
        images.append(image.transpose(2, 0, 1))
        labels.append(label)
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise HessvalleyError(
            f"imagefolder {root}: images differ in size {sorted(shapes)[:3]}...; set resize"
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64), list(folder.classes)


def image_folder(spec: Mapping[str, Any]) -> RawData:
    """Any torchvision ImageFolder (class sub-folders of images, all of one size)."""
    x, y, classes = _image_folder_arrays(spec["root"])
    if spec["val_root"] is not None:
        x_val, y_val, val_classes = _image_folder_arrays(spec["val_root"])
        if val_classes != classes:
            raise HessvalleyError(
                f"imagefolder: classes of val_root {val_classes} differ from root's {classes}"
            )
        train, val = np.arange(len(y)), np.arange(len(y_val))
        return RawData(x, y, x_val, y_val, len(classes), classes, train, val)
    train, val = _split_off(len(y), spec["val_fraction"], y, spec["subset_seed"])
    return RawData(x[train], y[train], x[val], y[val], len(classes), classes, train, val)


SOURCES = {
    "gaussian_clusters": gaussian_clusters,
    "digits": digits,
    "mnist": torchvision_source,
    "cifar10": torchvision_source,
    "cifar100": torchvision_source,
    "imagefolder": image_folder,
}


def _grey(x: np.ndarray) -> np.ndarray:
    if x.shape[1] == 1:
        return x
    return np.einsum("nchw,c->nhw", x, GREY_WEIGHTS)[:, None].astype(np.float32)


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(x)
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)
    return out.numpy().astype(np.float32)


def _subset(n: int, keep: int | None, seed: int) -> np.ndarray:
    if keep is None or keep >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=keep, replace=False))


def prepare(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Raw source -> subsets, grey/resize, standardisation, randomized-label split."""
    raw = SOURCES[spec["source"]](spec)
    x_train, y_train, x_val, y_val = raw.x_train, raw.y_train, raw.x_val, raw.y_val
    train_index, val_index = raw.train_index, raw.val_index
    if spec["source"] != "gaussian_clusters":
        keep = _subset(len(y_train), spec["n_train"], spec["subset_seed"])
        x_train, y_train, train_index = x_train[keep], y_train[keep], train_index[keep]
        keep = _subset(len(y_val), spec["n_val"], spec["subset_seed"] + 1)
        x_val, y_val, val_index = x_val[keep], y_val[keep], val_index[keep]
    if x_train.ndim == 4:
        if spec["grey"]:
            x_train, x_val = _grey(x_train), _grey(x_val)
        if spec["resize"] is not None:
            x_train, x_val = _resize(x_train, spec["resize"]), _resize(x_val, spec["resize"])
    elif spec["grey"] or spec["resize"] is not None:
        raise HessvalleyError(f"grey/resize need images; source {spec['source']} has features")

    mean = std = None
    if spec["normalize"]:
        # Images: per channel. Feature vectors (clusters): one global mean and std, as Sagun
        # et al. ("normalized the data globally").
        axes = (0, 2, 3) if x_train.ndim == 4 else None
        mean = x_train.mean(axis=axes, keepdims=axes is not None, dtype=np.float64)
        std = x_train.std(axis=axes, keepdims=axes is not None, dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        x_train = ((x_train - mean) / std).astype(np.float32)
        x_val = ((x_val - mean) / std).astype(np.float32)

    split = np.full(len(y_train), SPLIT_A, dtype=np.int8)
    y_original = y_train.copy()
    randomized = spec["randomized_labels"]
    if randomized is not None:
        rng = np.random.default_rng(randomized["seed"])
        if randomized["split_a"] >= len(y_train):
            raise HessvalleyError(
                f"randomized_labels.split_a {randomized['split_a']} >= {len(y_train)} samples"
            )
        in_b = rng.permutation(len(y_train))[randomized["split_a"] :]
        split[in_b] = SPLIT_B
        y_train = y_train.copy()
        y_train[in_b] = y_train[rng.permutation(in_b)]  # labels of B shuffled among B

    return {
        "x_train": x_train,
        "y_train": y_train,
        "y_train_original": y_original,
        "split": split,
        "train_index": train_index,
        "x_val": x_val,
        "y_val": y_val,
        "val_index": val_index,
        "n_classes": raw.n_classes,
        "classes": raw.classes,
        "mean": None if mean is None else np.asarray(mean).ravel().tolist(),
        "std": None if std is None else np.asarray(std).ravel().tolist(),
    }


def build_dataset_store(spec: Mapping[str, Any], name: str, output: str) -> None:
    """Build dataset ``name`` from its config and write it to ``output`` (a Zarr store)."""
    data = prepare(spec)
    x_dims = ("sample", "channel", "height", "width") if data["x_train"].ndim == 4 else None
    x_dims = x_dims or ("sample", "feature")
    arrays = {
        "x_train": (x_dims, data["x_train"]),
        "y_train": (("sample",), data["y_train"]),
        "y_train_original": (("sample",), data["y_train_original"]),
        "split": (("sample",), data["split"]),
        "train_index": (("sample",), data["train_index"]),
        "x_val": (("val_sample", *x_dims[1:]), data["x_val"]),
        "y_val": (("val_sample",), data["y_val"]),
        "val_index": (("val_sample",), data["val_index"]),
    }
    attrs = {
        **store.provenance(spec, seed=spec.get("seed")),
        "name": name,
        "source": spec["source"],
        "n_classes": data["n_classes"],
        "classes": data["classes"],
        "input_shape": list(data["x_train"].shape[1:]),
        "n_train": len(data["y_train"]),
        "n_val": len(data["y_val"]),
        "n_split_a": int((data["split"] == SPLIT_A).sum()),
        "normalization": {"mean": data["mean"], "std": data["std"]},
        "split_codes": {"A": SPLIT_A, "B": SPLIT_B},
    }
    store.write_store(output, arrays, attrs)
    print(
        f"dataset {name}: {attrs['n_train']} train / {attrs['n_val']} val samples of shape "
        f"{attrs['input_shape']}, {attrs['n_classes']} classes -> {output}"
    )


@dataclass
class DeviceDataset:
    """A dataset resident on the compute device; mini-batches are index slices."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]
    path: str

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])


def load_dataset(
    path: str | os.PathLike, device: str | torch.device = "cpu", train_on: str = "all"
) -> DeviceDataset:
    """Load a dataset store onto ``device``; ``train_on="A"`` keeps split A's samples only."""
    import torch

    from hessvalley.device import resolve_device

    group = store.open_store(path)
    device = resolve_device(device)
    x_train = np.asarray(group["x_train"][...])
    y_train = np.asarray(group["y_train"][...])
    if train_on == "A":
        keep = np.asarray(group["split"][...]) == SPLIT_A
        x_train, y_train = x_train[keep], y_train[keep]
    elif train_on != "all":
        raise ValueError(f"train_on must be 'all' or 'A', got {train_on!r}")
    return DeviceDataset(
        torch.from_numpy(x_train).to(device),
        torch.from_numpy(y_train).to(device),
        torch.from_numpy(np.asarray(group["x_val"][...])).to(device),
        torch.from_numpy(np.asarray(group["y_val"][...])).to(device),
        int(group.attrs["n_classes"]),
        tuple(group.attrs["input_shape"]),
        str(Path(path)),
    )
