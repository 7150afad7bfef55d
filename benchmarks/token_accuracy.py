"""Benchmark 1: token-count accuracy against vLLM's ``usage.prompt_tokens``.

For every corpus case the truth is what the server reports for a real request
(``max_tokens=1``, tools sent with ``tool_choice="none"`` so any server accepts them and
still renders them into the prompt). Each counter is scored by its error against it.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.messages.utils import count_tokens_approximately
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from benchmarks.corpus import CorpusCase
from benchmarks.servers import Served
from langchain_vllm_budget.chat_models import ChatVLLM

__all__ = ["COUNTERS", "run_accuracy", "seed_chars_over_4"]

Counter = Callable[[Sequence[BaseMessage], list[dict[str, Any]] | None], int]


def seed_chars_over_4(messages: Sequence[BaseMessage]) -> int:
    """The seed's ``_estimate_tokens``: ``len(text) // 4`` of each prompt text, summed.

    The seed counts the prompt and the system prompt only: no template, no tool definitions.
    """
    return sum(len(m.text) // 4 for m in messages)


COUNTERS: tuple[str, ...] = (
    "ChatVLLM (local tokenizer)",
    "ChatVLLM (/tokenize)",
    "ChatVLLM (approximate fallback)",
    "seed chars/4",
    "count_tokens_approximately",
    "ChatOpenAI.get_num_tokens_from_messages",
)


def _counters(served: Served) -> dict[str, Counter]:
    common: dict[str, Any] = {"model": served.model, "base_url": served.base_url, "api_key": "x"}
    local = ChatVLLM(**common, tokenizer=str(served.model_path), token_counter="transformers")
    server = ChatVLLM(**common, token_counter="server")
    approximate = ChatVLLM(**common, token_counter="approximate")
    plain = ChatOpenAI(**common)

    def openai_count(messages: Sequence[BaseMessage], tools: list[dict[str, Any]] | None) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return plain.get_num_tokens_from_messages(list(messages), tools=tools)

    return {
        COUNTERS[0]: lambda m, t: local.get_num_tokens_from_messages(m, tools=t),
        COUNTERS[1]: lambda m, t: server.get_num_tokens_from_messages(m, tools=t),
        COUNTERS[2]: lambda m, t: approximate.get_num_tokens_from_messages(m, tools=t),
        COUNTERS[3]: lambda m, t: seed_chars_over_4(m),
        COUNTERS[4]: lambda m, t: count_tokens_approximately(m, tools=t),
        COUNTERS[5]: openai_count,
    }


def _server_count(served: Served, case: CorpusCase) -> int:
    model = ChatOpenAI(
        model=served.model,
        base_url=served.base_url,
        api_key=SecretStr("x"),
        max_completion_tokens=1,
        temperature=0,
    )
    runnable: Any = model.bind_tools(case.tools, tool_choice="none") if case.tools else model
    reply = runnable.invoke(case.messages)
    usage = reply.usage_metadata or {}
    return int(usage["input_tokens"])


# Why a counter cannot count, in our words: raw exception text is never recorded (it can
# carry network host names and request details).
_FAILURE_REASONS = {
    COUNTERS[5]: (
        "needs tiktoken's encoding downloaded from the network (fails offline); "
        "NotImplementedError for any non-OpenAI model name"
    ),
}


def _error_name(counter: str, exc: BaseException) -> str:
    reason = _FAILURE_REASONS.get(counter, "unexpected failure")
    return f"{type(exc).__name__}: {reason}"


def run_accuracy(served: Served, cases: Sequence[CorpusCase]) -> dict[str, Any]:
    """Score every counter on every case against the server's ``usage.prompt_tokens``.

    Args:
        served: The server (and its local tokenizer folder).
        cases: The corpus.

    Returns:
        ``{"model", "cases": [...], "summary": {counter: {...}}}``; per case the truth and
        each counter's count and error (or the exception it raised).
    """
    counters = _counters(served)
    rows: list[dict[str, Any]] = []
    for case in cases:
        truth = _server_count(served, case)
        row: dict[str, Any] = {
            "case": case.name,
            "category": case.category,
            "chars": case.chars,
            "server_prompt_tokens": truth,
            "counts": {},
        }
        for name, count in counters.items():
            try:
                value = int(count(case.messages, case.tools))
            except Exception as exc:  # what the alternative does is the measurement
                row["counts"][name] = {"error": _error_name(name, exc)}
                continue
            row["counts"][name] = {
                "count": value,
                "error_tokens": value - truth,
                "error_pct": round(100.0 * (value - truth) / truth, 2),
            }
        rows.append(row)
    return {"model": served.model, "cases": rows, "summary": _summarize(rows)}


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in COUNTERS:
        scored = [r["counts"][name] for r in rows if "count" in r["counts"][name]]
        failed = [r["counts"][name]["error"] for r in rows if "error" in r["counts"][name]]
        entry: dict[str, Any] = {"cases": len(rows), "failed": len(failed)}
        if failed:
            entry["failure"] = failed[0]
        if scored:
            errors = [s["error_pct"] for s in scored]
            entry.update(
                exact=sum(1 for s in scored if s["error_tokens"] == 0),
                median_abs_error_pct=round(statistics.median(abs(e) for e in errors), 2),
                worst_error_pct=max(errors, key=abs),
                max_undercount_pct=min(min(errors), 0.0),
            )
            by_category: dict[str, list[float]] = {}
            for row in rows:
                if "count" in row["counts"][name]:
                    by_category.setdefault(row["category"], []).append(
                        row["counts"][name]["error_pct"]
                    )
            entry["median_error_pct_by_category"] = {
                cat: round(statistics.median(values), 2) for cat, values in by_category.items()
            }
        summary[name] = entry
    return summary
