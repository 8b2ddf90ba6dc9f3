"""Config validation, paths and input functions shared by all stages."""

import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from hessvalley.config import ConfigError, validate_config

try:
    config.update(validate_config(config))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# Rule code refers to these through the environment, so the recorded rule code (a re-run
# trigger) does not change with the interpreter's path or the compute device.
os.environ["HESSVALLEY_PYTHON"] = sys.executable
os.environ["HESSVALLEY_DEVICE"] = config["device"]
SRC = Path(workflow.basedir) / "src" / "hessvalley"
DATA = "resources/data"
RESULTS = "results"
FIGURES = f"{RESULTS}/figures"


wildcard_constraints:
    dataset=r"[^/]+",
    setting=r"[^/]+",
    seed=r"\d+",


def src(*modules):
    """Source files a rule depends on, so editing one re-runs exactly the stale stages."""
    return [str(SRC / m) for m in ("store.py", "cli.py", *modules)]


def hessvalley(target, device=False):
    """Shell command running one package function.

    Keyword arguments come from two params: `kwargs` (config values; a change re-runs the
    job) and `io` (paths, derived from input/output; Snakemake tracks those itself).
    """
    device_flag = ' --device "$HESSVALLEY_DEVICE"' if device else ""
    return (
        f'"$HESSVALLEY_PYTHON" -m hessvalley call {target} --kwargs {{params.kwargs:q}}'
        f" --io {{params.io:q}} --threads {{threads}} --log {{log}}{device_flag}"
    )


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


TARGETS = []


def targets(function):
    """Register a function returning some of `rule all`'s inputs (one per stage file)."""
    TARGETS.append(function)
    return function


def all_targets():
    return [path for function in TARGETS for path in function()]
