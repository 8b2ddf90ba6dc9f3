"""The stage registry: stable stage names, the function each runs, and the source it depends on.

Every rule runs ``hessvalley run <stage>``, so a rule's recorded code (one of Snakemake's
re-run triggers) names the stage, not where its function lives: moving a function between
modules edits this table, not the rules. A stage's sources are the files of its module's
import closure, derived from the import statements (``import_closure``), so they follow a
move or a split by themselves and never miss a module a stage uses; a rule's source input is
one code stamp listing them with their hashes (``write_code_stamp``).

Torch-free and import-free: the workflow reads it while it parses (names are checked there,
so a typo fails before any job runs), and the files are read with ``ast``, never imported.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "hessvalley"
PACKAGE_ROOT = Path(__file__).resolve().parent

# stage name -> "module:function". Names are stable: rules, logs and users refer to them.
STAGES: dict[str, str] = {
    "dataset": "hessvalley.data:build_dataset_store",
    "train": "hessvalley.train:train_run",
    "training_figure": "hessvalley.figures.training:training_figure",
    "curvature_trace": "hessvalley.trajectory_curvature:trace_along_trajectory",
    "curvature_eigen": "hessvalley.trajectory_curvature:eigen_along_trajectory",
    "curvature_spectrum": "hessvalley.trajectory_curvature:spectrum_along_trajectory",
    "curvature_figure": "hessvalley.figures.curvature:curvature_figure",
    "equilibrium_sweep": "hessvalley.equilibrium:equilibrium_sweep",
    "wei2020_fig2a": "hessvalley.figures.equilibrium:fig2a_figure",
    "alignment": "hessvalley.alignment:alignment_along_trajectory",
    "wei2020_fig5": "hessvalley.figures.alignment:fig5_figure",
    "fdr": "hessvalley.fdr:fdr_along_trajectory",
    "wei2020_fig6": "hessvalley.figures.fdr:fig6_figure",
    "outlier_table": "hessvalley.outlier_table:outlier_table",
    "sagun2017_outliers": "hessvalley.figures.outliers:outliers_figure",
    "sagun2017_width": "hessvalley.figures.width:width_figure",
    "line": "hessvalley.line:line_between_states",
    "sagun2017_batch": "hessvalley.figures.batch:batch_figure",
    # Xing et al. 2018 Figs 5-7: mini-batch alignment, gradient cosine
    "minibatch_alignment": "hessvalley.minibatch_alignment:minibatch_alignment_along_trajectory",
    "xing2018_fig5": "hessvalley.figures.minibatch_alignment:fig5_figure",
    "xing2018_fig7": "hessvalley.figures.gradient_cosine:fig7_figure",
    "projection_grid": "hessvalley.projection.grid:project_grid",
    "projection_segment": "hessvalley.projection.segment:project_segment",
    "projected_path": "hessvalley.projection.gather:gather_path",
    "projected_trace": "hessvalley.projection.trace:path_trace",
    "wei2020_fig1": "hessvalley.figures.projection:fig1_figure",
    "wei2020_fig3": "hessvalley.figures.projection:fig3_figure",
    "wei2020_fig4": "hessvalley.figures.projection:fig4_figure",
    "toy_fig2b": "hessvalley.toy.experiments:trace_vs_eta",
    "toy_fig2cd": "hessvalley.toy.experiments:noise_structure",
    "toy_fig7": "hessvalley.toy.experiments:entropic_force",
    "wei2020_fig2b": "hessvalley.figures.toy:fig2b_figure",
    "wei2020_fig2cd": "hessvalley.figures.toy:fig2cd_figure",
    "wei2020_fig7": "hessvalley.figures.toy:fig7_figure",
    "claims": "hessvalley.claims:gather_claims",
    # -- Xing et al. 2018 §3 (Figs 1-4, Table 1): the loss between consecutive iterates
    "iterate_interpolation": "hessvalley.iterate_interpolation:iterate_interpolation",
    "xing2018_fig1": "hessvalley.figures.barriers:fig1_figure",
    "xing2018_table1": "hessvalley.figures.barrier_table:table1_figure",
}


class UnknownStageError(KeyError):
    """A stage name that is not registered, or whose function does not exist."""

    def __str__(self) -> str:
        return str(self.args[0])


def target(stage: str) -> tuple[str, str]:
    """(module, function) of ``stage``."""
    if stage not in STAGES:
        known = ", ".join(sorted(STAGES))
        raise UnknownStageError(f"unknown stage {stage!r}; registered stages: {known}")
    module, _, function = STAGES[stage].partition(":")
    return module, function


def module_file(module: str) -> Path | None:
    """The source file of package module ``module`` (None if it is not one)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


