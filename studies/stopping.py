"""Stopping a worker on Ctrl-C or SIGTERM (a scheduler ending the job), leaving the work resumable.

`stop_on_signals()` makes both signals raise `KeyboardInterrupt` in the main thread. Python drops
an exception raised while a finalizer or a weakref callback runs ("Exception ignored in ..."), so
an interrupt that lands there would be lost, and the worker would go on with its further signals
ignored. The handler therefore also records the request: `check_stop()` raises it again, and the
worker calls it between steps and the trial path at every report of a run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["check_stop", "stop_on_signals"]

_requested = threading.Event()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `KeyboardInterrupt` (in the main thread; other
    threads cannot install handlers, so there it does nothing); the handlers before are restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in stops}
    _requested.clear()
    for sig in stops:
        signal.signal(sig, _raise_interrupted)
    try:
        yield
    finally:
        _requested.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_stop() -> None:
    """Raise `KeyboardInterrupt` when a stop was asked for (one already raised may have been lost)."""
    if _requested.is_set():
        raise KeyboardInterrupt


def _raise_interrupted(signum: int, frame: Any) -> None:
    # Further signals are ignored while the worker puts its trial back (Ctrl-C reaches every
    # process of the group, and the command then stops its forked workers with SIGTERM): a second
    # interrupt in the middle would leave the trial RUNNING. (A Python no-op, not SIG_IGN: a
    # signal already pending when the handler changes would otherwise be reported as "ignored
    # due to race condition".)
    signal.signal(signal.SIGINT, _ignore)
    signal.signal(signal.SIGTERM, _ignore)
    _requested.set()
    raise KeyboardInterrupt


def _ignore(signum: int, frame: Any) -> None:
    pass
