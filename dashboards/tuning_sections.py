"""The report's tuning-cost sections, their figures, and the budget table of the study notes.

- "Tuning budget": each optimizer's expected best search value after k trials (k = 1..n, over
  its complete search trials) with a bootstrap 90% band, and how many trials were pruned or
  failed, which the curve does not show.
- "Compute": the best value so far against the cumulative wall seconds of the search trials, and
  the time to the spec's `target: {value: V}` when it gives one.

The numbers come from `studies.results` (definitions: docs/tuning-analysis.md); the figures are
drawn like those of `dashboards.figures`: Plotly for the page, matplotlib for a PNG.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dashboards import figures
from dashboards.data import CampaignData
from studies.results import (
    best_so_far,
    budget_curves,
    search_counts,
    target_of_spec,
    time_to_target,
)

if TYPE_CHECKING:
    from dashboards.report import Section

__all__ = [
    "budget_curve_figures",
    "budget_markdown",
    "compute_figures",
    "compute_section",
    "note_ks",
    "tuning_section",
]

COUNTING = (
    "The curve is over the optimizer's complete search trials only: pruned (or stopped) and "
    "failed trials gave no final value, so they are not drawn from; their share is in the "
    "table, and an optimizer with many of them needed more trials than its curve's k says."
)


# ---- figures ------------------------------------------------------------------------------


def budget_curve_figures(
    curves: Mapping[str, pd.DataFrame], *, metric: str, path: Path
) -> tuple[Any, Path]:
    """Expected best after k trials per optimizer, its band shaded; log k axis."""
    go = figures._go()
    col = figures.colours(list(curves))
    fig = go.Figure()
    mfig, axes = figures._mpl_figure()
    ax = axes[0][0]
    for name, c in curves.items():
        k = c["k"].to_numpy()
        colour = col[name]
        lower, upper = c["lower"].to_numpy(), c["upper"].to_numpy()
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([k, k[::-1]]), y=np.concatenate([upper, lower[::-1]]),
                fill="toself", fillcolor=colour, opacity=0.2, line={"width": 0},
                hoverinfo="skip", showlegend=False, legendgroup=name,
            )
        )  # fmt: skip
        ax.fill_between(k, lower, upper, color=colour, alpha=0.2, linewidth=0)
        fig.add_trace(
            go.Scatter(x=k, y=c["expected_best"], mode="lines+markers", name=name,
                       line={"color": colour}, marker={"size": 4}, legendgroup=name)
        )  # fmt: skip
        ax.plot(k, c["expected_best"], color=colour, label=name, marker="o", markersize=3)
    fig.update_xaxes(type="log")
    ax.set_xscale("log")
    title = f"Expected best {metric} after k search trials (band: bootstrap 90%)"
    return figures._finish_xy(
        fig, mfig, ax, title=title, xlabel="k (search trials)", ylabel=metric, path=path
    )


def compute_figures(
    frame: pd.DataFrame, *, metric: str, target: float | None, path: Path
) -> tuple[Any, Path]:
    """Best value so far (a step line) against cumulative compute seconds, per optimizer."""
    go = figures._go()
    names = list(dict.fromkeys(frame["optimizer"]))
    col = figures.colours(names)
    fig = go.Figure()
    mfig, axes = figures._mpl_figure()
    ax = axes[0][0]
    for name in names:
        mine = frame.loc[frame["optimizer"] == name]
        x, y = mine["seconds"].to_numpy(), mine["best_so_far"].to_numpy()
        fig.add_trace(
            go.Scatter(x=x, y=y, mode="lines+markers", name=name, line_shape="hv",
                       line={"color": col[name]}, marker={"size": 4})
        )  # fmt: skip
        ax.step(x, y, where="post", color=col[name], label=name)
        ax.plot(x, y, "o", color=col[name], markersize=3)
    if target is not None:
        fig.add_hline(y=target, line={"dash": "dash", "color": "#555"}, annotation_text="target")
        ax.axhline(target, linestyle="--", color="#555", linewidth=1, label="target")
    title = f"Best {metric} so far against the search's compute"
    return figures._finish_xy(
        fig, mfig, ax, title=title, xlabel="cumulative wall time of search trials (s)",
        ylabel=metric, path=path,
    )  # fmt: skip


# ---- sections -----------------------------------------------------------------------------


def _share(v: float) -> str:
    return "–" if math.isnan(v) else f"{100 * v:.0f}%"


def tuning_section(data: CampaignData, out: Path) -> Section:
    from dashboards.report import Section, _p, _table

    s = Section("tuning", "Tuning budget")
    curves = budget_curves(data.runs, data.direction, optimizers=data.optimizers)
    counts = search_counts(data.runs, data.optimizers)
    if curves.empty:
        s.empty = "No complete search trial yet: no tuning-budget curve."
    else:
        s.parts.append(
            _p(
                f"For k = 1..n, the expected best search {data.metric} of k trials drawn at "
                "random (without replacement) from an optimizer's n complete search trials: "
                "exact, from the order statistics (sorted worst to best, the best of k is the "
                "i-th with probability C(i-1, k-1) / C(n, k)). k = 1 is the mean trial, k = n "
                "the best one: the curve shows what a smaller tuning budget would have given. "
                "Band: bootstrap 90% (1000 resamples of the n values, fixed seed). " + COUNTING
            )
        )
    ends = curves.groupby("optimizer", sort=False)["expected_best"].agg(["first", "last"])
    table = counts.assign(
        share_pruned=counts["share_pruned"].map(_share),
        share_failed=counts["share_failed"].map(_share),
        first=counts["optimizer"].map(ends["first"]),
        last=counts["optimizer"].map(ends["last"]),
    )
    if len(table):  # the counts say why a curve is short or missing
        s.parts.append(
            _table(
                table,
                {
                    "optimizer": "optimizer",
                    "n_search": "search trials",
                    "n_complete": "complete (n)",
                    "n_pruned": "pruned / stopped",
                    "n_failed": "failed",
                    "share_pruned": "pruned share",
                    "share_failed": "failed share",
                    "first": "expected best, k = 1",
                    "last": "best, k = n",
                },
            )
        )
    if curves.empty:
        return s
    by_opt = {o: curves.loc[curves["optimizer"] == o] for o in dict.fromkeys(curves["optimizer"])}
    s.figure, s.png = budget_curve_figures(by_opt, metric=data.metric, path=out / "tuning.png")
    return s


def compute_section(data: CampaignData, out: Path) -> Section:
    from dashboards.report import Section, _p, _table

    s = Section("compute", "Compute")
    frame = best_so_far(data.runs, data.direction, optimizers=data.optimizers)
    target = target_of_spec(data.spec)
    if frame.empty or frame["best_so_far"].isna().all():
        s.empty = "No complete search trial yet: nothing to plot against compute."
        return s
    s.parts.append(
        _p(
            f"The best {data.metric} of the complete search trials so far against the summed "
            "wall time of the optimizer's search trials (pruned and failed ones included: they "
            "cost time too), in start order. The seconds are compute, not elapsed time: trials "
            "that ran at once on several workers add up."
        )
    )
    s.parts.append("<h3>Time to target</h3>")
    if target is None:
        s.parts.append(
            _p(
                "No time-to-target: the campaign's spec gives no target (add `target: {value: "
                "V}` to it, or run `hvadam compare NAME --target V`)."
            )
        )
    else:
        reach = time_to_target(
            data.runs, data.curves, metric=data.metric, direction=data.direction,
            target=target, optimizers=data.optimizers,
        )  # fmt: skip
        sign = ">=" if data.direction == "maximize" else "<="
        s.parts.append(
            _p(
                f"Search trials in start order until one first reached {data.metric} {sign} "
                f"{target:g} (judged on its per-epoch curve, else its final value); seconds = "
                "the wall time of the trials before it plus the part of its own up to that "
                "epoch."
            )
        )
        reach = reach.assign(
            reached=reach["reached"].map({True: "yes", False: "no"}),
            trials=reach["trials"].astype(object).where(reach["trials"].notna(), None),
            epoch=reach["epoch"].astype(object).where(reach["epoch"].notna(), None),
        )
        s.parts.append(
            _table(
                reach,
                {
                    "optimizer": "optimizer",
                    "reached": "reached",
                    "seconds": "seconds to target",
                    "trials": "trials to target",
                    "epoch": "at epoch",
                    "total_seconds": "search seconds in all",
                    "total_trials": "search trials in all",
                },
            )
        )
    s.figure, s.png = compute_figures(
        frame, metric=data.metric, target=target, path=out / "compute.png"
    )
    return s


# ---- study notes --------------------------------------------------------------------------


def note_ks(n: int) -> list[int]:
    """k = 1, 2, 4, 8, ... below n, and n."""
    ks = [1 << j for j in range(max(n, 1).bit_length()) if 1 << j < n]
    return [*ks, n] if n >= 1 else []


def budget_markdown(data: CampaignData) -> str:
    """The budget curves as a Markdown table (k = 1, 2, 4, ..., n), or a line saying why not."""
    curves = budget_curves(data.runs, data.direction, optimizers=data.optimizers)
    if curves.empty:
        return "_No complete search trial yet: no tuning-budget curve._"
    names = list(dict.fromkeys(curves["optimizer"]))
    by_opt = {o: curves.loc[curves["optimizer"] == o].set_index("k") for o in names}
    ks = note_ks(int(curves["k"].max()))
    ks = sorted(set(ks) | {len(c) for c in by_opt.values()})
    lines = [
        f"Expected best search {data.metric} after k trials drawn from each optimizer's complete "
        "search trials, with its bootstrap 90% band (pruned and failed trials are not drawn "
        "from; their counts are in the comparison above).",
        "",
        "| k | " + " | ".join(html.escape(n) for n in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for k in ks:
        cells = []
        for name in names:
            c = by_opt[name]
            if k in c.index:
                r = c.loc[k]
                cells.append(f"{r['expected_best']:.4g} [{r['lower']:.4g}, {r['upper']:.4g}]")
            else:
                cells.append("–")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
