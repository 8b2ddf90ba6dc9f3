"""Claims checked from the data: each paper figure states what the paper claims, the numbers
that test it (with uncertainties), and a verdict computed by a stated test.

A figure stage writes ``results/figures/<id>.json`` next to ``<id>.pdf`` (``write_claim``);
the ``claims`` stage gathers them into ``results/claims.csv`` (``gather_claims``), which the
HTML report shows first and ``hessvalley claims`` prints. Verdicts are ``holds``, ``does not
hold`` or ``not testable at this scale``; the tests (``within``, ``signed``) are pure
functions of the numbers, so a claim that fails at small scale is reported as failing.

Torch-free: figure stages import it without paying for torch.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HOLDS = "holds"
FAILS = "does not hold"
UNTESTABLE = "not testable at this scale"
VERDICTS = (HOLDS, FAILS, UNTESTABLE)
CSV_COLUMNS = ("id", "source", "claim", "numbers", "paper_value", "test", "verdict")


@dataclass(frozen=True)
class Number:
    """A headline number with its standard error (nan when it has none)."""

    name: str
    value: float
    stderr: float = math.nan
    unit: str = ""

    def text(self) -> str:
        value = f"{self.value:.4g}"
        if math.isfinite(self.stderr):
            value += f" ± {self.stderr:.2g}"
        return f"{self.name} = {value}" + (f" {self.unit}" if self.unit else "")


@dataclass(frozen=True)
class Verdict:
    """A verdict and the reason, in numbers, it was reached."""

    verdict: str
    reason: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class Claim:
    """One figure's claim, its numbers and its verdict (``verdict`` from ``combine`` over the
    per-part verdicts when a figure tests several settings)."""

    id: str
    source: str  # e.g. "Wei & Schwab 2020, Fig 3"
    claim: str  # the paper's claim, one sentence
    test: str  # the stated test, in words
    numbers: list[Number]
    verdict: Verdict
    paper_value: str = ""  # the paper's number where it gives one
    parts: dict[str, Verdict] = field(default_factory=dict)  # per setting, when several

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["numbers"] = [_finite_or_none(asdict(n)) for n in self.numbers]
        out["verdict"], out["reason"] = self.verdict.verdict, self.verdict.reason
        out["parts"] = {k: asdict(v) for k, v in self.parts.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Claim:
        numbers = [
            Number(n["name"], _nan(n["value"]), _nan(n.get("stderr")), n.get("unit", ""))
            for n in data["numbers"]
        ]
        return cls(
            data["id"],
            data["source"],
            data["claim"],
            data["test"],
            numbers,
            Verdict(data["verdict"], data.get("reason", "")),
            data.get("paper_value", ""),
            {k: Verdict(**v) for k, v in data.get("parts", {}).items()},
        )

    def row(self) -> dict[str, str]:
        return {
            "id": self.id,
            "source": self.source,
            "claim": self.claim,
            "numbers": "; ".join(n.text() for n in self.numbers),
            "paper_value": self.paper_value,
            "test": self.test,
            "verdict": self.verdict.verdict,
        }


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _finite_or_none(number: dict[str, Any]) -> dict[str, Any]:
    """JSON has no nan: a missing value or standard error is written as null."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in number.items()
    }


# -- stated tests --------------------------------------------------------------------------------


def within(value: float, stderr: float, target: float, n_sigma: float = 3.0) -> Verdict:
    """Holds when ``value`` is within ``n_sigma`` standard errors of ``target``."""
    if not (math.isfinite(value) and math.isfinite(stderr) and stderr > 0):
        return Verdict(UNTESTABLE, f"no finite value with a standard error ({value}, {stderr})")
    z = (value - target) / stderr
    verdict = HOLDS if abs(z) <= n_sigma else FAILS
    return Verdict(verdict, f"{value:.4g} is {z:+.2f} standard errors from {target:.4g}")


