"""The report's "Controlled sweeps" section: each `sweep:` of the spec (`studies.sweep`), drawn.

A sweep re-runs an optimizer's best search config at each value of one hyperparameter, everything
else fixed, on the same seeds (runs of phase "sweep", `extras["sweep"]` naming the param and
value). Per sweep the panel shows the metric's mean over the seeds at each value with a 95%
confidence interval for the mean (Student's t over the complete runs; no bar from fewer than two),
and a dashed line at the value of the best search config (the config every point starts from).
Failed or diverged runs are left out of the means and counted in the table.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dashboards import figures
from studies.results import summarize

if TYPE_CHECKING:
    from dashboards.data import CampaignData
    from dashboards.report import Section

__all__ = ["SweepPanel", "controlled_sweeps", "sweep_figures", "sweep_panels"]

SECTION_ID = "sweeps"
TITLE = "Controlled sweeps"


class SweepPanel:
    """One sweep's summary: per value n, mean, std and the 95% interval, and the best's value."""

    def __init__(
        self, optimizer: str, param: str, table: pd.DataFrame, best: Any, numeric: bool
    ) -> None:
        self.optimizer = optimizer
        self.param = param
        self.table = table  # value, n, failed, mean, std, ci_low, ci_high (in the spec's order)
        self.best = best  # the best search config's value of the param (None if unknown)
        self.numeric = numeric

    @property
    def title(self) -> str:
        return f"{self.optimizer}: {self.param}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _param_value(hyperparameters: dict[str, Any], param: str) -> Any:
    """`param` in a run's hyperparameters (`betas.0` is element 0 of `betas`)."""
    name, _, index = param.partition(".")
    value = hyperparameters.get(name)
    if index and isinstance(value, (list, tuple)) and int(index) < len(value):
        return value[int(index)]
    return None if index else value


