"""Benchmark 2: the overflow sweep, from 10% to 200% of ``max_model_len``.

The same conversations go to every client, with and without a caller's ``max_tokens``:

* plain ``ChatOpenAI`` pointed at vLLM (no budgeting);
* the seed's client: ``max_tokens`` from the chars/4 estimate, ``256`` when too large;
* ``ChatVLLM`` with each overflow policy (``raise``, ``trim``, ``summarize``, ``warn``).

Each request lands in one column (:data:`OUTCOMES`): **served**, **served, adjusted and
reported** (trimmed, summarized, ``max_tokens`` reduced or retried, said in
``response_metadata["budget"]``), **refused before sending** (a typed
:class:`~langchain_vllm_budget.errors.VLLMContextOverflowError`, no request sent), **length
400** (vLLM's rejection reached the caller) or **silently truncated** (``finish_reason=length``
with fewer tokens than asked: vLLM clamped ``max_tokens`` to what was left of the window and
nobody told the caller). A refusal of a request that plain ``ChatOpenAI`` got answered is
counted apart (``refused_servable``): that is the price of a safety margin, not a save.

An answer is read to the end when at most 512 tokens were granted (or, without any
``max_tokens``, near the window's edge, where vLLM grants only what is left); otherwise only
its first streamed token is read (a random-weight model would write up to the whole window).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    "OUTCOMES",
    "QUICK_FRACTIONS",
    "classify",
    "conversation_of",
    "run_sweep",
    "seed_max_tokens",
    "summarize_sweep",
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
    messages: Sequence[BaseMessage],
    max_model_len: int,
    requested: int | None,
    *,
    reserve: int = _SEED_RESERVE,
) -> int:
    """The seed's ``_calculate_safe_max_tokens`` (chars/4 input; 256 when it does not fit).

    ``reserve`` replaces the seed's ``LLM_OUTPUT_RESERVE`` (3000) where an app asks for less.
    """
    available = max_model_len - seed_chars_over_4(messages) - _SEED_MARGIN
    safe = min(available, reserve)
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


OUTCOMES: tuple[str, ...] = (
    "served",
    "served_adjusted",
    "refused_before_sending",
    "length_400",
    "silently_truncated",
    "error",
)
"""The columns of the sweep, one per outcome of a request:

* ``served``: sent and answered with the output room the caller asked for (or, without a
  ``max_tokens``, until the model stopped);
* ``served_adjusted``: sent after the client made it fit and said so in
  ``response_metadata["budget"]``: input trimmed or summarized, ``max_tokens`` reduced, or
  a corrected retry after a 400;
* ``refused_before_sending``: a typed ``VLLMContextOverflowError`` raised before any request;
* ``length_400``: vLLM's length 400 reached the caller;
* ``silently_truncated``: ``finish_reason="length"`` with fewer tokens than the caller asked
  for (vLLM clamped ``max_tokens`` to what was left of the window), and nothing told the
  caller;
