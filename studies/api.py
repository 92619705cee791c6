"""What other packages (dashboards, notebooks, scripts) use of `studies`, in one module.

`dashboards` imports only this module and `studies.results` (pyproject's import-linter
contract forbids the rest), so the modules behind these functions can change freely:

- storage URLs: `resolve_storage_url`, `mask_url`, `check_storage_exists` (read-only commands
  refuse a SQLite file that does not exist instead of creating it);
- a campaign's progress: `campaign_status`;
- a campaign's Optuna studies: `campaign_study_attrs` (their user attrs, by optimizer label),
  `campaign_studies` (the studies themselves, on one connection), `optuna_storage` (Optuna's
  storage on a campaign database, for writing studies beside the campaign's);
- the 2-D test functions of the `valley2d` workload: `function_2d`;
- running a campaign in this process: `run_campaign`.

Heavy libraries (sqlalchemy, optuna, torch) are imported when a function first needs them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    import torch
    from optuna.storages import RDBStorage

    from studies.worker import Event

__all__ = [
    "campaign_status",
    "campaign_studies",
    "campaign_study_attrs",
    "check_storage_exists",
    "function_2d",
    "mask_url",
    "optuna_storage",
    "resolve_storage_url",
    "run_campaign",
]

Function2D = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def resolve_storage_url(storage: str | None = None) -> str:
    """`storage` if given, else `$HVADAM_STORAGE`, else `sqlite:///hvadam.db`."""
    from studies import storage as _storage

    return _storage.resolve_storage_url(storage)


def check_storage_exists(url: str) -> None:
    """Refuse (StorageError) a SQLite URL whose file does not exist; other URLs pass."""
    from studies import storage as _storage

    _storage.check_storage_exists(url)


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***` (for anything printed or written)."""
    from studies import storage as _storage

    return _storage.mask_url(url)


@contextlib.contextmanager
def optuna_storage(storage: str, *, create_tables: bool = False) -> Iterator[RDBStorage]:
    """Optuna's storage on the campaign database `storage` (its tables must exist unless
    `create_tables`), with the project's settings for many writers; its connections close
    after the block."""
    from studies import storage as _storage

    rdb = _storage.optuna_storage(storage, create_tables=create_tables)
    try:
        yield rdb
    finally:
        rdb.engine.dispose()


def _label(attrs: Mapping[str, Any], study_name: str) -> str:
    return str(attrs.get("optimizer") or study_name.rsplit("/", 1)[-1])


def campaign_study_attrs(storage: str, campaign: str) -> dict[str, dict[str, Any]]:
    """User attrs (spec, workload, metric, ...) of `campaign`'s Optuna studies, by optimizer
    label; empty when the database holds no study of it."""
    with optuna_storage(storage) as rdb:
        return {
            _label(study.user_attrs, study.study_name): dict(study.user_attrs)
            for study in rdb.get_all_studies()
            if study.user_attrs.get("campaign") == campaign
        }


@contextlib.contextmanager
def campaign_studies(storage: str, campaign: str) -> Iterator[dict[str, optuna.Study]]:
    """`campaign`'s Optuna studies by optimizer label, usable (read and written, e.g. notes)
    inside the block."""
    import optuna

    with optuna_storage(storage) as rdb:
        yield {
            _label(study.user_attrs, study.study_name): optuna.load_study(
                study_name=study.study_name, storage=rdb
            )
            for study in rdb.get_all_studies()
            if study.user_attrs.get("campaign") == campaign
        }


def campaign_status(storage: str, campaign: str) -> list[dict[str, Any]]:
    """Progress of every optimizer of `campaign` (what `hvadam status` prints), one dict each."""
    from studies.status import campaign_status as _status

    return _status(storage, campaign)


def function_2d(name: str) -> Function2D | None:
    """The `valley2d` workload's test function `name` (valley, rosenbrock, ...) as f(x, y) on
    tensors, or None for an unknown name."""
    from studies.workloads.valley2d import FUNCTIONS

    found = FUNCTIONS.get(name)
    return None if found is None else found.fn


def run_campaign(
    spec: Mapping[str, Any], storage: str, *, threads: int | None = None, source: str | None = None
) -> int:
    """Validate `spec` (what a spec file holds) and run that campaign in this process until it
    is complete; returns the number of runs made. `source` names the spec in errors."""
    from studies.runner import RunnerConfig
    from studies.runner import run_campaign as run
    from studies.spec import parse_spec

    parsed = parse_spec(spec, source=source or f"<{spec.get('name', 'spec')}>")
    events: list[Event] = []
    run(parsed, RunnerConfig(storage=storage, threads=threads), on_event=events.append)
    return len(events)
