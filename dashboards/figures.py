"""The report's figures, each drawn twice: Plotly for the HTML page, matplotlib (Agg) for PNG.

Every function takes plain data (dicts of arrays and small frames), so drawing never touches
the database. PNGs have a fixed pixel size (`PNG_SIZE`): the figure size and DPI are set and
`bbox_inches` is left alone, so the file is exactly what the report states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PNG_DPI",
    "PNG_SIZE",
    "adaptivity_figures",
    "comparison_figures",
    "curve_figures",
    "importance_figures",
    "internals_figures",
    "trajectory_figures",
]

PNG_SIZE = (960, 600)  # pixels
PNG_DPI = 100

# One colour per optimizer, stable across figures: HVAdam and Anon first and strongest.
_PALETTE = [
    "#d62728",
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


_FIXED = {"hvadam": "#d62728", "anon": "#ff7f0e"}
_OTHERS = [c for c in _PALETTE if c not in _FIXED.values()]


def colours(names: Sequence[str]) -> dict[str, str]:
    """HVAdam and Anon always in their own colours; others by sorted name, so one optimizer
    keeps its colour across the figures of a report."""
    others = sorted(n for n in set(names) if n not in _FIXED)
    out = {n: _OTHERS[i % len(_OTHERS)] for i, n in enumerate(others)}
    return {n: _FIXED.get(n) or out[n] for n in names}


def _mpl_figure(nrows: int = 1, ncols: int = 1, **kw: Any):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PNG_SIZE[0] / PNG_DPI, PNG_SIZE[1] / PNG_DPI), dpi=PNG_DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    # Light zlib compression: the files stay small and saving is several times faster.
    fig.savefig(path, dpi=PNG_DPI, format="png", pil_kwargs={"compress_level": 1})
    return path


def _go():
    import plotly.graph_objects as go

    return go


def _layout(fig: Any, title: str, **kw: Any) -> Any:
    fig.update_layout(
        title=title, template=_template(), height=480, margin={"t": 60, "l": 60}, **kw
    )
    return fig


def _finish_xy(
    fig: Any, mfig: Any, ax: Any, *, title: str, xlabel: str, ylabel: str, path: Path
) -> tuple[Any, Path]:
    """Title and axis labels on both renderings of a one-panel figure, grid and legend on the
    PNG; saves the PNG."""
    _layout(fig, title, xaxis_title=xlabel, yaxis_title=ylabel)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig, _save(mfig, path)


_TEMPLATE: list[Any] = []


def _template() -> Any:
    """A small white template built once (plotly deep-copies named templates on every use)."""
    if not _TEMPLATE:
        go = _go()
        axis = {"gridcolor": "#ebebeb", "zerolinecolor": "#d0d0d0", "linecolor": "#999"}
        _TEMPLATE.append(
            go.layout.Template(
                layout={"plot_bgcolor": "white", "paper_bgcolor": "white", "xaxis": axis,
                        "yaxis": axis, "font": {"family": "system-ui, sans-serif"}}
            )
        )  # fmt: skip
    return _TEMPLATE[0]


# ---- comparison ---------------------------------------------------------------------------


def comparison_figures(summary: Any, *, metric: str, path: Path) -> tuple[Any, Path]:
    """Mean and 95% interval of every optimizer's confirm values (rows of `summary`)."""
    go = _go()
    rows = summary.dropna(subset=["mean"])
    names = rows["optimizer"].tolist()
    col = colours(names)
    err_hi = (rows["ci_high"] - rows["mean"]).fillna(0).to_numpy()
    err_lo = (rows["mean"] - rows["ci_low"]).fillna(0).to_numpy()
    fig = go.Figure(
        go.Scatter(
            x=names,
            y=rows["mean"],
            mode="markers",
            marker={"size": 12, "color": [col[n] for n in names]},
            error_y={"type": "data", "array": err_hi, "arrayminus": err_lo},
            text=[f"n={n}" for n in rows["n"]],
        )
    )
    _layout(fig, f"{metric}: mean and 95% confidence interval", yaxis_title=metric)

    mfig, axes = _mpl_figure()
    ax = axes[0][0]
    for i, name in enumerate(names):
        ax.errorbar(
            [i], [rows["mean"].iloc[i]], yerr=[[err_lo[i]], [err_hi[i]]],
            fmt="o", color=col[name], capsize=6, markersize=8,
        )  # fmt: skip
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean and 95% confidence interval over confirm seeds")
    ax.grid(alpha=0.3)
    return fig, _save(mfig, path)


