"""The campaign database: resolving, checking and masking storage URLs, engines and locks.

One URL holds everything: Optuna's tables and the project's results tables. It comes from
`--storage`, else the `HVADAM_STORAGE` environment variable, else `sqlite:///hvadam.db` in the
working directory. SQLite files are opened so that several worker processes can write at once
(WAL journal, a long busy timeout, `BEGIN IMMEDIATE` transactions, retries on "database is
locked"); PostgreSQL is the choice for many machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_ENV",
    "CampaignLock",
    "StorageError",
    "check_storage_exists",
    "check_storage_identity",
    "check_storage_url",
    "close_pooled_connections",
    "error_summary",
    "get_engine",
    "mask_text",
    "mask_url",
    "optuna_storage",
    "resolve_storage_url",
    "root_cause",
    "storage_identity",
    "with_retries",
]

DEFAULT_STORAGE = "sqlite:///hvadam.db"
STORAGE_ENV = "HVADAM_STORAGE"
ACCEPTED_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql+psycopg://user:password@host:5432/dbname, or another SQLAlchemy database URL"
)
# Seconds a SQLite connection waits for another writer before giving up.
SQLITE_BUSY_TIMEOUT = 120.0

T = TypeVar("T")


class StorageError(ValueError):
    """A storage URL that cannot be used; the message names the (masked) URL and the fix."""


# ---- URLs --------------------------------------------------------------------------------------


def resolve_storage_url(storage: str | None = None) -> str:
    """`storage` if given, else `$HVADAM_STORAGE`, else `sqlite:///hvadam.db`."""
    if storage:
        return storage
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


# Query keys that carry a secret (`?password=...`, `?sslpassword=...`, `?api_token=...`).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|credential|auth|key", re.IGNORECASE)
# `scheme://user:password@`: the password runs to the last `@` before the host (a password may
# hold an unencoded `@`), never across `/`, `?`, `#` or white space.
_PASSWORD_IN_URL = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^\s/?#]+)(?=@)"
)
# `password=...` anywhere (URL queries, libpq conninfo strings quoted in driver errors).
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<head>\b[A-Za-z_]*(?:pass|pwd|secret|token|credential)[A-Za-z_]*\s*=\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s&;,'\")]+)",
    re.IGNORECASE,
)
UNPARSEABLE = "<a storage URL that could not be parsed>"


def mask_url(url: str | URL) -> str:
    """The URL with its password and any secret in its query replaced by `***`.

    Safe to print, log or store. The URL is parsed (never pattern-matched only): one that
    cannot be parsed is not shown at all, since no one can tell which part of it is secret.
    """
    if not isinstance(url, URL):
        try:
            url = make_url(str(url))
        except Exception:
            return UNPARSEABLE
    changes: dict[str, Any] = {}
    if url.host and "@" in url.host:
        # `user:pa@ss@host`: SQLAlchemy splits at the first `@`; the rest of the password
        # would show as part of the host.
        changes.update(password="***", host=url.host.rsplit("@", 1)[1])
    query = {key: ("***" if _SECRET_KEY.search(key) else value) for key, value in url.query.items()}
    if query != dict(url.query):
        changes["query"] = query
    if changes:
        url = url.set(**changes)
    # Query values are percent-encoded when rendered; the mask reads better as it is.
    return url.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")


def mask_text(text: str) -> str:
    """Free text with every URL password (`scheme://user:password@`) and every secret
    assignment (`password=...`, `?token=...`) replaced by `***`."""
    text = _PASSWORD_IN_URL.sub(lambda m: m.group("head") + "***", text)
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group("head") + "***", text)


def check_storage_url(url: str) -> URL:
    """Parse and check a storage URL without connecting; raise `StorageError` naming it."""
    try:
        parsed = make_url(url)
    except Exception:
        # Not shown: which part of an unparseable URL is a password cannot be told.
        raise StorageError(
            "the storage URL is not a database URL: it could not be parsed (it is not shown, since it "
            "may hold a password; a password with '@', '/', ':' or '?' must be percent-encoded, "
            f"e.g. '@' as %40); accepted forms: {ACCEPTED_FORMS}"
        ) from None
    masked = mask_url(parsed)
    if parsed.host and "@" in parsed.host:
        raise StorageError(
            f"storage URL {masked!r}: the part before the host holds more than one '@'; "
            f"percent-encode an '@' in the user name or password as %40"
        )
    try:
        parsed.get_dialect()
    except Exception as exc:
        raise StorageError(
            f"storage URL {masked!r}: no database driver for {parsed.drivername!r} "
            f"({_first_line(exc)}); accepted forms: {ACCEPTED_FORMS}"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            raise StorageError(
                f"storage URL {masked!r} is an in-memory SQLite database, which worker processes "
                f"cannot share; give a file, e.g. sqlite:///hvadam.db"
            )
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise StorageError(
                f"storage URL {masked!r}: the directory {str(parent)!r} does not exist"
            )
    return parsed


def check_storage_exists(url: str) -> None:
    """For commands that only read: refuse a SQLite file that does not exist.

    Opening a SQLite URL creates the file; a mistyped path must not leave an empty database
    behind (nor report "no campaigns" as if the database were real).
    """
    parsed = check_storage_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    path = Path(parsed.database or "").expanduser()
    if not path.is_file():
        raise StorageError(
            f"storage {mask_url(parsed)!r}: the database file {str(path)!r} does not exist "
            f"(nothing was created); check the path, or start a campaign there with `hvadam tune`"
        )


def storage_identity(url: str) -> tuple[int, int] | None:
    """Which database file a SQLite URL names now (device and inode); None for a server.

    SQLite keeps writing to a file that was deleted (through the connections open on it), and
    the next connection creates a new, empty one at the same path: a campaign that only checked
    for errors would finish "successfully" into nothing. Comparing this identity over a run
    tells a deleted or replaced file.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    try:
        st = Path(parsed.database or "").expanduser().stat()
    except OSError:
        return (-1, -1)
    return (st.st_dev, st.st_ino)


