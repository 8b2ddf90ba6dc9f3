"""bench/gpu.sh and bench/bench_gpu.py, the GPU readiness run, work where no GPU is: the
script runs every section at its smallest sizes on the CPU, records each with its figures or
the reason it did not run, and the replay it checks is bit-exact."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"hvp", "vmap", "trace", "epoch", "replay", "compile"}


def test_bench_gpu_runs_every_section_on_the_cpu(tmp_path):
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    command = [sys.executable, "bench/bench_gpu.py", "--device", "cpu", "--tiny"]
    run = subprocess.run(
        [*command, "--results-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads((tmp_path / "bench_gpu.json").read_text())
    sections = record["details"]["sections"]
    assert set(sections) == SECTIONS
    for name, found in sections.items():
        status = found["status"]
        # nothing may fail on the CPU; only what these sizes leave out is skipped
        assert status == "done" or status.startswith("skipped: "), (name, status)
        if status == "done":
            assert set(found) - {"status", "seconds"}, f"{name} recorded nothing"
    assert sections["compile"]["status"].startswith("skipped: ")  # --tiny does not compile
    assert sections["replay"]["bit_exact"] is True
    assert sections["replay"]["max_abs_difference"]["params"] == 0.0
    assert sections["epoch"]["project_equals_bare_bit_for_bit"] is True
    assert record["figures"]
    for row in record["figures"]:  # what tests/test_bench.py asks of bench/results
        assert isinstance(row["value"], (int, float)) and row["quantity"]
        if row["target"]:
            assert isinstance(row["met"], bool), row
    numbered = set("1245") | ({"3"} if importlib.util.find_spec("pyhessian") else set())
    assert {row["quantity"][0] for row in record["figures"]} >= numbered  # 3 needs PyHessian


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="would run on the GPU")
def test_gpu_sh_says_so_without_a_gpu(tmp_path):
    run = subprocess.run(
        ["bash", "bench/gpu.sh", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "no NVIDIA GPU" in run.stderr and "--cpu-smoke" in run.stderr
    assert not list(tmp_path.iterdir())
