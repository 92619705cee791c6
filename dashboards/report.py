"""`hvadam report`: one campaign as a self-contained HTML page plus PNG figures.

The page opens offline (plotly.js is inlined once) and has one section per question: how the
optimizers compare (with statistics), their learning curves, which hyperparameters mattered,
how the metric moves with `adaptivity` (a scatter of search trials, and the controlled sweeps
of a spec's `sweep:` key, `dashboards.sweep_section`), the 2-D trajectories (valley2d campaigns) and HVAdam's
internals. A section without data says why instead of drawing an empty axis.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dashboards import figures
from dashboards.data import CampaignData, load_campaign
from dashboards.importance import ImportancesInBackground, campaign_importances
from dashboards.sweep_section import controlled_sweeps, scatter_note
from dashboards.tuning_sections import compute_section, tuning_section
from studies.results import comparison_tables

__all__ = ["SECTIONS", "Report", "build_report", "write_report"]

# (id, heading) in page order; the tests look for these headings.
SECTIONS = (
    ("comparison", "Comparison"),
    ("tuning", "Tuning budget"),
    ("compute", "Compute"),
    ("curves", "Learning curves"),
    ("importances", "Hyperparameter importances"),
    ("adaptivity", "Adaptivity sweep"),
    ("sweeps", "Controlled sweeps"),
    ("trajectories", "2-D trajectories"),
    ("internals", "HVAdam internals"),
)
INTERNALS = ("restarts", "hv_step", "cosine_avg", "refreshes")


@dataclass
class Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)  # HTML fragments
    figure: Any = None  # a plotly figure
    png: Path | None = None
    empty: str | None = None  # why there is nothing to show


@dataclass
class Report:
    """What `write_report` produced: the HTML page, the PNGs, and per-section emptiness."""

    html: Path
    pngs: dict[str, Path]
    empty: dict[str, str]
    seconds: float = 0.0
    artifacts: list[str] = field(default_factory=list)  # ids in the artifact store, if uploaded

    @classmethod
    def of(cls, html: Path, sections: list[Section], seconds: float) -> Report:
        """The report of a page written from `sections`."""
        return cls(
            html=html,
            pngs={s.id: s.png for s in sections if s.png is not None},
            empty={s.id: s.empty for s in sections if s.empty},
            seconds=seconds,
        )


# ---- helpers ------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(frame: pd.DataFrame, headers: dict[str, str]) -> str:
    cols = [c for c in headers if c in frame]
    head = "".join(f"<th>{html.escape(headers[c])}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(row[c])}</td>" for c in cols) + "</tr>"
        for _, row in frame.iterrows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _p(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _band(curves: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max over runs at each epoch."""
    g = curves.groupby("epoch")["value"]
    out = pd.DataFrame({"median": g.median(), "low": g.min(), "high": g.max()})
    return out.reset_index().sort_values("epoch")


def _xlabel(data: CampaignData) -> str:
    return "report (every N steps)" if data.unit == "step" else "epoch"


def _curve_metric(data: CampaignData) -> str | None:
    available = data.curve_metrics()
    for name in (data.metric, "value"):
        if name in available:
            return name
    return None


# ---- sections -----------------------------------------------------------------------------