def check_storage_identity(url: str, identity: tuple[int, int] | None) -> None:
    """Raise `StorageError` when the SQLite file under a campaign was deleted or replaced."""
    if identity is None:
        return
    now = storage_identity(url)
    if now == identity:
        return
    path = make_url(url).database
    what = "deleted" if now == (-1, -1) else "replaced by another file"
    raise StorageError(
        f"the database file {path!r} was {what} while the campaign ran: the results written "
        f"since went with the old file; restore it from a copy, or run the campaign again"
    )


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of `exc`'s cause/context chain (the one that started it all).

    Optuna and SQLAlchemy wrap a database failure ("database disk image is malformed") in
    errors of their own whose message says little; the root says what happened.
    """
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def error_summary(exc: BaseException) -> str:
    """One line for an error: its own first line and, when they differ, its root cause's."""
    own = _first_line(exc)
    root = root_cause(exc)
    if root is exc:
        return own
    cause = _first_line(root)
    if type(root).__module__.split(".")[0] in _DRIVERS:
        # The database driver's own error is the one that says what happened; the layers
        # above it (Optuna's "An exception is raised during the commit ...") only mislead.
        return f"{type(root).__name__}: {cause}"
    if cause in own:
        return own
    return f"{own} (cause: {type(root).__name__}: {cause})"


_DRIVERS = ("sqlite3", "psycopg", "psycopg2", "pymysql", "MySQLdb", "asyncpg")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return mask_text(lines[0]) if lines else type(exc).__name__


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


# ---- engines -----------------------------------------------------------------------------------


_reading = threading.local()


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """Mark the transactions begun inside (in this thread) as read-only.

    On SQLite they begin deferred: in WAL mode a reader neither waits for the writer nor blocks
    it, so workers' reads (counting trials, a pruner's look at the finished trials) run side by
    side. Every other transaction begins `IMMEDIATE`. Nothing inside may write.
    """
    depth = getattr(_reading, "depth", 0)
    _reading.depth = depth + 1
    try:
        yield
    finally:
        _reading.depth = depth


@contextlib.contextmanager
def read_connection(engine: Engine) -> Iterator[sa.Connection]:
    """`engine.connect()` for statements that only read (see `reading`)."""
    with reading(), engine.connect() as conn:
        yield conn


def configure_sqlite_engine(engine: Engine) -> None:
    """Make a SQLite engine safe for several writing processes.

    WAL lets readers run beside one writer; `BEGIN IMMEDIATE` takes the write lock at the start
    of every transaction that may write, so one that read first never fails with "database is
    locked" when it upgrades to writing (a busy timeout does not cover that case). Transactions
    inside `reading()` only read and begin deferred, so they never wait for the lock.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN" if getattr(_reading, "depth", 0) else "BEGIN IMMEDIATE")

    # Connections opened before the listeners were attached would miss them.
    engine.dispose()


def engine_kwargs(url: str) -> dict[str, Any]:
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
    return {"pool_pre_ping": True}


_ENGINES: dict[tuple[str, int], Engine] = {}
_ENGINES_GUARD = threading.Lock()
_SCHEMA_CHECKED: set[tuple[str, int]] = set()


def get_engine(url: str) -> Engine:
    """The process's shared engine for `url` (created once; never one per trial)."""
    check_storage_url(url)
    # Keyed by pid: an engine's pooled connections must not cross a fork.
    key = (url, os.getpid())
    with _ENGINES_GUARD:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = sa.create_engine(url, **engine_kwargs(url))
            if is_sqlite(url):
                configure_sqlite_engine(engine)
            _ENGINES[key] = engine
    return engine


def close_pooled_connections() -> None:
    """Close every pooled connection of this process's engines (they reconnect when used).

    Called before forking worker processes: a child must not inherit open database
    connections (SQLite's locking state and a server connection's socket belong to one process).
    """
    pid = os.getpid()
    with _ENGINES_GUARD:
        engines = [engine for (_, owner), engine in _ENGINES.items() if owner == pid]
    for engine in engines:
        engine.dispose()


