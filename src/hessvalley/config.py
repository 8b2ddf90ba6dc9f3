"""Config validation: JSON schema with defaults, then cross-key checks.

Runs when the Snakefile is parsed, so a bad config fails before any job starts, with a
message naming the key (``runs.digits_mlp.optimizer.lr``) and what is wrong with it.
Kept free of torch so parsing the workflow stays fast.

Three rules hold for every key: a user-chosen name (of a run or a dataset, and every
reference to one) matches ``NAME_PATTERN``, since it becomes a file name and a wildcard;
every number is finite; and a string where the schema wants a number, boolean or null is
read as YAML first, because Snakemake passes nested ``--config`` values as strings
(``--config 'figures={dpi: 80}'`` gives ``{'dpi': '80'}``).
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hessvalley import (
    appendix_config,
    barriers_config,  # Xing et al. 2018 §3 (Figs 1-4, Table 1)
    curvature_runs,
    resources,
    sagun_config,
    stages,
    xing_config,  # Xing et al. 2018 Figs 5-7
)
from hessvalley.projection import plan as projection_plan
from hessvalley.schedule import (
    TORCHVISION_SOURCES,
    run_train_size,
    steps_per_epoch,
    train_size,
)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"

# Keyword arguments each model factory accepts besides input shape and class count.
# tests/test_models.py checks this table against the factories' signatures.
MODEL_KWARGS: dict[str, set[str]] = {
    "mlp": {"widths", "activation", "bias"},
    "ws_cnn": {"channels", "kernel_size", "activation"},
    "convnet4": {"channels", "hidden", "activation"},
    "preact_resnet18": {"width"},
    "vgg11": {"batch_norm", "width"},
    "vgg16": {"batch_norm", "width"},
    "densenet": {"blocks", "growth_rate", "reduction"},
    "resnet56": {"width"},
}


# User-chosen names (runs, datasets) become paths and wildcards: one conservative rule for all.
NAME_PATTERN = "^[A-Za-z][A-Za-z0-9_-]*$"
NAME_RULE = (
    "a name must start with a letter and hold only letters, digits, '_' and '-' "
    "(it becomes a file name and a wildcard)"
)

# Sections that add jobs to the default target only when the config states them; their keys
# still get defaults, so an explicitly requested output of an absent section runs.
OPTIONAL_SECTIONS = (
    "toy.fig2b",
    "toy.fig2cd",
    "toy.fig7",
    "projection",
    "curvature",
    "equilibrium",
    "alignment",
    "fdr",
    "outliers",
    "width",
    "batch",
    "lines",
    # Xing et al. 2018 Figs 5-7
    "minibatch_alignment",
    "gradient_cosine",
    # Xing et al. 2018 §3 (Figs 1-4, Table 1)
    "barriers",
)


class ConfigError(ValueError):
    """Invalid configuration; the message names every offending key."""


def key_path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def _with_defaults(validator_class: type) -> type:
    """Schema validator that fills in ``default`` values as it descends."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | os.PathLike = SCHEMA_PATH) -> dict[str, Any]:
    return copy.deepcopy(_parsed_schema(Path(path)))


@functools.cache
def _parsed_schema(path: Path) -> dict[str, Any]:
    """The schema file, parsed once per process (the pure-Python YAML parser takes ~0.3 s)."""
    with open(path) as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _alternative_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors of a ``oneOf``/``anyOf`` alternative that says more than "wrong type": the
    one whose errors lie deepest (entries of a mapping or list), else the one alternative of
    the right type; ``[error]`` itself when none does, or when the key has a description."""
    context = error.context or []
    if error.validator not in ("oneOf", "anyOf") or not context:
        return [error]
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for e in context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    deepest = max(len(e.absolute_path) for e in context)
    if deepest > len(error.absolute_path):  # a mapping or list whose entries are wrong
        chosen = [b for b in branches.values() if any(len(e.absolute_path) == deepest for e in b)]
    elif "description" in error.schema:
        return [error]
    else:
        chosen = [b for b in branches.values() if all(e.validator != "type" for e in b)]
    if len(chosen) != 1:
        return [error]
    return [inner for e in chosen[0] for inner in _alternative_errors(e)]


def _message(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator in ("oneOf", "anyOf") and "description" in error.schema:
        return f"{where}: {error.instance!r} is not valid: {error.schema['description']}"
    if error.validator == "pattern" and error.validator_value == NAME_PATTERN:
        if "propertyNames" in error.relative_schema_path:
            return f"{where}.{error.instance!r}: {NAME_RULE}"
        return f"{where}: {error.instance!r} is not a valid name: {NAME_RULE}"
    return f"{where}: {error.message}"


def _schema_errors(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    return [_message(inner) for error in errors for inner in _alternative_errors(error)]


def _yaml_scalar(text: str) -> Any:
    """``text`` read as YAML when it is a number, boolean or null; else ``text`` itself."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, (bool, int, float)) else text


