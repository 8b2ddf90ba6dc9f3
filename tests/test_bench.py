"""Benchmark results: every script records what it measured, and README shows exactly that."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import readme_table  # noqa: E402
import suite_models  # noqa: E402

KEYS = {"name", "script", "measures", "commit", "date", "machine", "command", "figures"}


def test_every_benchmark_script_writes_its_results():
    for script in sorted(BENCH.glob("bench_*.py")):
        text = script.read_text()
        assert re.search(r'write_result\(\s*f?"' + script.stem, text), script.name


def test_results_files_say_what_when_where_and_how():
    results = sorted((BENCH / "results").glob("*.json"))
    assert results, "no benchmark results recorded"
    for path in results:
        record = json.loads(path.read_text())
        assert set(record) >= KEYS, f"{path.name} lacks {KEYS - set(record)}"
        assert record["name"] == path.stem and record["figures"], path.name
        assert (BENCH / record["script"]).is_file(), f"{path.name}: {record['script']}"
        for row in record["figures"]:
            assert isinstance(row["value"], (int, float)) and row["quantity"], path.name
            if row["target"]:
                assert isinstance(row["met"], bool), f"{path.name}: {row['quantity']}"


def test_readme_table_is_generated_from_the_results():
    assert readme_table.readme_table(REPO / "README.md") == readme_table.render_table()


def test_suite_models_are_the_sizes_they_say():
    """bench/suite_models.py: each model's description states its parameter count."""
    for name, entry in suite_models.SUITE.items():
        stated = int(re.search(r"P = ([\d,]+)", entry.description)[1].replace(",", ""))
        assert sum(p.numel() for p in entry.build().parameters()) == stated, name