def _comparison(data: CampaignData, out: Path) -> Section:
    s = Section("comparison", "Comparison")
    if data.has_confirm:
        values = data.confirm_values()
        s.parts.append(
            _p(
                f"Confirm phase: the best config of each optimizer re-run on fresh seeds. "
                f"Metric {data.metric} ({data.direction}); best first."
            )
        )
    else:
        values = {}
        for opt in data.optimizers:
            best = data.best_search_run(opt)
            if best is not None:
                values[opt] = [float(best["value"])]
        s.parts.append(
            _p(
                "The confirm phase has not run: each optimizer is shown by its best search "
                "trial (one value, so no interval and no test)."
            )
        )
    if not values:
        s.empty = "No completed run yet: nothing to compare."
        return s
    summary, tests = comparison_tables(values, direction=data.direction, candidates=data.candidates)
    s.parts.append(
        _table(
            summary,
            {
                "optimizer": "optimizer",
                "n": "seeds",
                "mean": "mean",
                "std": "std",
                "ci_low": "95% CI low",
                "ci_high": "95% CI high",
            },
        )
    )
    s.parts.append("<h3>Significance tests</h3>")
    s.parts.append(
        _p(
            "HVAdam and Anon against each baseline. Welch's t-test (two-sided; seeds are "
            "independent samples whose variances need not be equal) is the primary test, its "
            "p-value Holm-corrected over all pairs for the verdict at alpha = 0.05. "
            "Mann-Whitney U is the distribution-free check; with few seeds it cannot reach "
            "small p-values, so its smallest attainable p is shown. Fewer than two seeds on "
            "either side: too few seeds to test."
        )
    )
    if tests.empty:
        s.parts.append(
            _p("No candidate-baseline pair in this campaign (needs HVAdam or Anon and a baseline).")
        )
    else:
        s.parts.append(
            _table(
                tests,
                {
                    "candidate": "candidate",
                    "baseline": "baseline",
                    "n_candidate": "n cand.",
                    "n_baseline": "n base.",
                    "mean_difference": "mean diff.",
                    "welch_t": "Welch t",
                    "welch_df": "df",
                    "welch_p": "Welch p",
                    "welch_p_holm": "Welch p (Holm)",
                    "mwu_p": "Mann-Whitney p",
                    "mwu_min_p": "MWU min. p",
                    "verdict": "verdict",
                },
            )
        )
    s.figure, s.png = figures.comparison_figures(
        summary, metric=data.metric, path=out / "comparison.png"
    )
    return s


def _curves(data: CampaignData, out: Path) -> Section:
    s = Section("curves", "Learning curves")
    metric = _curve_metric(data)
    if metric is None:
        s.empty = "No per-epoch curves were stored for this campaign."
        return s
    bands, phases = {}, {}
    for opt in data.optimizers:
        phase, runs = data.best_runs(opt)
        c = data.curves_of(runs["run_id"], metric)
        if not c.empty:
            bands[opt], phases[opt] = _band(c), (phase, len(runs))
    if not bands:
        s.empty = f"No curve of {metric} for any optimizer's best config."
        return s
    desc = ", ".join(
        f"{o}: {n} confirm seeds" if p == "confirm" else f"{o}: best search trial"
        for o, (p, n) in phases.items()
    )
    s.parts.append(
        _p(f"{metric} of each optimizer's best config: median line, band from min to max ({desc}).")
    )
    s.figure, s.png = figures.curve_figures(
        bands, metric=metric, xlabel=_xlabel(data), title=f"{metric} of the best config",
        path=out / "curves.png",
    )  # fmt: skip
    return s


def _importances(
    data: CampaignData, out: Path, background: ImportancesInBackground | None = None
) -> Section:
    s = Section("importances", "Hyperparameter importances")
    result: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    if background is not None:
        computed = background.result()
    elif data.storage is not None:
        computed = campaign_importances(data.storage, data.campaign)
    else:
        computed = {}
    for opt in data.optimizers:
        imp, why = computed.get(opt, ({}, "no Optuna study to read"))
        if imp:
            result[opt] = imp
        if why:
            skipped.append(f"{opt}: {why}")
    if result:
        s.parts.append(
            _p(
                "Importances from optuna.importance.get_param_importances with PED-ANOVA "
                "(PedAnovaImportanceEvaluator: how much each hyperparameter separates the best "
                "10% of an optimizer's completed search trials from the rest; fast, and it "
                "needs no random forest), over each optimizer's search trials; they sum to 1 "
                "per optimizer. Only hyperparameters that every trial sampled and that varied "
                "are scored (conditional ones, such as gamma, are left out)."
            )
        )
        s.figure, s.png = figures.importance_figures(result, path=out / "importances.png")
    else:
        s.empty = "No optimizer has enough search trials for importances."
    if skipped:
        s.parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in skipped) + "</ul>")
    return s


