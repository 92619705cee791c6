"""A campaign's results as the reports need them, read through `studies.results` only.

`load_campaign(storage, campaign)` calls `runs_frame`, `curves_frame` and `compare_frame` once
and keeps the frames; the helpers below answer the report's questions (confirm values per
optimizer, the best config's runs, search trials) without touching the database again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from studies.results import CANDIDATES

__all__ = ["CampaignData", "CampaignNotFound", "load_campaign"]

OK_STATUSES = ("ok", "complete", "completed")


class CampaignNotFound(ValueError):
    """No run of the named campaign in the storage."""


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


@dataclass
class CampaignData:
    """One campaign's runs and curves, plus what the reports derive from them."""

    campaign: str
    runs: pd.DataFrame
    curves: pd.DataFrame
    compare_table: pd.DataFrame | None = None
    storage: str | None = None
    metric: str = "value"
    direction: str = "minimize"
    workload: str | None = None
    unit: str = "epoch"
    spec: dict[str, Any] = field(default_factory=dict)
    study_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> user attrs
    workload_options: dict[str, Any] = field(default_factory=dict)

    @property
    def compare(self) -> pd.DataFrame | None:
        """The runner's comparison table (`studies.results.compare_frame`), read on first use."""
        if self.compare_table is None and self.storage is not None:
            from studies import results

            try:
                self.compare_table = results.compare_frame(self.storage, self.campaign)
            except KeyError:
                return None
        return self.compare_table

    def optimizer_class(self, label: str) -> str:
        """The optimizer a study label stands for (labels may differ, e.g. `hvadam-fixed`)."""
        return str(self.study_attrs.get(label, {}).get("optimizer_class") or label)

    @property
    def candidates(self) -> list[str]:
        """Labels of HVAdam and Anon studies: what the tests compare against the baselines."""
        return [o for o in self.optimizers if self.optimizer_class(o) in CANDIDATES]

    # ---- selections ----------------------------------------------------------------------

    @property
    def optimizers(self) -> list[str]:
        names = list(dict.fromkeys(self.runs["optimizer"].tolist()))
        first = [n for n in names if self.optimizer_class(n) in CANDIDATES]
        return sorted(first, key=lambda n: CANDIDATES.index(self.optimizer_class(n))) + [
            n for n in names if n not in first
        ]

    def ok_runs(self, phase: str | None = None) -> pd.DataFrame:
        # Boolean masks through `.loc`: an empty object-dtype mask given to `[]` would select
        # columns (none), and a campaign without a finished run would lose its columns.
        runs = self.runs
        ok = runs["status"].str.lower().isin(OK_STATUSES) & runs["value"].map(
            lambda v: v is not None and math.isfinite(float(v))
        ).astype(bool)
        if phase is not None:
            ok &= runs["phase"] == phase
        return runs.loc[ok]

    @property
    def has_confirm(self) -> bool:
        return not self.ok_runs("confirm").empty

    def confirm_values(self) -> dict[str, list[float]]:
        runs = self.ok_runs("confirm")
        return {
            opt: runs.loc[runs["optimizer"] == opt, "value"].astype(float).tolist()
            for opt in self.optimizers
            if (runs["optimizer"] == opt).any()
        }

    def best_search_run(self, optimizer: str) -> pd.Series | None:
        runs = self.ok_runs("search")
        runs = runs[runs["optimizer"] == optimizer]
        if runs.empty:
            return None
        values = runs["value"].astype(float)
        idx = values.idxmax() if self.direction == "maximize" else values.idxmin()
        return runs.loc[idx]

    def best_runs(self, optimizer: str) -> tuple[str, pd.DataFrame]:
        """The runs that stand for the optimizer's best config: its confirm seeds when the
        confirm phase ran, else its best search trial. Returns (phase, runs)."""
        confirm = self.ok_runs("confirm")
        confirm = confirm[confirm["optimizer"] == optimizer]
        if not confirm.empty:
            return "confirm", confirm
        best = self.best_search_run(optimizer)
        if best is None:
            return "search", self.runs.iloc[0:0]
        return "search", best.to_frame().T

    def curves_of(self, run_ids: Any, metric: str) -> pd.DataFrame:
        c = self.curves
        return c[c["run_id"].isin(list(run_ids)) & (c["metric"] == metric)]

    def curve_metrics(self) -> list[str]:
        return sorted(self.curves["metric"].unique().tolist()) if len(self.curves) else []


def load_campaign(storage: str, campaign: str, *, curves: bool = True) -> CampaignData:
    """Read one campaign's frames through `studies.results`; raise if it has no run.

    `curves=False` leaves the curves frame empty (the notes need the runs only).
    """
    from studies import results

    runs = results.runs_frame(storage, campaign)
    if runs is None or runs.empty:
        from studies.api import mask_url

        raise CampaignNotFound(f"campaign {campaign!r} has no runs in storage {mask_url(storage)}")
    frame = (
        results.curves_frame(storage, campaign)
        if curves
        else pd.DataFrame(columns=results.CURVE_COLUMNS)
    )
    return from_frames(
        campaign, runs, frame, None, storage=storage, study_attrs=study_attrs(storage, campaign)
    )


def study_attrs(storage: str, campaign: str) -> dict[str, dict[str, Any]]:
    """User attrs of the campaign's Optuna studies, by optimizer label (spec, workload, ...)."""
    from studies.api import campaign_study_attrs

    return campaign_study_attrs(storage, campaign)


def from_frames(
    campaign: str,
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    compare: pd.DataFrame | None = None,
    *,
    storage: str | None = None,
    study_attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> CampaignData:
    """Campaign data from already-read frames (and the studies' user attrs, if known).

    Confirm and sweep runs of a superseded best trial (a grown campaign) are left out.
    """
    from studies.results import current_reruns

    runs = current_reruns(runs).copy()
    for col in ("hyperparameters", "metrics", "extras"):
        if col in runs:
            runs[col] = runs[col].map(_as_dict)
    attrs = {str(k): dict(v) for k, v in (study_attrs or {}).items()}
    first = runs.iloc[0]
    some = next(iter(attrs.values()), {})
    spec = dict(some.get("spec") or {})
    wl: dict[str, Any] = spec["workload"] if isinstance(spec.get("workload"), dict) else {}
    metric = str(first.get("metric") or some.get("metric") or "value")
    direction = str(first.get("direction") or some.get("direction") or "minimize")
    workload = wl.get("name") or some.get("workload") or first.get("workload")
    # valley2d reports every `report_every` steps; its "epochs" are chunks of steps
    step_unit = workload == "valley2d" or "report_every" in (wl.get("options") or {})
    unit = "step" if step_unit else "epoch"
    return CampaignData(
        campaign=campaign,
        runs=runs,
        curves=curves,
        compare_table=compare,
        storage=storage,
        metric=metric,
        direction=direction,
        workload=str(workload) if workload is not None else None,
        unit=unit,
        workload_options=dict(wl.get("options") or {}),
        spec=spec,
        study_attrs=attrs,
    )
