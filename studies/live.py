"""What a campaign shows while it runs: its live-notes settings and the progress hooks.

Optional spec keys (how the campaign is reported, not what it measures: not in the spec hash)::

    notes_interval: 60              # seconds between note refreshes during search (0: every run)
    artifacts: {checkpoints: true}  # each confirm run uploads its final model and optimizer state

Packages downstream of `studies` (the dashboards) register a hook under the entry-point group
`hvadam.campaign_progress`; `LiveNotes.run_finished` calls it with an `Update` after every confirm
run, and during search at most every `notes_interval` seconds (the first time one interval after
the worker started), whichever worker finishes a run.
One writer at a time: `NotesLock`, a lock of its own (never the campaign lock that hands out
trials, so a slow note holds up no trial); during search a worker that finds it taken skips the
refresh, after a confirm run it waits for it. The time of the last write is kept in the first
study's system attrs, so the interval holds across workers. A hook that fails prints a warning:
it never fails a trial.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from studies.storage import get_engine, mask_text

if TYPE_CHECKING:
    import optuna

    from studies.spec import CampaignSpec

__all__ = [
    "LIVE_KEYS",
    "NOTES_WRITTEN_ATTR",
    "PROGRESS_GROUP",
    "LiveNotes",
    "LiveSettings",
    "NotesLock",
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


class NotesLock:
    """The campaign's note-writing lock, taken with or without waiting; `release()` frees it.

    SQLite: an advisory lock on `<database>.notes-<hash of the campaign>.lock`; PostgreSQL: a session advisory lock
    (`pg_try_advisory_lock`); MySQL: GET_LOCK; other databases: within this process only. A
    process that dies releases it.
    """

    _local: ClassVar[dict[str, threading.Lock]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str, campaign: str) -> None:
        self.url = url
        self.name = f"hvadam-notes:{campaign}"
        self._release: Callable[[], None] | None = None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; without `wait`, return False at once if another writer holds it."""
        from sqlalchemy.engine import make_url

        backend = make_url(self.url).get_backend_name()
        if backend == "sqlite":
            return self._file(wait)
        if backend in ("postgresql", "mysql", "mariadb"):
            return self._database(backend, wait)
        with self._guard:
            lock = self._local.setdefault(f"{self.url}\0{self.name}", threading.Lock())
        if not lock.acquire(blocking=wait):
            return False
        self._release = lock.release
        return True

    def _file(self, wait: bool) -> bool:
        import fcntl

        from sqlalchemy.engine import make_url

        db = Path(make_url(self.url).database or "hvadam.db").expanduser().resolve()
        tag = hashlib.sha256(self.name.encode()).hexdigest()[:12]
        path = db.with_name(f"{db.name}.notes-{tag}.lock")
        fh = open(path, "a+")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.close()
            return False
        except BaseException:
            fh.close()
            raise

        def release() -> None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            finally:
                fh.close()

        self._release = release
        return True

    def _database(self, backend: str, wait: bool) -> bool:
        import sqlalchemy as sa

        if backend == "postgresql":
            digest = hashlib.sha256(self.name.encode()).digest()
            key: Any = int.from_bytes(digest[:8], "big", signed=True)
            take = "SELECT pg_advisory_lock(:k)" if wait else "SELECT pg_try_advisory_lock(:k)"
            give = "SELECT pg_advisory_unlock(:k)"
        else:
            key = "hvadam:" + hashlib.sha256(self.name.encode()).hexdigest()[:40]
            take = "SELECT GET_LOCK(:k, -1)" if wait else "SELECT GET_LOCK(:k, 0)"
            give = "SELECT RELEASE_LOCK(:k)"
        conn = get_engine(self.url).connect()
        try:
            got = conn.execute(sa.text(take), {"k": key}).scalar()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not wait and not got:
            conn.close()
            return False

        def release() -> None:
            try:
                conn.execute(sa.text(give), {"k": key})
                conn.commit()
            finally:
                conn.close()

        self._release = release
        return True

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


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
        # time.time() before which this process does not even look: a worker's first search
        # refresh comes one interval after it starts (campaigns shorter than that get their
        # notes after each confirm run and when they finish).
        self._next = time.time() + self.interval
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
        lock = NotesLock(self.storage, self.spec.name)
        try:
            # During search a busy lock means another worker is writing them right now.
            if not lock.acquire(wait=force):
                self._next = time.time() + min(self.interval, 5.0)
                return False
            try:
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
            finally:
                lock.release()
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
