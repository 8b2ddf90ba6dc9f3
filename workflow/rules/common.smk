"""Config validation, paths and input functions shared by all stages."""

import json
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from hessvalley import barriers_config, stages, store_lock
from hessvalley.config import ConfigError, sections_given, validate_config
from hessvalley.curvature_runs import curvature_runs
from hessvalley.hessian_keys import hessian_keys
from hessvalley.projection import plan as projection_plan
from hessvalley.resources import job_resource

# The optional sections (toy figures, projection, curvature) the config states: only these
# add jobs to the default target. Read before validation fills in every section's defaults.
GIVEN = sections_given(config)
try:
    config.update(validate_config(config))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# Jobs run this checkout's code with this interpreter's packages (the `hessvalley` command
# of this environment first on PATH), wherever Snakemake runs them (locally or in a SLURM
# job, which inherits this environment). Execution-only settings reach the jobs through the
# environment: they change how a job runs, not what it computes, so they are not part of a
# rule's recorded code or params and changing them re-runs nothing.
os.environ.update(
    PATH=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    ),
    PYTHONPATH=os.pathsep.join(
        p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p
    ),
    HESSVALLEY_DEVICE=config["device"],
    HESSVALLEY_CHECKPOINT_FLUSH_SECONDS=str(config["checkpoint_flush_seconds"]),
)
DATA = "resources/data"
RESULTS = "results"
FIGURES = f"{RESULTS}/figures"


def busy_stores():
    """Stores that running jobs write, e.g. those of an earlier Snakemake stopped by Ctrl-C
    whose SLURM jobs live on. Snakemake deletes a job's output before running it, so only
    the workflow can keep a duplicate job from destroying their work.
    """
    return store_lock.live_locks([RESULTS, DATA])


def refusals():
    """Why starting now would run a second writer: stores that running jobs write, and jobs
    of this workflow still in the SLURM queue (they hold no lock until they start)."""
    reasons = []
    if busy := busy_stores():
        reasons.append(store_lock.refusal(busy))
    if queued := store_lock.queued_jobs("."):
        reasons.append(store_lock.queue_refusal(queued))
    return reasons


# A dry run (-n) only warns; a real run refuses to start (onstart, below). Jobs running the
# workflow inside SLURM (not the main process) skip the scan: their siblings hold locks.
if workflow.is_main_process:
    for reason in refusals():
        logger.warning(f"Warning: {reason}")


onstart:
    if reasons := refusals():
        raise WorkflowError("\n".join(reasons))


wildcard_constraints:
    dataset=r"[A-Za-z][A-Za-z0-9_-]*",
    line=r"[A-Za-z][A-Za-z0-9_-]*",
    setting=r"[A-Za-z][A-Za-z0-9_-]*",
    seed=r"\d+",


CODE_STAMPS = ".hessvalley/code"


def known_stage(stage):
    """The stage name, checked: an unknown one fails when the workflow is parsed."""
    try:
        stages.check_stage(stage)
    except stages.UnknownStageError as err:
        raise WorkflowError(str(err)) from None
    return stage


def stage_sources(stage):
    """The stage's code stamp (hessvalley.stages.write_code_stamp): the hashes of the files
    its module imports, rewritten only when one changes, so editing a module re-runs exactly
    the stages that import it, and a function moved between modules needs no rule edit.
    """
    return str(stages.write_code_stamp(known_stage(stage), CODE_STAMPS))


def hessvalley(stage):
    """Shell command running one registered stage (`hessvalley stages` lists them).

    Keyword arguments come from two params: `kwargs` (config values; a change re-runs the
    job) and `io` (paths, derived from input/output; Snakemake tracks those itself). Every
    value is quoted; the command runs as printed when pasted into a shell.
    """
    known_stage(stage)
    return (
        f"hessvalley run {stage} --kwargs {{params.kwargs:q}} --io {{params.io:q}}"
        " --threads {threads} --log {log:q}"
    )