# ---- learning curves ----------------------------------------------------------------------


def curve_figures(
    bands: Mapping[str, Any], *, metric: str, xlabel: str, title: str, path: Path
) -> tuple[Any, Path]:
    """Median line and min-max band per optimizer; `bands[opt]` has epoch, median, low, high."""
    go = _go()
    col = colours(list(bands))
    fig = go.Figure()
    mfig, axes = _mpl_figure()
    ax = axes[0][0]
    for name, band in bands.items():
        x = band["epoch"].to_numpy()
        c = col[name]
        if (band["high"] > band["low"]).any():
            fig.add_trace(
                go.Scatter(
                    x=np.concatenate([x, x[::-1]]),
                    y=np.concatenate([band["high"].to_numpy(), band["low"].to_numpy()[::-1]]),
                    fill="toself", fillcolor=c, opacity=0.2, line={"width": 0},
                    hoverinfo="skip", showlegend=False, legendgroup=name,
                )
            )  # fmt: skip
            ax.fill_between(x, band["low"], band["high"], color=c, alpha=0.2, linewidth=0)
        fig.add_trace(
            go.Scatter(
                x=x, y=band["median"], mode="lines", name=name, line={"color": c},
                legendgroup=name,
            )
        )  # fmt: skip
        ax.plot(x, band["median"], color=c, label=name)
    return _finish_xy(fig, mfig, ax, title=title, xlabel=xlabel, ylabel=metric, path=path)


# ---- importances --------------------------------------------------------------------------