def _adaptivity(data: CampaignData, out: Path) -> Section:
    s = Section("adaptivity", "Adaptivity sweep")
    points: dict[str, tuple[list[float], list[float]]] = {}
    notes = []
    search = data.ok_runs("search")
    if not data.candidates:
        notes.append("neither HVAdam nor Anon is in this campaign")
    for opt in data.candidates:
        runs = search[search["optimizer"] == opt]
        if runs.empty:
            notes.append(f"{opt}: no completed search trial")
            continue
        x = runs["hyperparameters"].map(lambda h: h.get("adaptivity")).astype(float)
        y = runs["value"].astype(float)
        ok = x.notna() & np.isfinite(x)
        if x[ok].nunique() < 2:
            fixed = _fmt(float(x[ok].iloc[0])) if ok.any() else "unknown"
            notes.append(f"{opt}: adaptivity was not varied (fixed at {fixed})")
            continue
        points[opt] = (x[ok].tolist(), y[ok].tolist())
    if points:
        s.parts.append(
            _p(
                f"A scatter of search trials, not a controlled sweep: {data.metric} of every "
                "completed search trial against its adaptivity, while every other "
                "hyperparameter varied too."
            )
        )
    note = scatter_note(data)
    if note:
        s.parts.append(_p(note))
        s.figure, s.png = figures.adaptivity_figures(
            points, metric=data.metric, path=out / "adaptivity.png"
        )
    else:
        s.empty = "No search trials with a varying adaptivity (HVAdam or Anon)."
    if notes:
        s.parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return s


