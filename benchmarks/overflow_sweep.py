"""Benchmark 2: the overflow sweep, from 10% to 200% of ``max_model_len``.

The same conversations go to every client, with and without a caller's ``max_tokens``:

* plain ``ChatOpenAI`` pointed at vLLM (no budgeting);
* the seed's client: ``max_tokens`` from the chars/4 estimate, ``256`` when too large;
* ``ChatVLLM`` with each overflow policy (``raise``, ``trim``, ``summarize``, ``warn``).

Each request is classified: **rejected** (vLLM's length 400 reached the caller),
**truncated silently** (vLLM clamped ``max_tokens`` to what was left of the window and
answered ``finish_reason=length``, and the caller was not told), **raised before sending**
(a typed :class:`~langchain_vllm_budget.errors.VLLMContextOverflowError`, no request sent),
or **sent** (with the policy's action: none, trimmed, summarized, warned).

Without a caller's ``max_tokens`` only the first streamed token is read (vLLM would
otherwise generate up to the whole window with a random-weight model); with one, the whole
answer is read to see ``finish_reason`` and the completion's length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_openai import ChatOpenAI

from benchmarks.corpus import filler_conversation
from benchmarks.servers import Served
from benchmarks.token_accuracy import seed_chars_over_4
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.chat_models import ChatVLLM
from langchain_vllm_budget.errors import VLLMContextOverflowError
from langchain_vllm_budget.tokenizers import TransformersTokenCounter

__all__ = [
    "CLIENTS",
    "FRACTIONS",
    "QUICK_FRACTIONS",
    "conversation_of",
    "run_sweep",
    "seed_max_tokens",
]

FRACTIONS: tuple[float, ...] = (0.1, 0.5, 0.99, 1.1, 1.5, 2.0)
QUICK_FRACTIONS: tuple[float, ...] = (0.5, 0.99, 1.5)
USER_MAX_TOKENS = 128
CLIENTS: tuple[str, ...] = (
    "ChatOpenAI (plain)",
    "seed client (chars/4)",
    "ChatVLLM raise",
    "ChatVLLM trim",
    "ChatVLLM summarize",
    "ChatVLLM warn",
)

# The seed's settings (LLM_OUTPUT_RESERVE=3000, LLM_SAFETY_MARGIN=128, minimum output 256).
_SEED_RESERVE, _SEED_MARGIN, _SEED_MIN = 3000, 128, 256


def seed_max_tokens(
    messages: Sequence[BaseMessage], max_model_len: int, requested: int | None
) -> int:
    """The seed's ``_calculate_safe_max_tokens`` (chars/4 input; 256 when it does not fit)."""
    available = max_model_len - seed_chars_over_4(messages) - _SEED_MARGIN
    safe = min(available, _SEED_RESERVE)
    if safe < _SEED_MIN:
        safe = _SEED_MIN
    return min(safe, requested) if requested is not None else safe


