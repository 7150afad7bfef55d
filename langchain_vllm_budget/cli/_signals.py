"""Ending a command on SIGTERM or SIGHUP as on Ctrl-C, so that what it started is stopped."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["stopped_on_termination"]


@contextmanager
def stopped_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does, so what it started is stopped.

    The embedded server runs in a process group of its own (it outlives a crash of this
    process by design): without this, ``kill``, ``timeout`` or a closed terminal would leave
    it running. Signal handlers can only be set from the main thread: elsewhere, no change.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # A signal ignored on purpose (SIGHUP under nohup) stays ignored.
    signals = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN]
    previous = {signum: signal.signal(signum, terminate) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
