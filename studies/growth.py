"""Growing a campaign: which changes of its spec continue it, and which are refused.

A campaign's spec is stored with it (`hvadam_campaigns.spec` and each study's user attrs). A
spec under the same name that differs from it continues the campaign when it only *grows* it:

- an optimizer added (its study is created; the others keep their trials);
- `budget.trials`, `budget.seconds` or `confirm.seeds` raised, or a budget limit removed
  (`trials` dropped while `seconds` stays, or the other way round);
- `description`, `target`, `sweep`, and the execution and reporting keys (`resources`,
  `max_concurrent`, `ray`, `notes_interval`, `artifacts`), which are no part of the trials.

Only the new work runs then: the new studies' trials, the trials the raised budget allows, the
new confirm seeds. Anything that would make the old trials incomparable with new ones is
refused, naming what changed: the workload (name, options, metric), `budget.max_epochs`,
`seed`, `sampler` (and its options), `pruner`, `device`, and an existing optimizer's space or
overrides (its `schedule:` block included), or an optimizer removed. Lowering a budget (or
adding a limit the campaign ran without) is refused too: a campaign only grows.

Confirm runs belong to the best trial they confirmed (`hvadam_runs.trial_number`). When a grown
search finds a new best trial for an optimizer, the claims of the confirm runs of the earlier
best are released (`release_superseded`), so the new best is confirmed on the same seeds; the
earlier confirm rows stay as they are, and `compare` averages the confirm runs of the trial
confirmed last.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from studies.results.schema import CampaignRow, ClaimRow, RunRow
from studies.results.values import jsonable
from studies.storage import get_engine, read_connection, with_retries

__all__ = [
    "FREE_KEYS",
    "GrowthRefused",
    "check_spec_current",
    "grow_stored_spec",
    "growth",
    "release_superseded",
    "spec_mismatch",
]

# Top-level keys of the normalized spec that may change freely.
FREE_KEYS = ("description", "target", "sweep")
# Budget limits that may only go up (or be removed).
LIMITS = ("trials", "seconds")
NEW_NAME = "give the campaign a new name (or use another storage)"


class GrowthRefused(ValueError):
    """A spec change that does not only grow the campaign; the message names what changed."""


def _plain(value: Any) -> Any:
    """The value as the storage keeps it (JSON), so that a stored spec compares equal."""
    return json.loads(json.dumps(jsonable(value), sort_keys=True, default=str))


def _diff(path: str, old: Any, new: Any) -> str | None:
    """The first difference between two JSON values, as "path changed from A to B"."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                return f"{where} added ({new[key]!r})"
            if key not in new:
                return f"{where} removed (was {old[key]!r})"
            found = _diff(where, old[key], new[key])
            if found:
                return found
        return None
    if old != new:
        return f"{path} changed from {old!r} to {new!r}"
    return None


def _incomparable(what: str) -> GrowthRefused:
    return GrowthRefused(f"{what}; old trials would not be comparable; {NEW_NAME}")


def _only_grows(key: str, old: Any, new: Any) -> str | None:
    """A budget number that may go up, or (for a limit) be removed; None when unchanged."""
    if old == new:
        return None
    if new is None and key.rsplit(".", 1)[-1] in LIMITS:
        return f"{key}: no limit now (was {old!r})"
    if old is None:
        raise GrowthRefused(
            f"{key} added ({new!r}), a limit the campaign ran without; a campaign only grows: "
            f"{NEW_NAME}"
        )
    if new < old:
        raise GrowthRefused(
            f"{key} lowered from {old!r} to {new!r}; a campaign only grows (its runs stay in the "
            f"storage): keep {key} at {old!r} or more, or {NEW_NAME}"
        )
    return f"{key} raised from {old!r} to {new!r}"


