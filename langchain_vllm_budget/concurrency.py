"""A client-side limit on requests in flight, shared by threads and event loops.

vLLM runs at most ``--max-num-seqs`` sequences at once and queues the rest; a client that
sends more only lengthens the server's queue (and its own timeouts). :class:`InFlightLimit`
caps the requests one chat model has in flight, for sync callers (threads, ``batch``) and
async callers (``ainvoke``, ``abatch``, any event loop) together.

``threading.Semaphore`` would block an event loop, and ``asyncio.Semaphore`` belongs to one
loop and cannot count threads, so this is a small FIFO limiter of its own: a freed slot is
handed directly to the oldest waiter, whichever kind it is.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

__all__ = ["InFlightLimit"]


class _AsyncWaiter:
    """An async caller waiting for a slot: its loop and the future to complete."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def wake(self) -> bool:
        """Hand the slot over; ``False`` if the waiter's loop is gone."""
        try:
            self.loop.call_soon_threadsafe(_complete, self.future)
        except RuntimeError:  # the loop is closed
            return False
        return True


def _complete(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _SyncWaiter:
    """A thread waiting for a slot."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()

    def wake(self) -> bool:
        self.event.set()
        return True


class InFlightLimit:
    """At most ``limit`` holders at once, first come first served, sync and async.

    Args:
        limit: The number of slots (at least 1).

    Example:
        >>> limit = InFlightLimit(2)
        >>> with limit.slot():
        ...     limit.in_flight
        1
        >>> limit.in_flight
        0
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            msg = f"limit must be at least 1, got {limit}"
            raise ValueError(msg)
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiters: deque[_AsyncWaiter | _SyncWaiter] = deque()

    @property
    def in_flight(self) -> int:
        """Slots held now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiters)

    def _take_or_queue(self, waiter: _AsyncWaiter | _SyncWaiter) -> bool:
        with self._lock:
            if self._in_flight < self.limit and not self._waiters:
                self._in_flight += 1
                return True
            self._waiters.append(waiter)
            return False

    def _withdraw(self, waiter: _AsyncWaiter | _SyncWaiter) -> bool:
        """Stop waiting; ``False`` if the slot was already handed to ``waiter``."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return False
            return True

    def release(self) -> None:
        """Free a slot: hand it to the oldest waiter, or give it back."""
        with self._lock:
            while self._waiters:
                if self._waiters.popleft().wake():
                    return
            self._in_flight -= 1

    def acquire(self) -> None:
        """Take a slot, blocking the thread until one is free."""
        waiter = _SyncWaiter()
        if self._take_or_queue(waiter):
            return
        try:
            waiter.event.wait()
        except BaseException:
            if not self._withdraw(waiter):
                self.release()
            raise

    async def aacquire(self) -> None:
        """Take a slot, suspending the task (not the loop) until one is free."""
        waiter = _AsyncWaiter(asyncio.get_running_loop())
        if self._take_or_queue(waiter):
            return
        try:
            await waiter.future
        except BaseException:  # cancelled while waiting
            if not self._withdraw(waiter):
                self.release()
            raise

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the ``with`` block (blocking)."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @asynccontextmanager
    async def aslot(self) -> AsyncIterator[None]:
        """Hold a slot for the ``async with`` block."""
        await self.aacquire()
        try:
            yield
        finally:
            self.release()

    def __deepcopy__(self, memo: dict[int, Any]) -> InFlightLimit:
        # Copies of a chat model share its limit: the server's slots are shared too.
        return self

    def __repr__(self) -> str:
        return f"InFlightLimit(limit={self.limit}, in_flight={self._in_flight})"