def sweep_panels(data: CampaignData) -> list[SweepPanel]:
    """The sweeps that have runs, in the spec's order."""
    runs = data.runs
    runs = runs.loc[(runs["phase"] == "sweep").to_numpy(dtype=bool)]
    if runs.empty:
        return []
    ok_ids = set(data.ok_runs("sweep")["run_id"])
    groups: dict[tuple[int, str, str], list[tuple[Any, Any, bool]]] = {}
    for _, row in runs.iterrows():
        info = (row["extras"] or {}).get("sweep") or {}
        if "param" not in info:
            continue
        key = (int(info.get("index", 0)), str(row["optimizer"]), str(info["param"]))
        groups.setdefault(key, []).append((info.get("value"), row, row["run_id"] in ok_ids))
    search = data.runs.loc[(data.runs["phase"] == "search").to_numpy(dtype=bool)]
    panels = []
    for (_, optimizer, param), members in sorted(groups.items()):
        order: list[Any] = []
        for value, _, _ in members:
            if not any(_same(value, v) for v in order):
                order.append(value)
        rows = []
        for value in order:
            mine = [(r, g) for v, r, g in members if _same(v, value)]
            values = [float(r["value"]) for r, g in mine if g]
            s = summarize(str(value), values)
            rows.append(
                {"value": value, "n": s.n, "failed": len(mine) - len(values), "mean": s.mean,
                 "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high}
            )  # fmt: skip
        numeric = all(_number(v) for v in order)
        if numeric:
            rows.sort(key=lambda r: float(r["value"]))
        trial = members[0][1]["trial_number"]
        base = search[(search["optimizer"] == optimizer) & (search["trial_number"] == trial)]
        best = None
        if not base.empty:
            best = _param_value(base.iloc[0]["hyperparameters"] or {}, param)
        panels.append(SweepPanel(optimizer, param, pd.DataFrame(rows), best, numeric))
    return panels


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _log_x(panel: SweepPanel) -> bool:
    if not panel.numeric:
        return False
    x = panel.table["value"].astype(float).to_numpy()
    return bool((x > 0).all() and x.max() / x.min() >= 100)


def sweep_figures(panels: list[SweepPanel], *, metric: str, path: Path) -> tuple[Any, Path]:
    """One panel per sweep: mean and 95% interval against the value, the best's value dashed."""
    from plotly.subplots import make_subplots

    go = figures._go()
    n = len(panels)
    cols = min(n, 3)  # at most three panels a row
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in panels])
    mfig, axes = figures._mpl_figure(rows, cols)
    for extra in range(n, rows * cols):
        axes[extra // cols][extra % cols].set_axis_off()
    col = figures.colours(sorted({p.optimizer for p in panels}))
    for i, panel in enumerate(panels):
        at = {"row": i // cols + 1, "col": i % cols + 1}
        t = panel.table
        x = [float(v) for v in t["value"]] if panel.numeric else [str(v) for v in t["value"]]
        mean = t["mean"].astype(float).to_numpy()
        hi = np.nan_to_num(t["ci_high"].astype(float).to_numpy() - mean)
        lo = np.nan_to_num(mean - t["ci_low"].astype(float).to_numpy())
        c = col[panel.optimizer]
        fig.add_trace(
            go.Scatter(x=x, y=mean, mode="lines+markers", name=panel.title,
                       line={"color": c}, marker={"size": 9},
                       error_y={"type": "data", "array": hi, "arrayminus": lo},
                       text=[f"n={k}" for k in t["n"]]),
            **at,
        )  # fmt: skip
        ax = axes[i // cols][i % cols]
        ax.errorbar(x, mean, yerr=[lo, hi], fmt="o-", color=c, capsize=5, label=panel.optimizer)
        if panel.best is not None and (not panel.numeric or _number(panel.best)):
            where = float(panel.best) if panel.numeric else str(panel.best)
            if panel.numeric or where in x:
                fig.add_vline(x=where, line_dash="dash", line_color="#555", **at)
                ax.axvline(where, linestyle="--", color="#555", label="best search config")
        if _log_x(panel):
            ax.set_xscale("log")
            fig.update_xaxes(type="log", **at)
        fig.update_xaxes(title_text=panel.param, **at)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.param)
        if i % cols == 0:
            ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    title = f"Controlled sweeps: mean {metric} and 95% CI over seeds"
    figures._layout(fig, title, showlegend=False, yaxis_title=metric)
    fig.update_layout(height=max(480, 360 * rows))
    mfig.suptitle(title)
    mfig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.1, wspace=0.3, hspace=0.5)
    return fig, figures._save(mfig, path)


def controlled_sweeps(data: CampaignData, out: Path) -> Section:
    """The section: what was run, one table per sweep, and the figure."""
    from dashboards.report import Section, _fmt, _p, _table

    s = Section(SECTION_ID, TITLE)
    panels = sweep_panels(data)
    if not panels:
        s.empty = (
            "No controlled sweep ran (a spec's `sweep:` key asks for one: the best config "
            "re-run at each value of one hyperparameter; see docs/sweeps.md)."
        )
        return s
    s.parts.append(
        _p(
            "Each optimizer's best search config re-run at each value of one hyperparameter, "
            "everything else fixed, on the same seeds (the confirm seeds) at every value. "
            f"Points: mean {data.metric} over the complete runs; bars: 95% confidence interval "
            "for the mean (Student's t; none from fewer than two runs); dashed line: the best "
            "search config's value. Failed or diverged runs are counted, not averaged."
        )
    )
    for panel in panels:
        best = "unknown" if panel.best is None else _fmt(panel.best)
        s.parts.append(
            f"<h3>{html.escape(panel.title)}</h3>"
            + _p(f"Best search config: {panel.param} = {best}.")
        )
        s.parts.append(
            _table(
                panel.table,
                {
                    "value": panel.param,
                    "n": "runs",
                    "failed": "failed",
                    "mean": "mean",
                    "std": "std",
                    "ci_low": "95% CI low",
                    "ci_high": "95% CI high",
                },
            )
        )
    s.figure, s.png = sweep_figures(panels, metric=data.metric, path=out / "sweeps.png")
    return s


def scatter_note(data: CampaignData) -> str | None:
    """For the "Adaptivity sweep" scatter: a pointer to the controlled sweep, when one ran."""
    swept = [p for p in sweep_panels(data) if p.param == "adaptivity"]
    if not swept:
        return None
    names = ", ".join(p.optimizer for p in swept)
    return (
        f"A controlled sweep of adaptivity ran ({names}): see Controlled sweeps for the metric "
        "against adaptivity with everything else fixed."
    )
