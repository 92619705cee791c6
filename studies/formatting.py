"""Tables the command line prints: plain text columns, and the comparison as a table, CSV or
JSON (full precision)."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["format_across", "format_compare", "format_number", "table"]


def format_number(value: Any, digits: int = 5) -> str:
    if value is None:
        return "-"
    try:
        if isinstance(value, float) and math.isnan(value):
            return "-"
    except TypeError:
        pass
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


def _std(std: float, mean: float) -> float:
    # Deterministic workloads give identical confirm values; show 0, not rounding noise.
    if isinstance(std, float) and not math.isnan(std) and std <= 1e-12 * max(1.0, abs(mean)):
        return 0.0
    return std


def _json_value(value: Any) -> Any:
    """A frame cell as JSON: numbers at full precision (repr), NaN as null."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # NumPy scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return str(value)


def format_compare(frame: Any, fmt: str = "table") -> str:
    """The comparison frame as an aligned text table, CSV or JSON."""
    if fmt == "csv":
        return frame.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        # Full precision (pandas' `to_json` keeps 10 digits: 3.2e-11 would become 0.0).
        records = [
            {key: _json_value(value) for key, value in rec.items()}
            for rec in frame.to_dict(orient="records")
        ]
        return json.dumps(records, indent=2, allow_nan=False)
    if frame.empty:
        return "(no optimizers)"
    metric = frame["metric"].iloc[0]
    arrow = "higher" if frame["direction"].iloc[0] == "maximize" else "lower"
    headers = [
        "rank",
        "optimizer",
        f"best search {metric}",
        f"confirm {metric} mean",
        "std",
        "seeds",
        "complete",
        "pruned",
        "failed",
        "compute s",
    ]
    rows = []
    for i, rec in enumerate(frame.to_dict(orient="records"), start=1):
        rows.append(
            [
                str(i),
                rec["optimizer"],
                format_number(rec["best_value"]),
                format_number(rec["confirm_mean"]),
                format_number(_std(rec["confirm_std"], rec["confirm_mean"]), 2),
                str(rec["confirm_seeds"]),
                str(rec["trials_complete"]),
                str(rec["trials_pruned"]),
                str(rec["trials_failed"]),
                f"{rec['compute_time']:.1f}",
            ]
        )
    footer = f"\n({arrow} {metric} is better; ranked by the confirm mean)"
    if "target_seconds" in frame:  # time-to-target (studies/tuning_output.py)
        headers += ["s to target", "trials to target"]
        for row, rec in zip(rows, frame.to_dict(orient="records"), strict=True):
            hit = bool(rec["target_reached"])
            row += [f"{rec['target_seconds']:.1f}" if hit else "not reached",
                    str(rec["target_trials"]) if hit else "-"]  # fmt: skip
        sign = ">=" if arrow == "higher" else "<="
        footer += (
            f"\n(to target: search trials in start order until one reached {metric} {sign} "
            f"{format_number(float(frame['target'].iloc[0]))}; s = their summed wall time, the last "
            f"one's up to the epoch it got there)"
        )
    return table(headers, rows) + footer


def format_across(across: Any, fmt: str = "table") -> str:
    """Several campaigns (`studies.results.Across`): the tidy rank table as CSV or JSON, or an
    optimizer x campaign text table followed by the win/tie/loss counts."""
    frame = across.table
    if fmt in ("csv", "json"):
        return format_compare(frame, fmt)
    headers = ["optimizer"]
    for name, info in across.meta.iterrows():
        arrow = "higher" if info["direction"] == "maximize" else "lower"
        headers.append(f"{name} ({info['metric']}, {arrow} better)")
    cells: dict[tuple[str, str], str] = {}
    for rec in frame.to_dict(orient="records"):
        text = "-"
        if isinstance(rec["value"], float) and not math.isnan(rec["value"]):
            text = f"{format_number(rec['value'], 4)} #{rec['rank']}"
            if rec["source"] == "search":
                text += "*"
            elif rec["vs_best"] == "not significant":
                text += " ns"
            elif rec["vs_best"] in ("too few seeds", "not testable (no spread)"):
                text += " ?"
        cells[(rec["optimizer"], rec["campaign"])] = text
    body = [
        [o] + [cells.get((o, c), "absent") for c in across.campaigns] for o in across.optimizers
    ]
    lines = [
        table(headers, body),
        "(#k: rank in the campaign by its confirm mean; ns: not significantly worse than the "
        f"campaign's best, Welch + Holm at alpha {across.alpha:g}; ?: not testable; no mark: "
        "significantly worse; *: best search value, the campaign has no confirm phase)",
    ]
    wtl = across.win_tie_loss()
    if not wtl.empty:
        lines.append("")
        lines.append(
            table(
                ["candidate", "baseline", "wins", "ties", "losses", "campaigns"],
                [[str(v) for v in rec.values()] for rec in wtl.to_dict(orient="records")],
            )
        )
    return "\n".join(lines)
