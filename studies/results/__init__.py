"""The project's results tables (next to Optuna's, in the same database) and pandas views of them.

- `schema`: the tables (`hvadam_campaigns`, `hvadam_runs`, `hvadam_curves`, `hvadam_claims`).
- `provenance`: what a run records about where its numbers come from (versions, CUDA, GPU, git, machine).
- `db`: `ResultsDB`, the writes and the progress reads; `claims`: its confirm claims.
- `frames`: `runs_frame`, `curves_frame`, `compare_frame` (columns: docs/architecture-results.md).
- `values`: how values are stored (strict JSON, finite floats).

Everything public is importable from `studies.results` itself.
"""

from studies.results.db import ResultsDB
from studies.results.frames import (
    COMPARE_COLUMNS,
    CURVE_COLUMNS,
    RUN_COLUMNS,
    compare_frame,
    curves_frame,
    runs_frame,
)
from studies.results.provenance import (
    git_revision,
    gpu_name,
    library_versions,
    run_provenance,
    worker_name,
)
from studies.results.schema import (
    PHASES,
    STATUSES,
    CampaignConflict,
    CampaignRow,
    ClaimRow,
    CurveRow,
    RunRow,
)
from studies.results.values import finite_or_none, is_finite_number, jsonable

__all__ = [
    "COMPARE_COLUMNS",
    "CURVE_COLUMNS",
    "PHASES",
    "RUN_COLUMNS",
    "STATUSES",
    "CampaignConflict",
    "CampaignRow",
    "ClaimRow",
    "CurveRow",
    "ResultsDB",
    "RunRow",
    "compare_frame",
    "curves_frame",
    "finite_or_none",
    "git_revision",
    "gpu_name",
    "is_finite_number",
    "jsonable",
    "library_versions",
    "run_provenance",
    "runs_frame",
    "worker_name",
]
