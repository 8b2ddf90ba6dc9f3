"""The ``hessvalley`` command: run one stage (what every rule does), list the stages, check
stores, print the claims table.

``hessvalley run <stage> --kwargs JSON --io JSON`` calls the stage's function (see
``hessvalley stages``) with the JSON objects as keyword arguments: ``kwargs`` are config
values, ``io`` are paths. Execution-only settings that change how a job runs but not what it
computes come from the environment, so changing them re-runs nothing: the compute device
(``HESSVALLEY_DEVICE``, default cpu) and the checkpoint flush interval
(``HESSVALLEY_CHECKPOINT_FLUSH_SECONDS``); each is passed only to stages that take it.

With ``--log`` all output (progress bars included) goes to that file, and a failure's
one-line reason is also written to the terminal, so Snakemake's output and a SLURM job's log
name the problem without opening the log. Exit statuses: 0 done; 3 a failure a retry cannot
fix (bad input, damaged store, divergence, store busy); 1 anything else (traceback in the
log); 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import signal
import sys
import textwrap
import traceback
from typing import Any

from hessvalley import stages
from hessvalley.errors import EXIT_FAILED, EXIT_OK, EXIT_PERMANENT, HessvalleyError

ENVIRONMENT_OPTIONS = {
    "device": ("HESSVALLEY_DEVICE", str),
    "checkpoint_flush_seconds": ("HESSVALLEY_CHECKPOINT_FLUSH_SECONDS", float),
}


def _redirect_to_log(log_path: str) -> int:
    """Send fds 1 and 2 (Python and C level) to the log; return a dup of the old stderr."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    terminal = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    return terminal


def set_threads(threads: int | None) -> None:
    """torch intra-op threads; torch reads OMP_NUM_THREADS when (and if) a stage imports it,
    so figure stages never pay for the import."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    # Deterministic cuBLAS (needed by torch.use_deterministic_algorithms on CUDA) must be
    # configured before CUDA starts; it does nothing on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def run_stage(stage: str, kwargs: dict[str, Any], threads: int | None = None) -> Any:
    """Call ``stage``'s function with ``kwargs`` plus the execution settings it accepts."""
    stages.check_stage(stage)
    set_threads(threads)
    module, function = stages.target(stage)
    func = getattr(importlib.import_module(module), function)
    accepted = inspect.signature(func).parameters
    for name, (variable, convert) in ENVIRONMENT_OPTIONS.items():
        if name in accepted and name not in kwargs and os.environ.get(variable):
            kwargs = {**kwargs, name: convert(os.environ[variable])}
    return func(**kwargs)


def _print_stages() -> int:
    width = max(map(len, stages.STAGES)) + 2
    for name in sorted(stages.STAGES):
        print(f"{name:<{width}}{stages.STAGES[name]}")
        print(textwrap.fill(stages.summary(name), 100, initial_indent=" " * width,
                            subsequent_indent=" " * width))  # fmt: skip
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    terminal = _redirect_to_log(args.log) if args.log else None

    def tell(text: str) -> None:
        sys.stderr.write(text)
        if terminal is not None:
            os.write(terminal, text.encode())

    try:
        run_stage(args.stage, {**json.loads(args.kwargs), **json.loads(args.io)}, args.threads)
    except (HessvalleyError, stages.UnknownStageError) as err:
        tell(f"hessvalley {args.stage}: {err}\n")
        return EXIT_PERMANENT
    except Exception:
        text = traceback.format_exc()
        sys.stderr.write(text)
        if terminal is not None:
            os.write(terminal, f"hessvalley {args.stage}: {text.splitlines()[-1]}\n".encode())
        return EXIT_FAILED
    return EXIT_OK


def _positive(kind: type, zero: bool = False):
    """An argparse type: ``kind`` above 0 (or at least 0 with ``zero``)."""

    def convert(text: str):
        value = kind(text)
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(
                f"must be {'non-negative' if zero else 'positive'}, got {text}"
            )
        return value

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return convert


def _add_plan_parser(sub: Any) -> None:
    p_plan = sub.add_parser(
        "plan",
        help="jobs, time, memory and disk per stage from a short calibration; "
        "exit 2 if a job exceeds its SLURM limits",
    )
    p_plan.add_argument(
        "--configfile",
        nargs="+",
        default=["config/config.yaml"],
        help="config file(s), merged in order as Snakemake does (replace the default)",
    )
    p_plan.add_argument("--device", default=None, help="calibration device (config's device)")
    p_plan.add_argument(
        "--gd-steps",
        type=_positive(int, zero=True),
        default=10,
        help="GD steps per projection (10)",
    )
    p_plan.add_argument(
        "--bisections",
        type=_positive(int, zero=True),
        default=1,
        help="bisection projections per grid interval (1)",
    )
    p_plan.add_argument(
        "--speedup", type=_positive(float), default=1.0, help="divide device times by this (1)"
    )
    p_plan.add_argument("--recalibrate", action="store_true", help="ignore the cached figures")
    p_plan.add_argument("--json", default=None, help="also write the plan as JSON here")
    p_plan.add_argument(
        "--cache-dir", default=".hessvalley/calibration", help="calibration cache folder"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hessvalley", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run one stage with JSON keyword arguments")
    p_run.add_argument("stage", help="a stage name (hessvalley stages lists them)")
    p_run.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p_run.add_argument("--io", default="{}", help="JSON object of path keyword arguments")
    p_run.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p_run.add_argument("--log", default=None, help="append all output to this file")
    sub.add_parser("stages", help="list every stage, its function and what it does")
    p_verify = sub.add_parser(
        "verify", help="check stores (folders are searched); exit 1 if any is damaged"
    )
    p_verify.add_argument("paths", nargs="+", help="stores, or folders holding stores")
    p_claims = sub.add_parser("claims", help="print the claims table of a run")
    p_claims.add_argument(
        "path", nargs="?", default="results", help="results folder or claims.csv (results)"
    )
    _add_plan_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "run":
        return _run(args)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # listings piped into `head` end quietly
    if args.command == "stages":
        return _print_stages()
    if args.command == "plan":
        from hessvalley.costs.plan import plan_main

        return plan_main(args)
    if args.command == "verify":
        from hessvalley.verify import verify_main

        return verify_main(args.paths)
    from hessvalley.claims import claims_main

    return claims_main(args.path)


if __name__ == "__main__":
    sys.exit(main())
