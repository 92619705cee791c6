"""The project's results tables (next to Optuna's, in the same database) and pandas views of them.

- `schema`: the tables (`hvadam_campaigns`, `hvadam_runs`, `hvadam_curves`, `hvadam_claims`).
- `provenance`: what a run records about where its numbers come from (versions, CUDA, GPU, git, machine).
- `db`: `ResultsDB`, the writes and the progress reads; `claims`: its confirm claims.
- `frames`: `runs_frame`, `curves_frame`, `compare_frame` (columns: docs/architecture-results.md).
- `values`: how values are stored (strict JSON, finite floats).
- `tuning`: budget curves, time-to-target and best-so-far against compute (docs/tuning-analysis.md).
- `stats`: confirm-seed statistics (intervals, Welch's t, Mann-Whitney U, Holm, verdicts).
- `across`: several campaigns at once: rank table, win/tie/loss, performance profiles.

Everything public is importable from `studies.results` itself.
"""

from studies.results.across import (
    ACROSS_COLUMNS,
    COST_RULES,
    OUTCOME_COLUMNS,
    WTL_COLUMNS,
    Across,
    UnknownCampaign,
    across_frame,
    load_across,
    profile_ratio,
)
from studies.results.db import ResultsDB
from studies.results.frames import (
    COMPARE_COLUMNS,
    CURVE_COLUMNS,
    RUN_COLUMNS,
    compare_frame,
    current_reruns,
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
from studies.results.stats import (
    CANDIDATES,
    Comparison,
    Summary,
    compare_groups,
    comparison_tables,
    holm,
    mann_whitney,
    summarize,
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
    "ACROSS_COLUMNS",
    "BEST_SO_FAR_COLUMNS",
    "BUDGET_CURVE_COLUMNS",
    "CANDIDATES",
    "COMPARE_COLUMNS",
    "COST_RULES",
    "CURVE_COLUMNS",
    "OUTCOME_COLUMNS",
    "PHASES",
    "RUN_COLUMNS",
    "STATUSES",
    "TIME_TO_TARGET_COLUMNS",
    "WTL_COLUMNS",
    "Across",
    "CampaignConflict",
    "CampaignRow",
    "ClaimRow",
    "Comparison",
    "CurveRow",
    "ResultsDB",
    "RunRow",
    "Summary",
    "UnknownCampaign",
    "across_frame",
    "best_so_far",
    "best_so_far_frame",
    "bootstrap_band",
    "budget_curve_frame",
    "budget_curves",
    "campaign_target",
    "compare_frame",
    "compare_groups",
    "comparison_tables",
    "current_reruns",
    "curves_frame",
    "expected_best_curve",
    "finite_or_none",
    "git_revision",
    "gpu_name",
    "holm",
    "is_finite_number",
    "jsonable",
    "library_versions",
    "load_across",
    "mann_whitney",
    "profile_ratio",
    "run_provenance",
    "runs_frame",
    "search_counts",
    "summarize",
    "target_of_spec",
    "time_to_target",
    "time_to_target_frame",
    "worker_name",
]
