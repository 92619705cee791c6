"""Several campaigns at once: a rank table, win/tie/loss counts and performance profiles.

`load_across(storage, campaigns)` reads each campaign (its own metric and direction, from
`ResultsDB.campaign`) once, from the runs only (never the curves), and gives an `Across`:

- `table`: the rank table, one row per optimizer and campaign (`ACROSS_COLUMNS`). `value` is
  the confirm mean, or the best search value (`source == "search"`) for a campaign whose confirm
  phase has not run. `rank` is 1 for the best value by the campaign's direction (ties share the
  smaller rank). `vs_best` tests each optimizer against the campaign's best with Welch's t-test,
  Holm-corrected over the campaign's optimizers, at `alpha`: "worse" or "not significant"
  (or "too few seeds", "not testable (no spread)"); the best itself says "best".
- `outcomes` and `win_tie_loss()`: HVAdam and Anon (the labels whose study's `optimizer_class`
  is a candidate) against each baseline, per campaign as the single report tests them
  (`comparison_tables`: Welch, Holm over the campaign's candidate-baseline pairs): a win or a
  loss is a significant difference at `alpha` in the candidate's favour or against it; anything
  else (not significant, too few seeds, no spread) is a tie.
- `ratios()` and `profile(taus)`: Dolan-More performance profiles. Each optimizer's value is
  turned into a positive cost (`COST_RULES`); its ratio on a campaign is its cost over the best
  cost there, and rho(tau) is the fraction of ALL the campaigns on which the ratio is <= tau. An
  optimizer missing from a campaign, or without a value there, has ratio infinity.

Cost rules (per campaign): minimize: cost = value. Maximize: cost = 1 - value (the error) when
every value of the campaign lies in [0, 1], else cost = 1 / value (so ratio = best / value),
infinite for a value <= 0. The best optimizer (and any tie with it) has ratio 1; the others
cost / best cost, or infinity when the best cost is not positive (a loss of exactly 0 or below,
which no factor can reach).

docs/cross-workload.md states the same for users.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from studies.results.db import ResultsDB
from studies.results.frames import compare_frame
from studies.results.schema import RunRow
from studies.results.stats import CANDIDATES, NO_SPREAD, TOO_FEW, compare_groups, holm
from studies.results.stats import comparison_tables as _comparison_tables
from studies.storage import read_connection

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ACROSS_COLUMNS",
    "COST_RULES",
    "OUTCOME_COLUMNS",
    "WTL_COLUMNS",
    "Across",
    "UnknownCampaign",
    "across_frame",
    "load_across",
    "profile_ratio",
]

ACROSS_COLUMNS = [
    "campaign",
    "metric",
    "direction",
    "optimizer",
    "optimizer_class",
    "candidate",
    "source",  # "confirm", or "search" where the campaign has no confirm phase (the fallback)
    "value",
    "std",
    "n",
    "rank",
    "best",  # the campaign's best optimizer
    "vs_best",
    "p_holm",  # Welch p against the best, Holm-corrected within the campaign
    "cost_rule",
    "cost",
    "ratio",
]
OUTCOME_COLUMNS = [
    "campaign",
    "candidate",
    "baseline",
    "mean_difference",
    "welch_p_holm",
    "verdict",
    "outcome",
]
WTL_COLUMNS = ["candidate", "baseline", "wins", "ties", "losses", "campaigns"]
COST_RULES = {
    "value": "minimize: cost = value",
    "error": "maximize, values in [0, 1]: cost = 1 - value",
    "reciprocal": "maximize: cost = 1 / value (ratio = best / value)",
}


class UnknownCampaign(ValueError):
    """A campaign named that the storage does not hold."""


@dataclass
class _Campaign:
    name: str
    metric: str
    direction: str
    source: str
    values: dict[str, list[float]]  # per optimizer: confirm values, or [best search value]
    stats: dict[str, tuple[float, float, int]]  # per optimizer: value, std, n
    classes: dict[str, str]


def _confirm_values(db: ResultsDB, campaign: str) -> dict[str, list[float]]:
    """Complete confirm runs' values per optimizer, in run order (one narrow query)."""
    stmt = (
        sa.select(RunRow.optimizer, RunRow.trial_number, RunRow.value)
        .where(
            RunRow.campaign == campaign,
            RunRow.phase == "confirm",
            RunRow.status == "complete",
            RunRow.value.is_not(None),
        )
        .order_by(RunRow.id)
    )
    by_trial: dict[str, dict[Any, list[float]]] = {}
    with read_connection(db.engine) as conn:
        for opt, trial, value in conn.execute(stmt):
            if value is not None and math.isfinite(float(value)):
                by_trial.setdefault(str(opt), {}).setdefault(trial, []).append(float(value))
    # The trial confirmed last: a grown campaign's new best (docs/budgets.md); a best trial is
    # only ever replaced by a later, better one, so it is the last one first seen.
    return {opt: list(trials.values())[-1] for opt, trials in by_trial.items()}


