"""Benchmark 10: agent sessions over two vLLM replicas behind ``vllm-router``.

Two tiny-qwen replicas (2K window, prefix caching) serve :data:`SESSIONS` concurrent agent
threads (LangGraph graphs whose node calls ``ChatVLLM`` with ``on_overflow="trim"``), each
:data:`TURNS` turns of about :data:`TURN_TOKENS` tokens: every thread grows past the window
and is compacted, so the prefix cache only pays off if a thread's turns meet its cached
prefix again. The same workload runs under each routing variant:

* ``consistent_hash + key``: ChatVLLM sends the thread's session key (``X-Session-ID``);
* ``consistent_hash, no key``: ``session_affinity="off"``, every thread hashes alike;
* ``round_robin, no key``: what a plain load balancer does;
* ``cache_aware``: the router's own prefix-tree routing (the key is sent; it does not read it);
* ``single replica``: the replica alone, without the router (the reference hit rate).

Every variant's threads have text of their own, so no variant reuses another's prefixes.
Read from each replica's ``/metrics``: the prefix-cache hit rate over the turns after each
thread first passed the window (turns :data:`OVER_WINDOW_FROM` on), tokens prefilled
(prompt tokens minus cache hits), each replica's share of the requests; timed per turn on
the client: throughput and p50/p95 latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from benchmarks.calls import percentile
from benchmarks.metrics import COUNTERS, parse_metrics
from langchain_vllm_budget import ChatVLLM, TokenBudget
from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.serving.router import LocalRouter, RouterSpec

__all__ = [
    "OVER_WINDOW_FROM",
    "SESSIONS",
    "TURNS",
    "TURN_TOKENS",
    "VARIANTS",
    "cpu_replica_spec",
    "replicas_md",
    "run_replicas",
    "write",
]

WINDOW = 2048
TURN_TOKENS = 260
SESSIONS, TURNS = 6, 12
"""Concurrent threads and turns per thread (``quick``: 4 and 9)."""
OVER_WINDOW_FROM = 7
"""The first turn after which every thread has passed the window once (7 x 260 > 1856)."""
SYSTEM = "You are an operations assistant. Keep track of every ticket and host."


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


def _turn_text(thread: str, turn: int) -> str:
    lines = [f"Ticket {thread}-{turn}: host db-{turn}.{thread}.prod is slow."]
    lines += [
        f"- check {j}: /var/log/{thread}/shard-{j}.log shows p99 {180 + j + turn} ms on "
        f"node {thread}-{turn}-{j}."
        for j in range(TURN_TOKENS // 26)
    ]
    return "\n".join(lines)


def _agent(base_url: str, *, session_key: bool) -> Any:
    model = ChatVLLM(
        model="tiny-qwen",
        base_url=base_url,
        tokenizer=str(ensure_local_model("tiny-qwen")),
        max_tokens=4,
        budget=TokenBudget(output_reserve=64, min_output_tokens=16),
        on_overflow="trim",
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


def _phase(agent: Any, threads: list[str], turns: range) -> list[float]:
    """Run ``turns`` of every thread at once; return each turn's latency in seconds."""

    def run(thread: str) -> list[float]:
        config = {"configurable": {"thread_id": thread}}
        latencies = []
        for turn in turns:
            started = time.perf_counter()
            agent.invoke({"messages": [HumanMessage(_turn_text(thread, turn))]}, config)
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
    variant: Variant, url: str, roots: list[str], sessions: int, turns: int
) -> dict[str, Any]:
    agent = _agent(url, session_key=variant.session_key)
    tag = variant.name.split()[0].replace("_", "")[:6]
    threads = [f"{tag}{'k' if variant.session_key else 'n'}{i}" for i in range(sessions)]
    started = time.perf_counter()
    before = [scrape(r) for r in roots]
    first = _phase(agent, threads, range(OVER_WINDOW_FROM))
    middle = [scrape(r) for r in roots]
    over = _phase(agent, threads, range(OVER_WINDOW_FROM, turns))
    seconds = time.perf_counter() - started
    whole = _settled(roots, before, sessions * turns)
    over_window = _settled(roots, middle, sessions * (turns - OVER_WINDOW_FROM))
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


def cpu_replica_spec() -> LocalServerSpec:
    """One CPU replica: tiny-qwen, the benchmark's window, prefix caching on."""
    return LocalServerSpec(
        model=str(ensure_local_model("tiny-qwen")),
        served_model_name="tiny-qwen",
        max_model_len=WINDOW,
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
) -> dict[str, Any]:
    """Run every :data:`VARIANTS` over two fresh replicas; return the figures.

    Args:
        quick: Fewer threads and turns (4 and 9).
        spec: Each replica's server; default: :func:`cpu_replica_spec`. It must serve
            tiny-qwen with the :data:`WINDOW`-token window (the workload is sized for it).
        sessions_turns: Threads and turns per thread, instead of the defaults.
    """
    sessions, turns = (4, 9) if quick else (SESSIONS, TURNS)
    if sessions_turns is not None:
        sessions, turns = sessions_turns
    result: dict[str, Any] = {
        "settings": {
            "model": "tiny-qwen",
            "replicas": 2,
            "window": WINDOW,
            "sessions": sessions,
            "turns": turns,
            "turn_tokens": TURN_TOKENS,
            "over_window_from_turn": OVER_WINDOW_FROM,
            "compaction": "on_overflow=trim",
        },
        "variants": {},
    }
    with _replicas(2, spec or cpu_replica_spec()) as servers:
        roots = [s.base_url.removesuffix("/v1") for s in servers]
        for variant in VARIANTS:
            if variant.policy is None:
                url, measured = servers[0].base_url, roots[:1]
                result["variants"][variant.name] = _run_variant(
                    variant, url, measured, sessions, turns
                )
                continue
            router_spec = RouterSpec(worker_urls=tuple(roots), policy=variant.policy)
            router = LocalRouter(router_spec, log_path=cache_dir() / "logs" / "bench-router.log")
            with ExitStack() as stack:
                stack.callback(router.stop)
                router.start()
                result["variants"][variant.name] = _run_variant(
                    variant, router.base_url, roots, sessions, turns
                )
    result["goal"] = _goal(result["variants"])
    return result


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
    """The summary's section for :func:`run_replicas`'s result.

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
    s, goal = result["settings"], result["goal"]
    lines = [
        f"### 10. Agent sessions over {s['replicas']} replicas behind vllm-router "
        f"({s['model']}, {s['window']}-token window, {s['sessions']} threads x {s['turns']} "
        f"turns of ~{s['turn_tokens']} tokens, {s['compaction']})",
        "",
        f"Hit rate over the window: vLLM's prefix-cache hits / queries from turn "
        f"{s['over_window_from_turn']} on (every thread past the window once).",
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
        result: :func:`run_replicas`'s result.
        out: The folder.
        meta: The run's ``meta`` (command, start, machine, load averages).
    """
    out.mkdir(parents=True, exist_ok=True)
    data = out / "results.json"
    data.write_text(json.dumps({**result, "meta": meta}, indent=2) + "\n")
    run = (
        f"Run {meta['started']} on {meta['machine']}; vLLM {meta['vllm']}. Command: "
        f"`{meta['command']}`. Load average (1/5/15 min) at the start "
        f"{meta.get('load_average_start')}, at the end {meta.get('load_average_end')}: other "
        "work shared the cores, so the timings vary. So do the round_robin and cache_aware hit "
        "rates: where a thread's next turn lands depends on how the threads' turns interleave."
    )
    summary = out / "summary.md"
    summary.write_text("\n".join([*replicas_md(result), "", run]) + "\n")
    return [data, summary]
