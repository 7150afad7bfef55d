"""Benchmark 10: agent sessions over vLLM replicas behind ``vllm-router``.

Tiny-qwen replicas (prefix caching) serve :data:`SESSIONS` concurrent agent threads
(LangGraph graphs whose node calls ``ChatVLLM`` with ``on_overflow="trim"``, or
``"summarize"``), each turn about 390 tokens (about 1,000 in one setup: an agent turn that
brings a tool result): every thread grows past the window and is compacted, so the prefix
cache only pays off if a thread's turns meet its cached prefix again. It runs on each of
:data:`SETUPS` (two replicas at 2,048 and 4,096 tokens, four at 2,048, all trimmed; two at
4,096 summarized; two at 4,096 with the larger turns; :func:`turns_for` turns per thread), and
on each the same workload under each routing variant:

* ``consistent_hash + key``: ChatVLLM sends the thread's session key (``X-Session-ID``);
* ``consistent_hash, no key``: ``session_affinity="off"``, every thread hashes alike;
* ``round_robin, no key``: what a plain load balancer does;
* ``cache_aware``: the router's own prefix-tree routing (the key is sent; it does not read it);
* ``single replica``: the replica alone, without the router (the reference hit rate).

Every variant's threads have text of their own, so no variant reuses another's prefixes.
Read from each replica's ``/metrics``: the prefix-cache hit rate over the turns from the first
one over the window (:func:`over_window_from`), tokens prefilled (prompt tokens minus cache
hits), each replica's share of the requests; timed per turn on the client: throughput and
p50/p95 latency.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from benchmarks.calls import percentile
from benchmarks.metrics import COUNTERS, parse_metrics
from langchain_vllm_budget import ChatVLLM, TokenBudget
from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.serving.router import LocalRouter, RouterSpec
from langchain_vllm_budget.tokenizers import TransformersTokenCounter

__all__ = [
    "SESSIONS",
    "SETUPS",
    "TOOL_TURN_LINES",
    "TURN_LINES",
    "VARIANTS",
    "cpu_replica_spec",
    "over_window_from",
    "replicas_md",
    "run_replica_setups",
    "run_replicas",
    "thread_id",
    "turn_tokens",
    "turns_for",
    "write",
]

Compaction = Literal["trim", "summarize"]
"""How a thread is compacted past the window: ``ChatVLLM``'s ``on_overflow``."""
WINDOW = 2048
"""The window of the first run (and of the GPU run, :mod:`benchmarks.gpu_replicas`)."""
TURN_LINES = 10
"""Check lines in a turn's text; tiny-qwen's tokenizer makes ~390 tokens of it, the figure the
summary reports (:func:`turn_tokens`)."""
TOOL_TURN_LINES = 25
"""Check lines in a turn of the tool-sized setup: ~1,000 tokens, a tool result just under
``ToolOutputCompressionMiddleware``'s default threshold (larger ones it compresses)."""
SETUPS: tuple[tuple[int, int, Compaction, int], ...] = (
    (2, 2048, "trim", TURN_LINES),
    (2, 4096, "trim", TURN_LINES),
    (4, 2048, "trim", TURN_LINES),
    (2, 4096, "summarize", TURN_LINES),
    (2, 4096, "trim", TOOL_TURN_LINES),
)
"""The (replicas, window, compaction, turn lines) setups ``make bench`` runs the workload on,
one after the other: two replicas at two windows (the window sets how often a thread is
compacted: every ~2 turns at 2,048 tokens, every ~5 at 4,096; a trim is a cold prompt on every
replica, whatever the routing), four replicas (under round robin, a thread's next turn finds
the replica that holds its latest prefix less often), two replicas with ``"summarize"``, whose
compaction keeps the prompt up to the summaries and sends the summarizer the conversation's
own prefix, so it is served from the cache of the replica that holds the thread, and two
replicas with turns of ~1,000 tokens (round robin loses about one turn per request, so what
the key gains is about a turn's share of the prompt)."""
SESSIONS = 6
"""Concurrent threads (``quick``: 4)."""
SYSTEM = "You are an operations assistant. Keep track of every ticket and host."
_BUDGET = TokenBudget(output_reserve=64, min_output_tokens=16)
_ANSWER_TOKENS = 4


