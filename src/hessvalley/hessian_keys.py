"""The ``curvature`` config keys that define a Hessian at stored parameters (torch-free).

Every curvature computation at stored parameters builds its operator from exactly these keys
(``hessvalley.curvature.factory.hessian_at``), and every rule running one passes exactly
this subset of the ``curvature`` section (``hessian_kwargs`` in workflow/rules/common.smk,
which imports this module while the workflow is parsed). So the trace of the curvature stage
and the trace along a projected path are of one operator, and a change of one of these keys
re-runs both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The mean loss over all training samples or a seeded subset (n_samples, subset_seed), with
# BatchNorm in the batch_norm mode, Hessian-vector products in dtype, chunk_size samples per
# chunk and probes_per_sweep vectors per data sweep, by the HVP method hvp_method (auto: the
# fastest measured; the methods differ only in rounding).
HESSIAN_KEYS = (
    "n_samples",
    "subset_seed",
    "batch_norm",
    "dtype",
    "chunk_size",
    "probes_per_sweep",
    "hvp_method",
)


def hessian_keys(curvature: Mapping[str, Any]) -> dict[str, Any]:
    """The Hessian keys of a ``curvature`` section (or of any mapping holding them)."""
    missing = [key for key in HESSIAN_KEYS if key not in curvature]
    if missing:
        raise KeyError(f"curvature keys missing: {', '.join(missing)} (need {HESSIAN_KEYS})")
    return {key: curvature[key] for key in HESSIAN_KEYS}