* ``error``: anything else.
"""
_LONG_ANSWER = 512  # answers with at most this many tokens granted are read to the end


def _read(
    model: BaseChatModel,
    messages: list[BaseMessage],
    *,
    keep_reading: Callable[[dict[str, Any] | None], bool],
    **kwargs: Any,
) -> dict[str, Any]:
    """Stream a reply; return what came back (or what was raised).

    After the first chunk, ``keep_reading(budget)`` decides whether the whole answer is read
    (to see ``finish_reason`` and its length) or the stream is closed.
    """
    merged: AIMessageChunk | None = None
    budget: dict[str, Any] | None = None
    read_all = False
    try:
        for chunk in model.stream(messages, **kwargs):
            assert isinstance(chunk, AIMessageChunk)
            if merged is None:
                budget = chunk.response_metadata.get("budget")
                read_all = keep_reading(budget)
            merged = chunk if merged is None else merged + chunk
            if not read_all:
                break
    except VLLMContextOverflowError as exc:
        kind = "length_400" if exc.source == "server" else "refused_before_sending"
        return {"outcome": kind, "error": str(exc)[:200]}
    except openai.BadRequestError as exc:
        return {"outcome": "length_400", "error": str(exc.message)[:200]}
    except Exception as exc:  # any other failure is a result too (its type only: raw text
        # can carry host names)
        return {"outcome": "error", "error": type(exc).__name__}
    result: dict[str, Any] = {"outcome": "sent", "budget": budget, "read_all": read_all}
    if merged is not None and read_all:
        result["finish_reason"] = merged.response_metadata.get("finish_reason")
        usage: dict[str, Any] = dict(merged.usage_metadata or {})
        result["completion_tokens"] = usage.get("output_tokens")
    return result


def classify(result: dict[str, Any], intended: int | None) -> str:
    """One of :data:`OUTCOMES` for a request's result.

    Args:
        result: What :func:`_read` returned: ``outcome`` (``"sent"`` or an outcome), and
            for a sent request the budget it reported, ``finish_reason`` and
            ``completion_tokens`` (when the whole answer was read).
        intended: The output room the caller asked for (its ``max_tokens``; ``None``: no
            limit, the answer should end when the model stops).

    Example:
        >>> classify({"outcome": "sent", "finish_reason": "length", "completion_tokens": 121},
        ...          128)
        'silently_truncated'
        >>> budget = {"action": "none", "max_tokens": 121, "retried": False}
        >>> classify({"outcome": "sent", "budget": budget, "finish_reason": "length",
        ...           "completion_tokens": 121}, 128)
        'served_adjusted'
        >>> classify({"outcome": "refused_before_sending"}, 128)
        'refused_before_sending'
    """
    if result["outcome"] != "sent":
        return str(result["outcome"])
    budget = result.get("budget") or {}
    granted = budget.get("max_tokens")
    reported = bool(budget) and (
        budget.get("retried")
        or budget.get("action", "none") != "none"
        or (intended is not None and granted is not None and granted < intended)
    )
    completion, finish = result.get("completion_tokens"), result.get("finish_reason")
    if finish == "length" and completion is not None:
        # Cut short of what was asked (no max_tokens: any cut at the window's end), and of
        # what the budget said it granted, if it said anything.
        expected = intended if intended is not None else None
        if granted is not None and (expected is None or granted < expected):
            expected = granted
        if expected is None or completion < expected:
            return "silently_truncated"
    return "served_adjusted" if reported else "served"


def _keep_reading(
    client: str, fraction: float, sent_max_tokens: int | None
) -> Callable[[dict[str, Any] | None], bool]:
    """Read the whole answer when it is short enough to be cheap (or a cut is likely)."""

    def decide(budget: dict[str, Any] | None) -> bool:
        granted = (budget or {}).get("max_tokens", sent_max_tokens)
        if granted is not None:
            return int(granted) <= _LONG_ANSWER
        # No max_tokens sent: vLLM grants the rest of the window; read it near the edge.
        return client == CLIENTS[0] and fraction >= 0.9

    return decide


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
                # What the caller asked for: the seed client asks for its own estimate.
                intended = kwargs.get("max_tokens") if name == CLIENTS[1] else requested
                keep_reading = _keep_reading(name, fraction, kwargs.get("max_tokens"))
                result = _read(model, messages, keep_reading=keep_reading, **kwargs)
                rows.append(
                    {
                        "fraction": fraction,
                        "input_tokens": tokens,
                        "user_max_tokens": requested,
                        "client": name,
                        "intended_max_tokens": intended,
                        "sent_max_tokens": (result.get("budget") or {}).get(
                            "max_tokens", kwargs.get("max_tokens")
                        ),
                        "action": (result.get("budget") or {}).get("action"),
                        "outcome": classify(result, intended),
                        "read_all": result.get("read_all", False),
                        "finish_reason": result.get("finish_reason"),
                        "completion_tokens": result.get("completion_tokens"),
                        "error": result.get("error"),
                    }
                )
    return {
        "max_model_len": window,
        "user_max_tokens": USER_MAX_TOKENS,
        "fractions": list(fractions),
        "rows": rows,
        "summary": summarize_sweep(rows),
    }


_FAILURES = ("length_400", "silently_truncated", "error")


def summarize_sweep(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Count each client's outcomes per scenario (without and with a caller's ``max_tokens``).

    Besides one count per :data:`OUTCOMES` column, ``refused_servable`` counts the refusals
    of a request that plain ``ChatOpenAI`` got answered (served or cut short, not a 400):
    vLLM would have taken it.

    Example:
        >>> rows = [
        ...     {"client": CLIENTS[0], "user_max_tokens": None, "fraction": 0.99,
        ...      "outcome": "silently_truncated"},
        ...     {"client": "ChatVLLM raise", "user_max_tokens": None, "fraction": 0.99,
        ...      "outcome": "refused_before_sending"},
        ... ]
        >>> entry = summarize_sweep(rows)["no max_tokens"]["ChatVLLM raise"]
        >>> entry["refused_before_sending"], entry["refused_servable"], entry["failures"]
        (1, 1, 0)
    """
    summary: dict[str, Any] = {}
    scenarios = (("no max_tokens", None), (f"max_tokens={USER_MAX_TOKENS}", USER_MAX_TOKENS))
    for scenario, requested in scenarios:
        mine = [r for r in rows if r["user_max_tokens"] == requested]
        plain_answered = {
            r["fraction"]
            for r in mine
            if r["client"] == CLIENTS[0] and r["outcome"] in ("served", "silently_truncated")
        }
        per_client: dict[str, Any] = {}
        for client in CLIENTS:
            own = [r for r in mine if r["client"] == client]
            entry: dict[str, Any] = {"requests": len(own)}
            for outcome in OUTCOMES:
                entry[outcome] = sum(1 for r in own if r["outcome"] == outcome)
            entry["refused_servable"] = sum(
                1
                for r in own
                if r["outcome"] == "refused_before_sending" and r["fraction"] in plain_answered
            )
            entry["failures"] = sum(entry[o] for o in _FAILURES)
            entry["by_fraction"] = {str(r["fraction"]): r["outcome"] for r in own}
            per_client[client] = entry
        summary[scenario] = per_client
    return summary
