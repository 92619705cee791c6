"""Serving optuna-dashboard on a campaign storage, on localhost unless told otherwise."""

from __future__ import annotations

import signal
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

__all__ = ["LOCAL_HOSTS", "DashboardServer", "open_storage", "serve_dashboard", "start_dashboard"]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class _ThreadedWSGIServer(ThreadingMixIn, WSGIServer):
    # A browser opens several connections at once (and may keep a speculative one idle);
    # a single-threaded server would stall on the idle one.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def open_storage(storage: Any) -> Any:
    """An Optuna storage for a URL (or a storage object, returned as is)."""
    import optuna

    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if not isinstance(storage, str) or "://" not in storage:
        raise ValueError(
            f"storage must be a database URL such as sqlite:///hvadam.db, got {storage!r}"
        )
    return optuna.storages.RDBStorage(storage, skip_compatibility_check=False)


def _check_bind(host: str, port: int, warn_to: TextIO) -> None:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    if not host:
        raise ValueError("host must be a host name or address, got an empty string")
    if host not in LOCAL_HOSTS:
        print(
            f"warning: binding the dashboard to {host}, not localhost: anyone who can reach "
            f"this address can read every study and edit or delete it (the dashboard has no "
            f"login). Prefer an SSH tunnel to 127.0.0.1.",
            file=warn_to,
        )


class DashboardServer:
    """A running optuna-dashboard: `url`, `stop()`; also a context manager."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread | None) -> None:
        self._httpd = httpd
        self._thread = thread
        host, port = httpd.server_address[:2]
        self.host, self.port = str(host), int(port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/dashboard"

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make(
    storage: Any, host: str, port: int, warn_to: TextIO, artifacts: str | None = None
) -> WSGIServer:
    import optuna_dashboard

    _check_bind(host, port, warn_to)
    store = None
    if artifacts is not None:
        from studies.artifacts import open_store

        store = open_store(artifacts)  # the study pages list and serve its files
    app = optuna_dashboard.wsgi(open_storage(storage), artifact_store=store)
    return make_server(
        host, port, app, server_class=_ThreadedWSGIServer, handler_class=_QuietHandler
    )


def start_dashboard(
    storage: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    warn_to: TextIO | None = None,
    artifacts: str | None = None,
) -> DashboardServer:
    """Start the dashboard in a background thread and return at once (port 0: a free port).

    `artifacts`: the artifact store's location (`studies.artifacts`), served with the studies.
    """
    httpd = _make(storage, host, port, warn_to or sys.stderr, artifacts)
    thread = threading.Thread(target=httpd.serve_forever, name="hvadam-dashboard", daemon=True)
    thread.start()
    return DashboardServer(httpd, thread)


def serve_dashboard(
    storage: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    out: TextIO | None = None,
    artifacts: str | None = None,
) -> None:
    """Serve the dashboard in this thread until interrupted (what `hvadam dashboard` runs)."""
    from studies.api import mask_url

    out = out or sys.stderr
    server = DashboardServer(_make(storage, host, port, out, artifacts), None)
    where = mask_url(storage) if isinstance(storage, str) else type(storage).__name__
    files = f", artifacts in {artifacts}" if artifacts else ""
    print(
        f"optuna-dashboard for {where}{files} on {server.url} (Ctrl-C to stop)",
        file=out,
        flush=True,
    )
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM stop it, also where it started with SIGINT ignored (a job a
        # non-interactive shell put in the background), as `hvadam worker` does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
