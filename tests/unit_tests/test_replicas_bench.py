"""Benchmark 10's workload sizing and summary (offline: the tokenizer only, no server)."""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from benchmarks import replicas
from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.tokenizers import TransformersTokenCounter


def _prompt_tokens(thread: str, turns: int, lines: int) -> int:
    """The prompt of a thread's turn ``turns``, every earlier turn answered in 4 tokens."""
    counter = TransformersTokenCounter(ensure_local_model("tiny-qwen"))
    messages: list[BaseMessage] = [SystemMessage(replicas.SYSTEM)]
    for turn in range(turns):
        messages += [HumanMessage(replicas._turn_text(thread, turn, lines)), AIMessage("0000")]
    messages.append(HumanMessage(replicas._turn_text(thread, turns, lines)))
    return counter.count_messages(messages)


def test_every_variants_threads_pass_the_window_at_the_measured_turn() -> None:
    threads = [
        replicas.thread_id(v, i)
        for v in range(len(replicas.VARIANTS))
        for i in range(replicas.SESSIONS)
    ]
    assert len(set(threads)) == len(threads)  # no variant shares another's prefixes
    for _, window, _, lines in replicas.SETUPS:
        first = replicas.over_window_from(window, lines)
        assert first >= 2  # some turns fit before the window is passed
        limit = replicas._BUDGET.with_max_model_len(window).input_limit(4)
        for thread in threads:
            below, above = (_prompt_tokens(thread, t, lines) for t in (first - 1, first))
            assert below <= limit < above


def test_the_tool_sized_turns_are_about_a_tool_result_under_the_threshold() -> None:
    assert 300 < replicas.turn_tokens() < 450
    assert 900 < replicas.turn_tokens(replicas.TOOL_TURN_LINES) <= 1000


def _run(count: int, window: int) -> dict[str, object]:
    row = {
        "policy": "round_robin",
        "session_key": False,
        "calls": 4,
        "seconds": 1.0,
        "calls_per_s": 4.0,
        "latency_p50_s": 0.1,
        "latency_p95_s": 0.2,
        "over_window": {
            "hit_rate": 0.4,
            "prompt_tokens": 10,
            "tokens_prefilled": 6,
            "requests_per_replica": [1] * count,
        },
        "whole_run": {
            "hit_rate": 0.5,
            "prompt_tokens": 20,
            "tokens_prefilled": 10,
            "requests_per_replica": [2] * count,
        },
    }
    return {
        "settings": {
            "model": "tiny-qwen",
            "replicas": count,
            "window": window,
            "sessions": 6,
            "turns": 12,
            "turn_tokens": 378,
            "over_window_from_turn": 4,
            "compaction": "on_overflow=trim",
        },
        "variants": {"round_robin, no key": row},
        "goal": {
            "key_minus_round_robin_points": 20.0,
            "single_minus_key_points": 1.0,
            "at_least_25_points_above_round_robin": False,
            "within_5_points_of_single_replica": True,
        },
    }


def test_the_summary_has_one_table_per_setup() -> None:
    lines = replicas.replicas_md({"setups": [_run(2, 2048), _run(4, 2048)]})
    headings = [line for line in lines if line.startswith("### 10.")]
    assert len(headings) == 2
    assert "over 2 replicas" in headings[0]
    assert "over 4 replicas" in headings[1]
    assert "| round_robin, no key | 40.0% | 50.0% | 6 |" in "\n".join(lines)
    assert "2 / 2 / 2 / 2 |" in lines[lines.index(headings[1]) + 6]
