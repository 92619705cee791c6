"""What a campaign shows while it runs: its live-notes settings and the progress hooks.

Optional spec keys (how the campaign is reported, not what it measures: not in the spec hash)::

    notes_interval: 60              # seconds between note refreshes during search (0: every run)
    artifacts: {checkpoints: true}  # each confirm run uploads its final model and optimizer state

Packages downstream of `studies` (the dashboards) register a hook under the entry-point group
`hvadam.campaign_progress`; `LiveNotes.run_finished` calls it with an `Update` after every confirm
run, and during search at most every `notes_interval` seconds, whichever worker finishes a run.
One writer at a time (a lock in the campaign's database); the time of the last write is kept in
the first study's system attrs, so the interval holds across workers. A hook that fails prints a
warning: it never fails a trial.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studies.storage import CampaignLock, mask_text

if TYPE_CHECKING:
    import optuna

    from studies.spec import CampaignSpec

__all__ = [
    "LIVE_KEYS",
    "NOTES_WRITTEN_ATTR",
    "PROGRESS_GROUP",
    "LiveNotes",
    "LiveSettings",
    "Update",
    "load_hooks",
    "parse_live",
]

PROGRESS_GROUP = "hvadam.campaign_progress"
NOTES_WRITTEN_ATTR = "hvadam:notes_written_at"  # unix time of the last note refresh
LIVE_KEYS = ("notes_interval", "artifacts")
ARTIFACT_KEYS = ("checkpoints",)
DEFAULT_NOTES_INTERVAL = 60.0


@dataclass(frozen=True)
class LiveSettings:
    """How often the notes are refreshed during search, and whether confirm runs are kept."""

    notes_interval: float = DEFAULT_NOTES_INTERVAL
    checkpoints: bool = False


def parse_live(
    data: Mapping[str, Any], fail: Callable[[str, str], Exception] | None = None
) -> LiveSettings:
    """Validate `notes_interval` and `artifacts` of a spec; `fail(key, problem)` builds the error."""
    if fail is None:

        def fail(key: str, problem: str) -> Exception:
            return ValueError(f"{key}: {problem}")

    interval = data.get("notes_interval", DEFAULT_NOTES_INTERVAL)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not 0 <= interval < float("inf")
    ):
        raise fail(
            "notes_interval",
            f"must be a number of seconds >= 0 (0: refresh after every run), got {interval!r}",
        )
    artifacts = data.get("artifacts") or {}
    if not isinstance(artifacts, Mapping):
        raise fail("artifacts", f"must be a mapping like {{checkpoints: true}}, got {artifacts!r}")
    extra = sorted(set(map(str, artifacts)) - set(ARTIFACT_KEYS))
    if extra:
        raise fail(f"artifacts.{extra[0]}", f"unknown key; allowed: {', '.join(ARTIFACT_KEYS)}")
    checkpoints = artifacts.get("checkpoints", False)
    if not isinstance(checkpoints, bool):
        raise fail("artifacts.checkpoints", f"must be true or false, got {checkpoints!r}")
    return LiveSettings(notes_interval=float(interval), checkpoints=checkpoints)


@dataclass(frozen=True)
class Update:
    """What a progress hook is told: a run of `optimizer` in `phase` has just finished.

    `confirmed`: that optimizer's confirm phase is now complete (every seed done).
    `artifacts`: the artifact store's location (`studies.artifacts`), or None for none.
    """

    storage: str
    campaign: str
    phase: str
    optimizer: str
    confirmed: bool = False
    artifacts: str | None = None


def load_hooks(group: str = PROGRESS_GROUP) -> list[Callable[[Update], Any]]:
    """The hooks registered under `group` (a hook whose dependencies are missing is skipped)."""
    from importlib.metadata import entry_points

    found = []
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except ImportError:
            continue
    return found


class LiveNotes:
    """Calls the progress hooks after finished runs, at most every `notes_interval` in search."""

    def __init__(
        self,
        spec: CampaignSpec,
        storage: str,
        study: optuna.Study,
        *,
        artifacts: str | None = None,
        hooks: Sequence[Callable[[Update], Any]] | None = None,
    ) -> None:
        self.spec = spec
        self.storage = storage
        self.study = study  # keeps the time of the last write
        self.artifacts = artifacts
        self.hooks = list(load_hooks() if hooks is None else hooks)
        settings = spec.live if spec.live is not None else LiveSettings()
        self.interval = settings.notes_interval
        self._next = 0.0  # time.time() before which this process does not even look
        self.failures = 0

    def run_finished(self, phase: str, optimizer: str, *, confirmed: bool = False) -> bool:
        """A run has finished: refresh now (confirm) or if the interval has passed (search).

        Returns whether the hooks ran. Never raises an `Exception`.
        """
        if not self.hooks:
            return False
        force = phase == "confirm"
        if not force and time.time() < self._next:
            return False
        update = Update(
            storage=self.storage,
            campaign=self.spec.name,
            phase=phase,
            optimizer=optimizer,
            confirmed=confirmed,
            artifacts=self.artifacts,
        )
        try:
            with CampaignLock(self.storage, f"{self.spec.name}:notes"):
                storage, study_id = self.study._storage, self.study._study_id
                if not force:
                    last = storage.get_study_system_attrs(study_id).get(NOTES_WRITTEN_ATTR)
                    if isinstance(last, (int, float)) and time.time() < last + self.interval:
                        self._next = last + self.interval  # another worker wrote them
                        return False
                for hook in self.hooks:
                    try:
                        hook(update)
                    except Exception as exc:  # a note is never worth a trial
                        self._warn(hook, exc)
                now = time.time()
                storage.set_study_system_attr(study_id, NOTES_WRITTEN_ATTR, now)
                self._next = now + self.interval
        except Exception as exc:
            self._warn(None, exc)
            self._next = time.time() + self.interval
            return False
        return True

    def _warn(self, hook: Any, exc: Exception) -> None:
        self.failures += 1
        where = f"{hook.__module__}.{hook.__name__}" if hook is not None else "live notes"
        text = mask_text(f"{type(exc).__name__}: {exc}")
        print(f"hvadam: warning: {where}: {text} (the runs go on)", file=sys.stderr)
