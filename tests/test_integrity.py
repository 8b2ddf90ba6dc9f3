"""Store integrity: checksums, NaN fill, every chunk written, readers that check completeness and
name damaged stores, and ``hessvalley verify``."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from hessvalley import integrity, store
from hessvalley.errors import StoreError
from hessvalley.figures.training import training_figure
from hessvalley.train import train_run
from hessvalley.trajectory_curvature import trace_along_trajectory
from hessvalley.verify import verify_main

from .conftest import make_config, run_spec

CURVATURE = {key: value for key, value in make_config({})["curvature"].items() if key != "runs"} | {
    "every": 2,
    "trace": {"method": "hutchpp", "matvecs": 12, "seed": 0},
}


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, digits_store, digits_spec, one_thread) -> list[Path]:
    """Two seeds of a tiny run (3 checkpoints each)."""
    root = tmp_path_factory.mktemp("trajectories")
    spec = run_spec(epochs=2)
    paths = []
    for seed in (0, 1):
        path = root / f"seed{seed}.zarr"
        train_run(spec, digits_spec, "r", seed, digits_store, str(path))
        paths.append(path)
    return paths


def copy_store(path: Path, tmp_path: Path, name: str = "copy.zarr") -> Path:
    return Path(shutil.copytree(path, tmp_path / name))


def chunk_files(path: Path, array: str) -> list[Path]:
    return sorted(p for p in (path / array).rglob("*") if p.is_file() and p.name != "zarr.json")


def assert_names_damage(err: StoreError, path: Path, array: str) -> None:
    text = str(err)
    assert "\n" not in text
    assert text.startswith(f"store {path} is damaged: array {array!r}")
    assert f"rm -r {path}" in text and "re-run" in text


def test_arrays_carry_checksums_nan_fill_and_every_chunk(tmp_path):
    """A chunk equal to the fill value is written too, so counting chunks finds deletions."""
    nan = np.full(10, math.nan)
    path = store.write_store(
        tmp_path / "s.zarr",
        {"nan": (("x",), nan), "zeros": (("x",), np.zeros(10, "i8")), "names": (("k",), ["a"])},
        {},
    )
    group = zarr.open_group(path, mode="r")
    for name in ("nan", "zeros", "names"):
        array = group[name]
        assert isinstance(array.metadata.codecs[-1], Crc32cCodec), name
        assert array.nchunks_initialized == array.nchunks == 1, name
    assert math.isnan(group["nan"].fill_value)
    partial = zarr.open_group(tmp_path / "p.zarr", mode="w")
    raw = store.create(partial, "raw", ("x",), shape=(4,), dtype="float32", compress=False)
    assert isinstance(raw.metadata.codecs[-1], Crc32cCodec) and math.isnan(raw.fill_value)
    assert not (tmp_path / "s.zarr.lock").exists()


def test_deleted_trajectory_chunk_fails_the_curvature_stage(trajectories, digits_store, tmp_path):
    """Before: the deleted chunk read as the fill value and the stage stored the trace of
    zero weights (1.78 here instead of 9.4) without a word."""
    damaged = copy_store(trajectories[0], tmp_path)
    chunk_files(damaged, "params")[0].unlink()
    output = tmp_path / "trace.zarr"
    with pytest.raises(StoreError) as caught:
        trace_along_trajectory(CURVATURE, "r", 0, str(damaged), digits_store, str(output))
    assert_names_damage(caught.value, damaged, "params")
    assert "has 0 of 1 chunks (missing c/0/0)" in str(caught.value)
    assert not output.exists()


def test_deleted_train_loss_chunk_fails_the_training_figure(trajectories, tmp_path):
    """Before: the figure was drawn from the other seed under a "mean ± std over 2 seeds"
    title."""
    damaged = copy_store(trajectories[1], tmp_path)
    chunk_files(damaged, "train_loss")[0].unlink()
    output = tmp_path / "training.pdf"
    with pytest.raises(StoreError) as caught:
        training_figure([str(trajectories[0]), str(damaged)], "r", str(output), {"dpi": 40})
    assert_names_damage(caught.value, damaged, "train_loss")
    assert not output.exists()


@pytest.mark.parametrize("array", ["train_loss", "params"], ids=["compressed", "uncompressed"])
def test_truncated_chunk_is_a_store_error_naming_store_and_array(trajectories, tmp_path, array):
    """Before: a bare "Zstd decompression error" or "cannot reshape array" naming nothing."""
    damaged = copy_store(trajectories[0], tmp_path)
    chunk = chunk_files(damaged, array)[0]
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(StoreError) as caught:
        store.read_arrays(damaged, [array])
    assert_names_damage(caught.value, damaged, array)
    assert "checksum does not match" in str(caught.value)


def test_flipped_byte_fails_the_read(trajectories, tmp_path):
    damaged = copy_store(trajectories[0], tmp_path)
    chunk = chunk_files(damaged, "params")[0]
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0x01  # one bit of one weight: decodes fine, only the checksum sees it
    chunk.write_bytes(bytes(data))
    group = store.open_store(damaged)
    with pytest.raises(StoreError) as caught:
        group["params"][1]
    assert_names_damage(caught.value, damaged, "params")


def test_open_store_behaves_like_the_group(trajectories):
    group = store.open_store(trajectories[0])
    assert store.open_store(group) is group
    assert "params" in group and "nothing" not in group
    assert group.attrs["complete"] and group["step"].shape == (3,)
    assert group["params"].metadata.dimension_names == ("checkpoint", "param")
    assert np.asarray(group["step"]).tolist() == group["step"][...].tolist() == [0, 8, 16]
    assert set(group.array_keys()) >= {"params", "momentum", "step", "train_loss"}
    with pytest.raises(IndexError):  # a bad selection is the caller's, not damage
        group["step"][7]
    with pytest.raises(StoreError, match="does not exist"):
        store.open_store(trajectories[0].with_name("nowhere.zarr"))


def test_incomplete_trajectory_attrs_are_damage(trajectories, tmp_path):
    damaged = copy_store(trajectories[0], tmp_path)
    zarr.open_group(damaged, mode="r+").attrs["n_checkpoints"] = 4
    with pytest.raises(StoreError, match="3 of its 4 checkpoints are complete"):
        store.open_store(damaged)
    zarr.open_group(damaged, mode="r+").attrs["n_complete"] = 4
    with pytest.raises(StoreError, match="array 'epoch' has 3 of 4 checkpoints"):
        store.open_store(damaged)
    zarr.open_group(damaged, mode="r+").attrs.update({"n_checkpoints": 3, "complete": False})
    with pytest.raises(StoreError, match="not complete"):
        store.open_store(damaged)


def test_damaged_partial_store_fails_the_resume_clearly(
    trajectories, digits_store, digits_spec, tmp_path
):
    """A kept partial store is read on resume: damage there is named (delete it: the job then
    starts afresh), never resumed from. Zarr writes chunk files atomically, so a kill cannot
    cause it."""
    output = tmp_path / "resumed.zarr"
    partial = store.partial_path(output)
    shutil.copytree(trajectories[0], partial)  # a partial store of the same config
    chunk = chunk_files(partial, "params")[0]
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(StoreError) as caught:
        train_run(run_spec(epochs=2), digits_spec, "r", 0, digits_store, str(output))
    text = str(caught.value)
    assert text.startswith(f"store {partial} is damaged: array 'params': a chunk's checksum")
    assert f"rm -r {partial}) and re-run the job, which then starts afresh" in text
    assert not output.exists()


def test_publish_refuses_a_store_with_holes(tmp_path):
    output = tmp_path / "holes.zarr"
    group, _ = store.open_partial(output, "h")
    store.create(group, "x", ("i",), shape=(8,), dtype="float64", chunks=(2,))
    group["x"][:4] = 1.0
    with pytest.raises(StoreError, match=r"incomplete at publication: array 'x' has 2 of 4 chunks"):
        store.publish(output)
    assert not output.exists()


def test_verify_names_damaged_stores_and_lists_partial_ones(trajectories, tmp_path, capsys):
    results = tmp_path / "results"
    good = copy_store(trajectories[0], tmp_path, "results/a/trajectory.zarr")
    assert verify_main([str(results)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "1 store(s) checked: 1 good, 0 damaged; 0 interrupted (.partial)"
    )

    missing = copy_store(good, tmp_path, "results/b/trajectory.zarr")
    chunk_files(missing, "params")[0].unlink()
    flipped = copy_store(good, tmp_path, "results/c/trajectory.zarr")
    chunk = chunk_files(flipped, "train_loss")[0]
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\0")
    copy_store(good, tmp_path, "results/d/trajectory.zarr.partial")
    assert verify_main([str(results)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"DAMAGED {missing}: array 'params' has 0 of 1 chunks (missing c/0/0)" in out
    assert f"DAMAGED {flipped}: array 'train_loss' chunk c/0: a chunk's checksum" in " ".join(out)
    assert any(
        line.startswith(f"interrupted {results}/d/trajectory.zarr.partial: left") for line in out
    )
    assert "3 store(s) checked: 1 good, 2 damaged; 1 interrupted (.partial)" in out
    assert out[-1].startswith(f"to rebuild: rm -r {missing} {flipped}, then run snakemake again")
    assert verify_main([str(tmp_path / "nowhere")]) == 2


def test_damage_reads_every_chunk(tmp_path):
    """Completeness alone misses a bad chunk in the middle of an array; verify reads them all."""
    path = tmp_path / "s.zarr"
    store.create(zarr.open_group(path, mode="w"), "y", ("i",), data=np.arange(10.0), chunks=(2,))
    chunk = path / "y" / "c" / "3"
    chunk.write_bytes(b"\0" + chunk.read_bytes()[1:])
    assert integrity.damage(path) == [
        "array 'y' chunk c/3: a chunk's checksum does not match its data (the file changed "
        "after it was written)"
    ]
