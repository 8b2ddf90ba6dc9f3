"""Outcome codes of projections and connections, and their counts (torch-free).

Stored as the ``status`` array (per projected point) and the ``cause`` array (per pair of
neighbouring points) of the segment and path stores.
"""

from __future__ import annotations

import numpy as np

# Projection outcome codes (array ``status``).
CONVERGED, STEP_CAP, DIVERGED = 0, 1, 2
# Why a final neighbour pair is (not) connected (array ``cause``).
CONNECTED, BARRIER, NOT_CONVERGED = 0, 1, 2
STATUS_NAMES = {CONVERGED: "converged", STEP_CAP: "step cap", DIVERGED: "diverged"}
CAUSE_NAMES = {CONNECTED: "connected", BARRIER: "barrier", NOT_CONVERGED: "end not converged"}


def counts(converged: np.ndarray, cause: np.ndarray) -> dict[str, int]:
    """The counts a path or segment store records in its attrs."""
    return {
        "n_points": len(converged),
        "n_edges": len(cause),
        "n_failed_connections": int(np.sum(cause != CONNECTED)),
        "n_barrier_failures": int(np.sum(cause == BARRIER)),
        "n_not_converged_failures": int(np.sum(cause == NOT_CONVERGED)),
        "n_not_converged": int(np.sum(~converged)),
    }