def growth(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What `new` (a normalized spec) adds to `stored`; `GrowthRefused` naming the first change
    that does not only grow the campaign."""
    stored, new = _plain(stored), _plain(new)
    changes: list[str] = []
    for key in sorted(set(stored) | set(new)):
        old_value: Any = stored.get(key)
        new_value: Any = new.get(key)
        if key in FREE_KEYS:
            if old_value != new_value:
                changes.append(f"{key} changed")
        elif key == "optimizers":
            old_value, new_value = old_value or {}, new_value or {}
            for label, body in old_value.items():
                if label not in new_value:
                    raise GrowthRefused(
                        f"optimizers.{label} removed; a campaign only grows (its trials stay in "
                        f"the storage): keep it, or {NEW_NAME}"
                    )
                found = _diff(f"optimizers.{label}", body, new_value[label])
                if found:
                    raise _incomparable(found)
            changes += [
                f"optimizers.{label} added" for label in new_value if label not in old_value
            ]
        elif key in ("budget", "confirm"):
            old_value, new_value = old_value or {}, new_value or {}
            for sub in sorted(set(old_value) | set(new_value)):
                name = f"{key}.{sub}"
                if sub in (*LIMITS, "seeds"):
                    said = _only_grows(name, old_value.get(sub), new_value.get(sub))
                    changes += [said] if said else []
                else:
                    found = _diff(name, old_value.get(sub), new_value.get(sub))
                    if found:
                        raise _incomparable(found)
        else:
            found = _diff("", _only(stored, key), _only(new, key))
            if found:
                raise _incomparable(found)
    return changes


def _only(spec: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {key: spec[key]} if key in spec else {}


def spec_mismatch(name: str, stored: Mapping[str, Any] | None, spec: Any, where: str) -> str:
    """Why a worker cannot run `spec` on study `name`, whose user attrs hold `stored`."""
    stored_hash = None if stored is None else stored.get("spec_hash")
    old = None if stored is None else stored.get("spec")
    if isinstance(old, Mapping):
        try:
            grown = growth(spec.normalized(), old)
        except GrowthRefused:
            grown = None
        if grown is not None:
            return (
                f"campaign {spec.name!r} was grown since this spec (stored hash {stored_hash}, "
                f"this spec {spec.spec_hash}: {'; '.join(grown) or 'changed'}); restart with the "
                f"new spec"
            )
    return (
        f"study {name!r} in {where} belongs to a different spec (hash {stored_hash}, this spec "
        f"{spec.spec_hash})"
    )


def grow_stored_spec(url: str, spec: Any) -> list[str]:
    """Check `spec` against the campaign's stored spec and, when it only grows it, store it.

    Call under the campaign lock. Returns what grew (empty for the same spec or a new
    campaign); raises `GrowthRefused` (the message names the change).
    """
    engine = get_engine(url)
    normalized = spec.normalized()
    with read_connection(engine) as conn:
        row = conn.execute(
            sa.select(CampaignRow.spec_hash, CampaignRow.spec).where(CampaignRow.name == spec.name)
        ).first()
    if row is None or row.spec_hash == spec.spec_hash:
        return []
    try:
        changes = growth(row.spec, normalized)
    except GrowthRefused as exc:
        older = _is_growth(normalized, row.spec)
        raise GrowthRefused(
            f"spec {spec.source}: campaign {spec.name!r} exists with another spec: {exc}"
            + (
                " (the campaign was grown since this spec; run it with the grown spec)"
                if older
                else ""
            )
        ) from None

    def txn() -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.update(CampaignRow)
                .where(CampaignRow.name == spec.name)
                .values(spec_hash=spec.spec_hash, spec=jsonable(normalized))
            )

    with_retries(txn)
    return changes


def _is_growth(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    try:
        return bool(growth(old, new))
    except GrowthRefused:
        return False


def release_superseded(
    url: str,
    campaign: str,
    optimizer: str,
    best_trial: int,
    phases: tuple[str, ...] = ("confirm", "sweep"),
) -> int:
    """Release the done confirm and sweep claims of `optimizer` whose run re-ran another trial
    than `best_trial` (a grown search found a new best); returns how many. Their runs stay."""
    engine = get_engine(url)
    earlier = sa.select(RunRow.id).where(
        RunRow.campaign == campaign,
        RunRow.optimizer == optimizer,
        RunRow.phase.in_(phases),
        RunRow.trial_number != best_trial,
    )
    where = (
        ClaimRow.campaign == campaign,
        ClaimRow.optimizer == optimizer,
        ClaimRow.phase.in_(phases),
        ClaimRow.status == "done",
        ClaimRow.run_id.in_(earlier),
    )
    with read_connection(engine) as conn:  # a read first: most calls find nothing to release
        if not conn.execute(
            sa.select(sa.func.count()).select_from(ClaimRow).where(*where)
        ).scalar():
            return 0

    def txn() -> int:
        with engine.begin() as conn:
            return int(conn.execute(sa.delete(ClaimRow).where(*where)).rowcount)

    return with_retries(txn)


def check_spec_current(url: str, spec: Any) -> None:
    """Raise `CampaignError` when the campaign's stored spec is no longer `spec` (it was grown
    while this worker ran): the worker stops, to be restarted with the grown spec."""
    engine = get_engine(url)
    with read_connection(engine) as conn:
        stored = conn.execute(
            sa.select(CampaignRow.spec_hash).where(CampaignRow.name == spec.name)
        ).scalar()
    if stored is not None and stored != spec.spec_hash:
        from studies.campaign import CampaignError

        raise CampaignError(
            f"campaign {spec.name!r} was grown while this worker ran (stored spec hash {stored}, "
            f"this worker's {spec.spec_hash}); restart it with the new spec"
        )