def thread_id(variant: int, thread: int) -> str:
    """The id of a variant's thread, also written in its text: digits only, so every thread's
    turns are the same number of tokens (Qwen's tokenizer splits digits one by one) and every
    variant passes the window at the same turn.

    Example:
        >>> thread_id(2, 5)
        '205'
    """
    return f"{variant}{thread:02d}"


@functools.cache
def _counter() -> TransformersTokenCounter:
    """tiny-qwen's tokenizer, loaded once for the workload's sizing."""
    return TransformersTokenCounter(ensure_local_model("tiny-qwen"))


@functools.cache  # run_replicas asks for it directly and through turns_for
def over_window_from(window: int, lines: int = TURN_LINES) -> int:
    """The first turn whose prompt is over ``window``'s input limit (4 at 2,048), counted
    with tiny-qwen's tokenizer on a thread's real text.

    Args:
        window: The replicas' ``--max-model-len``.
        lines: Check lines per turn (:data:`TURN_LINES`).
    """
    counter = _counter()
    limit = _BUDGET.with_max_model_len(window).input_limit(_ANSWER_TOKENS)
    messages: list[BaseMessage] = [SystemMessage(SYSTEM)]
    turn = 0
    while True:
        messages.append(HumanMessage(_turn_text(thread_id(0, 0), turn, lines)))
        if counter.count_messages(messages) > limit:
            return turn
        messages.append(AIMessage("0" * _ANSWER_TOKENS))  # one token per digit
        turn += 1


def turns_for(window: int, lines: int = TURN_LINES) -> int:
    """Turns per thread at ``window``: twice the turns to pass it, and 4 more (12 at 2,048)."""
    return 2 * over_window_from(window, lines) + 4


def turn_tokens(lines: int = TURN_LINES) -> int:
    """A turn's text in tiny-qwen's tokens (its first thread's first turn)."""
    return _counter().count_text(_turn_text(thread_id(0, 0), 0, lines))


@dataclass(frozen=True)
class Variant:
    """One routing setup: the router's policy (None: one replica, no router) and the key."""

    name: str
    policy: str | None
    session_key: bool


VARIANTS: tuple[Variant, ...] = (
    Variant("consistent_hash + key", "consistent_hash", True),
    Variant("consistent_hash, no key", "consistent_hash", False),
    Variant("round_robin, no key", "round_robin", False),
    Variant("cache_aware", "cache_aware", True),
    Variant("single replica", None, True),
)


def _turn_text(thread: str, turn: int, lines: int = TURN_LINES) -> str:
    text = [f"Ticket {thread}-{turn}: host db-{turn}.{thread}.prod is slow."]
    text += [
        f"- check {j}: /var/log/{thread}/shard-{j}.log shows p99 {180 + j + turn} ms on "
        f"node {thread}-{turn}-{j}."
        for j in range(lines)
    ]
    return "\n".join(text)


def _agent(base_url: str, *, session_key: bool, compaction: Compaction) -> Any:
    model = ChatVLLM(
        model="tiny-qwen",
        base_url=base_url,
        tokenizer=str(ensure_local_model("tiny-qwen")),
        max_tokens=_ANSWER_TOKENS,
        budget=_BUDGET,
        on_overflow=compaction,
        session_affinity="thread" if session_key else "off",
    )

    # Load the tokenizer before the threads start: transformers' lazy imports are not safe
    # to run from several threads at once.
    model.resolved_token_counter.count_text(SYSTEM)

    def call(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke([SystemMessage(SYSTEM), *state["messages"]])]}

    builder = StateGraph(MessagesState)
    builder.add_node("call", call)
    builder.add_edge(START, "call")
    builder.add_edge("call", END)
    return builder.compile(checkpointer=InMemorySaver())


