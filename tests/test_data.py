"""Datasets: contents, determinism, splits, image transforms and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from PIL import Image

from hessvalley.config import validate_config
from hessvalley.data import SPLIT_A, SPLIT_B, build_dataset_store, load_dataset, prepare
from hessvalley.errors import HessvalleyError
from hessvalley.schedule import train_size


def dataset_spec(**spec) -> dict:
    return validate_config({"datasets": {"d": spec}})["datasets"]["d"]


def test_digits_store_is_self_describing(digits_store):
    ds = xr.open_zarr(digits_store)
    assert ds.x_train.dims == ("sample", "channel", "height", "width")
    assert ds.x_train.shape == (256, 1, 8, 8) and ds.x_val.shape == (128, 1, 8, 8)
    assert ds.attrs["n_classes"] == 10 and ds.attrs["input_shape"] == [1, 8, 8]
    assert ds.attrs["config"]["source"] == "digits" and "code_version" in ds.attrs
    x = ds.x_train.values
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4  # standardised on train
    assert set(np.unique(ds.y_train.values)) == set(range(10))


def test_train_size_prediction_matches_built_digits():
    spec = dataset_spec(source="digits")
    data = prepare(spec)
    assert len(data["y_train"]) == train_size(spec) == 1347
    assert len(data["y_val"]) == 450
    assert not set(data["train_index"]) & set(data["val_index"])


def test_gaussian_clusters_seeded_balanced_and_scaled():
    spec = dataset_spec(
        source="gaussian_clusters", n_classes=4, dim=20, n_train=400, cov_scale=2.0, normalize=False
    )
    a, b = prepare(spec), prepare(spec)
    np.testing.assert_array_equal(a["x_train"], b["x_train"])
    assert np.bincount(a["y_train"]).tolist() == [100] * 4
    assert a["x_val"].shape == (400, 20)  # n_val defaults to n_train
    clusters = [a["x_train"][a["y_train"] == c] for c in range(4)]
    within = np.concatenate([x - x.mean(0) for x in clusters])
    assert within.var() == pytest.approx(2.0, rel=0.05)
    other = prepare({**spec, "seed": 1})
    assert not np.array_equal(other["x_train"], a["x_train"])
    normed = prepare({**spec, "normalize": True})["x_train"]
    assert normed.mean() == pytest.approx(0, abs=1e-5) and normed.std() == pytest.approx(
        1, abs=1e-4
    )


def test_randomized_label_split(tmp_path):
    spec = dataset_spec(source="digits", randomized_labels={"split_a": 1000, "seed": 3})
    path = tmp_path / "rand.zarr"
    build_dataset_store(spec, "rand", str(path))
    group = zarr.open_group(path, mode="r")
    split = group["split"][...]
    y, original = group["y_train"][...], group["y_train_original"][...]
    a, b = split == SPLIT_A, split == SPLIT_B
    assert a.sum() == 1000 and b.sum() == 347 and group.attrs["n_split_a"] == 1000
    np.testing.assert_array_equal(y[a], original[a])
    assert sorted(y[b]) == sorted(original[b])  # B's labels permuted among B
    assert (y[b] != original[b]).mean() > 0.8
    only_a = load_dataset(path, "cpu", train_on="A")
    assert only_a.n_train == 1000
    np.testing.assert_array_equal(only_a.y_train.numpy(), original[a])


def _write_image_folder(root, n_per_class=6, size=16):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")


def test_image_folder_grey_and_resize(tmp_path):
    _write_image_folder(tmp_path / "train")
    spec = dataset_spec(
        source="imagefolder",
        root=str(tmp_path / "train"),
        val_fraction=0.5,
        normalize=False,
        grey=True,
    )
    data = prepare(spec)
    assert data["classes"] == ["cat", "dog"] and data["x_train"].shape == (6, 1, 16, 16)
    # Grey conversion agrees with PIL's "L" mode (ITU-R 601 luma) to rounding.
    index = int(data["train_index"][0])
    label = data["classes"][data["y_train"][0]]
    file = sorted((tmp_path / "train" / label).iterdir())[index % 6]
    pil = np.asarray(Image.open(file).convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(data["x_train"][0, 0], pil, atol=1.01 / 255)
    small = prepare({**spec, "resize": 7})
    assert small["x_train"].shape == (6, 1, 7, 7)
    assert small["x_train"].mean() == pytest.approx(data["x_train"].mean(), abs=0.02)


def test_offline_torchvision_source_fails_clearly(tmp_path):
    spec = dataset_spec(source="mnist", data_root=str(tmp_path))
    with pytest.raises(
        HessvalleyError, match=r"dataset source mnist: cannot read it from data_root"
    ):
        prepare(spec)


def test_load_dataset_rejects_unknown_subset(digits_store):
    with pytest.raises(ValueError, match="train_on must be 'all' or 'A'"):
        load_dataset(digits_store, "cpu", train_on="B")
