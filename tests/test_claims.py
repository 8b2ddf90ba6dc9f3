"""Claims: the stated tests give the right verdicts, files round-trip, the table renders."""

from __future__ import annotations

import csv
import json
import math

import pytest
from docutils.core import publish_parts

from hessvalley import claims
from hessvalley.claims import FAILS, HOLDS, UNTESTABLE, Claim, Number, Verdict


@pytest.mark.parametrize(
    ("value", "stderr", "verdict"),
    [(1.29, 0.1, HOLDS), (0.71, 0.1, HOLDS), (1.31, 0.1, FAILS), (1.0, math.nan, UNTESTABLE)],
)
def test_within_three_standard_errors(value, stderr, verdict):
    assert claims.within(value, stderr, 1.0).verdict == verdict


@pytest.mark.parametrize(
    ("value", "sign", "verdict"),
    [(-0.31, -1, HOLDS), (-0.29, -1, FAILS), (0.5, -1, FAILS), (0.31, 1, HOLDS)],
)
def test_signed_needs_three_standard_errors(value, sign, verdict):
    assert claims.signed(value, 0.1, sign).verdict == verdict
    assert claims.signed(value, 0.0, sign).verdict == UNTESTABLE


def test_combine_fails_on_any_failure_and_holds_only_when_all_hold():
    ok, bad, unknown = Verdict(HOLDS, "a"), Verdict(FAILS, "b"), Verdict(UNTESTABLE, "c")
    assert claims.combine({"x": ok, "y": ok}).verdict == HOLDS
    assert claims.combine({"x": ok, "y": unknown}).verdict == UNTESTABLE
    assert claims.combine({"x": unknown, "y": bad}).verdict == FAILS
    assert claims.combine({}).verdict == UNTESTABLE
    with pytest.raises(ValueError, match="verdict must be one of"):
        Verdict("maybe", "")


def marked_up_claim(figure_id: str) -> Claim:
    """Every field holds RST markup characters a figure might use."""
    return Claim(
        id=figure_id,
        source="W&S 2020, Fig *3*",
        claim="|Σλ| falls_ along `the` path",
        test="slope < 0 at >= 3 s.e. [1]",
        numbers=[Number("|slope|_", -0.05, 0.01, "per epoch"), Number("n", 3.0)],
        verdict=Verdict(HOLDS, "z = -5"),
        paper_value="",
    )


def test_claim_files_round_trip_with_missing_standard_errors_as_null(tmp_path):
    claim = marked_up_claim("wei2020_fig3")
    path = claims.write_claim(tmp_path / "wei2020_fig3.pdf", claim)
    assert path == tmp_path / "wei2020_fig3.json"
    data = json.loads(path.read_text())
    assert data["verdict"] == HOLDS and data["numbers"][1]["stderr"] is None
    assert claims.read_claim(path).row() == claim.row()


def test_claims_table_csv_is_literal_and_the_report_table_renders_it(tmp_path, capsys):
    paths = [
        str(claims.write_claim(tmp_path / f"{name}.pdf", marked_up_claim(name)))
        for name in ("wei2020_fig7", "wei2020_fig3")
    ]
    csv_path, rst_path = tmp_path / "claims.csv", tmp_path / "claims.rst"
    claims.gather_claims(paths, str(csv_path), str(rst_path))
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["wei2020_fig3", "wei2020_fig7"]
    assert rows[0]["claim"] == "|Σλ| falls_ along `the` path"
    assert rows[0]["numbers"] == "|slope|_ = -0.05 ± 0.01 per epoch; n = 3"
    html = publish_parts(rst_path.read_text(), writer="html", settings_overrides={"halt_level": 2})[
        "body"
    ]
    assert html.count("<tr") == 3 and "problematic" not in html
    assert "|Σλ| falls_ along `the` path" in html and "W&amp;S 2020, Fig *3*" in html
    assert "2 claims: 2 holds" in capsys.readouterr().out


def test_claims_command_prints_the_table_or_says_how_to_make_it(tmp_path, capsys):
    assert claims.claims_main(str(tmp_path)) == 1
    assert "snakemake --cores all results/claims.csv" in capsys.readouterr().out
    path = str(claims.write_claim(tmp_path / "wei2020_fig3.pdf", marked_up_claim("wei2020_fig3")))
    claims.gather_claims([path], str(tmp_path / "claims.csv"), str(tmp_path / "claims.rst"))
    assert claims.claims_main(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "wei2020_fig3       HOLDS" in out and "|slope|_ = -0.05 ± 0.01" in out
