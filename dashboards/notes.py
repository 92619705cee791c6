"""Study notes for optuna-dashboard: each campaign study shows the spec and the comparison.

`annotate_studies(storage, campaign)` writes (or rewrites) the note of every study of the
campaign, so that whoever opens the dashboard sees, next to Optuna's own plots, what the
campaign was and where this optimizer stands. The runner calls it when a campaign finishes;
calling it again refreshes the table.
"""

from __future__ import annotations

import math
from typing import Any

from dashboards.data import CampaignData, CampaignNotFound, load_campaign
from dashboards.stats import comparison_tables

__all__ = ["annotate_studies", "campaign_note"]


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
    data: CampaignData | None, *, campaign: str, spec: dict[str, Any], label: str
) -> str:
    """The Markdown note of one study (`label`) of the campaign."""
    parts = [f"# Campaign `{campaign}`: {label}", ""]
    if data is not None:
        parts.append(
            f"Workload **{data.workload}**, metric **{data.metric}** ({data.direction}). "
            f"Studies of this campaign: "
            + ", ".join(f"`{campaign}/{o}`" for o in data.optimizers)
            + " (select them and press COMPARE)."
        )
        parts += ["", "## Comparison", "", comparison_markdown(data)]
    else:
        parts.append("_No run has finished yet._")
    if spec:
        parts += ["", "## Spec", "", "```yaml", _yaml(spec), "```"]
    parts += ["", "_Written by `hvadam`; `hvadam report` has the full report._"]
    return "\n".join(parts) + "\n"


def annotate_studies(storage: str, campaign: str) -> list[str]:
    """Write the note of every Optuna study of `campaign`; returns the study names annotated."""
    from optuna_dashboard import save_note

    from studies.api import campaign_studies

    with campaign_studies(storage, campaign) as studies:
        if not studies:
            raise CampaignNotFound(f"no Optuna study of campaign {campaign!r} in this storage")
        try:
            data: CampaignData | None = load_campaign(storage, campaign)
        except CampaignNotFound:
            data = None
        for label, study in studies.items():
            spec = dict(study.user_attrs.get("spec") or {})
            save_note(study, campaign_note(data, campaign=campaign, spec=spec, label=label))
        return [study.study_name for study in studies.values()]