def importance_figures(
    importances: Mapping[str, Mapping[str, float]], *, path: Path
) -> tuple[Any, Path]:
    """A heatmap: hyperparameters (rows) x optimizers (columns), cells = importance.

    One axes for all optimizers keeps them comparable (and is cheap to draw); a blank cell means
    the optimizer has no such hyperparameter (or it was not scored).
    """
    go = _go()
    names = list(importances)
    params = sorted(
        {p for imp in importances.values() for p in imp},
        key=lambda p: -max(imp.get(p, 0.0) for imp in importances.values()),
    )
    z = np.array([[importances[o].get(p, np.nan) for o in names] for p in params], dtype=float)
    text = [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=names, y=params, text=text, texttemplate="%{text}", colorscale="Blues",
            zmin=0, zmax=1, colorbar={"title": "importance"}, hoverongaps=False,
        )
    )  # fmt: skip
    _layout(fig, "Hyperparameter importances (PED-ANOVA, per optimizer)")
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=max(360, 40 + 28 * len(params)))

    mfig, axes = _mpl_figure()
    ax = axes[0][0]
    im = ax.imshow(np.ma.masked_invalid(z), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(params)), params, fontsize=8)
    for i in range(len(params)):
        for j in range(len(names)):
            if not np.isnan(z[i, j]):
                ax.text(j, i, f"{z[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if z[i, j] > 0.6 else "black")  # fmt: skip
    mfig.colorbar(im, ax=ax, label="importance")
    ax.set_title("Hyperparameter importances (PED-ANOVA, per optimizer)")
    mfig.subplots_adjust(left=0.2, right=0.97, top=0.92, bottom=0.07)
    return fig, _save(mfig, path)


# ---- adaptivity sweep ---------------------------------------------------------------------


def adaptivity_figures(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, metric: str, path: Path
) -> tuple[Any, Path]:
    """Each search trial's metric against its `adaptivity`, one colour per optimizer."""
    go = _go()
    col = colours(list(points))
    fig = go.Figure()
    mfig, axes = _mpl_figure()
    ax = axes[0][0]
    for name, (x, y) in points.items():
        fig.add_trace(
            go.Scatter(x=list(x), y=list(y), mode="markers", name=name,
                       marker={"color": col[name], "size": 8, "opacity": 0.75})
        )  # fmt: skip
        ax.scatter(x, y, color=col[name], label=name, alpha=0.75, s=24)
    title = f"Adaptivity sweep: {metric} of every search trial"
    return _finish_xy(fig, mfig, ax, title=title, xlabel="adaptivity", ylabel=metric, path=path)


# ---- 2-D trajectories ---------------------------------------------------------------------


def _grid(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
    window: Sequence[Sequence[float]],
    size: int = 160,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    xs = np.linspace(window[0][0], window[0][1], size)
    ys = np.linspace(window[1][0], window[1][1], size)
    if fn is None:
        return xs, ys, None
    gx, gy = np.meshgrid(xs, ys)
    return xs, ys, np.asarray(fn(gx, gy), dtype=float)


def trajectory_figures(
    trajectories: Mapping[str, np.ndarray],
    *,
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
    window: Sequence[Sequence[float]],
    start: Sequence[float] | None,
    minima: Sequence[Sequence[float]],
    title: str,
    path: Path,
) -> tuple[Any, Path]:
    """Each optimizer's path over the function's contours (log-spaced levels), start and minima."""
    go = _go()
    xs, ys, z = _grid(fn, window)
    col = colours(list(trajectories))
    fig = go.Figure()
    mfig, axes = _mpl_figure()
    ax = axes[0][0]
    if z is not None:
        # Log levels show both the steep walls and the flat valley floor.
        zl = np.log10(z - np.nanmin(z) + 1e-3)
        fig.add_trace(
            go.Contour(x=xs, y=ys, z=zl, colorscale="Greys", showscale=False, opacity=0.5,
                       contours={"coloring": "lines"}, ncontours=25, hoverinfo="skip")
        )  # fmt: skip
        ax.contour(xs, ys, zl, levels=25, cmap="Greys", linewidths=0.7)
    # Drawn in reverse, so the first optimizers (HVAdam, Anon) lie on top; the legend keeps
    # the given order.
    names = list(trajectories)
    for rank, name in reversed(list(enumerate(names))):
        p = np.asarray(trajectories[name], dtype=float)
        fig.add_trace(
            go.Scatter(x=p[:, 0], y=p[:, 1], mode="lines", name=name, legendrank=rank,
                       line={"color": col[name], "width": 2.5 if rank < 2 else 1.5})
        )  # fmt: skip
        ax.plot(p[:, 0], p[:, 1], color=col[name], label=name, linewidth=1.5, zorder=10 - rank)
        ax.plot(p[-1, 0], p[-1, 1], "o", color=col[name], markersize=5, zorder=10 - rank)
    if start is not None:
        fig.add_trace(go.Scatter(x=[start[0]], y=[start[1]], mode="markers", name="start",
                                 marker={"symbol": "square", "size": 10, "color": "black"}))  # fmt: skip
        ax.plot(start[0], start[1], "ks", markersize=7, label="start")
    if minima:
        m = np.asarray(minima, dtype=float)
        fig.add_trace(go.Scatter(x=m[:, 0], y=m[:, 1], mode="markers", name="minimum",
                                 marker={"symbol": "star", "size": 14, "color": "gold",
                                         "line": {"color": "black", "width": 1}}))  # fmt: skip
        ax.plot(m[:, 0], m[:, 1], "*", color="gold", markeredgecolor="black", markersize=14,
                label="minimum")  # fmt: skip
    _layout(fig, title, xaxis_title="x", yaxis_title="y")
    fig.update_xaxes(range=list(window[0]))
    fig.update_yaxes(range=list(window[1]), scaleanchor="x", scaleratio=1)
    ax.set_xlim(*window[0])
    ax.set_ylim(*window[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(
        range(len(labels)),
        key=lambda i: names.index(labels[i]) if labels[i] in names else len(names) + i,
    )
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="best", fontsize=8)
    return fig, _save(mfig, path)


# ---- optimizer internals ------------------------------------------------------------------


def internals_figures(
    panels: Mapping[str, Mapping[str, Any]], *, xlabel: str, title: str, path: Path
) -> tuple[Any, Path]:
    """One panel per internal quantity; `panels[quantity][optimizer]` is a median/band frame."""
    from plotly.subplots import make_subplots

    go = _go()
    names = list(panels)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names)
    mfig, axes = _mpl_figure(1, len(names))
    optimizers = sorted({o for p in panels.values() for o in p})
    col = colours(optimizers)
    for i, quantity in enumerate(names):
        ax = axes[0][i]
        for opt, band in panels[quantity].items():
            x = band["epoch"].to_numpy()
            fig.add_trace(
                go.Scatter(x=x, y=band["median"], mode="lines", name=f"{opt} {quantity}",
                           line={"color": col[opt]}),
                row=1, col=i + 1,
            )  # fmt: skip
            if (band["high"] > band["low"]).any():
                ax.fill_between(x, band["low"], band["high"], color=col[opt], alpha=0.2)
            ax.plot(x, band["median"], color=col[opt], label=opt)
        ax.set_title(quantity)
        ax.set_xlabel(xlabel)
        if quantity == "hv_step":
            ax.set_yscale("log")
            fig.update_yaxes(type="log", row=1, col=i + 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _layout(fig, title)
    mfig.suptitle(title)
    mfig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.1, wspace=0.25)
    return fig, _save(mfig, path)