def runtime(rule):
    """Minutes a job of `rule` asks for: resources.<rule> (else .default) x attempt, capped
    at resources.limits, so a retry is never refused for asking more than the cluster has.
    """
    return lambda wildcards, attempt: job_resource(config, rule, "runtime", attempt)


def mem_mb(rule):
    """MB of memory a job of `rule` asks for, grown and capped as `runtime`."""
    return lambda wildcards, attempt: job_resource(config, rule, "mem_mb", attempt)


def as_json(value):
    return json.dumps(value, sort_keys=True)


def run_spec(setting):
    return config["runs"][setting]


def trajectory_path(setting, seed):
    return f"{RESULTS}/{setting}/seed{seed}/trajectory.zarr"


def dataset_path(name):
    return f"{DATA}/{name}.zarr"


def trajectories(setting):
    return [trajectory_path(setting, seed) for seed in run_spec(setting)["seeds"]]


# -- training ------------------------------------------------------------------------


def init_trajectory(wildcards):
    parent = run_spec(wildcards.setting)["init_from"]
    return [] if parent is None else [trajectory_path(parent, wildcards.seed)]


def training_spec(setting):
    """The run's config minus its seed list: adding a seed must not re-run the others."""
    return {k: v for k, v in run_spec(setting).items() if k != "seeds"}


def train_kwargs(wildcards):
    return as_json(
        {
            "spec": training_spec(wildcards.setting),
            "dataset_spec": config["datasets"][run_spec(wildcards.setting)["dataset"]],
            "setting": wildcards.setting,
            "seed": int(wildcards.seed),
        }
    )


def train_io(wildcards, input, output):
    init = input.init[0] if input.init else None
    return as_json({"data": input.data, "init": init, "output": output[0]})


# -- projection ----------------------------------------------------------------------


PROJECTED = list(config["projection"]["runs"])
PROJECTED_RE = "|".join(re.escape(s) for s in PROJECTED) or "(?!)"


def projected_dir(setting, seed):
    return f"{RESULTS}/{setting}/seed{seed}"


def segment_paths(setting, seed):
    n = projection_plan.n_segments(config, setting)
    return [
        f"{projected_dir(setting, seed)}/projection/segment_{i}.zarr" for i in range(n)
    ]


def grid_paths(wildcards):
    """The grid stores holding a segment's two ends: its own grid job's (its left end) and
    the next one's (its right end; the last grid job holds both ends of the last segment).
    """
    segment = int(wildcards.segment)
    last = projection_plan.n_segments(config, wildcards.setting) - 1
    folder = f"{projected_dir(wildcards.setting, wildcards.seed)}/projection"
    return [
        f"{folder}/grid_{i}.zarr" for i in range(segment, min(segment + 2, last + 1))
    ]


def projection_kwargs(wildcards, keys=None):
    """The projection settings of a grid or segment job (``keys``: only those)."""
    settings = projection_plan.projection_settings(config, wildcards.setting)
    if keys is not None:
        settings = {key: settings[key] for key in keys}
    return as_json(
        {
            "settings": settings,
            "segment": int(wildcards.segment),
            "setting": wildcards.setting,
            "seed": int(wildcards.seed),
        }
    )


def path_seed(setting):
    """The seed whose projected path figs 1 and 4 draw."""
    chosen = config["projection"]["figures"]["path_seed"]
    return run_spec(setting)["seeds"][0] if chosen is None else chosen


def figure_options():
    return {k: config["figures"][k] for k in ("dpi", "band")}


def figure_paths(figure, kind):
    """Inputs of a projection figure: paths (of the drawn seed), traces (all seeds) or
    trajectories (of the drawn seed)."""
    settings = config["projection"]["figures"][figure]
    if kind == "path":
        return [
            f"{projected_dir(s, path_seed(s))}/projected_path.zarr" for s in settings
        ]
    if kind == "trajectory":
        return [trajectory_path(s, path_seed(s)) for s in settings]
    return [
        f"{projected_dir(s, seed)}/projected_trace.zarr"
        for s in settings
        for seed in run_spec(s)["seeds"]
    ]


