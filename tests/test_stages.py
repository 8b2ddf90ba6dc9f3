"""The stage registry and the package's layering: every rule runs a registered stage, every
stage is used, source inputs cover what a stage imports, and imports run one way."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hessvalley import stages

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "hessvalley"
LEAVES = (  # import nothing of the package
    "hessvalley.errors",
    "hessvalley.schedule",
    "hessvalley.stats",
    "hessvalley.hessian_keys",
    "hessvalley.outliers",
    "hessvalley.sgd",
    "hessvalley.batch_noise",  # Xing et al. 2018 Figs 5-7
    # Xing et al. 2018 §3 (Figs 1-4, Table 1)
    "hessvalley.segments",
)
ENTRY_POINTS = ("hessvalley.cli", "hessvalley.__main__")  # the only importers of the CLI


def package_modules() -> list[str]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def rule_stages() -> dict[str, str]:
    """rule name -> the stage its shell line runs, read from workflow/rules/*.smk."""
    found = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^rule ", smk.read_text())[1:]:
            name = block.split(":", 1)[0].strip()
            calls = re.findall(r'hessvalley\(\s*"([^"]+)"', block)
            if calls:
                found[name] = calls[0]
    return found


def test_every_rule_runs_a_registered_stage_and_every_stage_is_used():
    used = rule_stages()
    assert used, "no rule runs a stage"
    unknown = {rule: stage for rule, stage in used.items() if stage not in stages.STAGES}
    assert not unknown, f"rules run unregistered stages: {unknown}"
    unused = set(stages.STAGES) - set(used.values())
    assert not unused, f"registered stages no rule runs: {sorted(unused)}"


@pytest.mark.parametrize("stage", sorted(stages.STAGES))
def test_stage_function_exists_and_has_a_docstring(stage):
    stages.check_stage(stage)
    module, function = stages.target(stage)
    func = getattr(importlib.import_module(module), function)
    assert callable(func) and stages.summary(stage), f"{stage}: {module}:{function}"


def test_unknown_stages_and_functions_fail_with_the_name(monkeypatch):
    with pytest.raises(stages.UnknownStageError, match="unknown stage 'trian'"):
        stages.check_stage("trian")
    monkeypatch.setitem(stages.STAGES, "bad", "hessvalley.train:trian_run")
    with pytest.raises(stages.UnknownStageError, match="has no function 'trian_run'"):
        stages.stage_sources("bad")


IMPORTS_PER_MODULE = """
import importlib, json, os, sys
import matplotlib, numpy, scipy, sklearn, torch, zarr  # heavy dependencies, loaded once
files = {}
for module in json.loads(sys.argv[1]):
    read, write = os.pipe()
    if os.fork() == 0:  # a fresh copy of this process imports one stage module
        importlib.import_module(module)
        loaded = [m.__file__ for n, m in sys.modules.items()
                  if n.split(".")[0] == "hessvalley" and getattr(m, "__file__", None)]
        os.write(write, json.dumps(loaded).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        files[module] = json.loads(pipe.read())
    os.wait()
print(json.dumps(files))
"""


def test_stage_sources_cover_every_module_a_stage_imports():
    """Import each stage's module in a fresh process (forked from one that holds no module of
    the package): every package module it loads is among the stage's sources (the static
    closure may hold more: function-level imports that run only inside the stage)."""
    modules = sorted({stages.target(stage)[0] for stage in stages.STAGES})
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", IMPORTS_PER_MODULE, json.dumps(modules)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    for stage in sorted(stages.STAGES):
        declared = set(stages.stage_sources(stage))
        module_files = loaded[stages.target(stage)[0]]
        assert module_files, f"{stage}: loaded no module of the package"
        missing = sorted({str(Path(f)) for f in module_files} - declared)
        assert not missing, f"{stage}: imports {missing} but does not depend on them"


def import_graph() -> dict[str, set[str]]:
    return {m: stages.imported_modules(m) - {m} for m in package_modules()}


def test_no_library_module_imports_the_cli():
    offenders = {
        module: sorted(imported & set(ENTRY_POINTS))
        for module, imported in import_graph().items()
        if module not in ENTRY_POINTS and imported & set(ENTRY_POINTS)
    }
    assert not offenders, f"library modules importing the CLI: {offenders}"


def test_leaf_modules_import_nothing_of_the_package():
    graph = import_graph()
    for leaf in LEAVES:
        assert graph[leaf] <= {"hessvalley"}, f"{leaf} imports {graph[leaf]}"


def test_no_import_cycles():
    """Any cycle, also one held together by a function-level import."""
    graph = import_graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def _is_plotting(path: Path) -> bool:
    return "figures" in path.parts


def test_modules_and_functions_stay_small():
    """No module over 400 lines, no non-plotting function over 80 (split by seam)."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        n_lines = text.count("\n")
        if n_lines > 400:
            too_long.append(f"{path.relative_to(PACKAGE)}: {n_lines} lines")
        if _is_plotting(path):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.name}: {length} lines")
    assert not too_long, "split by seam: " + "; ".join(too_long)


def test_stages_command_lists_every_stage():
    listing = subprocess.run(
        [sys.executable, "-m", "hessvalley", "stages"], capture_output=True, text=True, check=True
    ).stdout
    for stage, function in stages.STAGES.items():
        assert re.search(rf"^{re.escape(stage)}\s+{re.escape(function)}$", listing, re.M)
        assert stages.summary(stage) in " ".join(listing.split())


# Imported while the workflow is parsed (config validation, the projection plan, the stage
# registry) or by jobs that must start fast (datasets, the gather of projected paths, claims).
TORCH_FREE = (
    "hessvalley.config",
    "hessvalley.data",
    "hessvalley.stages",
    "hessvalley.hessian_keys",
    "hessvalley.projection.plan",
    "hessvalley.projection.gather",
    "hessvalley.claims",
    "hessvalley.projection.claims",
    "hessvalley.curvature_runs",
    "hessvalley.appendix_config",
    "hessvalley.sagun_config",
    "hessvalley.outlier_table",
    "hessvalley.figures.outliers",
    # Xing et al. 2018 Figs 5-7
    "hessvalley.xing_config",
    "hessvalley.figures.minibatch_alignment",
    "hessvalley.figures.gradient_cosine",
    # Xing et al. 2018 §3 (Figs 1-4, Table 1)
    "hessvalley.barriers_config",
    "hessvalley.segments",
    "hessvalley.figures.barrier_claims",
    "hessvalley.figures.barriers",
    "hessvalley.figures.barrier_table",
)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_parse_time_and_gather_modules_do_not_import_torch(module):
    code = f"import sys, {module}\nprint(sorted(m for m in sys.modules if m.startswith('torch')))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]", f"importing {module} imports {loaded}"


TINY_RUN = {
    "threads": 1,
    "datasets": {"digits": {"source": "digits", "n_train": 128, "n_val": 64}},
    "runs": {
        "tiny": {
            "dataset": "digits",
            "model": {"name": "mlp", "widths": [8]},
            "optimizer": {"lr": 0.1, "batch_size": 32},
            "epochs": 1,
        }
    },
    "figures": {"dpi": 30},
}


def move_load_curves(package: Path) -> None:
    """Move figures.training.load_curves into figures.common (a pure refactor)."""
    training, common = package / "figures" / "training.py", package / "figures" / "common.py"
    text = training.read_text()
    node = next(n for n in ast.parse(text).body if getattr(n, "name", "") == "load_curves")
    lines = text.splitlines(keepends=True)
    function = "".join(lines[node.lineno - 1 : node.end_lineno])
    text = "".join(lines[: node.lineno - 1] + lines[node.end_lineno :])
    text = text.replace(
        "from hessvalley.figures.common import new_figure,",
        "from hessvalley.figures.common import load_curves, new_figure,",
    )
    training.write_text(text)
    imports = "from collections.abc import Sequence\n\nfrom hessvalley import store\n"
    shared = common.read_text().replace("import numpy as np\n", f"import numpy as np\n\n{imports}")
    common.write_text(f"{shared}\n\n{function}")


@pytest.mark.workflow
def test_moving_a_function_changes_no_rule_code_and_touch_accepts_it(tmp_path):
    """A pure refactor changes no rule's recorded code or set of input files, only
    the content of the moved code (the stage's code stamp), so the stages importing it are
    planned again and `snakemake --touch` accepts their results; a touched but unchanged
    module re-runs nothing, an edited one exactly the stages importing it."""
    from .snakemake_runner import planned_jobs, snakemake

    repo = tmp_path / "repo"
    repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("Snakefile", "workflow", "src", "config"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=ignore)
        else:
            shutil.copy(source, repo / name)
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN))

    def run(*args: str) -> str:
        options = {"snakefile": repo / "Snakefile", "configfile": config, "cores": 2}
        return snakemake(workdir, *args, **options).output

    run()
    # A copy of the workdir (mtimes kept, no code stamps, no metadata) is up to date.
    copied = tmp_path / "copied"
    shutil.copytree(workdir, copied, ignore=shutil.ignore_patterns(".hessvalley", ".snakemake"))
    options = {"snakefile": repo / "Snakefile", "configfile": copied / "config.yaml", "cores": 2}
    assert planned_jobs(snakemake(copied, "-n", **options).output) == {}
    before = {s: stages.stage_sources(s) for s in stages.STAGES}
    move_load_curves(repo / "src" / "hessvalley")
    package = str(repo / "src" / "hessvalley")
    code = (
        "import json; from hessvalley import stages; "
        "print(json.dumps({s: stages.stage_sources(s) for s in stages.STAGES}))"
    )
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    moved = subprocess.run(  # the moved copy's sources, as its workflow derives them
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    after = json.loads(moved.stdout)
    relative = {s: [p.replace(package, "") for p in after[s]] for s in after}
    assert relative == {s: [p.replace(str(PACKAGE), "") for p in v] for s, v in before.items()}
    for recorded in ("code", "input"):  # the rule code and the set of input files
        listed = run("--list-changes", recorded).splitlines()
        assert not [line for line in listed if line.startswith("results/")], listed
    assert planned_jobs(run("-n")) == {"all": 1, "training_figure": 1}  # its code changed
    run("--touch")
    assert planned_jobs(run("-n")) == {}
    # Code stamps follow content, not modification times, and only the importing stages.
    os.utime(repo / "src" / "hessvalley" / "train.py")
    assert planned_jobs(run("-n")) == {}
    with open(repo / "src" / "hessvalley" / "figures" / "training.py", "a") as module:
        module.write("# an edit\n")
    assert planned_jobs(run("-n")) == {"all": 1, "training_figure": 1}


def test_imports_are_found_in_every_form(tmp_path, monkeypatch):
    """Parenthesised and continued lines, function-level and relative imports all count."""
    package = tmp_path / "hessvalley"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "sub/__init__.py": "from . import deep\n",
        "sub/deep.py": "",
        "a.py": "from hessvalley import (\n    b,\n    c,\n)\n",
        "b.py": "import hessvalley.sub \\\n    as sub\n",
        "c.py": "def f():\n    from .d import g\n    return g\n",
        "d.py": '"""Reads like code:\nimport nothing here\n"""\n',
        "e.py": "",
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    monkeypatch.setattr(stages, "PACKAGE_ROOT", package)
    stages.imported_modules.cache_clear()
    try:
        closure = {p.relative_to(package).as_posix() for p in stages.import_closure("hessvalley.a")}
    finally:
        stages.imported_modules.cache_clear()
    assert closure == set(sources) - {"e.py"}


def test_a_new_code_stamp_is_as_old_as_its_newest_source_and_a_changed_one_is_new(tmp_path):
    """Results made before a stamp existed (a copied workdir, an older version) stay current;
    a stamp whose content changed is newer than every result."""
    stamp = stages.write_code_stamp("train", tmp_path)
    newest = max(Path(p).stat().st_mtime_ns for p in stages.stage_sources("train"))
    assert stamp.stat().st_mtime_ns == newest
    assert stamp.read_text() == stages.sources_digest("train")
    stamp.write_text("stale\n")
    os.utime(stamp, ns=(newest - 10**9, newest - 10**9))
    before = time.time_ns()
    stages.write_code_stamp("train", tmp_path)
    assert stamp.read_text() == stages.sources_digest("train")
    assert stamp.stat().st_mtime_ns >= before - 10**7  # file-system timestamp granularity
    unchanged = stamp.stat().st_mtime_ns
    stages.write_code_stamp("train", tmp_path)
    assert stamp.stat().st_mtime_ns == unchanged
