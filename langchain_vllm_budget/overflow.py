"""What to do when the input does not fit: raise, trim, summarize or warn.

:func:`apply_policy` takes a request's plan (its exact count planned with
:class:`~langchain_vllm_budget.budget.TokenBudget`) and, when the input leaves less than
``min_output_tokens``, applies the overflow policy; :func:`apply_budget` counts and plans
first. ``"trim"`` and ``"summarize"`` compact the conversation with a
:class:`~langchain_vllm_budget.compaction.Compactor`: once, down to a target below the input
limit that also leaves the request's own ``max_tokens``
(:meth:`~langchain_vllm_budget.budget.TokenBudget.compaction_target`), remembered so that
the following calls send the same prefix and only append (vLLM's prefix cache keeps
hitting). Whatever the policy, the returned
request satisfies ``input_tokens + max_tokens <= max_model_len - safety_margin``, or a
typed overflow error is raised: :class:`~langchain_vllm_budget.errors.VLLMContextOverflowError`,
or :class:`~langchain_vllm_budget.errors.VLLMFixedPromptOverflowError` when the system prompt
and tools alone fill the input limit (a separate class: no compaction can help; both are
subclasses of LangChain's ``ContextOverflowError``). No policy produces a request vLLM
rejects for length.

:func:`aapply_policy` and :func:`aapply_budget` are the async twins: the same steps, with the
summarizer awaited and the counting of a compaction done in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from langchain_vllm_budget.budget import BudgetPlan, TokenBudget
from langchain_vllm_budget.compaction import (
    SUMMARY_PREFIX,
    CompactionReport,
    CompactionResult,
    Compactor,
    MessageCounter,
)
from langchain_vllm_budget.errors import TokenCountError, VLLMContextOverflowError

__all__ = [
    "SUMMARY_PREFIX",
    "BudgetOutcome",
    "OverflowAction",
    "OverflowPolicy",
    "aapply_budget",
    "aapply_policy",
    "apply_budget",
    "apply_policy",
]

logger = logging.getLogger(__name__)

OverflowPolicy = Literal["raise", "trim", "summarize", "warn"]
"""How to handle input that leaves less than ``min_output_tokens`` of output room."""

OverflowAction = Literal["none", "trimmed", "summarized", "warned"]
"""What the policy did to the request."""

_ACTIONS: dict[str, OverflowAction] = {"trim": "trimmed", "summarize": "summarized"}


@dataclass(frozen=True)
class BudgetOutcome:
    """A request made to fit.

    Attributes:
        messages: The messages to send (the input, or its compacted form).
        plan: The budget plan for ``messages``.
        action: What the policy did.
        original_input_tokens: The count before the policy acted.
        dropped_messages: How many input messages were removed or folded into a summary.
        compaction: What the compaction did (``"trim"`` and ``"summarize"``), else ``None``.
    """

    messages: list[BaseMessage]
    plan: BudgetPlan
    action: OverflowAction
    original_input_tokens: int
    dropped_messages: int = 0
    compaction: CompactionReport | None = None


def _check(
    messages: Sequence[BaseMessage],
    plan: BudgetPlan,
    policy: OverflowPolicy,
) -> BudgetOutcome | None:
    """The outcome when no compaction is needed (or an error); ``None`` to compact."""
    if policy not in ("raise", "trim", "summarize", "warn"):
        msg = f"on_overflow must be 'raise', 'trim', 'summarize' or 'warn', got {policy!r}"
        raise ValueError(msg)
    current = list(messages)
    if plan.fits:
        return BudgetOutcome(current, plan, "none", plan.input_tokens)
    if policy == "raise":
        raise VLLMContextOverflowError.from_plan(plan)
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
            raise VLLMContextOverflowError.from_plan(plan)
        return BudgetOutcome(current, plan, "warned", plan.input_tokens)
    return None


def _finish(
    result: CompactionResult, original: BudgetPlan, budget: TokenBudget, count: MessageCounter
) -> BudgetOutcome:
    """The compacted request's plan; the typed error naming what to change if nothing fits."""
    if not result.fits:
        # The system prompt and tools fill the limit: say so, not "compact". A chat template
        # renders no empty conversation (and some no system prompt alone): then they are
        # counted with an empty user turn.
        fixed = [m for m in result.messages[:1] if isinstance(m, SystemMessage)]
        try:
            fixed_tokens = count(fixed) if fixed else count([HumanMessage("")])
        except TokenCountError:
            fixed_tokens = count([*fixed, HumanMessage("")])
        budget.check_fixed_part(fixed_tokens, original.requested_max_tokens)
        raise VLLMContextOverflowError.from_plan(original, compacted=True)
    plan = budget.plan(result.tokens, original.requested_max_tokens)
    if not plan.fits:  # pragma: no cover - the compactor only returns what fits the limit
        raise VLLMContextOverflowError.from_plan(plan)
    report = result.report
    return BudgetOutcome(
        result.messages,
        plan,
        _ACTIONS[report.policy],
        original.input_tokens,
        dropped_messages=report.replaced,
        compaction=report,
    )


