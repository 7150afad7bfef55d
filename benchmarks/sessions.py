"""Benchmark 9: concurrent agent sessions on one server, async end to end.

One SmolLM2 server with ``--max-num-seqs`` :data:`MAX_NUM_SEQS` serves :data:`SESSIONS`
agent sessions at once (``asyncio.gather``), each a short multi-turn conversation: every turn
is one ``ainvoke`` of a shared :class:`~langchain_vllm_budget.ChatVLLM` with
``max_concurrency`` equal to the server's ``--max-num-seqs``, whose answer and a new question
are appended before the next turn. Every call is budgeted (discovery, an exact count with the
local tokenizer, the plan) before it is sent.

Reported: wall time, calls per second, per-call latency p50/p95 (the slot wait included),
the event loop's lag (a ticker task sleeps :data:`TICK_S` and records how late it wakes:
p50/p99/max; anything that blocks the loop, such as a sync HTTP call or a tokenizer run on
it, shows up here), and vLLM's own ``/metrics`` sampled during the run: the most requests it
ran at once (at most ``max_concurrency``) and the most it had waiting (0: the requests waited
in ChatVLLM's limit, not in the server's queue).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from pydantic import SecretStr

from benchmarks.calls import percentile
from benchmarks.metrics import MetricsSampler, summarize_samples
from benchmarks.servers import SMOLLM2, server_spec
from langchain_vllm_budget.chat_models import ChatVLLM
from langchain_vllm_budget.serving.local_models import cache_dir
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer

__all__ = [
    "MAX_NUM_SEQS",
    "SESSIONS",
    "TICK_S",
    "TURNS",
    "LoopLagProbe",
    "lag_summary",
    "run_sessions",
    "session_server_spec",
    "sessions_md",
]

SESSIONS, TURNS = 20, 3
"""Concurrent sessions and turns per session (``quick``: 6 and 2)."""
MAX_NUM_SEQS = 4
"""The server's ``--max-num-seqs`` and ChatVLLM's ``max_concurrency``."""
TICK_S = 0.005
"""The lag probe's sleep."""
_MAX_TOKENS = 32
_SERVED_NAME = "bench-sessions"
_SYSTEM = "You are a helpful on-call assistant. Answer in one or two sentences."
_TOPICS = ("checkout", "search", "payments", "login", "images", "billing", "email", "maps")


def session_server_spec() -> LocalServerSpec:
    """The server this benchmark starts: SmolLM2 with ``--max-num-seqs`` :data:`MAX_NUM_SEQS`."""
    return server_spec(SMOLLM2, served_model_name=_SERVED_NAME, max_num_seqs=MAX_NUM_SEQS)


def _question(session: int, turn: int) -> str:
    topic = _TOPICS[session % len(_TOPICS)]
    if turn == 0:
        return f"Session {session}: the {topic} service is slow since 09:{session:02d}. Why?"
    return f"Turn {turn}: what should I check next on the {topic} hosts?"


