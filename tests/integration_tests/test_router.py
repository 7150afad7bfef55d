"""Two real vLLM replicas behind a real ``vllm-router``: session affinity and fail-over.

The replicas (tiny-qwen, 2K window) and the router (``--policy consistent_hash``) start once
for the module. Agent threads are LangGraph graphs whose node calls ``ChatVLLM`` with
``on_overflow="trim"``: every thread grows past the window and is compacted. ChatVLLM sends
the thread's session key (``X-Session-ID``); which replica served what is read from each
replica's own ``/metrics`` (vLLM's request and prefix-cache counters).

The fail-over test kills the replicas and runs last.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from prometheus_client.parser import text_string_to_metric_families

from langchain_vllm_budget import ChatVLLM, TokenBudget
from langchain_vllm_budget.errors import VLLMConnectionError
from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalServerSpec
from langchain_vllm_budget.serving.router import LocalReplicaSet

pytestmark = pytest.mark.integration

WINDOW = 2048
TURN_TOKENS = 260  # ~390 tokens of text: 4 turns fill the window, compaction keeps it inside
THREADS = 4
TURNS = 10
SYSTEM = "You are an operations assistant. Keep track of every ticket and host."


@pytest.fixture(scope="module")
def replicas() -> Iterator[LocalReplicaSet]:
    spec = LocalServerSpec(
        model=str(ensure_local_model("tiny-qwen")),
        served_model_name="tiny-qwen",
        max_model_len=WINDOW,
        max_num_seqs=4,
        extra_args=("--enable-prefix-caching",),
    )
    with LocalReplicaSet(spec, replicas=2, policy="consistent_hash") as replica_set:
        yield replica_set


def _counters(root: str) -> dict[str, float]:
    text = httpx.get(f"{root}/metrics", timeout=10).text
    wanted = {"vllm:request_success", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits"}
    values = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            values[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return values


def _all_counters(roots: list[str], *, settled_at: float | None = None) -> list[dict[str, float]]:
    """Each replica's counters; with ``settled_at``, once their requests add up to it.

    vLLM counts a request right after answering it, so a read just after the answer may
    come a moment early.
    """
    for _ in range(50):
        counters = [_counters(root) for root in roots]
        total = sum(c["vllm:request_success"] for c in counters)
        if settled_at is None or total >= settled_at:
            return counters
        time.sleep(0.1)
    return counters


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after}


def _hit_rate(deltas: list[dict[str, float]]) -> float:
    hits = sum(d["vllm:prefix_cache_hits"] for d in deltas)
    return hits / sum(d["vllm:prefix_cache_queries"] for d in deltas)


def _turn_text(thread: str, turn: int) -> str:
    """A ticket of about :data:`TURN_TOKENS` tokens, unique to the thread and turn."""
    lines = [f"Ticket {thread}-{turn}: host db-{turn}.{thread}.prod is slow."]
    lines += [
        f"- check {j}: /var/log/{thread}/shard-{j}.log shows p99 {180 + j + turn} ms on "
        f"node {thread}-{turn}-{j}."
        for j in range(TURN_TOKENS // 26)
    ]
    return "\n".join(lines)


def _model(base_url: str, **kwargs: Any) -> ChatVLLM:
    return ChatVLLM(
        model="tiny-qwen",
        base_url=base_url,
        tokenizer=str(ensure_local_model("tiny-qwen")),
        max_tokens=4,
        budget=TokenBudget(output_reserve=64, min_output_tokens=16),
        on_overflow="trim",
        **kwargs,
    )


def _agent(model: ChatVLLM) -> Any:
    # Load the tokenizer before threads share the model (transformers' lazy imports are not
    # safe to run from several threads at once).
    model.resolved_token_counter.count_text(SYSTEM)

    def call(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke([SystemMessage(SYSTEM), *state["messages"]])]}

    builder = StateGraph(MessagesState)
    builder.add_node("call", call)
    builder.add_edge(START, "call")
    builder.add_edge("call", END)
    return builder.compile(checkpointer=InMemorySaver())


def _turn(agent: Any, thread: str, turn: int) -> None:
    config = {"configurable": {"thread_id": thread}}
    agent.invoke({"messages": [HumanMessage(_turn_text(thread, turn))]}, config)


def _run_threads(agent: Any, threads: list[str], turns: range) -> None:
    with ThreadPoolExecutor(len(threads)) as pool:
        for future in [
            pool.submit(lambda t=t: [_turn(agent, t, i) for i in turns]) for t in threads
        ]:
            future.result()


def _replica_of_each(agent: Any, threads: list[str], roots: list[str]) -> dict[str, int]:
    """Run each thread's first turn alone and see which replica's request counter moved."""
    placed = {}
    for thread in threads:
        before = _all_counters(roots)
        _turn(agent, thread, 0)
        total = sum(c["vllm:request_success"] for c in before) + 1
        moved = [
            i
            for i, (a, b) in enumerate(
                zip(_all_counters(roots, settled_at=total), before, strict=True)
            )
            if a["vllm:request_success"] > b["vllm:request_success"]
        ]
        assert len(moved) == 1, f"{thread}'s first request went to replicas {moved}"
        placed[thread] = moved[0]
    return placed


def _messages(agent: Any, thread: str) -> list[Any]:
    return list(agent.get_state({"configurable": {"thread_id": thread}}).values["messages"])


def _assert_complete(agent: Any, thread: str, turns: int) -> None:
    """The checkpointed thread holds every turn, in order, each answered."""
    messages = _messages(agent, thread)
    assert [m.content for m in messages[::2]] == [_turn_text(thread, i) for i in range(turns)]
    assert all(isinstance(m, AIMessage) for m in messages[1::2])
    assert len(messages) == 2 * turns


def test_each_thread_stays_on_one_replica_and_keeps_its_prefix_cache(
    replicas: LocalReplicaSet,
) -> None:
    roots = replicas.replica_roots
    agent = _agent(_model(replicas.base_url))
    threads = [f"affinity-{i}" for i in range(THREADS)]
    placed = _replica_of_each(agent, threads, roots)
    before = _all_counters(roots)
    _run_threads(agent, threads, range(1, TURNS))
    total = sum(c["vllm:request_success"] for c in before) + THREADS * (TURNS - 1)
    after = _all_counters(roots, settled_at=total)
    deltas = [_delta(a, b) for a, b in zip(after, before, strict=True)]
    # Every later turn of a thread landed where its first one did.
    for replica, delta in enumerate(deltas):
        expected = sum(TURNS - 1 for t in threads if placed[t] == replica)
        assert delta["vllm:request_success"] == expected, (placed, deltas)
    for thread in threads:
        _assert_complete(agent, thread, TURNS)
    routed_rate = _hit_rate(deltas)

    # The same workload on one replica alone (other threads: no prefix is shared).
    alone = _agent(_model(replicas.servers[0].base_url))
    single = [f"single-{i}" for i in range(THREADS)]
    for thread in single:
        _turn(alone, thread, 0)
    before = _counters(roots[0])
    _run_threads(alone, single, range(1, TURNS))
    total = before["vllm:request_success"] + THREADS * (TURNS - 1)
    single_rate = _hit_rate([_delta(_all_counters(roots[:1], settled_at=total)[0], before)])
    assert routed_rate == pytest.approx(single_rate, abs=0.05), (routed_rate, single_rate)
    assert single_rate > 0.5  # compaction kept the prefixes stable on one replica


def test_a_killed_replica_fails_over_without_losing_a_turn_until_none_is_left(
    replicas: LocalReplicaSet,
) -> None:
    agent = _agent(_model(replicas.base_url, max_retries=3))
    threads = [f"failover-{i}" for i in range(THREADS)]
    turns = 6
    halfway = threading.Barrier(THREADS + 1, timeout=600)

    def run(thread: str) -> None:
        for turn in range(turns):
            if turn == turns // 2:
                halfway.wait()  # the replica is killed while the threads go on
            _turn(agent, thread, turn)

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(run, t) for t in threads]
        halfway.wait()
        os.killpg(replicas.servers[0].pid, signal.SIGKILL)
        for future in futures:
            future.result()
    for thread in threads:
        _assert_complete(agent, thread, turns)

    earlier = [m.content for m in _messages(agent, threads[0])]
    os.killpg(replicas.servers[1].pid, signal.SIGKILL)
    with pytest.raises(VLLMConnectionError, match="no replica reachable"):
        _turn(agent, threads[0], turns)
    # The checkpoint keeps the unanswered turn's input and every earlier turn intact.
    kept = [m.content for m in _messages(agent, threads[0])]
    assert kept == [*earlier, _turn_text(threads[0], turns)]
