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

    signal_name, exit_code = "SIGTERM", 143


class HungUp(Terminated):
    """SIGHUP inside :func:`sigterm_interrupts`: the terminal closed, an ssh session was lost. Stopped as SIGTERM is
    (an unattended session's recordings are kept), exit 129 = 128 + 1."""

    signal_name, exit_code = "SIGHUP", 129


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def stop_words(e: KeyboardInterrupt) -> tuple[str, int]:
    """How the CLI says what stopped it ("interrupted (Ctrl-C)", "terminated (SIGTERM)") and its exit code: 130 for
    Ctrl-C whichever typer runs (older ones exit 1 with "Aborted!")."""
    if isinstance(e, Terminated):
        return f"terminated ({e.signal_name})", e.exit_code
    return "interrupted (Ctrl-C)", 130


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (default: die at once, leaving temp files behind).

    Only the main thread can set a handler; elsewhere (e.g. a test runner's thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise HungUp if signum == signal.SIGHUP else Terminated

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    # a signal a parent chose to ignore (nohup: SIGHUP), or whose handler was not set from Python, is left alone
    taken = [sig for sig, handler in previous.items() if handler is not signal.SIG_IGN and handler is not None]
    for sig in taken:
        signal.signal(sig, raise_terminated)
    try:
        yield
    finally:
        for sig in taken:
            signal.signal(sig, previous[sig])


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Ignore SIGINT, SIGTERM and SIGHUP inside the block (the shutdown: up to the worker's 5 s join), then put the
    handlers back. Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    held = [sig for sig, handler in previous.items() if handler is not None]  # None: not set from Python, keep
    for sig in held:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig in held:
            signal.signal(sig, previous[sig])
