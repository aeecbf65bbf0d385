"""Stop signals: SIGTERM handled like Ctrl-C (so temp files are removed and recordings finished), and both held
off while a shutdown finishes. Handlers can be set only from the main thread; elsewhere these do nothing."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM inside :func:`sigterm_interrupts`. A KeyboardInterrupt, so the cleanup Ctrl-C runs (temp files
    removed, live recordings finalised) runs for it too; the CLI tells the two apart by the type."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (default: die at once, leaving temp files behind).

    Only the main thread can set a handler; elsewhere (e.g. a test runner's thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated

    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or previous is None:  # a parent chose to ignore it, or a handler not set from Python
        yield
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (the shutdown: up to the worker's 5 s join), then put the
    handlers back. Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    held = [sig for sig, handler in previous.items() if handler is not None]  # None: not set from Python, keep
    for sig in held:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, previous[sig])
