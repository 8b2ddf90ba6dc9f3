"""``hessvalley verify PATH...``: find the damaged stores under some folders.

A store is a folder with a ``zarr.json``; a folder that is not one is searched for stores,
without entering them. Each store is checked complete (every chunk present, a trajectory's
own record of its checkpoints) and every chunk is read, so every checksum is verified.
``<store>.partial`` folders are work a job left unfinished (killed, or still running): they
are listed apart, not checked, and are not damage.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zarr

from hessvalley import integrity, store_lock
from hessvalley.errors import EXIT_OK

EXIT_DAMAGED = 1
EXIT_NO_SUCH_PATH = 2


@dataclass
class Findings:
    good: list[Path] = field(default_factory=list)
    damaged: dict[Path, list[str]] = field(default_factory=dict)
    unchecked: dict[Path, list[str]] = field(default_factory=dict)  # arrays without checksums
    partial: list[Path] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)


def is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def find_stores(root: Path) -> Iterator[Path]:
    """Stores and partial stores at or under ``root``, in a stable order."""
    if is_store(root) or root.name.endswith(integrity.PARTIAL_SUFFIX):
        yield root
        return
    for folder, subfolders, _ in os.walk(root):
        subfolders.sort()
        keep = []
        for name in subfolders:
            path = Path(folder, name)
            if is_store(path) or name.endswith(integrity.PARTIAL_SUFFIX):
                yield path
            else:
                keep.append(name)
        subfolders[:] = keep


def check(paths: Iterable[str | os.PathLike]) -> Findings:
    findings = Findings()
    for root in map(Path, paths):
        if not root.exists():
            findings.missing.append(root)
            continue
        for path in find_stores(root):
            if path.name.endswith(integrity.PARTIAL_SUFFIX):
                findings.partial.append(path)
                continue
            problems = integrity.damage(path)
            if problems:
                findings.damaged[path] = problems
                continue
            findings.good.append(path)
            unchecked = integrity.unchecked_arrays(zarr.open_group(path, mode="r"))
            if unchecked:
                findings.unchecked[path] = unchecked
    return findings


def partial_state(path: Path) -> str:
    """Whether a job is still writing ``<store>.partial`` or left it unfinished."""
    store = path.with_name(path.name.removesuffix(integrity.PARTIAL_SUFFIX))
    holder, verdict = store_lock.probe(store_lock.lock_path(store))
    if verdict.live and holder is not None:
        return f"being written ({holder.describe()})"
    return "left unfinished: re-running the job resumes it, or delete it"


def report(findings: Findings) -> list[str]:
    lines = [f"no such file or folder: {path}" for path in findings.missing]
    for path, problems in findings.damaged.items():
        lines += [f"DAMAGED {path}: {problem}" for problem in problems]
    for path, names in findings.unchecked.items():
        lines.append(f"note: {path} has no checksums in {', '.join(names)} (made before them)")
    lines += [f"interrupted {path}: {partial_state(path)}" for path in findings.partial]
    n_checked = len(findings.good) + len(findings.damaged)
    lines.append(
        f"{n_checked} store(s) checked: {len(findings.good)} good, "
        f"{len(findings.damaged)} damaged; {len(findings.partial)} interrupted (.partial)"
    )
    if findings.damaged:
        stores = " ".join(shlex.quote(str(path)) for path in findings.damaged)
        lines.append(
            f"to rebuild: rm -r {stores}, then run snakemake again (with the same --configfile "
            "and profile); it rebuilds them and re-runs what was computed from them"
        )
    return lines


def verify_main(paths: list[str]) -> int:
    """Check the stores at or under ``paths``; 1 if any is damaged, 2 if a path is missing."""
    findings = check(paths)
    for line in report(findings):
        print(line)
    if findings.damaged:
        return EXIT_DAMAGED
    return EXIT_NO_SUCH_PATH if findings.missing else EXIT_OK
