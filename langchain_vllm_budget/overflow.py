"""What to do when the input does not fit: raise, trim, summarize or warn.

:func:`apply_budget` counts the prompt exactly, plans the output room with
:class:`~langchain_vllm_budget.budget.TokenBudget`, and, when the input leaves less than
``min_output_tokens``, applies the overflow policy. Whatever the policy, the returned
request satisfies ``input_tokens + max_tokens <= max_model_len - safety_margin``, or an
:class:`~langchain_vllm_budget.errors.VLLMContextOverflowError` is raised: no policy
produces a request vLLM rejects for length.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import (
    BaseMessage,
    HumanMessage,
    SystemMessage,
    get_buffer_string,
    trim_messages,
)

from langchain_vllm_budget.budget import BudgetPlan, TokenBudget
from langchain_vllm_budget.errors import VLLMContextOverflowError

__all__ = [
    "SUMMARY_PREFIX",
    "BudgetOutcome",
    "OverflowAction",
    "OverflowPolicy",
    "apply_budget",
]

logger = logging.getLogger(__name__)

OverflowPolicy = Literal["raise", "trim", "summarize", "warn"]
"""How to handle input that leaves less than ``min_output_tokens`` of output room."""

OverflowAction = Literal["none", "trimmed", "summarized", "warned"]
"""What the policy did to the request."""

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"

_SUMMARY_INSTRUCTIONS = (
    "You compress conversations. Write a concise summary of the conversation below that "
    "keeps every fact, name, number, identifier, decision and open question a reader needs "
    "to continue it. Use short bullet points. Output only the summary."
)

MessageCounter = Callable[[Sequence[BaseMessage]], int]
"""Counts the prompt of a message list (tools included)."""

TextCounter = Callable[[str], int]
"""Counts plain text."""

Summarize = Callable[[list[BaseMessage], int], str]
"""Calls the summarizer model on a prompt with a ``max_tokens`` limit; returns its text."""


@dataclass(frozen=True)
class BudgetOutcome:
    """A request made to fit.

    Attributes:
        messages: The messages to send (the input, or its trimmed/summarized form).
        plan: The budget plan for ``messages``.
        action: What the policy did.
        original_input_tokens: The count before the policy acted.
        dropped_messages: How many input messages were removed or folded into a summary.
    """

    messages: list[BaseMessage]
    plan: BudgetPlan
    action: OverflowAction
    original_input_tokens: int
    dropped_messages: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


def _overflow(plan: BudgetPlan) -> VLLMContextOverflowError:
    return VLLMContextOverflowError.from_plan(plan)


def _needed_output(budget: TokenBudget, requested_max_tokens: int | None) -> int:
    if requested_max_tokens is None:
        return budget.min_output_tokens
    return min(budget.min_output_tokens, requested_max_tokens)


def _input_limit(budget: TokenBudget, requested_max_tokens: int | None) -> int:
    """The most input tokens that still leave the needed output room."""
    assert budget.max_model_len is not None
    return (
        budget.max_model_len - budget.safety_margin - _needed_output(budget, requested_max_tokens)
    )


def apply_budget(
    messages: Sequence[BaseMessage],
    *,
    budget: TokenBudget,
    count: MessageCounter,
    policy: OverflowPolicy,
    requested_max_tokens: int | None = None,
    count_text: TextCounter | None = None,
    summarize: Summarize | None = None,
    summary_max_tokens: int = 400,
) -> BudgetOutcome:
    """Count, plan, and apply the overflow policy when the input does not fit.

    Args:
        messages: The conversation to send.
        budget: Budget settings with ``max_model_len`` resolved.
        count: Exact prompt counter for a message list (tools bound in).
        policy: ``"raise"``, ``"trim"``, ``"summarize"`` or ``"warn"``.
        requested_max_tokens: The caller's ``max_tokens``, if any.
        count_text: Plain-text counter (needed by ``"summarize"``).
        summarize: Summarizer call (needed by ``"summarize"``).
        summary_max_tokens: Output limit for the summary.

    Returns:
        The messages to send and their plan (``plan.max_tokens`` >= 1).

    Raises:
        VLLMContextOverflowError: The policy is ``"raise"``, or nothing fits.

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> budget = TokenBudget(max_model_len=1000, output_reserve=300, min_output_tokens=100)
        >>> words = lambda msgs: sum(len(str(m.content).split()) for m in msgs)
        >>> outcome = apply_budget([HumanMessage("a b c")], budget=budget, count=words,
        ...                        policy="raise")
        >>> outcome.plan.max_tokens, outcome.action
        (300, 'none')
    """
    current = list(messages)
    original = count(current)
    plan = budget.plan(original, requested_max_tokens)
    if plan.fits:
        return BudgetOutcome(current, plan, "none", original)
    if policy == "raise":
        raise _overflow(plan)
    if policy == "warn":
        outcome = (
            f"sending with max_tokens={plan.max_tokens}"
            if plan.sendable
            else "nothing fits, raising instead of sending"
        )
        logger.warning(
            "Input too large: %d input tokens leave %d of the %d-token window "
            "(safety margin %d); %s.",
            plan.input_tokens,
            max(plan.available, 0),
            plan.max_model_len,
            plan.safety_margin,
            outcome,
        )
        if not plan.sendable:
            raise _overflow(plan)
        return BudgetOutcome(current, plan, "warned", original)
    if policy == "trim":
        trimmed = _trim(current, count, _input_limit(budget, requested_max_tokens))
        return _finish(trimmed, current, budget, count, requested_max_tokens, "trimmed", original)
    if policy == "summarize":
        if summarize is None or count_text is None:
            msg = "on_overflow='summarize' needs a summarizer and a text counter."
            raise ValueError(msg)
        summarized = _summarize(
            current,
            count=count,
            count_text=count_text,
            summarize=summarize,
            input_limit=_input_limit(budget, requested_max_tokens),
            summary_max_tokens=summary_max_tokens,
        )
        if summarized is None:
            raise _overflow(plan)
        return _finish(
            summarized, current, budget, count, requested_max_tokens, "summarized", original
        )
    msg = f"on_overflow must be 'raise', 'trim', 'summarize' or 'warn', got {policy!r}"
    raise ValueError(msg)


def _finish(
    new_messages: list[BaseMessage],
    old_messages: list[BaseMessage],
    budget: TokenBudget,
    count: MessageCounter,
    requested_max_tokens: int | None,
    action: OverflowAction,
    original: int,
) -> BudgetOutcome:
    """Re-count the new messages; raise with the original numbers if they still don't fit."""
    if not any(isinstance(m, HumanMessage) for m in new_messages):
        raise _overflow(budget.plan(original, requested_max_tokens))
    plan = budget.plan(count(new_messages), requested_max_tokens)
    if not plan.fits:
        raise _overflow(plan)
    dropped = len(old_messages) - sum(1 for m in new_messages if m in old_messages)
    return BudgetOutcome(new_messages, plan, action, original, dropped_messages=dropped)


