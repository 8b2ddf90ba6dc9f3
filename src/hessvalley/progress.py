"""Progress bars that stay readable in a rule's log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm


class _LogLines:
    """File wrapper turning tqdm's carriage-return redraws into one line per update."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """tqdm on stderr; in a log file (not a terminal) one line at most every 10 s."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("file", sys.stderr if interactive else _LogLines(sys.stderr))
    kwargs.setdefault("mininterval", 0.5 if interactive else 10.0)
    kwargs.setdefault("ascii", not interactive)
    return tqdm(iterable, **kwargs)