def projection_targets():
    if "projection" not in GIVEN:
        return []
    paths = [
        f"{projected_dir(s, seed)}/{name}.zarr"
        for s in PROJECTED
        for seed in run_spec(s)["seeds"]
        for name in ("projected_path", "projected_trace")
    ]
    figures = [
        f"{FIGURES}/wei2020_{figure}.pdf"
        for figure in projection_plan.FIGURES
        if config["projection"]["figures"][figure]
    ]
    return paths + figures


# -- curvature along trajectories -------------------------------------------------------


def curvature_store(setting, seed, name):
    return f"{RESULTS}/{setting}/seed{seed}/curvature/{name}.zarr"


def hessian_kwargs():
    """The `curvature` keys that define a Hessian (hessvalley.hessian_keys): every rule
    computing curvature at stored parameters passes exactly these, so all build the same
    operator and a change of one re-runs all of them."""
    return hessian_keys(config["curvature"])


def curvature_kwargs(wildcards, section):
    """Config of one curvature rule: the Hessian keys, the run's `every`, and its own
    section only (with the run's eigen overrides)."""
    plan = curvature_runs(config)[wildcards.setting]
    own = plan["eigen"] if section == "eigen" else config["curvature"][section]
    if section == "spectrum":
        own = {k: v for k, v in own.items() if k not in ("runs", "every")}
    curvature = {
        **hessian_kwargs(),
        "every": plan["every"][section],
        section: own,
    }
    return as_json(
        {
            "curvature": curvature,
            "setting": wildcards.setting,
            "seed": int(wildcards.seed),
        }
    )


def curvature_figure_inputs(wildcards):
    seeds = run_spec(wildcards.setting)["seeds"]
    measurements = curvature_runs(config)[wildcards.setting]["measurements"]
    return {
        name: [curvature_store(wildcards.setting, seed, name) for seed in seeds]
        for name in measurements
    }


def curvature_targets():
    """The curvature figures of the runs that do not opt out (`figure: false`)."""
    if "curvature" not in GIVEN:
        return []
    plans = curvature_runs(config)
    return [f"{FIGURES}/{s}_curvature.pdf" for s in plans if plans[s]["figure"]]


def training_targets():
    """The training figures of `figures.training_runs` (null: every run)."""
    chosen = config["figures"]["training_runs"]
    return [
        f"{FIGURES}/{setting}_training.pdf"
        for setting in (config["runs"] if chosen is None else chosen)
    ]


# -- W&S appendix experiments: equilibrium sweep, alignment, FDR ------------------------


def section_spec(section, *figure_keys):
    """A section's keys that decide its stores: not `runs` (adding a run re-runs no other)
    nor the keys only its figure reads."""
    skip = {"runs", "seeds", *figure_keys}
    return {k: v for k, v in config[section].items() if k not in skip}


def section_hessian(section):
    """The Hessian keys, with the section's own `n_samples` where it sets one."""
    keys = hessian_kwargs()
    if config[section].get("n_samples") is not None:
        keys["n_samples"] = config[section]["n_samples"]
    return keys


def appendix_seeds(section, setting):
    """Seeds of `setting` a section measures (fdr.seeds may choose some; else all)."""
    chosen = config[section].get("seeds")
    return run_spec(setting)["seeds"] if chosen is None else chosen


def appendix_stores(section):
    """results/<setting>/seed<k>/<section>.zarr of every run and seed the section measures."""
    return [
        f"{RESULTS}/{setting}/seed{seed}/{section}.zarr"
        for setting in config[section]["runs"]
        for seed in appendix_seeds(section, setting)
    ]


def appendix_targets(section, figure):
    """The section's figure, when the config states the section and names some run."""
    if section not in GIVEN or not config[section]["runs"]:
        return []
    return [f"{FIGURES}/{figure}.pdf"]


# -- Sagun et al. 2017: outliers, width, batch; lines between stored states -------------