def _trim(messages: list[BaseMessage], count: MessageCounter, max_tokens: int) -> list[BaseMessage]:
    """Keep the system message and the newest turns that fit, starting on a human turn.

    Starting on a human message means an assistant tool call is never kept without the
    turn that asked for it, and a tool result never without its call.
    """
    return trim_messages(
        messages,
        max_tokens=max_tokens,
        token_counter=lambda msgs: count(msgs),
        strategy="last",
        start_on="human",
        include_system=True,
        allow_partial=False,
    )


def _split_system(messages: list[BaseMessage]) -> tuple[SystemMessage | None, list[BaseMessage]]:
    if messages and isinstance(messages[0], SystemMessage):
        return messages[0], messages[1:]
    return None, messages


def _with_summary(system: SystemMessage | None, summary: str) -> SystemMessage:
    """Fold the summary into the system message (templates may allow only one, first)."""
    text = SUMMARY_PREFIX + summary.strip()
    if system is None:
        return SystemMessage(text)
    if isinstance(system.content, str):
        return SystemMessage(f"{system.content}\n\n{text}", id=system.id)
    return SystemMessage([*system.content, {"type": "text", "text": text}], id=system.id)


def _summary_prompt(previous_summary: str, transcript: str) -> list[BaseMessage]:
    earlier = f"Summary so far:\n{previous_summary}\n\n" if previous_summary else ""
    return [
        SystemMessage(_SUMMARY_INSTRUCTIONS),
        HumanMessage(f"{earlier}Conversation:\n{transcript}\n\nWrite the updated summary."),
    ]


def _fit_text(text: str, count_text: TextCounter, limit: int) -> str:
    """Cut ``text`` (keeping its start) until it counts at most ``limit`` tokens."""
    tokens = count_text(text)
    while tokens > limit and text:
        text = text[: max(int(len(text) * limit / tokens * 0.95), 0)]
        tokens = count_text(text)
    return text


def _chunks(older: list[BaseMessage], count_text: TextCounter, chunk_limit: int) -> list[str]:
    """Group the transcript lines of ``older`` into chunks of at most ``chunk_limit`` tokens."""
    chunks: list[str] = []
    current: list[str] = []
    current_tokens = 0
    for message in older:
        line = _fit_text(get_buffer_string([message]), count_text, chunk_limit)
        tokens = count_text(line) + 1
        if current and current_tokens + tokens > chunk_limit:
            chunks.append("\n".join(current))
            current, current_tokens = [], 0
        current.append(line)
        current_tokens += tokens
    if current:
        chunks.append("\n".join(current))
    return chunks


def _summarize(
    messages: list[BaseMessage],
    *,
    count: MessageCounter,
    count_text: TextCounter,
    summarize: Summarize,
    input_limit: int,
    summary_max_tokens: int,
) -> list[BaseMessage] | None:
    """Replace the oldest turns with a summary; ``None`` when the newest turn alone overflows.

    Keeps the newest turns that fit beside a summary of ``summary_max_tokens`` tokens, then
    summarizes the older turns chunk by chunk (a rolling summary), so that no summarizer
    request exceeds the window either.
    """
    system, rest = _split_system(messages)
    wrapper_tokens = count([_with_summary(system, "")]) - (count([system]) if system else 0)
    keep_limit = input_limit - summary_max_tokens - max(wrapper_tokens, 0)
    if keep_limit <= 0:
        return None
    kept = _trim(messages, count, keep_limit)
    kept_rest = kept[1:] if kept and system is not None and kept[0] is system else kept
    if not kept_rest:
        return None
    older = rest[: len(rest) - len(kept_rest)]
    if not older:
        return None
    # The prompt's fixed text, plus slack for the "Summary so far" heading and line joins.
    prompt_overhead = count(_summary_prompt("", "")) + 16
    chunk_limit = input_limit - prompt_overhead - summary_max_tokens
    if chunk_limit <= 0:
        return None
    summary = ""
    for chunk in _chunks(older, count_text, chunk_limit):
        summary = summarize(_summary_prompt(summary, chunk), summary_max_tokens).strip()
        summary = _fit_text(summary, count_text, summary_max_tokens)
    return [_with_summary(system, summary), *kept_rest]
