"""What `hvadam compare` prints about tuning cost: `--budget-curve` and time-to-target columns.

    hvadam compare NAME --budget-curve --format csv    # optimizer,k,expected_best,lower,upper
    hvadam compare NAME --target 0.25                  # + compute seconds and trials to 0.25

The numbers come from `studies.results.tuning` (definitions: docs/tuning-analysis.md).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from studies.formatting import format_compare, format_number, table

__all__ = ["BUDGET_CURVE_OUTPUT", "add_compare_options", "compare_output"]

BUDGET_CURVE_OUTPUT = ["optimizer", "k", "expected_best", "lower", "upper"]


def add_compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--budget-curve",
        action="store_true",
        help="print each optimizer's expected best search value after k trials (k = 1..n, "
        "over its complete search trials) with a bootstrap 90%% band, instead of the table",
    )
    p.add_argument(
        "--target",
        type=float,
        metavar="V",
        help="add the compute seconds and search trials each optimizer needed to reach V "
        "(overrides the spec's `target: {value: V}`)",
    )


def _budget_table(frame: Any) -> str:
    if frame.empty:
        return "(no complete search trial)"
    rows = [
        [
            rec["optimizer"],
            str(rec["k"]),
            format_number(float(rec["expected_best"])),
            f"[{format_number(float(rec['lower']))}, {format_number(float(rec['upper']))}]",
        ]
        for rec in frame.to_dict(orient="records")
    ]
    return table(["optimizer", "k", "expected best", "90% band"], rows) + (
        "\n(expected best search value of k trials drawn from the complete ones)"
    )


def compare_output(
    url: str, campaign: str, *, fmt: str, budget_curve: bool = False, target: float | None = None
) -> str:
    """The text `hvadam compare` prints for one campaign."""
    from studies import results

    if target is not None and not math.isfinite(target):
        raise ValueError(f"--target must be a finite number, got {target}")
    if budget_curve:
        frame = results.budget_curve_frame(url, campaign)[BUDGET_CURVE_OUTPUT]
        return _budget_table(frame) if fmt == "table" else format_compare(frame, fmt)
    frame = results.compare_frame(url, campaign)
    if target is None:
        target = results.campaign_target(url, campaign)
    if target is not None:
        reach = results.time_to_target_frame(url, campaign, target)
        reach = reach[["optimizer", "target", "reached", "seconds", "trials"]].rename(
            columns={
                "reached": "target_reached",
                "seconds": "target_seconds",
                "trials": "target_trials",
            }
        )
        frame = frame.merge(reach, on="optimizer", how="left")
    return format_compare(frame, fmt)