def _classes(db: ResultsDB, campaign: str, labels: Sequence[str]) -> dict[str, str]:
    """Each label's optimizer class from its Optuna study (the label where there is none)."""
    from studies.api import campaign_study_attrs
    from studies.storage import reading

    with reading():
        has_studies = sa.inspect(db.engine).has_table("studies")
    attrs = campaign_study_attrs(db.url, campaign) if has_studies else {}
    return {o: str(attrs.get(o, {}).get("optimizer_class") or o) for o in labels}


def _read(url: str, name: str, classes: Mapping[str, Mapping[str, str]] | None) -> _Campaign:
    db = ResultsDB(url)
    info = db.campaign(name)
    if info is None:
        known = ", ".join(repr(c["name"]) for c in db.campaigns()) or "none"
        raise UnknownCampaign(f"campaigns: no campaign {name!r} in this storage (it has: {known})")
    frame = compare_frame(url, name)
    confirm = _confirm_values(db, name)
    labels = frame["optimizer"].tolist()
    source = "confirm" if confirm else "search"
    values: dict[str, list[float]] = {}
    stats: dict[str, tuple[float, float, int]] = {}
    for rec in frame.to_dict(orient="records"):
        opt = rec["optimizer"]
        if source == "confirm":
            if opt in confirm:
                values[opt] = confirm[opt]
                stats[opt] = (rec["confirm_mean"], rec["confirm_std"], int(rec["confirm_seeds"]))
        elif not math.isnan(rec["best_value"]):
            values[opt] = [rec["best_value"]]
            stats[opt] = (rec["best_value"], math.nan, 1)
    given = (classes or {}).get(name)
    found = {o: str(given.get(o, o)) for o in labels} if given is not None else None
    return _Campaign(
        name, str(info["metric"]), str(info["direction"]), source, values, stats,
        found if found is not None else _classes(db, name, labels),
    )  # fmt: skip


def _cost_rule(direction: str, values: Sequence[float]) -> str:
    if direction == "minimize":
        return "value"
    return "error" if all(0.0 <= v <= 1.0 for v in values) else "reciprocal"


def _cost(rule: str, value: float) -> float:
    if rule == "value":
        return value
    if rule == "error":
        return 1.0 - value
    return 1.0 / value if value > 0 else math.inf


def profile_ratio(cost: float, best_cost: float, *, is_best: bool) -> float:
    """The performance ratio: 1 for the best (and ties), cost / best cost where the best cost
    is positive and finite, else infinity."""
    if is_best:
        return 1.0
    if math.isnan(cost) or not (0.0 < best_cost < math.inf):
        return math.inf
    return cost / best_cost