def _phase(agent: Any, threads: list[str], turns: range, lines: int) -> list[float]:
    """Run ``turns`` of every thread at once; return each turn's latency in seconds."""

    def run(thread: str) -> list[float]:
        config = {"configurable": {"thread_id": thread}}
        latencies = []
        for turn in turns:
            started = time.perf_counter()
            text = _turn_text(thread, turn, lines)
            agent.invoke({"messages": [HumanMessage(text)]}, config)
            latencies.append(time.perf_counter() - started)
        return latencies

    with ThreadPoolExecutor(len(threads)) as pool:
        return [s for latencies in pool.map(run, threads) for s in latencies]


_READ = (*COUNTERS, "vllm:request_success")


def scrape(root: str) -> dict[str, float]:
    """A replica's counters, its finished requests included."""
    text = httpx.get(f"{root}/metrics", timeout=10.0).text
    return parse_metrics(text, _READ)


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` for every counter read (the finished requests included)."""
    return {name: after.get(name, 0.0) - before.get(name, 0.0) for name in _READ}


def _settled(
    roots: list[str], before: list[dict[str, float]], requests: int
) -> list[dict[str, float]]:
    """Counter deltas per replica once vLLM has counted ``requests`` finished requests."""
    for _ in range(50):
        deltas = [counter_delta(b, scrape(r)) for r, b in zip(roots, before, strict=True)]
        if sum(d.get("vllm:request_success", 0.0) for d in deltas) >= requests:
            break
        time.sleep(0.1)
    return deltas


def _summary(deltas: list[dict[str, float]]) -> dict[str, Any]:
    queries = sum(d["vllm:prefix_cache_queries"] for d in deltas)
    hits = sum(d["vllm:prefix_cache_hits"] for d in deltas)
    prompt = sum(d["vllm:prompt_tokens"] for d in deltas)
    requests = [d.get("vllm:request_success", 0.0) for d in deltas]
    return {
        "hit_rate": hits / queries if queries else None,
        "prompt_tokens": int(prompt),
        "tokens_prefilled": int(prompt - hits),
        "requests_per_replica": [int(r) for r in requests],
    }


def _run_variant(
    variant: Variant,
    url: str,
    roots: list[str],
    sessions: int,
    turns: range,
    compaction: Compaction,
    lines: int,
) -> dict[str, Any]:
    """Run ``turns`` of ``sessions`` threads; ``turns.start`` is the first over the window."""
    agent = _agent(url, session_key=variant.session_key, compaction=compaction)
    threads = [thread_id(VARIANTS.index(variant), i) for i in range(sessions)]
    started = time.perf_counter()
    before = [scrape(r) for r in roots]
    first = _phase(agent, threads, range(turns.start), lines)
    middle = [scrape(r) for r in roots]
    over = _phase(agent, threads, turns, lines)
    seconds = time.perf_counter() - started
    whole = _settled(roots, before, sessions * turns.stop)
    over_window = _settled(roots, middle, sessions * len(turns))
    latencies = first + over
    return {
        "policy": variant.policy,
        "session_key": variant.session_key,
        "calls": len(latencies),
        "seconds": round(seconds, 1),
        "calls_per_s": round(len(latencies) / seconds, 2),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p95_s": round(percentile(latencies, 95), 3),
        "over_window": _summary(over_window),
        "whole_run": _summary(whole),
    }


def cpu_replica_spec(window: int = WINDOW) -> LocalServerSpec:
    """One CPU replica: tiny-qwen, the ``window``, prefix caching on."""
    return LocalServerSpec(
        model=str(ensure_local_model("tiny-qwen")),
        served_model_name="tiny-qwen",
        max_model_len=window,
        max_num_seqs=4,
        extra_args=("--enable-prefix-caching",),
    )


@contextmanager
def _replicas(count: int, spec: LocalServerSpec) -> Iterator[list[LocalVLLMServer]]:
    logs = cache_dir() / "logs"
    with ExitStack() as stack:
        servers = [
            LocalVLLMServer(spec, log_path=logs / f"bench-replica{i}.log") for i in range(count)
        ]
        for server in servers:
            stack.callback(server.stop)
            server.start(wait=False)
        for server in servers:
            server.wait_ready()
        yield servers


def run_replicas(
    *,
    quick: bool = False,
    spec: LocalServerSpec | None = None,
    sessions_turns: tuple[int, int] | None = None,
    window: int = WINDOW,
    replicas: int = 2,
    compaction: Compaction = "trim",
    lines: int = TURN_LINES,
) -> dict[str, Any]:
    """Run every :data:`VARIANTS` over ``replicas`` fresh replicas; return the figures.

    Args:
        quick: Fewer threads and turns (4 and 9).
        spec: Each replica's server; default: :func:`cpu_replica_spec`. It must serve
            tiny-qwen with the ``window`` (the workload is sized for it).
        sessions_turns: Threads and turns per thread, instead of the defaults.
        window: The replicas' window; the turns follow from it (:func:`turns_for`).
        replicas: How many replicas the router spreads the threads over.
        compaction: ``ChatVLLM``'s ``on_overflow`` past the window.
        lines: Check lines per turn (:data:`TURN_LINES`: ~390 tokens).
    """
    first = over_window_from(window, lines)
    sessions, turns = (4, 9) if quick else (SESSIONS, turns_for(window, lines))
    if sessions_turns is not None:
        sessions, turns = sessions_turns
    result: dict[str, Any] = {
        "settings": {
            "model": "tiny-qwen",
            "replicas": replicas,
            "window": window,
            "sessions": sessions,
            "turns": turns,
            "turn_tokens": turn_tokens(lines),
            "over_window_from_turn": first,
            "compaction": f"on_overflow={compaction}",
        },
        "variants": {},
    }
    measured = range(first, turns)
    with _replicas(replicas, spec or cpu_replica_spec(window)) as servers:
        roots = [s.base_url.removesuffix("/v1") for s in servers]
        for variant in VARIANTS:
            if variant.policy is None:
                url = servers[0].base_url
                result["variants"][variant.name] = _run_variant(
                    variant, url, roots[:1], sessions, measured, compaction, lines
                )
                continue
            router_spec = RouterSpec(worker_urls=tuple(roots), policy=variant.policy)
            router = LocalRouter(router_spec, log_path=cache_dir() / "logs" / "bench-router.log")
            with ExitStack() as stack:
                stack.callback(router.stop)
                router.start()
                result["variants"][variant.name] = _run_variant(
                    variant, router.base_url, roots, sessions, measured, compaction, lines
                )
    result["goal"] = _goal(result["variants"])
    return result


def run_replica_setups(*, quick: bool = False) -> dict[str, Any]:
    """:func:`run_replicas` on each of :data:`SETUPS` (``quick``: the first).

    Returns:
        ``{"setups": [result, ...]}``, one :func:`run_replicas` result per setup.
    """
    setups = SETUPS[:1] if quick else SETUPS
    return {
        "setups": [
            run_replicas(
                quick=quick, replicas=count, window=window, compaction=compaction, lines=lines
            )
            for count, window, compaction, lines in setups
        ]
    }


def _goal(variants: dict[str, Any]) -> dict[str, Any]:
    def rate(name: str) -> float:
        return float(variants[name]["over_window"]["hit_rate"] or 0.0)

    keyed, robin, single = (
        rate("consistent_hash + key"),
        rate("round_robin, no key"),
        rate("single replica"),
    )
    return {
        "key_minus_round_robin_points": round(100 * (keyed - robin), 1),
        "single_minus_key_points": round(100 * (single - keyed), 1),
        "at_least_25_points_above_round_robin": keyed - robin >= 0.25,
        "within_5_points_of_single_replica": abs(single - keyed) <= 0.05,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def replicas_md(result: dict[str, Any]) -> list[str]:
    """The summary's section for a :func:`run_replicas` result, or one table per window of a
    :func:`run_replica_setups` result.

    Example:
        >>> row = {"policy": "round_robin", "session_key": False, "calls": 4, "seconds": 2.0,
        ...        "calls_per_s": 2.0, "latency_p50_s": 0.4, "latency_p95_s": 0.6,
        ...        "over_window": {"hit_rate": 0.5, "prompt_tokens": 10, "tokens_prefilled": 5,
        ...                        "requests_per_replica": [1, 1]},
        ...        "whole_run": {"hit_rate": 0.6, "prompt_tokens": 20, "tokens_prefilled": 8,
        ...                      "requests_per_replica": [2, 2]}}
        >>> result = {"settings": {"model": "m", "replicas": 2, "window": 2048, "sessions": 2,
        ...           "turns": 2, "turn_tokens": 260, "over_window_from_turn": 1,
        ...           "compaction": "on_overflow=trim"}, "variants": {"rr": row},
        ...           "goal": {"key_minus_round_robin_points": 30.0,
        ...                    "single_minus_key_points": 1.0,
        ...                    "at_least_25_points_above_round_robin": True,
        ...                    "within_5_points_of_single_replica": True}}
        >>> replicas_md(result)[6]
        '| rr | 50.0% | 60.0% | 5 | 2.00 | 0.40 | 0.60 | 2 / 2 |'
    """
    if "setups" in result:
        return [line for run in result["setups"] for line in (*replicas_md(run), "")][:-1]
    s, goal = result["settings"], result["goal"]
    lines = [
        f"### 10. Agent sessions over {s['replicas']} replicas behind vllm-router "
        f"({s['model']}, {s['window']}-token window, {s['sessions']} threads x {s['turns']} "
        f"turns of ~{s['turn_tokens']} tokens, {s['compaction']})",
        "",
        f"Hit rate over the window: vLLM's prefix-cache hits / queries from turn "
        f"{s['over_window_from_turn']} on (the first turn whose prompt is over the window).",
        "",
        "| variant | hit rate over the window | whole run | tokens prefilled (over window) "
        "| calls/s | p50 s | p95 s | requests per replica |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        over, whole = v["over_window"], v["whole_run"]
        lines.append(
            f"| {name} | {_pct(over['hit_rate'])} | {_pct(whole['hit_rate'])} | "
            f"{over['tokens_prefilled']} | {v['calls_per_s']:.2f} | {v['latency_p50_s']:.2f} | "
            f"{v['latency_p95_s']:.2f} | "
            + " / ".join(str(r) for r in whole["requests_per_replica"])
            + " |"
        )
    lines += [
        "",
        f"Goal: the session key's hit rate is {goal['key_minus_round_robin_points']} points "
        f"above round robin (goal >= 25: "
        f"{'met' if goal['at_least_25_points_above_round_robin'] else 'NOT met'}) and "
        f"{goal['single_minus_key_points']} points below one replica alone (goal <= 5: "
        f"{'met' if goal['within_5_points_of_single_replica'] else 'NOT met'}).",
    ]
    return lines


def write(result: dict[str, Any], out: Path, meta: dict[str, Any]) -> list[Path]:
    """Write ``results.json`` and ``summary.md`` for this benchmark into ``out``.

    Args:
        result: A :func:`run_replicas` or :func:`run_replica_setups` result.
        out: The folder.
        meta: The run's ``meta`` (command, start, machine, load averages).
    """
    out.mkdir(parents=True, exist_ok=True)
    data = out / "results.json"
    data.write_text(json.dumps({**result, "meta": meta}, indent=2) + "\n")
    at_end = [round(load, 1) for load in os.getloadavg()]
    run = (
        f"Run {meta['started']} on {meta['machine']}; vLLM {meta['vllm']}. Command: "
        f"`{meta['command']}`. Load average (1/5/15 min) at the start "
        f"{meta.get('load_average_start')}, at the end {at_end}: the replicas share the "
        "machine's cores, so the timings vary, and so do the round_robin and cache_aware hit "
        "rates: where a thread's next turn lands depends on how the threads' turns interleave."
    )
    summary = out / "summary.md"
    summary.write_text("\n".join([*replicas_md(result), "", run]) + "\n")
    return [data, summary]
