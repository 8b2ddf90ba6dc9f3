"""``hessvalley plan``: read and validate a config, calibrate its models on the device (or
read the cache), estimate every stage and print the plan; exit 2 when a job cannot fit.

Torch is imported only when something has to be measured (or a CUDA device named), so a
plan from a warm cache on a CPU is instant.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from hessvalley.config import ConfigError, sections_given, validate_config
from hessvalley.costs import (
    cache,
    estimate,
    estimate_appendix,
    estimate_lines,
    estimate_minibatch,
    estimate_more,
    report,
    table,
)
from hessvalley.costs.facts import DATA_DIR, dataset_facts
from hessvalley.costs.model import Assumptions

DEFAULT_CONFIG = "config/config.yaml"
EXIT_OVER = 2
EXIT_CONFIG = 3
BUSY_LOAD = 0.5  # load average + threads above cores + this: the calibration shared the CPU


def _merged(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update`` key by key, mappings merged recursively: how Snakemake
    combines several ``--configfile``s."""
    for key, value in update.items():
        if isinstance(value, Mapping):
            base[key] = _merged(base.get(key) if isinstance(base.get(key), dict) else {}, value)
        else:
            base[key] = value
    return base


def load_config(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
) -> tuple[dict[str, Any], set[str]]:
    """The validated config (defaults filled) of one config file, or of several merged in
    order as ``snakemake --configfile a.yaml b.yaml`` merges them, and the optional sections
    it states."""
    raw: dict[str, Any] = {}
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        try:
            text = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config file {str(path)!r}: {err}") from err
        if not isinstance(text, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys")
        raw = _merged(raw, text)
    return validate_config(raw), sections_given(raw)


def identities(config: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """Per run, what its calibration depends on (None when its data's shape is unknown)."""
    hessian = {k: config["curvature"][k] for k in ("batch_norm", "dtype")}
    out: dict[str, Any] = {}
    for setting, run in config["runs"].items():
        fact = facts[run["dataset"]]
        if fact.input_shape is None or fact.n_classes is None:
            out[setting] = None
            continue
        out[setting] = {
            "model": run["model"],
            "input_shape": list(fact.input_shape),
            "n_classes": fact.n_classes,
            "loss": run["loss"],
            "hessian": hessian,
        }
    return out


def calibration_device(requested: str) -> tuple[str, str | None]:
    """(device to calibrate on, a note when it is not the one asked for)."""
    if requested not in ("cuda", "auto") and not requested.startswith("cuda:"):
        return requested, None
    import torch

    if torch.cuda.is_available():
        return ("cuda" if requested == "auto" else requested), None
    if requested == "auto":
        return "cpu", None
    return "cpu", f"device {requested} is not available here: calibrated on the CPU instead"


def _assumption_lines(config, info, calibration, assumptions, notes) -> list[str]:
    dates = calibration.dates()
    when = f"measured {dates[0][:10]}" + (f" to {dates[-1][:10]}" if dates[-1] != dates[0] else "")
    status = "measured now" if calibration.measured else f"cached in {calibration.path}"
    loads = [f["load_before"] for f in calibration.models.values() if "load_before" in f]
    cpus = os.cpu_count() or 1
    if info["device"] == "cpu" and loads and max(loads) + info["threads"] > cpus + BUSY_LOAD:
        notes = [
            *notes,
            f"WARNING: other processes were using the CPU during calibration (load average up "
            f"to {max(loads):.1f} on {cpus} cores, for {info['threads']} calibration threads): "
            "its times are inflated; rerun with --recalibrate on an idle machine",
        ]
    lines = [
        f"calibration device: {info['name']} ({info['device']}), torch {info['torch']}, "
        f"{info['threads']} thread(s); {when if dates else 'no models'} ({status})",
        f"times are this device's calibration / speedup {assumptions.speedup:g}"
        + (" (toy simulations and dense eigensolves run on the CPU: not divided)"),
        f"jobs run on: {assumptions.device} (config key device); on a GPU, memory/job is host "
        "memory (the SLURM --mem) and dev/job GPU memory",
        f"GD steps per projection: {assumptions.gd_steps} (capped at max_gd_steps); bisection "
        f"projections per grid interval: {assumptions.bisections}",
        "runs with stop_below_loss are costed at their full epochs (upper bound); Lanczos at "
        "its basis limit (upper bound)",
        "memory: a torch process ~500 MB + data + model + measured activations; I/O and "
        "figure stages are not timed",
        *notes,
    ]
    return lines


def make_plan(
    configfile: str | Sequence[str],
    *,
    device: str | None = None,
    speedup: float = 1.0,
    gd_steps: int = 10,
    bisections: int = 1,
    recalibrate: bool = False,
    cache_dir: str | os.PathLike = cache.CACHE_DIR,
    data_dir: str | os.PathLike = DATA_DIR,
    profile: str | os.PathLike = report.PROFILE,
) -> dict[str, Any]:
    """The plan of ``configfile`` (one file, or several merged in order) as a JSON-able dict
    (see ``report.plan_record``)."""
    config, given = load_config(configfile)
    facts = {name: dataset_facts(name, spec, data_dir) for name, spec in config["datasets"].items()}
    where, note = calibration_device(device or config["device"])
    threads = min(int(config["threads"]), os.cpu_count() or 1) if where == "cpu" else 1
    info = cache.device_info(where, threads)
    wanted = identities(config, facts)
    toys = {n: config["toy"][n] for n in estimate_more.TOYS if f"toy.{n}" in given}
    spectra = "curvature" in given and bool(config["curvature"]["spectrum"]["runs"])
    spectra = spectra or ("equilibrium" in given and bool(config["equilibrium"]["runs"]))
    calibration = cache.calibrate(
        info,
        [i for i in wanted.values() if i is not None],
        toys,
        cache_dir=cache_dir,
        recalibrate=recalibrate,
        want_eigh=spectra,
    )
    figures = {s: None if i is None else calibration.model(i) for s, i in wanted.items()}
    assumptions = Assumptions(gd_steps, bisections, speedup, config["device"])
    runs = estimate.run_costs(config, facts, figures, assumptions)
    rows = estimate.dataset_rows(config, facts, assumptions) + estimate.train_rows(config, runs)
    if "projection" in given:
        rows += estimate.projection_rows(config, runs, config["curvature"])
    if "curvature" in given:
        rows += estimate_more.curvature_rows(config, runs, calibration.eigh)
    rows += estimate_appendix.appendix_rows(config, given, runs, calibration.eigh)
    rows += estimate_lines.line_rows(config, given, runs)
    rows += estimate_minibatch.minibatch_rows(config, given, runs)  # Xing et al. 2018 Figs 5-6
    rows += estimate_lines.interpolation_rows(config, given, runs)  # Xing et al. 2018 §3
    toy_figures = {n: calibration.toys.get(cache.entry_key({n: s})) for n, s in toys.items()}
    rows += estimate_more.toy_rows(config, given, toy_figures)
    rows += estimate_more.small_rows(config, given)
    models = {}
    for setting, identity in wanted.items():
        name = "none" if identity is None else _model_name(identity)
        models.setdefault(name, figures[setting])
    header = {
        "configfile": configfile if isinstance(configfile, str) else " ".join(configfile),
        "device": info,
        "assumptions": _assumption_lines(
            config, info, calibration, assumptions, [note] if note else []
        ),
        "options": asdict(assumptions),
        "calibration": models,
        "measured": calibration.measured,
    }
    limit = info.get("memory_mb") if config["device"].startswith("cuda") else None
    return report.plan_record(config, rows, header, report.max_attempts(profile), limit)


def _model_name(identity: Mapping[str, Any]) -> str:
    model = identity["model"]
    extra = ",".join(f"{k}={v}" for k, v in sorted(model.items()) if k != "name")
    shape = "x".join(map(str, identity["input_shape"]))
    return f"{model['name']}{f'({extra})' if extra else ''} {shape}/{identity['n_classes']}"


def plan_main(args: Any) -> int:
    """The ``plan`` subcommand: print the plan, write its JSON, return the exit status."""
    try:
        plan = make_plan(
            args.configfile,
            device=args.device,
            speedup=args.speedup,
            gd_steps=args.gd_steps,
            bisections=args.bisections,
            recalibrate=args.recalibrate,
            cache_dir=args.cache_dir,
        )
    except ConfigError as err:
        sys.stderr.write(f"hessvalley plan: {err}\n")
        return EXIT_CONFIG
    sys.stdout.write(table.render(plan))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(plan, indent=1, default=str) + "\n")
    return EXIT_OVER if plan["over"] else 0