IMPORT_LINE = re.compile(r"^[ \t]*(?:from[ \t]+[\w.]+[ \t]+import\b|import[ \t]+[\w.])")


def _import_statements(path: Path) -> Iterator[ast.stmt]:
    """Every import statement of the file, function level included, parsed on its own (a
    full parse of every module costs the workflow 0.3 s at each start). A line of a string
    that happens to read as an import only adds a dependency, never loses one."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if not IMPORT_LINE.match(lines[i]):
            i += 1
            continue
        statement = [lines[i].strip()]
        while i + 1 < len(lines) and (
            statement[-1].endswith("\\")
            or "".join(statement).count("(") > "".join(statement).count(")")
        ):
            i += 1
            statement.append(lines[i].strip())
        i += 1
        try:
            yield from ast.parse("\n".join(statement)).body
        except SyntaxError:
            continue


@functools.cache
def imported_modules(module: str) -> frozenset[str]:
    """Package modules that ``module``'s import statements (anywhere in the file, function
    level included) name, directly or as ``from package import submodule``."""
    path = module_file(module)
    if path is None:
        return frozenset()
    found = set()
    for node in _import_statements(path):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(module, path).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if module_file(name) is not None)


def _with_parents(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages' inits."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(module: str) -> list[Path]:
    """Source files executed when ``module`` is imported (package inits included), sorted."""
    seen: set[str] = set()
    todo = _with_parents(module)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        for imported in imported_modules(name):
            todo.extend(_with_parents(imported))
    return sorted(module_file(name) for name in seen)


def _top_level_names(path: Path) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in _parse(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = node
        elif isinstance(node, ast.Assign):
            for target_node in node.targets:
                if isinstance(target_node, ast.Name):
                    names[target_node.id] = node
    return names


def check_stage(stage: str) -> None:
    """Raise ``UnknownStageError`` unless ``stage`` is registered and its module defines (or
    imports) its function: typos fail when the workflow is parsed, not when a job runs."""
    module, function = target(stage)
    path = module_file(module)
    if path is None:
        raise UnknownStageError(f"stage {stage!r}: module {module} not found in {PACKAGE_ROOT}")
    if function not in _top_level_names(path):
        raise UnknownStageError(f"stage {stage!r}: {module} has no function {function!r}")


def stage_sources(stage: str) -> list[str]:
    """The source files a stage's results depend on: its module's import closure."""
    check_stage(stage)
    return list(_closure_files(target(stage)[0]))


@functools.cache
def _closure_files(module: str) -> tuple[str, ...]:
    return tuple(str(path) for path in import_closure(module))


@functools.cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sources_digest(stage: str) -> str:
    """``sha256  path`` lines (as sha256sum writes them) of the stage's source files, paths
    relative to the package root: what the stage's results depend on, as text."""
    lines = []
    for path in stage_sources(stage):
        relative = Path(path).relative_to(PACKAGE_ROOT.parent).as_posix()
        lines.append(f"{_file_digest(path)}  {relative}")
    return "\n".join(lines) + "\n"


def write_code_stamp(stage: str, folder: str | Path) -> Path:
    """``<folder>/<stage>.sha256``: the stage's ``sources_digest``, rewritten only when it
    changes. A rule takes this one file as its source input, so its jobs re-run exactly when
    the content of a file the stage imports changes (not when a file is merely touched, and
    not for files it does not import), and a job has one source input rather than dozens:
    Snakemake resolves and prints every input of every job, which for thousands of jobs
    costs minutes.

    A stamp written for the first time (a new or copied workdir, results made by an older
    version) takes the newest modification time of its sources, as the source files as
    inputs would: results newer than the code stay current. A changed stamp is new."""
    text = sources_digest(stage)
    path = Path(folder) / f"{stage}.sha256"
    existed = path.is_file()
    if not existed or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        tmp.write_text(text)
        if not existed:
            newest = max(Path(source).stat().st_mtime_ns for source in stage_sources(stage))
            os.utime(tmp, ns=(newest, newest))
        os.replace(tmp, path)
    return path


def summary(stage: str) -> str:
    """The opening sentence(s) of the stage function's docstring, its first paragraph on one
    line (read from the source, not imported)."""
    module, function = target(stage)
    node = _top_level_names(module_file(module)).get(function)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = (ast.get_docstring(node) or "").strip()
        return " ".join(doc.split("\n\n")[0].split())
    return ""
