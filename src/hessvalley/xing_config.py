"""Cross-key checks of the sections behind Xing et al. 2018 Figs 5-7 (``minibatch_alignment``,
``gradient_cosine``), each naming the key; torch-free (run while the workflow parses).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hessvalley.schedule import run_checkpoint_steps, run_train_size, steps_per_epoch


def _hessian_samples(config: Mapping[str, Any], run: Mapping[str, Any]) -> int | None:
    """M, the samples the Hessian and the batches are taken over (None: unknown yet)."""
    size = run_train_size(config, run)
    chosen = config["minibatch_alignment"]["n_samples"] or config["curvature"]["n_samples"]
    if size is None:
        return None
    return size if chosen is None else min(int(chosen), size)


def _abbreviated(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) if len(steps) <= 6 else f"{steps[0]}, {steps[1]}, ..."


def _checkpoints(config: Mapping[str, Any], name: str) -> Iterator[str]:
    """``epochs`` land on stored checkpoints; ``checkpoints`` indices are in range."""
    section = config["minibatch_alignment"]
    steps = run_checkpoint_steps(config, name)
    if steps is None:
        return
    if section["epochs"] is not None:
        run = config["runs"][name]
        per_epoch = steps_per_epoch(run_train_size(config, run), run["optimizer"]["batch_size"])
        missing = [e for e in section["epochs"] if e * per_epoch not in steps]
        if missing:
            yield (
                f"minibatch_alignment.epochs: run {name!r} has no checkpoint at the end of "
                f"epoch(s) {missing} ({per_epoch} steps an epoch, checkpoints at steps "
                f"{_abbreviated(steps)}): set runs.{name}.checkpoint_every"
            )
    elif isinstance(section["checkpoints"], list):
        bad = [k for k in section["checkpoints"] if not -len(steps) <= k < len(steps)]
        if bad:
            yield (
                f"minibatch_alignment.checkpoints: {bad} out of range: run {name!r} has "
                f"{len(steps)} checkpoints (negative ones count from the end)"
            )


def _minibatch_alignment(config: Mapping[str, Any]) -> Iterator[str]:
    section = config["minibatch_alignment"]
    if not section["runs"]:
        return
    if section["epochs"] is not None and section["checkpoints"] is not None:
        yield "minibatch_alignment.epochs: give epochs or checkpoints, not both"
    if len(set(section["batch_sizes"])) < 2:
        yield "minibatch_alignment.batch_sizes: at least two batch sizes are compared"
    if section["prediction"] and config["curvature"]["batch_norm"] != "eval":
        yield (
            f"curvature.batch_norm: {config['curvature']['batch_norm']!r} gives no per-sample "
            "gradients; minibatch_alignment.prediction needs 'eval' (or set it to false)"
        )
    for name in section["runs"]:
        run = config["runs"].get(name)
        if run is None:
            yield f"minibatch_alignment.runs: unknown run {name!r}"
            continue
        missing = sorted(set(section["seeds"] or []) - set(run["seeds"]))
        if missing:
            yield f"minibatch_alignment.seeds: {missing} are not seeds of run {name!r}"
        n_samples = _hessian_samples(config, run)
        too_large = [
            s for s in section["batch_sizes"] if s != "full" and n_samples and s > n_samples
        ]
        if too_large:
            yield (
                f"minibatch_alignment.batch_sizes: {too_large} exceed the {n_samples} samples "
                f"the Hessian of run {name!r} is taken over (curvature.n_samples, "
                "minibatch_alignment.n_samples)"
            )
        yield from _checkpoints(config, name)


def _gradient_cosine(config: Mapping[str, Any]) -> Iterator[str]:
    names = config["gradient_cosine"]["runs"]
    runs = {}
    for name in names:
        if name not in config["runs"]:
            yield f"gradient_cosine.runs: unknown run {name!r}"
        elif not config["runs"][name]["log_grad_cosine"]:
            yield f"runs.{name}.log_grad_cosine: must be true (gradient_cosine.runs reads it)"
        else:
            runs[name] = config["runs"][name]
    if not names or len(runs) < len(names):
        return
    sizes = {
        n: run_train_size(config, r)
        if r["optimizer"]["batch_size"] == "full"
        else r["optimizer"]["batch_size"]
        for n, r in runs.items()
    }
    if len(set(sizes.values())) < 2:
        yield f"gradient_cosine.runs: at least two batch sizes are compared (got {sizes})"
    for key, what in (("lr", "learning rate"), ("momentum", "momentum")):
        values = {n: r["optimizer"][key] for n, r in runs.items()}
        if len(set(values.values())) > 1:
            yield f"gradient_cosine.runs: the runs must share the {what} (got {values})"
    shared = {n: (r["model"], r["dataset"], r["loss"]) for n, r in runs.items()}
    if len({str(v) for v in shared.values()}) > 1:
        yield "gradient_cosine.runs: the runs must share model, dataset and loss"
    steps = {n: run_checkpoint_steps(config, n) for n in runs}
    lengths = {n: s[-1] for n, s in steps.items() if s is not None}
    if len(set(lengths.values())) > 1:
        yield f"gradient_cosine.runs: the runs must take equal iteration counts (got {lengths})"
    early = [n for n, r in runs.items() if r["stop_below_loss"] is not None]
    if early:
        yield f"gradient_cosine.runs: {early} may stop early (stop_below_loss): unequal lengths"


def problems(config: Mapping[str, Any]) -> Iterator[str]:
    """Every problem of the two sections, as ``"key.path: what is wrong"``."""
    yield from _minibatch_alignment(config)
    yield from _gradient_cosine(config)
