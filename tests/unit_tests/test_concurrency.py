"""The in-flight limit: slots shared by threads and event loops, FIFO, cancellation-safe."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from langchain_vllm_budget import ChatVLLM
from langchain_vllm_budget.concurrency import InFlightLimit


class _Peak:
    """Counts holders inside a section and remembers the most at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.done = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1
            self.done += 1


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        InFlightLimit(0)


def test_threads_never_exceed_the_limit() -> None:
    limit, peak = InFlightLimit(2), _Peak()

    def work(_: int) -> None:
        with limit.slot():
            peak.enter()
            time.sleep(0.02)
            peak.leave()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(16)))
    assert peak.peak == 2
    assert peak.done == 16
    assert (limit.in_flight, limit.waiting) == (0, 0)


async def test_tasks_never_exceed_the_limit() -> None:
    limit, peak = InFlightLimit(3), _Peak()

    async def work() -> None:
        async with limit.aslot():
            peak.enter()
            await asyncio.sleep(0.01)
            peak.leave()

    await asyncio.gather(*(work() for _ in range(12)))
    assert peak.peak == 3
    assert peak.done == 12
    assert (limit.in_flight, limit.waiting) == (0, 0)


def test_threads_and_event_loops_share_the_slots() -> None:
    limit, peak = InFlightLimit(2), _Peak()

    def sync_work() -> None:
        with limit.slot():
            peak.enter()
            time.sleep(0.02)
            peak.leave()

    async def async_work() -> None:
        async with limit.aslot():
            peak.enter()
            await asyncio.sleep(0.02)
            peak.leave()

    def run_loop() -> None:
        async def main() -> None:
            await asyncio.gather(*(async_work() for _ in range(6)))

        asyncio.run(main())

    threads = [threading.Thread(target=sync_work) for _ in range(6)]
    threads += [threading.Thread(target=run_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert peak.done == 18
    assert peak.peak == 2
    assert limit.in_flight == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    limit = InFlightLimit(1)
    order: list[int] = []
    await limit.aacquire()

    async def work(i: int) -> None:
        async with limit.aslot():
            order.append(i)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(work(i)))
        await asyncio.sleep(0)  # queue in this order
    assert limit.waiting == 5
    limit.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_cancelled_waiter_gives_up_its_place() -> None:
    limit = InFlightLimit(1)
    await limit.aacquire()
    waiter = asyncio.create_task(limit.aacquire())
    await asyncio.sleep(0)
    assert limit.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limit.waiting == 0
    limit.release()
    assert limit.in_flight == 0


async def test_waiter_cancelled_after_the_hand_off_passes_the_slot_on() -> None:
    limit = InFlightLimit(1)
    await limit.aacquire()
    waiter = asyncio.create_task(limit.aacquire())
    await asyncio.sleep(0)
    limit.release()  # the slot now belongs to the waiter, which has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limit.in_flight == 0
    await asyncio.wait_for(limit.aacquire(), timeout=5)
    assert limit.in_flight == 1


def test_deep_copies_share_the_limit() -> None:
    limit = InFlightLimit(2)
    assert copy.deepcopy(limit) is limit


# ------------------------------------------------------------------ ChatVLLM.max_concurrency


def test_no_limit_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_BUDGET_MAX_CONCURRENCY", raising=False)
    model = ChatVLLM(model="m")
    assert model.max_concurrency is None
    assert model._request_limit() is None


def test_limit_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_BUDGET_MAX_CONCURRENCY", "4")
    limit = ChatVLLM(model="m")._request_limit()
    assert limit is not None
    assert limit.limit == 4


def test_bad_env_value_says_what_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_BUDGET_MAX_CONCURRENCY", "four")
    with pytest.raises(ValueError, match=r"VLLM_BUDGET_MAX_CONCURRENCY.*--max-num-seqs.*'four'"):
        ChatVLLM(model="m")


def test_limit_must_be_at_least_one() -> None:
    with pytest.raises(ValidationError, match="max_concurrency"):
        ChatVLLM(model="m", max_concurrency=0)


def test_copies_of_the_model_share_its_limit() -> None:
    model = ChatVLLM(model="m", max_concurrency=2)
    limit = model._request_limit()
    assert limit is not None
    bound = model.bind_tools([{"type": "function", "function": {"name": "f"}}]).with_config(
        tags=["t"]
    )
    assert bound.bound._request_limit() is limit  # type: ignore[attr-defined]
    assert model.model_copy()._request_limit() is limit
    other = model.model_copy(update={"max_concurrency": 3})._request_limit()
    assert other is not None
    assert other is not limit
    assert other.limit == 3
    assert model._request_limit() is limit