def _function(name: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    try:
        import torch

        from studies.api import function_2d
    except ImportError:
        return None
    f = function_2d(name)
    if f is None:
        return None

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return f(torch.from_numpy(x), torch.from_numpy(y)).numpy()

    return fn


def _trajectories(data: CampaignData, out: Path) -> Section:
    s = Section("trajectories", "2-D trajectories")
    paths: dict[str, np.ndarray] = {}
    extras_seen: dict[str, Any] = {}
    for opt in data.optimizers:
        _, runs = data.best_runs(opt)
        runs = runs.loc[runs["extras"].map(lambda e: bool(e.get("trajectory"))).astype(bool)]
        if runs.empty:
            continue
        values = runs["value"].astype(float)
        best = runs.loc[values.idxmax() if data.direction == "maximize" else values.idxmin()]
        paths[opt] = np.asarray(best["extras"]["trajectory"], dtype=float)
        extras_seen = best["extras"]
    if not paths:
        s.empty = (
            f"No trajectories: the workload {data.workload or '(unknown)'} does not record "
            f"2-D paths (only valley2d campaigns do)."
        )
        return s
    fname = str(extras_seen.get("function", ""))
    window = extras_seen.get("window")
    if not window:
        allp = np.concatenate(list(paths.values()))
        lo, hi = allp.min(axis=0), allp.max(axis=0)
        pad = 0.1 * (hi - lo) + 1e-9
        window = [[lo[0] - pad[0], hi[0] + pad[0]], [lo[1] - pad[1], hi[1] + pad[1]]]
    fn = _function(fname)
    formula = extras_seen.get("formula")
    title = f"{fname or 'function'}" + (f": f = {formula}" if formula else "")
    s.parts.append(
        _p(
            "Each optimizer's best run (its best confirm seed, else its best search trial) "
            "over the function's contours (log-spaced levels); square: start, star: minimum."
            + ("" if fn else " The function is not known here, so no contours are drawn.")
        )
    )
    s.figure, s.png = figures.trajectory_figures(
        paths, fn=fn, window=window, start=extras_seen.get("start"),
        minima=extras_seen.get("minimum") or [], title=title, path=out / "trajectories.png",
    )  # fmt: skip
    return s


def _internals(data: CampaignData, out: Path) -> Section:
    s = Section("internals", "HVAdam internals")
    panels: dict[str, dict[str, pd.DataFrame]] = {}
    for opt in data.candidates:
        _, runs = data.best_runs(opt)
        for q in INTERNALS:
            c = data.curves_of(runs["run_id"], q)
            if not c.empty:
                panels.setdefault(q, {})[opt] = _band(c)
    if not panels:
        s.empty = (
            "No optimizer internals were recorded (HVAdam's restart count and hidden-vector "
            "step are stored per epoch only for HVAdam/Anon runs)."
        )
        return s
    s.parts.append(
        _p(
            "Per-epoch internals of the best config (median and min-max over its runs): "
            "restarts = cumulative restart count, hv_step = the hidden-vector step multiplier b, "
            "cosine_avg = mean cosine between gradient and hidden vector; Anon: refreshes."
        )
    )
    s.figure, s.png = figures.internals_figures(
        panels, xlabel=_xlabel(data), title="Optimizer internals over training",
        path=out / "internals.png",
    )  # fmt: skip
    return s


# ---- page ---------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1150px;
padding:1rem 2rem;color:#222}
h1{margin-bottom:.2rem} .meta{color:#555;font-size:.9rem}
nav a{margin-right:1rem} section{border-top:1px solid #ddd;margin-top:1.5rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.empty{color:#8a5a00;background:#fff7e6;padding:.5rem .8rem;border-left:3px solid #e0a030}
.png{font-size:.85rem}
"""


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("hvadam", "optuna", "torch", "optuna-dashboard"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def render_page(title: str, meta: list[str], storage: str | None, sections: list[Section]) -> str:
    """The self-contained HTML page of `sections` (plotly.js inlined once, so it opens offline),
    under `title`, with the `meta` line (plus the masked storage, the date and the versions)."""
    first = True
    body = []
    for sec in sections:
        body.append(f'<section id="{sec.id}"><h2>{html.escape(sec.title)}</h2>')
        if sec.empty:
            body.append(f'<p class="empty">{html.escape(sec.empty)}</p>')
        body.extend(sec.parts)
        if sec.figure is not None:
            body.append(
                sec.figure.to_html(
                    full_html=False, include_plotlyjs=first, config={"displaylogo": False}
                )
            )
            first = False
        if sec.png is not None:
            body.append(f'<p class="png">PNG: <a href="{sec.png.name}">{sec.png.name}</a></p>')
        body.append("</section>")
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    meta = list(meta)
    if storage:
        from studies.api import mask_url

        meta.append(f"storage: {mask_url(storage)}")
    meta.append(f"generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    meta.append(", ".join(f"{k} {v}" for k, v in _versions().items()))
    title = html.escape(title)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
        f'<p class="meta">{html.escape(" · ".join(meta))}</p><nav>{nav}</nav>'
        + "".join(body)
        + "</body></html>"
    )


def _page(data: CampaignData, sections: list[Section]) -> str:
    meta = [
        f"workload: {data.workload or 'unknown'}",
        f"metric: {data.metric} ({data.direction})",
        f"optimizers: {', '.join(data.optimizers)}",
        f"runs: {len(data.runs)}",
    ]
    return render_page(f"hvadam report: {data.campaign}", meta, data.storage, sections)


_BUILDERS = {
    "comparison": _comparison,
    "tuning": tuning_section,
    "compute": compute_section,
    "curves": _curves,
    "adaptivity": _adaptivity,
    "sweeps": controlled_sweeps,
    "trajectories": _trajectories,
    "internals": _internals,
}


def build_report(
    data: CampaignData,
    out_dir: str | Path,
    *,
    importances: ImportancesInBackground | None = None,
) -> Report:
    """Write `report.html` and the PNGs for already-loaded campaign data into `out_dir`.

    `importances`: a computation already running in the background (see `write_report`).
    """
    import time

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    built = {sid: _BUILDERS[sid](data, out) for sid, _ in SECTIONS if sid != "importances"}
    # last, so that a background computation has had the most time to finish
    built["importances"] = _importances(data, out, importances)
    sections = [built[sid] for sid, _ in SECTIONS]
    path = out / "report.html"
    path.write_text(_page(data, sections), encoding="utf-8")
    return Report.of(path, sections, time.perf_counter() - t0)


def write_report(
    storage: str, campaign: str, out_dir: str | Path, *, background_importances: bool = False
) -> Report:
    """Read the campaign through `studies.results` and write its report into `out_dir`.

    `background_importances`: compute the importances in a second process meanwhile. It saves
    wall time only where a CPU core is idle (it costs an interpreter start and the imports
    twice), so it is off by default; benchmarks/report_time.py measures both.
    """
    import time

    t0 = time.perf_counter()
    background = ImportancesInBackground(storage, campaign) if background_importances else None
    try:
        data = load_campaign(storage, campaign)
    except BaseException:
        if background is not None:
            background.cancel()
        raise
    report = build_report(data, out_dir, importances=background)
    report.seconds = time.perf_counter() - t0
    return report
