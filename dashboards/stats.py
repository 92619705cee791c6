"""Statistics for comparing optimizers on confirm-phase seeds (re-exported).

The functions live in `studies.results.stats` so that the command line's cross-campaign
comparison (`studies.results.across`) and the reports use one implementation; the module
docstring there explains the tests and verdicts.
"""

from __future__ import annotations

from studies.results import (
    CANDIDATES,
    Comparison,
    Summary,
    compare_groups,
    comparison_tables,
    holm,
    mann_whitney,
    summarize,
)

__all__ = [
    "CANDIDATES",
    "Comparison",
    "Summary",
    "compare_groups",
    "comparison_tables",
    "holm",
    "mann_whitney",
    "summarize",
]