def connect_check(url: str) -> None:
    """Open and close one connection, turning failures into a `StorageError` naming the URL."""
    try:
        with get_engine(url).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(
            f"cannot connect to storage {mask_url(url)!r}: {error_summary(exc)}"
        ) from None


def optuna_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[..., None] | None = None,
    create_tables: bool = True,
) -> Any:
    """Optuna's RDB storage on `url`, with heartbeats and the SQLite settings for many writers."""
    check_storage_url(url)
    kwargs: dict[str, Any] = {}
    if heartbeat_interval is not None:
        kwargs.update(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=stale_trial_callback,
        )
    # Optuna checks the schema version against its migration scripts (~0.25 s): once per
    # process and database is enough.
    checked = (url, os.getpid()) in _SCHEMA_CHECKED
    try:
        storage = with_retries(
            lambda: _rdb_storage_class(is_sqlite(url))(
                url,
                engine_kwargs=engine_kwargs(url),
                skip_table_creation=not create_tables,
                skip_compatibility_check=checked,
                **kwargs,
            )
        )
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot open storage {mask_url(url)!r}: {error_summary(exc)}") from None
    _SCHEMA_CHECKED.add((url, os.getpid()))
    if is_sqlite(url):
        configure_sqlite_engine(storage.engine)
    return storage


# Optuna's RDBStorage methods that only read: on SQLite they run inside `reading()`.
_OPTUNA_READS = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
)


@functools.cache
def _rdb_storage_class(sqlite: bool) -> type:
    """Optuna's RDBStorage; for SQLite, a subclass whose reads begin deferred (`reading`)."""
    import optuna

    base = optuna.storages.RDBStorage
    if not sqlite:
        return base

    def read_only(name: str) -> Callable[..., Any]:
        method = getattr(base, name)

        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            with reading():
                return method(self, *args, **kwargs)

        return wrapper

    def __setstate__(self: Any, state: dict[Any, Any]) -> None:
        base.__setstate__(self, state)  # a new engine: give it the settings for many writers
        configure_sqlite_engine(self.engine)

    methods = {name: read_only(name) for name in _OPTUNA_READS if hasattr(base, name)}
    attrs: dict[str, Any] = {**methods, "__setstate__": __setstate__}
    attrs.update(__module__=__name__, __qualname__="SQLiteRDBStorage")
    return type("SQLiteRDBStorage", (base,), attrs)


def __getattr__(name: str) -> Any:
    # `studies.storage.SQLiteRDBStorage` is built when first needed (it imports Optuna), also
    # when a pickled storage is loaded in another process.
    if name == "SQLiteRDBStorage":
        return _rdb_storage_class(True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- retries and locks -------------------------------------------------------------------------


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "deadlock" in text


def with_retries(fn: Callable[[], T], *, attempts: int = 30) -> T:
    """Call `fn`, retrying with backoff while the database reports it is locked or deadlocked."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn()
        except sa.exc.OperationalError as exc:
            if attempt == attempts - 1 or not _is_lock_error(exc):
                raise
        except Exception as exc:
            # Optuna wraps some database errors in its own types; look at the cause chain.
            cause = exc.__cause__ or exc.__context__
            if attempt == attempts - 1 or cause is None or not _is_lock_error(cause):
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class CampaignLock:
    """A lock shared by every process working on one campaign in the database at `url`.

    SQLite: an advisory lock on a file beside the database (SQLite is one machine anyway);
    PostgreSQL: a session advisory lock; MySQL: GET_LOCK. A process that dies releases it.
    Other databases get a lock within this process only. `release()` may be called early (the
    runner releases it as soon as Optuna has handed out a trial) and again harmlessly.
    """

    _local: ClassVar[dict[str, threading.Lock]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        with self._guard:
            self._thread_lock = self._local.setdefault(f"{url}\0{name}", threading.Lock())
        self._release: Callable[[], None] | None = None

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            self._release = self._acquire_db()
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            try:
                release()
            finally:
                self._thread_lock.release()

    def __enter__(self) -> CampaignLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _acquire_db(self) -> Callable[[], None]:
        parsed = make_url(self.url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            path = Path(parsed.database or "hvadam.db").expanduser().resolve()
            fh = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 - held across calls
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)

            def release_file() -> None:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                finally:
                    fh.close()

            return release_file
        if backend in ("postgresql", "mysql", "mariadb"):
            if backend == "postgresql":
                key: Any = _lock_key(self.name)
                take, give = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
            else:
                key = "hvadam:" + hashlib.sha256(self.name.encode()).hexdigest()[:40]
                take, give = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"
            conn = get_engine(self.url).connect()
            try:
                conn.execute(sa.text(take), {"k": key})
                conn.commit()
            except BaseException:
                conn.close()
                raise

            def release_db() -> None:
                try:
                    conn.execute(sa.text(give), {"k": key})
                    conn.commit()
                finally:
                    conn.close()

            return release_db
        return lambda: None
