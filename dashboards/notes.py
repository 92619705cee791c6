"""Study notes for optuna-dashboard: each campaign study shows progress, comparison and spec.

`annotate_studies(storage, campaign)` writes (or rewrites) the note of every study of the
campaign, so that whoever opens the dashboard sees, next to Optuna's own plots, what the
campaign is, how far it has got (search k/n, confirm k/n, failed, pruned) and where this
optimizer stands, with the time the note was written. Workers refresh the notes while the
campaign runs (`dashboards.live`, `running=True`); `hvadam tune` writes them once more when the
campaign finishes; calling it again refreshes them.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from dashboards.data import CampaignData, CampaignNotFound, load_campaign
from dashboards.tuning_sections import budget_markdown
from studies.api import campaign_status
from studies.results import comparison_tables

__all__ = ["annotate_studies", "campaign_note", "progress_markdown"]


def progress_markdown(progress: dict[str, dict[str, Any]]) -> str:
    """The progress of every optimizer (`studies.status.campaign_status` rows) as a table."""
    lines = [
        "| optimizer | search | confirm | pruned | failed | running |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, p in progress.items():
        lines.append(
            f"| {label} | {p['search_progress']} | "
            f"{p['confirm_done']}/{p['confirm_seeds']} | {p['pruned']} | {p['failed']} | "
            f"{p['running']} |"
        )
    return "\n".join(lines)


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _p(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.3g}"


def _yaml(spec: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None).rstrip()


def comparison_markdown(data: CampaignData) -> str:
    """The comparison (confirm statistics, search counts, tests) as Markdown tables."""
    lines: list[str] = []
    compare = data.compare
    confirm = data.confirm_values()
    summary, tests = comparison_tables(
        confirm or {o: [] for o in data.optimizers},
        direction=data.direction,
        candidates=data.candidates,
    )
    stats = {r["optimizer"]: r for _, r in summary.iterrows()}
    counts = {}
    if compare is not None and len(compare):
        counts = {r["optimizer"]: r for _, r in compare.iterrows()}
    order = list(counts) or data.optimizers
    lines.append(
        "| optimizer | confirm seeds | mean | std | 95% CI | best search value | trials "
        "(complete / pruned / failed) |"
    )
    lines.append("|---|---:|---:|---:|---|---:|---|")
    for opt in order:
        s = stats.get(opt)
        c = counts.get(opt)
        ci = "–"
        if s is not None and not math.isnan(s["ci_low"]):
            ci = f"[{s['ci_low']:.4g}, {s['ci_high']:.4g}]"
        best = _num(float(c["best_value"])) if c is not None else "–"
        trials = (
            f"{c['trials_complete']} / {c['trials_pruned']} / {c['trials_failed']}"
            if c is not None
            else "–"
        )
        lines.append(
            f"| {opt} | {int(s['n']) if s is not None else 0} | "
            f"{_num(s['mean']) if s is not None else '–'} | "
            f"{_num(s['std']) if s is not None else '–'} | {ci} | {best} | {trials} |"
        )
    if not confirm:
        lines.append("")
        lines.append("_The confirm phase has not run yet: no confirm statistics._")
    if len(tests):
        lines.append("")
        lines.append(
            "Tests (Welch's t, Holm-corrected over all pairs for the verdict; Mann-Whitney U as "
            "the distribution-free check):"
        )
        lines.append("")
        lines.append("| candidate | baseline | mean diff. | Welch p | Holm p | MWU p | verdict |")
        lines.append("|---|---|---:|---:|---:|---:|---|")
        for _, t in tests.iterrows():
            lines.append(
                f"| {t['candidate']} | {t['baseline']} | {_num(t['mean_difference'])} | "
                f"{_p(t['welch_p'])} | {_p(t['welch_p_holm'])} | {_p(t['mwu_p'])} | "
                f"{t['verdict']} |"
            )
    return "\n".join(lines)


def campaign_note(
    data: CampaignData | None,
    *,
    campaign: str,
    spec: dict[str, Any],
    label: str,
    progress: dict[str, dict[str, Any]] | None = None,
    running: bool = False,
    written: str | None = None,
) -> str:
    """The Markdown note of one study (`label`) of the campaign.

    `progress` adds the progress table; `running` says the campaign is still running (a live
    note, refreshed by the workers); `written` is the time shown as the note's date.
    """
    parts = [f"# Campaign `{campaign}`: {label}", ""]
    if written is not None:
        state = (
            "**running**: this note is refreshed while the campaign runs"
            if running
            else "**finished**"
        )
        parts += [f"Campaign {state}. Note written {written}.", ""]
    if progress:
        parts += ["## Progress", "", progress_markdown(progress), ""]
    if data is not None:
        parts.append(
            f"Workload **{data.workload}**, metric **{data.metric}** ({data.direction}). "
            f"Studies of this campaign: "
            + ", ".join(f"`{campaign}/{o}`" for o in data.optimizers)
            + " (select them and press COMPARE)."
        )
        parts += ["", "## Comparison", "", comparison_markdown(data)]
        parts += ["", "## Tuning budget", "", budget_markdown(data)]
    else:
        parts.append("_No run has finished yet._")
    if spec:
        parts += ["", "## Spec", "", "```yaml", _yaml(spec), "```"]
    parts += ["", "_Written by `hvadam`; `hvadam report` has the full report._"]
    return "\n".join(parts) + "\n"


def annotate_studies(storage: str, campaign: str, *, running: bool = False) -> list[str]:
    """Write the note of every Optuna study of `campaign`; returns the study names annotated.

    `running`: the campaign is still running (the note says so, and when it was written).
    """
    from optuna_dashboard import save_note

    from studies.api import campaign_studies

    written = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    with campaign_studies(storage, campaign) as studies:
        if not studies:
            raise CampaignNotFound(f"no Optuna study of campaign {campaign!r} in this storage")
        try:
            data: CampaignData | None = load_campaign(storage, campaign, curves=False)
        except CampaignNotFound:
            data = None
        try:
            progress = {r["optimizer"]: r for r in campaign_status(storage, campaign)}
        except KeyError:  # studies made without the campaign's results tables
            progress = {}
        for label, study in studies.items():
            spec = dict(study.user_attrs.get("spec") or {})
            note = campaign_note(
                data,
                campaign=campaign,
                spec=spec,
                label=label,
                progress=progress,
                running=running,
                written=written,
            )
            save_note(study, note)
        return [study.study_name for study in studies.values()]