def conversation_of(
    tokens: int, counter: TransformersTokenCounter, nonce: str
) -> tuple[list[BaseMessage], int]:
    """A conversation of about ``tokens`` prompt tokens (measured exactly), and its count."""
    chars = tokens * 4
    messages = filler_conversation(chars, nonce=nonce)
    count = counter.count_messages(messages)
    for _ in range(4):
        if abs(count - tokens) <= max(8, tokens // 400):
            break
        chars = max(int(chars * tokens / count), 16)
        messages = filler_conversation(chars, nonce=nonce)
        count = counter.count_messages(messages)
    return messages, count


def _read(
    model: BaseChatModel, messages: list[BaseMessage], *, read_all: bool, **kwargs: Any
) -> dict[str, Any]:
    """Stream a reply; return what came back (or what was raised)."""
    merged: AIMessageChunk | None = None
    budget: dict[str, Any] | None = None
    try:
        for chunk in model.stream(messages, **kwargs):
            assert isinstance(chunk, AIMessageChunk)
            budget = budget or chunk.response_metadata.get("budget")
            merged = chunk if merged is None else merged + chunk
            if not read_all:
                break
    except VLLMContextOverflowError as exc:
        kind = "rejected_400" if exc.source == "server" else "raised_before_sending"
        return {"outcome": kind, "error": str(exc)[:200]}
    except openai.BadRequestError as exc:
        return {"outcome": "rejected_400", "error": str(exc.message)[:200]}
    except Exception as exc:  # any other failure is a result too (its type only: raw text
        # can carry host names)
        return {"outcome": "error", "error": type(exc).__name__}
    result: dict[str, Any] = {"outcome": "sent", "budget": budget}
    if merged is not None:
        result["finish_reason"] = merged.response_metadata.get("finish_reason")
        usage: dict[str, Any] = dict(merged.usage_metadata or {})
        result["completion_tokens"] = usage.get("output_tokens")
    return result


def _classify(result: dict[str, Any], requested: int | None, reported: bool) -> str:
    """Name the outcome; a clamp the caller was not told about is a silent truncation."""
    if result["outcome"] != "sent":
        return str(result["outcome"])
    budget = result.get("budget") or {}
    if budget.get("retried"):
        return "sent after a 400 (corrected)"
    action = budget.get("action", "none")
    if requested is not None and result.get("completion_tokens") is not None:
        clamped = result["finish_reason"] == "length" and result["completion_tokens"] < requested
        if clamped and not reported:
            return "truncated_silently"
        if clamped:
            return f"sent ({action}, max_tokens reduced and reported)"
    return f"sent ({action})" if action != "none" else "sent"


def run_sweep(served: Served, *, quick: bool = False) -> dict[str, Any]:
    """Send every client every conversation of the sweep; classify each answer.

    Args:
        served: The 12288-token tiny-qwen server.
        quick: Three fractions instead of six.

    Returns:
        ``{"max_model_len", "rows": [...], "summary": {scenario: {client: {...}}}}``.
    """
    window = served.max_model_len
    counter = TransformersTokenCounter(str(served.model_path))
    common: dict[str, Any] = {"model": served.model, "base_url": served.base_url, "api_key": "x"}
    budget = TokenBudget()  # the seed's defaults; the window is discovered from the server
    clients: dict[str, BaseChatModel] = {
        CLIENTS[0]: ChatOpenAI(**common, temperature=0, stream_usage=True, max_retries=0),
        CLIENTS[1]: ChatOpenAI(**common, temperature=0, stream_usage=True, max_retries=0),
    }
    for policy in ("raise", "trim", "summarize", "warn"):
        clients[f"ChatVLLM {policy}"] = ChatVLLM(
            **common,
            temperature=0,
            budget=budget,
            on_overflow=policy,
            tokenizer=str(served.model_path),
            summary_max_tokens=64,
            max_retries=0,
        )
    rows: list[dict[str, Any]] = []
    fractions = QUICK_FRACTIONS if quick else FRACTIONS
    for fraction in fractions:
        target = math.floor(window * fraction)
        messages, tokens = conversation_of(target, counter, nonce=f"sweep-{fraction}")
        for requested in (None, USER_MAX_TOKENS):
            for name, model in clients.items():
                kwargs: dict[str, Any] = {}
                if name == CLIENTS[1]:
                    kwargs["max_tokens"] = seed_max_tokens(messages, window, requested)
                elif requested is not None:
                    kwargs["max_tokens"] = requested
                result = _read(model, messages, read_all=requested is not None, **kwargs)
                reported = name.startswith("ChatVLLM")
                asked = kwargs.get("max_tokens") if name == CLIENTS[1] else requested
                rows.append(
                    {
                        "fraction": fraction,
                        "input_tokens": tokens,
                        "user_max_tokens": requested,
                        "client": name,
                        "sent_max_tokens": (result.get("budget") or {}).get(
                            "max_tokens", kwargs.get("max_tokens")
                        ),
                        "outcome": _classify(result, asked, reported),
                        "finish_reason": result.get("finish_reason"),
                        "completion_tokens": result.get("completion_tokens"),
                        "error": result.get("error"),
                    }
                )
    return {
        "max_model_len": window,
        "user_max_tokens": USER_MAX_TOKENS,
        "rows": rows,
        "summary": _summarize(rows),
    }


_FAILURES = ("rejected_400", "truncated_silently", "error")


def _summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    scenarios = (("no max_tokens", None), (f"max_tokens={USER_MAX_TOKENS}", USER_MAX_TOKENS))
    for scenario, requested in scenarios:
        per_client: dict[str, Any] = {}
        for client in CLIENTS:
            mine = [r for r in rows if r["client"] == client and r["user_max_tokens"] == requested]
            outcomes: dict[str, int] = {}
            for row in mine:
                outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
            per_client[client] = {
                "requests": len(mine),
                "failures": sum(1 for r in mine if r["outcome"] in _FAILURES),
                "rejected_400": outcomes.get("rejected_400", 0),
                "truncated_silently": outcomes.get("truncated_silently", 0),
                "outcomes": outcomes,
            }
        summary[scenario] = per_client
    return summary