def _rows(c: _Campaign, alpha: float) -> list[dict[str, Any]]:
    maximize = c.direction == "maximize"
    ranked = _ranked(c)
    best = ranked[0] if ranked else None
    rule = _cost_rule(c.direction, [s[0] for s in c.stats.values()])
    best_value = c.stats[best][0] if best is not None else math.nan
    best_cost = _cost(rule, best_value) if best is not None else math.nan
    # Welch against the best, Holm over the campaign's other optimizers
    others = [o for o in ranked if o != best]
    comps = {o: compare_groups(o, c.values[o], str(best), c.values[str(best)]) for o in others}
    adjusted = dict(zip(others, holm([comps[o].welch_p for o in others]), strict=True))
    rows = []
    for opt in c.classes:
        row: dict[str, Any] = {
            "campaign": c.name, "metric": c.metric, "direction": c.direction, "optimizer": opt,
            "optimizer_class": c.classes[opt], "candidate": c.classes[opt] in CANDIDATES,
            "source": c.source, "best": best, "cost_rule": rule,
        }  # fmt: skip
        if opt not in c.stats:
            row.update(value=math.nan, std=math.nan, n=0, rank=math.nan, vs_best="no value",
                       p_holm=math.nan, cost=math.nan, ratio=math.inf)  # fmt: skip
            rows.append(row)
            continue
        value, std, n = c.stats[opt]
        rank = 1 + sum(
            1 for o in ranked if (c.stats[o][0] > value if maximize else c.stats[o][0] < value)
        )
        if value == best_value:
            verdict = "best"
        elif comps[opt].verdict in (TOO_FEW, NO_SPREAD):
            verdict = comps[opt].verdict
        else:
            verdict = "worse" if adjusted[opt] < alpha else "not significant"
        cost = _cost(rule, value)
        row.update(
            value=value, std=std, n=n, rank=rank, vs_best=verdict,
            p_holm=adjusted.get(opt, math.nan), cost=cost,
            ratio=profile_ratio(cost, best_cost, is_best=value == best_value),
        )  # fmt: skip
        rows.append(row)
    return rows


def _outcomes(c: _Campaign, alpha: float) -> list[dict[str, Any]]:
    candidates = [o for o in c.values if c.classes.get(o, o) in CANDIDATES]
    _, tests = _comparison_tables(
        c.values, direction=c.direction, candidates=candidates, alpha=alpha
    )
    rows = []
    for rec in tests.to_dict(orient="records"):
        verdict = str(rec["verdict"])
        outcome = "tie"  # not significant, too few seeds, no spread
        if verdict.endswith(" better"):
            outcome = "win"
        elif verdict.endswith(" worse"):
            outcome = "loss"
        rows.append(
            {"campaign": c.name, "candidate": rec["candidate"], "baseline": rec["baseline"],
             "mean_difference": rec["mean_difference"], "welch_p_holm": rec["welch_p_holm"],
             "verdict": verdict, "outcome": outcome}
        )  # fmt: skip
    return rows


@dataclass
class Across:
    """Several campaigns' rank table and candidate-baseline outcomes (see the module doc)."""

    campaigns: list[str]
    table: pd.DataFrame
    outcomes: pd.DataFrame
    alpha: float = 0.05
    meta: pd.DataFrame | None = None  # per campaign (index): metric, direction, source, ...

    @property
    def optimizers(self) -> list[str]:
        """Every optimizer label: candidates first (HVAdam's, then Anon's), then the baselines
        by name."""
        t = self.table.drop_duplicates("optimizer")
        classes = dict(zip(t["optimizer"], t["optimizer_class"], strict=True))
        cand = sorted(
            (o for o, c in classes.items() if c in CANDIDATES),
            key=lambda o: (CANDIDATES.index(classes[o]), o),
        )
        return cand + sorted(o for o in classes if o not in cand)

    def win_tie_loss(self) -> pd.DataFrame:
        """Per candidate and baseline: wins, ties, losses over the campaigns holding both."""
        import pandas as pd

        rows = []
        o = self.outcomes
        for (cand, base), g in o.groupby(["candidate", "baseline"], sort=False):
            counts = g["outcome"].value_counts()
            rows.append(
                {"candidate": cand, "baseline": base, "wins": int(counts.get("win", 0)),
                 "ties": int(counts.get("tie", 0)), "losses": int(counts.get("loss", 0)),
                 "campaigns": len(g)}
            )  # fmt: skip
        order = {o: i for i, o in enumerate(self.optimizers)}
        rows.sort(key=lambda r: (order[r["candidate"]], order[r["baseline"]]))
        return pd.DataFrame(rows, columns=WTL_COLUMNS)

    def ratios(self) -> pd.DataFrame:
        """Performance ratios, optimizer x campaign; infinity where an optimizer is missing."""
        wide = self.table.pivot(index="optimizer", columns="campaign", values="ratio")
        wide = wide.reindex(index=self.optimizers, columns=self.campaigns)
        return wide.astype(float).fillna(math.inf)

    def profile(self, taus: Sequence[float]) -> pd.DataFrame:
        """rho(tau) per optimizer (rows) and tau (columns): the fraction of all campaigns on
        which the optimizer's ratio is <= tau."""
        import numpy as np
        import pandas as pd

        r = self.ratios().to_numpy()
        t = np.asarray(list(taus), dtype=float)
        rho = (r[:, :, None] <= t[None, None, :]).sum(axis=1) / max(len(self.campaigns), 1)
        return pd.DataFrame(rho, index=self.ratios().index, columns=t)

    def profile_steps(self) -> dict[str, tuple[list[float], list[float]]]:
        """Each optimizer's profile as a step curve: the distinct finite ratios (tau, sorted)
        and rho at each; rho(tau) is the last step at or left of tau, 0 before the first."""
        out = {}
        n = max(len(self.campaigns), 1)
        for opt, row in self.ratios().iterrows():
            finite = sorted(float(x) for x in row if math.isfinite(x))
            taus = sorted(set(finite))
            out[str(opt)] = (taus, [sum(1 for x in finite if x <= t) / n for t in taus])
        return out


