"""The project's results tables (next to Optuna's, in the same database) and pandas views of them.

- `schema`: the tables (`hvadam_campaigns`, `hvadam_runs`, `hvadam_curves`, `hvadam_claims`).
- `provenance`: what a run records about where its numbers come from (versions, CUDA, GPU, git, machine).
- `db`: `ResultsDB`, the writes and the progress reads; `claims`: its confirm claims.
- `frames`: `runs_frame`, `curves_frame`, `compare_frame` (columns: docs/architecture-results.md).
- `values`: how values are stored (strict JSON, finite floats).
- `tuning`: budget curves, time-to-target and best-so-far against compute (docs/tuning-analysis.md).

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
from studies.results.tuning import (
    BEST_SO_FAR_COLUMNS,
    BUDGET_CURVE_COLUMNS,
    TIME_TO_TARGET_COLUMNS,
    best_so_far,
    best_so_far_frame,
    bootstrap_band,
    budget_curve_frame,
    budget_curves,
    campaign_target,
    expected_best_curve,
    search_counts,
    target_of_spec,
    time_to_target,
    time_to_target_frame,
)
from studies.results.values import finite_or_none, is_finite_number, jsonable

__all__ = [
    "BEST_SO_FAR_COLUMNS",
    "BUDGET_CURVE_COLUMNS",
    "COMPARE_COLUMNS",
    "CURVE_COLUMNS",
    "PHASES",
    "RUN_COLUMNS",
    "STATUSES",
    "TIME_TO_TARGET_COLUMNS",
    "CampaignConflict",
    "CampaignRow",
    "ClaimRow",
    "CurveRow",
    "ResultsDB",
    "RunRow",
    "best_so_far",
    "best_so_far_frame",
    "bootstrap_band",
    "budget_curve_frame",
    "budget_curves",
    "campaign_target",
    "compare_frame",
    "curves_frame",
    "expected_best_curve",
    "finite_or_none",
    "git_revision",
    "gpu_name",
    "is_finite_number",
    "jsonable",
    "library_versions",
    "run_provenance",
    "runs_frame",
    "search_counts",
    "target_of_spec",
    "time_to_target",
    "time_to_target_frame",
    "worker_name",
]