def apply_policy(
    messages: Sequence[BaseMessage],
    plan: BudgetPlan,
    *,
    budget: TokenBudget,
    count: MessageCounter,
    policy: OverflowPolicy,
    compactor: Compactor | None = None,
) -> BudgetOutcome:
    """Apply the overflow policy to a request planned as ``plan`` (nothing to do if it fits).

    This is where compaction happens for a chat model: only when ``plan`` does not fit, and
    only for ``"trim"`` and ``"summarize"``.

    Args:
        messages: The conversation planned.
        plan: Its plan (``budget.plan`` of its exact count).
        budget: Budget settings with ``max_model_len`` resolved.
        count: Exact prompt counter for a message list (tools bound in).
        policy: ``"raise"``, ``"trim"``, ``"summarize"`` or ``"warn"``.
        compactor: Compacts for ``"trim"`` and ``"summarize"`` (its memory keeps the
            prefix stable between calls); default: one with no memory and, for
            ``"summarize"``, an extractive (model-free) summary.

    Returns:
        The messages to send and their plan (``plan.max_tokens`` >= 1).

    Raises:
        VLLMContextOverflowError: The policy is ``"raise"``, or nothing fits.
        VLLMFixedPromptOverflowError: The system prompt and tools alone fill the limit.
        ValueError: An unknown policy.
    """
    done = _check(messages, plan, policy)
    if done is not None:
        return done
    result = (compactor or Compactor()).compact(
        messages,
        policy="trim" if policy == "trim" else "summarize",
        count=count,
        limit=budget.input_limit(plan.requested_max_tokens),
        output_limit=budget.output_limit(plan.requested_max_tokens),
    )
    return _finish(result, plan, budget, count)


async def aapply_policy(
    messages: Sequence[BaseMessage],
    plan: BudgetPlan,
    *,
    budget: TokenBudget,
    count: MessageCounter,
    policy: OverflowPolicy,
    compactor: Compactor | None = None,
) -> BudgetOutcome:
    """Async :func:`apply_policy`: the summarizer is awaited, a compaction counts in a thread.

    Args:
        messages: The conversation planned.
        plan: Its plan.
        budget: Budget settings with ``max_model_len`` resolved.
        count: Exact prompt counter for a message list (tools bound in).
        policy: ``"raise"``, ``"trim"``, ``"summarize"`` or ``"warn"``.
        compactor: As in :func:`apply_policy`.

    Returns:
        The messages to send and their plan.
    """
    done = _check(messages, plan, policy)
    if done is not None:
        return done
    result = await (compactor or Compactor()).acompact(
        messages,
        policy="trim" if policy == "trim" else "summarize",
        count=count,
        limit=budget.input_limit(plan.requested_max_tokens),
        output_limit=budget.output_limit(plan.requested_max_tokens),
        offload=True,
    )
    # Off the event loop: a result that does not fit counts its system prompt.
    return await asyncio.to_thread(_finish, result, plan, budget, count)


def apply_budget(
    messages: Sequence[BaseMessage],
    *,
    budget: TokenBudget,
    count: MessageCounter,
    policy: OverflowPolicy,
    requested_max_tokens: int | None = None,
    compactor: Compactor | None = None,
) -> BudgetOutcome:
    """Count, plan, and apply the overflow policy when the input does not fit.

    Args:
        messages: The conversation to send.
        budget: Budget settings with ``max_model_len`` resolved.
        count: Exact prompt counter for a message list (tools bound in).
        policy: ``"raise"``, ``"trim"``, ``"summarize"`` or ``"warn"``.
        requested_max_tokens: The caller's ``max_tokens``, if any.
        compactor: As in :func:`apply_policy`.

    Returns:
        The messages to send and their plan (``plan.max_tokens`` >= 1).

    Raises:
        VLLMContextOverflowError: The policy is ``"raise"``, or nothing fits.
        VLLMFixedPromptOverflowError: The system prompt and tools alone fill the limit.
        ValueError: An unknown policy.

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> budget = TokenBudget(max_model_len=1000, output_reserve=300, min_output_tokens=100)
        >>> words = lambda msgs: sum(len(str(m.content).split()) for m in msgs)
        >>> outcome = apply_budget([HumanMessage("a b c")], budget=budget, count=words,
        ...                        policy="raise")
        >>> outcome.plan.max_tokens, outcome.action
        (300, 'none')
    """
    plan = budget.plan(count(list(messages)), requested_max_tokens)
    return apply_policy(
        messages, plan, budget=budget, count=count, policy=policy, compactor=compactor
    )


async def aapply_budget(
    messages: Sequence[BaseMessage],
    *,
    budget: TokenBudget,
    count: MessageCounter,
    policy: OverflowPolicy,
    requested_max_tokens: int | None = None,
    compactor: Compactor | None = None,
    offload: bool = False,
) -> BudgetOutcome:
    """Async :func:`apply_budget`: the same steps; the summarizer is awaited.

    Args:
        messages: The conversation to send.
        budget: Budget settings with ``max_model_len`` resolved.
        count: Exact prompt counter for a message list (tools bound in).
        policy: ``"raise"``, ``"trim"``, ``"summarize"`` or ``"warn"``.
        requested_max_tokens: The caller's ``max_tokens``, if any.
        compactor: As in :func:`apply_policy`.
        offload: Count the input in a worker thread (a counter that blocks, such as a
            server's ``/tokenize``). A compaction, which counts many times, always counts
            in a worker thread: the event loop stays free.

    Returns:
        The messages to send and their plan.

    Raises:
        VLLMContextOverflowError: The policy is ``"raise"``, or nothing fits.
        VLLMFixedPromptOverflowError: The system prompt and tools alone fill the limit.
        ValueError: An unknown policy.
    """
    tokens = await asyncio.to_thread(count, list(messages)) if offload else count(list(messages))
    plan = budget.plan(tokens, requested_max_tokens)
    return await aapply_policy(
        messages, plan, budget=budget, count=count, policy=policy, compactor=compactor
    )