def family_stores(section, name):
    """The curvature `name` stores (spectrum, eigen) of every run and seed of a family."""
    return [
        curvature_store(setting, seed, name)
        for setting in config[section]["runs"]
        for seed in run_spec(setting)["seeds"]
    ]


def family_inputs(section):
    """Per (run, seed) of a family, in one order: spectra, trajectories, datasets."""
    pairs = [
        (setting, seed)
        for setting in config[section]["runs"]
        for seed in run_spec(setting)["seeds"]
    ]
    return {
        "spectra": [curvature_store(s, k, "spectrum") for s, k in pairs],
        "trajectories": [trajectory_path(s, k) for s, k in pairs],
        "datasets": [dataset_path(run_spec(s)["dataset"]) for s, _ in pairs],
    }


def line_end(wildcards, end):
    spec = config["lines"][wildcards.line][end]
    return trajectory_path(spec["run"], spec["seed"])


def batch_inputs(wildcards):
    batch, seed = config["batch"], config["batch"]["seed"]
    return {
        "small_eigen": curvature_store(batch["small"], seed, "eigen"),
        "large_eigen": curvature_store(batch["large"], seed, "eigen"),
        "small": trajectory_path(batch["small"], seed),
        "large": trajectory_path(batch["large"], seed),
        "switched": trajectory_path(batch["switched"], seed),
        "line": f"{RESULTS}/lines/{batch['line']}.zarr",
    }


def section_targets(section, figure):
    """A Sagun figure, when the config states its section and names some run."""
    if section not in GIVEN:
        return []
    named = config[section]["runs"] if section != "batch" else config[section]["large"]
    return [f"{FIGURES}/{figure}.pdf"] if named else []


def line_targets():
    if "lines" not in GIVEN:
        return []
    return [f"{RESULTS}/lines/{name}.zarr" for name in config["lines"]]


# -- Xing et al. 2018 §3 (Figs 1-4, Table 1): the loss between consecutive iterates --------


def interpolation_store(setting, group):
    seed = config["barriers"]["seed"]
    return f"{RESULTS}/{setting}/seed{seed}/interpolation/{group}.zarr"


def interpolation_stores(runs):
    """The interpolation stores of every job of `runs` (of barriers.runs)."""
    return [
        interpolation_store(setting, group)
        for setting, group, _ in barriers_config.interpolation_jobs(config)
        if setting in runs
    ]


def interpolation_epochs(wildcards):
    """The epochs of one interpolation job (its group of the run's epochs)."""
    groups = barriers_config.epoch_groups(config, wildcards.setting)
    if wildcards.group not in groups:
        raise WorkflowError(
            f"no interpolation job {wildcards.group!r} for run {wildcards.setting!r}: "
            f"barriers plans {sorted(groups)}"
        )
    return groups[wildcards.group]


def barriers_figure_keys(figure):
    """The barriers keys `figure` reads (a change of another re-runs it not)."""
    return {key: config["barriers"][key] for key in barriers_config.FIGURE_KEYS[figure]}


def barriers_targets():
    if "barriers" not in GIVEN or not config["barriers"]["runs"]:
        return []
    return [f"{FIGURES}/xing2018_fig1.pdf", f"{FIGURES}/xing2018_table1.pdf"]


TARGETS = []


def targets(function):
    """Register a function returning some of `rule all`'s inputs (each stage file registers
    its own, as a lambda: rule files hold no function definitions)."""
    TARGETS.append(function)
    return function


def stage_targets():
    return [path for function in TARGETS for path in function()]


def all_targets():
    """Every stage's targets, then the claims table when some figure states a claim."""
    claims = [f"{RESULTS}/claims.csv"] if claim_files() else []
    return stage_targets() + claims


def claim_files():
    """results/figures/<id>.json of every targeted figure whose rule (named <id>) writes a
    claim (an output named `json`)."""
    figures = {
        Path(path).stem
        for path in stage_targets()
        if path.startswith(f"{FIGURES}/") and path.endswith(".pdf")
    }
    return sorted(
        str(rule.output.json)
        for rule in workflow.rules
        if rule.name in figures and "json" in rule.output.keys()
    )