def _check(campaigns: Sequence[str], alpha: float) -> list[str]:
    if isinstance(campaigns, str):
        campaigns = [campaigns]
    names = [str(c) for c in campaigns]
    if not names:
        raise ValueError("campaigns: give at least one campaign name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"campaigns: each campaign once; given more than once: {', '.join(twice)}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return names


def load_across(
    storage: str | None,
    campaigns: Sequence[str],
    *,
    alpha: float = 0.05,
    classes: Mapping[str, Mapping[str, str]] | None = None,
) -> Across:
    """Read `campaigns` (names in one storage) into an `Across`.

    `classes`: per campaign, the optimizer class of each label (default: the `optimizer_class`
    of the campaign's Optuna studies, else the label itself). Raises `UnknownCampaign` naming a
    campaign the storage does not hold.
    """
    import pandas as pd

    from studies.storage import resolve_storage_url

    names = _check(campaigns, alpha)
    url = resolve_storage_url(storage)
    read = [_read(url, name, classes) for name in names]
    rows = [row for c in read for row in _rows(c, alpha)]
    table = pd.DataFrame(rows, columns=ACROSS_COLUMNS)
    table["rank"] = table["rank"].astype("Int64")
    table["n"] = table["n"].astype(int)
    table["candidate"] = table["candidate"].astype(bool)
    outcomes = pd.DataFrame([r for c in read for r in _outcomes(c, alpha)], columns=OUTCOME_COLUMNS)
    meta = pd.DataFrame(
        [
            {"campaign": c.name, "metric": c.metric, "direction": c.direction,
             "source": c.source, "best": next(iter(_ranked(c)), None),
             "cost_rule": _cost_rule(c.direction, [s[0] for s in c.stats.values()]),
             "optimizers": len(c.classes)}
            for c in read
        ]
    ).set_index("campaign")  # fmt: skip
    return Across(names, table, outcomes, alpha, meta)


def _ranked(c: _Campaign) -> list[str]:
    """The campaign's optimizers with a value, best first."""
    maximize = c.direction == "maximize"
    return sorted(c.stats, key=lambda o: -c.stats[o][0] if maximize else c.stats[o][0])


def across_frame(
    storage: str | None, campaigns: Sequence[str], *, alpha: float = 0.05
) -> pd.DataFrame:
    """The rank table of `campaigns` as a tidy frame (`ACROSS_COLUMNS`, one row per optimizer
    and campaign, campaigns in the order given, each campaign's optimizers best first)."""
    return load_across(storage, campaigns, alpha=alpha).table
