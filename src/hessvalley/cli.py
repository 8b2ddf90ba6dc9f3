"""Command line entry used by every rule: ``hessvalley call module:function --kwargs JSON``.

Rules stay thin: they pass paths and a config subset as JSON keyword arguments to one
function of the package. The log file receives everything the function prints (progress
bars included); a failure's one-line reason is also written to the terminal so Snakemake's
output names the problem without opening the log.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from typing import Any


class HessvalleyError(RuntimeError):
    """An error the user can act on (bad input, divergence): shown without a traceback."""


def resolve(target: str) -> Any:
    module_name, _, function_name = target.partition(":")
    if not module_name.startswith("hessvalley") or not function_name:
        raise SystemExit(f"target must look like hessvalley.module:function, got {target!r}")
    return getattr(importlib.import_module(module_name), function_name)


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


def call(
    target: str,
    kwargs: dict[str, Any],
    threads: int | None = None,
    device: str | None = None,
    checkpoint_flush_seconds: float | None = None,
) -> Any:
    if threads:
        # torch reads this when (and if) the stage imports it; figure rules never pay for it.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    if device is not None:
        kwargs = {**kwargs, "device": device}
    if checkpoint_flush_seconds is not None:
        kwargs = {**kwargs, "checkpoint_flush_seconds": checkpoint_flush_seconds}
    return resolve(target)(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hessvalley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_call = sub.add_parser("call", help="run one stage function with JSON keyword arguments")
    p_call.add_argument("target", help="hessvalley.module:function")
    p_call.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    p_call.add_argument("--io", default="{}", help="JSON object of path keyword arguments")
    p_call.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p_call.add_argument("--log", default=None, help="append all output to this file")
    p_call.add_argument("--device", default=None, help="cpu, cuda or auto (passed as device=)")
    p_call.add_argument(
        "--checkpoint-flush-seconds",
        type=float,
        default=None,
        help="seconds between checkpoint writes (passed as checkpoint_flush_seconds=)",
    )
    args = parser.parse_args(argv)

    terminal = _redirect_to_log(args.log) if args.log else None
    try:
        call(
            args.target,
            {**json.loads(args.kwargs), **json.loads(args.io)},
            args.threads,
            args.device,
            args.checkpoint_flush_seconds,
        )
    except HessvalleyError as err:
        message = f"hessvalley: {err}\n"
        sys.stderr.write(message)
        if terminal is not None:
            os.write(terminal, message.encode())
        return 1
    except Exception:
        text = traceback.format_exc()
        sys.stderr.write(text)
        if terminal is not None:
            os.write(terminal, text.splitlines()[-1].encode() + b"\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