class LoopLagProbe:
    """Measures how late the event loop wakes a task that sleeps :data:`TICK_S`.

    Start it with :meth:`start` inside the loop, stop it with :meth:`stop`; ``lags`` holds
    each wake-up's overshoot in seconds.
    """

    def __init__(self, tick: float = TICK_S) -> None:
        self.tick = tick
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.tick)
            self.lags.append(max(0.0, time.perf_counter() - before - self.tick))

    def start(self) -> None:
        """Start ticking (call from inside the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop ticking."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def lag_summary(lags: Sequence[float]) -> dict[str, Any]:
    """p50, p99 and max of the loop's lag, in ms.

    Example:
        >>> lag_summary([0.001] * 98 + [0.004, 0.020])
        {'ticks': 100, 'p50_ms': 1.0, 'p99_ms': 4.16, 'max_ms': 20.0}
    """
    if not lags:
        return {"ticks": 0}
    return {
        "ticks": len(lags),
        "p50_ms": round(percentile(lags, 50) * 1000, 2),
        "p99_ms": round(percentile(lags, 99) * 1000, 2),
        "max_ms": round(max(lags) * 1000, 2),
    }


async def _session(
    model: ChatVLLM, session: int, turns: int, latencies: list[float]
) -> list[BaseMessage]:
    """One conversation: ask, append the answer and the next question, ``turns`` times."""
    messages: list[BaseMessage] = [SystemMessage(_SYSTEM), HumanMessage(_question(session, 0))]
    for turn in range(turns):
        started = time.perf_counter()
        reply = await model.ainvoke(messages)
        latencies.append(time.perf_counter() - started)
        messages += [reply, HumanMessage(_question(session, turn + 1))]
    return messages


async def _run(base_url: str, sessions: int, turns: int) -> dict[str, Any]:
    model = ChatVLLM(
        model=_SERVED_NAME,
        base_url=base_url,
        api_key=SecretStr("EMPTY"),
        max_concurrency=MAX_NUM_SEQS,
        max_tokens=_MAX_TOKENS,
        temperature=0,
    )
    await model.ainvoke("Warm up: say hi.")  # discovery, tokenizer load, connections
    latencies: list[float] = []
    probe = LoopLagProbe()
    server_root = base_url.rstrip("/").removesuffix("/v1")
    with MetricsSampler(server_root, interval=0.25) as sampler:
        probe.start()
        started = time.perf_counter()
        results = await asyncio.gather(
            *(_session(model, s, turns, latencies) for s in range(sessions)),
            return_exceptions=True,
        )
        wall = time.perf_counter() - started
        await probe.stop()
    failures = [f"{type(r).__name__}: {r}"[:160] for r in results if isinstance(r, BaseException)]
    metrics = summarize_samples(sampler.samples)
    return {
        "calls": len(latencies),
        "failures": failures,
        "seconds": round(wall, 2),
        "calls_per_s": round(len(latencies) / wall, 2) if wall else None,
        "latency_p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "latency_p95_s": round(percentile(latencies, 95), 3) if latencies else None,
        "latency_mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
        "loop_lag": lag_summary(probe.lags),
        "metrics": metrics,
    }


def run_sessions(*, quick: bool, url: str | None) -> dict[str, Any]:
    """Start the server (unless ``url`` is given), run the sessions, stop it.

    Args:
        quick: 6 sessions of 2 turns instead of 20 of 3.
        url: An already running server started with :func:`session_server_spec`'s settings
            (``.../v1``; its ``--max-num-seqs`` must be :data:`MAX_NUM_SEQS`).

    Returns:
        ``{"settings", "calls", "failures", "seconds", "calls_per_s", "latency_p50_s",
        "latency_p95_s", "loop_lag", "metrics", "goal"}``.
    """
    sessions, turns = (6, 2) if quick else (SESSIONS, TURNS)
    spec = session_server_spec()
    server: LocalVLLMServer | None = None
    try:
        if url is None:
            server = LocalVLLMServer(
                spec, log_path=cache_dir() / "logs" / f"bench-{_SERVED_NAME}.log"
            )
            server.start(wait=True)
            url = server.base_url
        result = asyncio.run(_run(url, sessions, turns))
    finally:
        if server is not None:
            server.stop()
    metrics = result["metrics"]
    running, waiting = metrics.get("max_running"), metrics.get("max_waiting")
    return {
        "settings": {
            "sessions": sessions,
            "turns": turns,
            "max_concurrency": MAX_NUM_SEQS,
            "max_num_seqs": MAX_NUM_SEQS,
            "max_tokens": _MAX_TOKENS,
            "model": Path(spec.model).name,
            "lag_tick_ms": TICK_S * 1000,
        },
        **result,
        "goal": {
            "no_failures": not result["failures"],
            "running_within_limit": running is not None and running <= MAX_NUM_SEQS,
            "server_queue_empty": waiting is not None and waiting == 0,
        },
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _whole(value: float | None) -> str:
    """A gauge's reading as a whole number ("not read" when /metrics gave none)."""
    return "not read" if value is None else str(round(value))


def sessions_md(result: dict[str, Any]) -> list[str]:
    """The summary's section for :func:`run_sessions`'s result.

    Example:
        >>> result = {
        ...     "settings": {"sessions": 2, "turns": 1, "max_concurrency": 4,
        ...                  "max_num_seqs": 4, "max_tokens": 32, "model": "m",
        ...                  "lag_tick_ms": 5.0},
        ...     "calls": 2, "failures": [], "seconds": 1.0, "calls_per_s": 2.0,
        ...     "latency_p50_s": 0.4, "latency_p95_s": 0.5,
        ...     "loop_lag": {"ticks": 3, "p50_ms": 0.1, "p99_ms": 0.5, "max_ms": 0.6},
        ...     "metrics": {"max_running": 2.0, "max_waiting": 0.0},
        ...     "goal": {"no_failures": True, "running_within_limit": True,
        ...              "server_queue_empty": True},
        ... }
        >>> print("\\n".join(sessions_md(result)[4:6]))
        | sessions x turns | calls | failures | wall | calls/s | latency p50 | latency p95 |
        |---|---|---|---|---|---|---|
    """
    s, lag, metrics, goal = (
        result["settings"],
        result["loop_lag"],
        result["metrics"],
        result["goal"],
    )
    lines = [
        f"### 9. {s['sessions']} concurrent agent sessions, async end to end ({s['model']}, "
        f"--max-num-seqs {s['max_num_seqs']}, ChatVLLM max_concurrency={s['max_concurrency']}, "
        f"max_tokens={s['max_tokens']})",
        "",
        "Each session: one `ainvoke` per turn of a shared ChatVLLM (budgeted: exact count, "
        "plan), the answer and a new question appended.",
        "",
        "| sessions x turns | calls | failures | wall | calls/s | latency p50 | latency p95 |",
        "|---|---|---|---|---|---|---|",
        f"| {s['sessions']} x {s['turns']} | {result['calls']} | {len(result['failures'])} | "
        f"{result['seconds']:.1f} s | {result['calls_per_s']} | {result['latency_p50_s']} s | "
        f"{result['latency_p95_s']} s |",
        "",
    ]
    if lag.get("ticks"):
        lines.append(
            f"Event-loop lag (a task sleeping {s['lag_tick_ms']:g} ms, {lag['ticks']} ticks): "
            f"p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms."
        )
    lines.append(
        f"vLLM /metrics during the run: at most {_whole(metrics.get('max_running'))} requests "
        f"running (<= {s['max_concurrency']}: {_yes(goal['running_within_limit'])}), at most "
        f"{_whole(metrics.get('max_waiting'))} waiting in the server's queue (empty: "
        f"{_yes(goal['server_queue_empty'])}); no failures: {_yes(goal['no_failures'])}."
    )
    lines += [f"- failure: `{f}`" for f in result["failures"][:5]]
    return lines