def signed(value: float, stderr: float, sign: int, n_sigma: float = 3.0) -> Verdict:
    """Holds when ``value`` has sign ``sign`` (+1 or -1) at ``n_sigma`` standard errors or
    more; does not hold otherwise (the sign is not established by the data)."""
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    if not (math.isfinite(value) and math.isfinite(stderr) and stderr > 0):
        return Verdict(UNTESTABLE, f"no finite value with a standard error ({value}, {stderr})")
    z = value / stderr
    word = "negative" if sign < 0 else "positive"
    verdict = HOLDS if sign * z >= n_sigma else FAILS
    return Verdict(verdict, f"{value:.4g} is {z:+.2f} standard errors from 0 (needs {word})")


def combine(parts: Mapping[str, Verdict]) -> Verdict:
    """One verdict over several parts: does not hold if any part does not; holds if all do;
    otherwise not testable."""
    if not parts:
        return Verdict(UNTESTABLE, "nothing to test")
    verdicts = [p.verdict for p in parts.values()]
    reason = "; ".join(f"{name}: {p.verdict} ({p.reason})" for name, p in parts.items())
    if FAILS in verdicts:
        return Verdict(FAILS, reason)
    if all(v == HOLDS for v in verdicts):
        return Verdict(HOLDS, reason)
    return Verdict(UNTESTABLE, reason)


# -- files ---------------------------------------------------------------------------------------


def claim_path(figure: str | os.PathLike) -> Path:
    """``results/figures/<id>.json`` beside the figure ``<id>.pdf``."""
    return Path(figure).with_suffix(".json")


def write_claim(figure: str | os.PathLike, claim: Claim) -> Path:
    """Write ``claim`` beside the figure (atomically: a reader never sees half a file)."""
    path = claim_path(figure)
    _write_atomically(path, json.dumps(claim.to_json(), indent=2, sort_keys=True, allow_nan=False))
    return path


def read_claim(path: str | os.PathLike) -> Claim:
    return Claim.from_json(json.loads(Path(path).read_text()))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def rst_escape(text: str) -> str:
    """Text as literal reStructuredText (``|``, ``*``, backticks, ``_`` are markup there)."""
    return re.sub(r"([\\`*_|\[\]])", r"\\\1", text)


def rst_table(rows: Sequence[Mapping[str, str]]) -> str:
    """The claims as an RST list-table (every cell escaped), for the HTML report."""
    lines = [
        ".. list-table:: Claims checked from the data (``results/claims.csv``)",
        "   :header-rows: 1",
        "",
        *(
            f"   {'*' if i == 0 else ' '} - {rst_escape(column)}"
            for i, column in enumerate(CSV_COLUMNS)
        ),
    ]
    for row in rows:
        for i, column in enumerate(CSV_COLUMNS):
            lines.append(f"   {'*' if i == 0 else ' '} - {rst_escape(row[column])}".rstrip())
    return "\n".join(lines) + "\n"


def gather_claims(claims: Sequence[str], output: str, table: str) -> None:
    """The ``claims`` stage: every figure's claim as one row of ``results/claims.csv``, and
    the same table as reStructuredText (``table``) for the report."""
    rows = [read_claim(path).row() for path in sorted(claims)]
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomically(Path(output), text.getvalue())
    _write_atomically(Path(table), rst_table(rows))
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    print(f"{len(rows)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()))


def format_table(rows: Iterable[Mapping[str, str]], width: int = 100) -> str:
    """The claims as text for a terminal: id, verdict and numbers, then the claim."""
    lines = []
    for row in rows:
        lines.append(f"{row['id']:<18} {row['verdict'].upper()}")
        lines.append(f"  claim: {row['claim']}")
        lines.append(f"  test:  {row['test']}")
        lines.append(f"  data:  {row['numbers']}")
        if row["paper_value"]:
            lines.append(f"  paper: {row['paper_value']}")
    return "\n".join(line[: width * 4] for line in lines)


def claims_main(path: str) -> int:
    """``hessvalley claims [results | claims.csv]``: print the table; 1 if there is none."""
    target = Path(path)
    csv_path = target / "claims.csv" if target.is_dir() else target
    if not csv_path.is_file():
        print(
            f"no claims table at {csv_path}: run the workflow first "
            "(snakemake --cores all results/claims.csv)"
        )
        return 1
    with open(csv_path, newline="") as handle:
        print(format_table(csv.DictReader(handle)))
    return 0