def _refused_strings(errors: Iterator[jsonschema.ValidationError]) -> Iterator[tuple]:
    """Paths of the strings among ``errors`` where the schema wants another type, also those
    inside the alternatives of a ``oneOf`` (such as an object form of a key)."""
    for error in errors:
        wrong_type = error.validator in ("type", "oneOf", "anyOf")
        if wrong_type and isinstance(error.instance, str) and error.absolute_path:
            yield tuple(error.absolute_path), error.instance
        yield from _refused_strings(iter(error.context or ()))


def _coerce_strings(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Replace, in place, every string the schema refuses by its YAML reading when that is a
    number, boolean or null: nested ``--config`` overrides arrive as strings."""
    while True:
        changes = {
            path: value
            for path, text in _refused_strings(_Validator(schema).iter_errors(config))
            if (value := _yaml_scalar(text)) is not text
        }
        if not changes:
            return
        for (*parents, last), value in changes.items():
            node = config
            for part in parents:
                node = node[part]
            node[last] = value


def _non_finite(value: Any, path: tuple = ()) -> Iterator[str]:
    """``key: value`` lines for every NaN or infinity in the config."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*path, index))
    elif isinstance(value, float) and not math.isfinite(value):
        yield f"{key_path(path)}: {value} is not a finite number"


def sections_given(config: Mapping[str, Any]) -> set[str]:
    """The optional sections (``OPTIONAL_SECTIONS``) that ``config`` states, read before
    validation fills in defaults: only these add jobs to the default target."""
    given = set()
    for section in OPTIONAL_SECTIONS:
        node: Any = config
        for part in section.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            given.add(section)
    return given


Check = Callable[[dict[str, Any]], Iterator[str]]
CHECKS: list[Check] = []


def check(function: Check) -> Check:
    """Register a cross-key check; it yields ``"key.path: problem"`` strings."""
    CHECKS.append(function)
    return function


def validate_config(
    config: Mapping[str, Any], schema_path: str | os.PathLike = SCHEMA_PATH
) -> dict[str, Any]:
    """Return a validated copy of ``config`` with defaults filled, or raise ConfigError."""
    config = copy.deepcopy(dict(config))
    schema = load_schema(schema_path)
    _coerce_strings(config, schema)
    messages = _schema_errors(config, schema) + list(_non_finite(config))
    if not messages:
        for function in CHECKS:
            messages.extend(function(config))
    if messages:
        lines = "\n".join(f"  - {m}" for m in messages)
        raise ConfigError(f"invalid configuration ({len(messages)} problem(s)):\n{lines}")
    return config


@check
def _datasets(config: dict[str, Any]) -> Iterator[str]:
    for name, ds in config["datasets"].items():
        key = f"datasets.{name}"
        source = ds["source"]
        if source in TORCHVISION_SOURCES:
            root = ds.get("data_root")
            if not ds["download"] and root is None:
                yield (
                    f"{key}.data_root: required for source {source} when download is false "
                    "(point it at a local copy, or set download: true on a networked machine)"
                )
            elif not ds["download"] and not Path(root).is_dir():
                yield f"{key}.data_root: directory {root!r} does not exist (download is false)"
        if source == "imagefolder":
            if ds.get("root") is None:
                yield f"{key}.root: required for source imagefolder (a directory of class folders)"
            elif not Path(ds["root"]).is_dir():
                yield f"{key}.root: directory {ds['root']!r} does not exist"
            if ds.get("val_root") is not None and not Path(ds["val_root"]).is_dir():
                yield f"{key}.val_root: directory {ds['val_root']!r} does not exist"
        if source == "gaussian_clusters":
            for field in ("n_classes", "dim", "n_train"):
                if ds.get(field) is None:
                    yield f"{key}.{field}: required for source gaussian_clusters"
            n_train, n_classes = ds["n_train"], ds["n_classes"]
            if None not in (n_classes, n_train) and n_train < n_classes:
                yield f"{key}.n_train: {n_train} samples cannot cover {n_classes} classes"
        if source not in ("gaussian_clusters",) and ds.get("n_classes") is not None:
            yield f"{key}.n_classes: only used by source gaussian_clusters, not {source}"
        size = train_size(ds) if source != "gaussian_clusters" or ds["n_train"] else None
        split = ds.get("randomized_labels")
        if split is not None and size is not None and split["split_a"] >= size:
            yield (
                f"{key}.randomized_labels.split_a: {split['split_a']} leaves no samples for "
                f"split B (the training set has {size})"
            )


def _init_chain(config: Mapping[str, Any], name: str) -> list[str]:
    chain = [name]
    while (parent := config["runs"].get(chain[-1], {}).get("init_from")) is not None:
        if parent in chain:
            return [*chain, parent]
        chain.append(parent)
    return chain


@check
def _runs(config: dict[str, Any]) -> Iterator[str]:
    for name, run in config["runs"].items():
        key = f"runs.{name}"
        dataset_name = run["dataset"]
        if dataset_name not in config["datasets"]:
            known = ", ".join(sorted(config["datasets"])) or "none"
            yield f"{key}.dataset: unknown dataset {dataset_name!r} (defined: {known})"
            continue
        dataset = config["datasets"][dataset_name]
        model = run["model"]
        extra = set(model) - {"name"} - MODEL_KWARGS.get(model["name"], set())
        if extra:
            allowed = ", ".join(sorted(MODEL_KWARGS[model["name"]])) or "none"
            yield (
                f"{key}.model: {', '.join(sorted(extra))} not accepted by model "
                f"{model['name']!r} (accepted: {allowed})"
            )
        if run["train_on"] == "A" and dataset.get("randomized_labels") is None:
            yield f"{key}.train_on: 'A' needs datasets.{dataset_name}.randomized_labels"
        size = run_train_size(config, run)
        batch = run["optimizer"]["batch_size"]
        if isinstance(batch, int) and size is not None and batch > size:
            yield (
                f"{key}.optimizer.batch_size: {batch} is larger than the {size} training "
                f"samples of dataset {dataset_name!r}"
            )
        every = run["checkpoint_every"]
        if every is not None and size is not None:
            total = run["epochs"] * steps_per_epoch(size, batch)
            if every > total:
                yield f"{key}.checkpoint_every: {every} steps exceeds the run's {total} steps"
        parent = run["init_from"]
        if parent is not None:
            chain = _init_chain(config, name)
            if parent not in config["runs"]:
                yield f"{key}.init_from: unknown run {parent!r}"
            elif len(chain) != len(set(chain)):
                yield f"{key}.init_from: cycle {' -> '.join(chain)}"
            else:
                other = config["runs"][parent]
                if other["model"] != model or other["dataset"] != dataset_name:
                    yield f"{key}.init_from: run {parent!r} has a different model or dataset"
                if set(run["seeds"]) - set(other["seeds"]):
                    yield f"{key}.seeds: init_from run {parent!r} lacks some of these seeds"


@check
def _toy(config: dict[str, Any]) -> Iterator[str]:
    fig7 = config.get("toy", {}).get("fig7")
    if fig7 and fig7["average_from"] >= fig7["steps"]:
        yield (
            f"toy.fig7.average_from: {fig7['average_from']} must be below toy.fig7.steps "
            f"({fig7['steps']})"
        )


@check
def _projection(config: dict[str, Any]) -> Iterator[str]:
    if "projection" in config:
        yield from projection_plan.problems(config)


# Each catalogue section's cross-key checks live beside its code and name the key.
SECTION_CHECKS = (
    curvature_runs.problems,
    appendix_config.problems,
    sagun_config.problems,
    barriers_config.problems,  # Xing et al. 2018 §3 (Figs 1-4, Table 1)
    xing_config.problems,  # Xing et al. 2018 Figs 5-7
)


@check
def _sections(config: dict[str, Any]) -> Iterator[str]:
    for problems in SECTION_CHECKS:
        yield from problems(config)


@check
def _resources(config: dict[str, Any]) -> Iterator[str]:
    section = config["resources"]
    limits = section["limits"]
    for rule, requested in section.items():
        if rule == "limits":
            continue
        if rule != "default" and rule not in stages.STAGES:
            known = ", ".join(sorted(stages.STAGES))
            yield f"resources.{rule}: no rule of that name (rules: {known})"
            continue
        for key in resources.KEYS:
            if requested.get(key, 0) > limits[key]:
                yield (
                    f"resources.{rule}.{key}: {requested[key]} is above resources.limits.{key} "
                    f"({limits[key]}); raise the limit if your cluster allows it"
                )
