"""`hvadam report A B C -o DIR`: several campaigns on one self-contained page, plus PNGs.

The page has the rank table (optimizer x campaign: confirm means, ranks, significance against
each campaign's best), the win/tie/loss counts of HVAdam and Anon against every baseline, and
the performance profiles (Dolan-More, as AlgoPerf aggregates across workloads). The numbers
come from `studies.results.load_across`, which reads each campaign's runs only (never its
curves); docs/cross-workload.md defines them. Like the single report, it opens offline
(plotly.js inlined once) and reuses that report's page pieces.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any

from dashboards import figures
from dashboards.report import Report, Section, _fmt, _p, _table, render_page

__all__ = ["MULTI_SECTIONS", "build_multi_report", "write_multi_report"]

# (id, heading) in page order; the tests look for these headings.
MULTI_SECTIONS = (
    ("ranks", "Rank table"),
    ("wins", "Win/tie/loss"),
    ("profiles", "Performance profiles"),
)


# ---- sections -----------------------------------------------------------------------------


def _cell(rec: dict[str, Any]) -> str:
    value = rec["value"]
    if not isinstance(value, float) or math.isnan(value):
        return "–"
    text = _fmt(value)
    if isinstance(rec["std"], float) and not math.isnan(rec["std"]):
        text += f" ± {_fmt(rec['std'], 2)}"
    text += f" <b>#{rec['rank']}</b>"
    marks = {"not significant": " ns", "too few seeds": " ?", "not testable (no spread)": " ?"}
    if rec["source"] == "search":  # one value per optimizer: never tested, marked as such
        return text + "*"
    return text + marks.get(rec["vs_best"], "")


def _ranks(across: Any) -> Section:
    s = Section("ranks", "Rank table")
    frame = across.table
    s.parts.append(
        _p(
            "Each cell: the optimizer's confirm mean ± standard deviation over its confirm "
            "seeds and #rank within the campaign (1 = best by the campaign's own metric and "
            "direction). Against each campaign's best: ns = not significantly worse, ? = not "
            "testable (fewer than two seeds, or no spread), no mark = significantly worse "
            f"(Welch's t-test, Holm-corrected over the campaign's optimizers, alpha "
            f"{across.alpha:g}). * = the campaign's confirm phase has not run: its best search "
            "value (one value, no test). – = no value; absent = not in the campaign."
        )
    )
    cells = {(r["optimizer"], r["campaign"]): r for r in frame.to_dict(orient="records")}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in across.campaigns)
    body = []
    for opt in across.optimizers:
        tds = "".join(
            f"<td>{_cell(cells[(opt, c)]) if (opt, c) in cells else 'absent'}</td>"
            for c in across.campaigns
        )
        body.append(f"<tr><td>{html.escape(opt)}</td>{tds}</tr>")
    s.parts.append(
        f'<table class="ranks"><thead><tr><th>optimizer</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    from studies.results import COST_RULES

    rows = [
        {
            "campaign": c,
            "metric": info["metric"],
            "direction": info["direction"],
            "values": "confirm means" if info["source"] == "confirm" else "best search",
            "best": info["best"] or "–",
            "cost": COST_RULES[str(info["cost_rule"])],
        }
        for c, info in across.meta.iterrows()
    ]
    import pandas as pd

    s.parts.append("<h3>Campaigns</h3>")
    s.parts.append(_table(pd.DataFrame(rows), {k: k for k in rows[0]}))
    return s


def _wins(across: Any, out: Path) -> Section:
    s = Section("wins", "Win/tie/loss")
    s.parts.append(
        _p(
            "HVAdam and Anon (the studies whose optimizer class is a candidate) against each "
            "baseline, one outcome per campaign holding both, tested as the single report does: "
            "Welch's t-test on the confirm seeds, Holm-corrected over the campaign's "
            f"candidate-baseline pairs. Win / loss: a significant difference (alpha "
            f"{across.alpha:g}) in the candidate's favour / against it; tie: anything else "
            "(not significant, fewer than two seeds, no spread)."
        )
    )
    wtl = across.win_tie_loss()
    if wtl.empty:
        s.empty = "No campaign holds both a candidate (HVAdam or Anon) and a baseline."
        return s
    s.parts.append(_table(wtl, {k: k for k in wtl.columns}))
    s.figure, s.png = _wins_figures(wtl, path=out / "win_tie_loss.png")
    return s


def _profiles(across: Any, out: Path) -> Section:
    s = Section("profiles", "Performance profiles")
    n = len(across.campaigns)
    s.parts.append(
        _p(
            "Dolan-Moré performance profiles over the campaigns: an optimizer's ratio on a "
            "campaign is its cost over the best optimizer's cost there (1 for the best); "
            f"rho(tau) is the fraction of the {n} campaign(s) on which its ratio is at most tau. "
            "Higher and further left is better. Cost: the value for a minimised metric; for a "
            "maximised one 1 - value when all its values lie in [0, 1] (the error), else "
            "1 / value. An optimizer missing from a campaign, without a value there, or behind "
            "a best cost that is not positive (a loss of 0 or below) is never within tau."
        )
    )
    ratios = across.ratios()
    s.parts.append(
        _table(
            ratios.reset_index().rename(columns={"index": "optimizer"}),
            {"optimizer": "ratio", **{c: c for c in across.campaigns}},
        )
    )
    s.figure, s.png = _profile_figures(across.profile_steps(), n, path=out / "profiles.png")
    return s


# ---- figures ------------------------------------------------------------------------------


def _profile_figures(
    steps: dict[str, tuple[list[float], list[float]]], n: int, *, path: Path
) -> tuple[Any, Path]:
    """One right-continuous step curve per optimizer, tau on x (log scale for wide ranges)."""
    go = figures._go()
    finite = [t for taus, _ in steps.values() for t in taus]
    top = max([2.0, *finite]) * 1.1
    logx = top > 20
    col = figures.colours(list(steps))
    fig = go.Figure()
    mfig, axes = figures._mpl_figure()
    ax = axes[0][0]
    for opt, (taus, rhos) in steps.items():
        xs, ys = [1.0], [0.0]
        for t, r in zip(taus, rhos, strict=True):
            xs.append(t)
            ys.append(r)
        xs.append(top)
        ys.append(ys[-1])
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="lines", name=opt, line={"shape": "hv", "color": col[opt]})
        )
        ax.step(xs, ys, where="post", label=opt, color=col[opt], linewidth=2)
    title = f"Performance profiles over {n} campaign(s)"
    figures._layout(
        fig, title, xaxis_title="tau (ratio to the best)", yaxis_title="rho(tau)",
        xaxis_type="log" if logx else "linear", yaxis_range=[-0.03, 1.03],
    )  # fmt: skip
    if logx:
        ax.set_xscale("log")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(1.0, top)
    ax.set_xlabel("tau (ratio to the best)")
    ax.set_ylabel("rho(tau): fraction of campaigns within tau")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig, figures._save(mfig, path)


def _wins_figures(wtl: Any, *, path: Path) -> tuple[Any, Path]:
    """Stacked horizontal bars: wins, ties, losses of every candidate-baseline pair."""
    go = figures._go()
    labels = [f"{c} vs {b}" for c, b in zip(wtl["candidate"], wtl["baseline"], strict=True)]
    kinds = (("wins", "#2ca02c"), ("ties", "#bbbbbb"), ("losses", "#d62728"))
    fig = go.Figure(
        [go.Bar(y=labels, x=wtl[k], name=k, orientation="h", marker_color=c) for k, c in kinds]
    )
    figures._layout(fig, "Win/tie/loss over the campaigns", barmode="stack",
                    xaxis_title="campaigns", legend_traceorder="normal")  # fmt: skip
    fig.update_yaxes(automargin=True, autorange="reversed")
    fig.update_xaxes(dtick=1)
    mfig, axes = figures._mpl_figure()
    ax = axes[0][0]
    left = [0] * len(labels)
    for k, c in kinds:
        ax.barh(labels, wtl[k], left=left, color=c, label=k)
        left = [a + int(b) for a, b in zip(left, wtl[k], strict=True)]
    from matplotlib.ticker import MaxNLocator

    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("campaigns")
    ax.set_title("Win/tie/loss over the campaigns")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    mfig.subplots_adjust(left=0.24, right=0.86)
    return fig, figures._save(mfig, path)


# ---- page ---------------------------------------------------------------------------------


def _page(across: Any, storage: str | None, sections: list[Section]) -> str:
    meta = [
        f"campaigns: {', '.join(across.campaigns)}",
        f"optimizers: {', '.join(across.optimizers)}",
    ]
    return render_page(f"hvadam report: {', '.join(across.campaigns)}", meta, storage, sections)


def build_multi_report(across: Any, out_dir: str | Path, *, storage: str | None = None) -> Report:
    """Write `report.html` and the PNGs of an already-read `studies.results.Across`."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [_ranks(across), _wins(across, out), _profiles(across, out)]
    path = out / "report.html"
    path.write_text(_page(across, storage, sections), encoding="utf-8")
    return Report.of(path, sections, time.perf_counter() - t0)


def write_multi_report(
    storage: str, campaigns: list[str], out_dir: str | Path, *, alpha: float = 0.05
) -> Report:
    """Read `campaigns` (their runs only) and write their page into `out_dir`.

    Raises `studies.results.UnknownCampaign` naming a campaign the storage does not hold.
    """
    from studies.results import load_across

    t0 = time.perf_counter()
    across = load_across(storage, campaigns, alpha=alpha)
    report = build_multi_report(across, out_dir, storage=storage)
    report.seconds = time.perf_counter() - t0
    return report
