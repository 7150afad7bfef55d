"""The one request pipeline of ChatVLLM: request -> count -> plan -> policy -> send -> retry.

Every call of :class:`~langchain_vllm_budget.chat_models.ChatVLLM` (``invoke``, ``stream``,
their async twins, ``batch``) goes through :func:`run` or :func:`arun`, the only sync/async
pair here:

1. :func:`read_request`: the call as vLLM will receive it (:class:`Request`): messages, tools
   and every request field that changes the rendered prompt, the ``max_tokens`` asked for;
2. :func:`prepare`: count the prompt exactly, :meth:`~langchain_vllm_budget.budget.TokenBudget.plan`
   its output room (the rule is in ``budget.py``), and apply the ``on_overflow`` policy
   (:func:`~langchain_vllm_budget.overflow.apply_policy`: compaction happens there, only for
   a plan that does not fit); a given ``budget_plan`` skips the count;
3. send the :class:`Prepared` call (its ``max_tokens`` is the plan's) within a concurrency
   slot;
4. after a length 400: :func:`correct` reads the parsed error's typed fields and corrects the
   request once (the server's window asked again, or the prompt counted again by the
   server), else raises the typed overflow error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import openai
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from langchain_vllm_budget.budget import BudgetPlan, TokenBudget
from langchain_vllm_budget.compaction import Compactor
from langchain_vllm_budget.compression import SummarySpec
from langchain_vllm_budget.compression.prefix import PrefixCall
from langchain_vllm_budget.errors import (
    VLLMContextOverflowError,
    VLLMError,
    VLLMInvalidRequestError,
    parse_length_error,
)
from langchain_vllm_budget.overflow import BudgetOutcome, aapply_policy, apply_policy
from langchain_vllm_budget.tokenizers import (
    AsyncTokenCounter,
    PromptOptions,
    ServerTokenCounter,
    TokenCounter,
    tools_to_openai_dicts,
)

if TYPE_CHECKING:
    from langchain_vllm_budget.chat_models._discovery import ServerInfo
    from langchain_vllm_budget.chat_models.base import ChatVLLM

__all__ = [
    "Prepared",
    "Request",
    "aonce",
    "aplan_call",
    "aprepare",
    "arun",
    "correct",
    "once",
    "plan_call",
    "prepare",
    "read_request",
    "run",
]

logger = logging.getLogger(__name__)

_MAX_TOKENS_KEYS = ("max_tokens", "max_completion_tokens")
_END: Any = object()
"""Stands for "no first item": a request whose answer yields nothing."""

Item = TypeVar("Item", ChatResult, ChatGenerationChunk)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Request:
    """One call as vLLM will receive it: what shapes the prompt, and the output it asks for.

    Attributes:
        messages: The conversation.
        kwargs: The call's keyword arguments, ``budget_plan`` taken out.
        extra_body: The vLLM fields sent beside the OpenAI ones (the call's or the model's).
        tools: The tool definitions sent.
        options: The other request fields that change the rendered prompt.
        requested_max_tokens: The output limit asked for, if any.
        thinking_budget: The most thinking tokens wanted, if limited.
        plan: A plan made earlier (``budget_plan=``), sent without counting again.
    """

    messages: list[BaseMessage]
    kwargs: dict[str, Any]
    extra_body: dict[str, Any] | None
    tools: list[dict[str, Any]] | None
    options: PromptOptions
    requested_max_tokens: int | None
    thinking_budget: int | None
    plan: BudgetPlan | None

    def count(self, counter: TokenCounter, messages: Sequence[BaseMessage]) -> int:
        """The prompt of ``messages`` with this request's tools and options, by ``counter``."""
        return counter.count_messages(messages, self.tools, self.options)


@dataclass(frozen=True)
class Prepared:
    """A request after budgeting: what to send, and the plan to report."""

    request: Request
    outcome: BudgetOutcome
    counter: TokenCounter | None
    """The counter that counted the prompt; ``None`` when the plan was given."""
    retried: bool = False

    @property
    def messages(self) -> list[BaseMessage]:
        return self.outcome.messages

    @property
    def plan(self) -> BudgetPlan:
        return self.outcome.plan

    @property
    def thinking_token_budget(self) -> int | None:
        """The cap on thinking tokens sent to vLLM: the budget, leaving room for the answer.

        Thinking tokens come out of ``max_tokens``; the cap leaves the output a fitting
        request needs (``min_output_tokens``, or the smaller ``max_tokens`` asked for) to the
        answer after the thinking.
        """
        wanted = self.request.thinking_budget
        if wanted is None or wanted < 0:  # -1 is vLLM's "no limit"
            return wanted
        return max(0, min(wanted, self.plan.max_tokens - self.plan.needed_output_tokens))

    def send_kwargs(self, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The call's keyword arguments with the planned output limit (and thinking cap).

        Args:
            headers: The ``extra_headers`` to send in place of the call's own
                (:func:`~langchain_vllm_budget.routing.call_headers`).
        """
        kwargs = {k: v for k, v in self.request.kwargs.items() if k not in _MAX_TOKENS_KEYS}
        kwargs["max_tokens"] = self.plan.max_tokens
        given = self.request.extra_body
        extra = {
            k: v
            for k, v in (given or {}).items()
            if k not in (*_MAX_TOKENS_KEYS, "thinking_token_budget")
        }
        thinking = self.thinking_token_budget
        if thinking is not None:
            extra["thinking_token_budget"] = thinking
        if extra or given is not None:
            kwargs["extra_body"] = extra
        if headers is not None and (headers or "extra_headers" in kwargs):
            kwargs["extra_headers"] = dict(headers)
        return kwargs

    def report(self) -> dict[str, Any]:
        """The plan applied, for ``response_metadata["budget"]`` and logs."""
        plan = self.plan
        return {
            "input_tokens": plan.input_tokens,
            "original_input_tokens": self.outcome.original_input_tokens,
            "plan_source": "counted" if self.counter is not None else "given",
            "counter": self.counter.name if self.counter is not None else None,
            "counter_exact": self.counter.exact if self.counter is not None else None,
            "max_model_len": plan.max_model_len,
            "safety_margin": plan.safety_margin,
            "output_reserve": plan.output_reserve,
            "requested_max_tokens": plan.requested_max_tokens,
            "max_tokens": plan.max_tokens,
            "thinking_token_budget": self.thinking_token_budget,
            "action": self.outcome.action,
            "dropped_messages": self.outcome.dropped_messages,
            "retried": self.retried,
            "compaction": (self.outcome.compaction.as_dict() if self.outcome.compaction else None),
        }


def _requested_max_tokens(body: Mapping[str, Any]) -> int | None:
    """The output limit vLLM would read from ``body`` (``max_completion_tokens`` first)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"must be a whole number of tokens, at least 1, got {value!r}."
                raise VLLMInvalidRequestError(key, msg)
            return value
    return None


def _thinking_budget(body: Mapping[str, Any], default: int | None) -> int | None:
    """The thinking budget: vLLM's ``thinking_token_budget`` if the call sets it, else ours."""
    value = body.get("thinking_token_budget", default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
        msg = f"must be a whole number of tokens (or -1 for no limit), got {value!r}."
        raise VLLMInvalidRequestError("thinking_token_budget", msg)
    return value


def read_request(
    model: ChatVLLM, messages: Sequence[BaseMessage], kwargs: Mapping[str, Any]
) -> Request:
    """The call as vLLM will receive it: the model's request fields, then the call's.

    Raises:
        VLLMInvalidRequestError: A field vLLM would reject, or ChatVLLM cannot budget.
    """
    call = dict(kwargs)
    plan = call.pop("budget_plan", None)
    if plan is not None and not isinstance(plan, BudgetPlan):
        msg = f"must be the BudgetPlan that get_budget_plan returned, got {plan!r}."
        raise VLLMInvalidRequestError("budget_plan", msg)
    params = {**model._default_params, **call}
    if params.get("reasoning") is not None:
        msg = (
            "is the Responses API's setting, which vLLM's chat completions do not take; "
            "use reasoning_effort, extra_body={'chat_template_kwargs': {'enable_thinking': "
            "...}} or thinking_budget."
        )
        raise VLLMInvalidRequestError("reasoning", msg)
    extra = params.get("extra_body")
    if extra is not None and not isinstance(extra, Mapping):
        msg = f"must be a dict of vLLM request fields, got {extra!r}."
        raise VLLMInvalidRequestError("extra_body", msg)
    # What the OpenAI client sends: extra_body's fields beside (and over) the others.
    body = {**{k: v for k, v in params.items() if k != "extra_body"}, **(extra or {})}
    return Request(
        messages=list(messages),
        kwargs=call,
        extra_body=dict(extra) if extra is not None else None,
        tools=tools_to_openai_dicts(body.get("tools")),
        options=PromptOptions.from_request(body),
        requested_max_tokens=_requested_max_tokens(body),
        thinking_budget=_thinking_budget(body, model.thinking_budget),
        plan=plan,
    )


# ---------------------------------------------------------------------- count, plan, policy


def plan_call(model: ChatVLLM, request: Request) -> BudgetPlan:
    """Count the request's prompt once and plan it; no policy (``get_budget_plan``)."""
    info = model._server_info()
    counter = model._get_counter(info)
    return model._effective_budget(info).plan(
        request.count(counter, request.messages), request.requested_max_tokens
    )


async def aplan_call(model: ChatVLLM, request: Request) -> BudgetPlan:
    """Async :func:`plan_call`: the server is asked, and the prompt counted, off the loop."""
    info = await model._aserver_info()
    counter = await model._aget_counter(info)
    if isinstance(counter, AsyncTokenCounter):  # over async HTTP, on the loop
        count = await counter.acount_messages(request.messages, request.tools, request.options)
    else:  # Every other counter blocks (see aprepare): off the event loop.
        count = await asyncio.to_thread(request.count, counter, request.messages)
    return model._effective_budget(info).plan(count, request.requested_max_tokens)


def _compactor(model: ChatVLLM, counter: TokenCounter, request: Request) -> Compactor | None:
    """The compaction of ``trim``/``summarize``: the model's memory and settings.

    The default summarizer is the model itself, copied with ``on_overflow="raise"`` (its
    request never compacts again) and asked with the request's own prefix: the same tools
    and prompt fields (:class:`~langchain_vllm_budget.compression.prefix.PrefixCall`).
    """
    if model.on_overflow not in ("trim", "summarize"):
        return None
    summarizer = None
    prefix = None
    if model.on_overflow == "summarize":
        summarizer = model.summarizer or model.model_copy(update={"on_overflow": "raise"})
        if model.summarizer is None:
            prefix = PrefixCall.from_call(request.tools, request.kwargs)
    summary = SummarySpec(
        max_tokens=model.summary_max_tokens,
        model=summarizer,
        counter=counter if model.summarizer is None else None,
    )
    return Compactor(
        target=model.compaction_target,
        memory=model._compaction_memory,
        summary=summary,
        prefix=prefix,
    )


def _given(request: Request) -> Prepared:
    """A request sent with the plan it was given: nothing is counted again."""
    plan = request.plan
    assert plan is not None
    if not plan.fits:
        raise VLLMContextOverflowError.from_plan(plan)
    outcome = BudgetOutcome(request.messages, plan, "none", plan.input_tokens)
    return Prepared(request, outcome, counter=None)


def prepare(
    model: ChatVLLM,
    request: Request,
    *,
    info: ServerInfo | None = None,
    counter: TokenCounter | None = None,
    budget: TokenBudget | None = None,
) -> Prepared:
    """Count, plan, and apply the overflow policy (or take the given plan)."""
    if request.plan is not None:
        return _given(request)
    info = info or model._server_info()
    budget = budget or model._effective_budget(info)
    counter = counter or model._get_counter(info)

    def count(messages: Sequence[BaseMessage]) -> int:
        return request.count(counter, messages)

    plan = budget.plan(count(request.messages), request.requested_max_tokens)
    outcome = apply_policy(
        request.messages,
        plan,
        budget=budget,
        count=count,
        policy=model.on_overflow,
        compactor=_compactor(model, counter, request),
    )
    return Prepared(request, outcome, counter)


async def aprepare(model: ChatVLLM, request: Request) -> Prepared:
    """Async :func:`prepare`: discovery, counting and compaction never block the event loop."""
    if request.plan is not None:
        return _given(request)
    info = await model._aserver_info()
    counter = await model._aget_counter(info)
    budget = model._effective_budget(info)

    def count(messages: Sequence[BaseMessage]) -> int:
        return request.count(counter, messages)

    # Always in a worker thread: the server's /tokenize is sync HTTP, and a local count is
    # CPU work too (a first count of a 12K-token conversation tokenizes it, ~40 ms on a small
    # CPU; a long one grown by a turn still renders the chat template, several ms). On the
    # loop that stalls every other task; the hop costs about 0.1 ms. A compaction, which
    # counts many times, counts there as well. A server counter is asked over async HTTP
    # first; the count in the thread is then a cache hit.
    if isinstance(counter, AsyncTokenCounter):
        await counter.acount_messages(request.messages, request.tools, request.options)
    tokens = await asyncio.to_thread(count, request.messages)
    plan = budget.plan(tokens, request.requested_max_tokens)
    outcome = await aapply_policy(
        request.messages,
        plan,
        budget=budget,
        count=count,
        policy=model.on_overflow,
        compactor=_compactor(model, counter, request),
    )
    return Prepared(request, outcome, counter)


# ---------------------------------------------------------------------- the retry


def correct(model: ChatVLLM, exc: openai.BadRequestError, prepared: Prepared) -> Prepared:
    """The corrected request after vLLM rejected one for length, or the typed error.

    The one retry rule of every path (sync and async, invoke and stream), read from the
    parsed error's typed fields. vLLM's own count can be a lower bound
    (``input_tokens_is_lower_bound``: it stops tokenizing past the window), so it is never
    planned with: the prompt is counted again by the server's ``/tokenize`` (exact) and
    planned anew, or, if the server's window is not the one planned with, the window is
    asked again (and the prompt counted by ``/tokenize`` too). One retry at most.

    Raises:
        VLLMContextOverflowError: The request does not fit, or was already retried.
        openai.BadRequestError: ``exc``, when it is not a length error.
    """
    details = parse_length_error(str(exc.message))
    if details is None:
        raise exc
    plan = prepared.plan
    window = details.max_model_len or plan.max_model_len
    server_input = details.input_tokens
    asked = details.requested_max_tokens
    if server_input is None and asked is not None and asked < 1:
        # The engine's own check refused max_tokens < 1: the prompt filled the window.
        server_input = window
    error = VLLMContextOverflowError(
        input_tokens=server_input if server_input is not None else plan.input_tokens,
        max_model_len=window,
        safety_margin=plan.safety_margin,
        min_output_tokens=1,
        requested_max_tokens=plan.max_tokens,
        source="server",
        server_message=str(exc.message),
    )
    if prepared.retried:
        raise error from exc
    request = replace(prepared.request, plan=None)
    # The one retry is planned with the server's exact count whatever else was wrong, so that
    # a window change and an undercount together are both corrected by it.
    server, exact = _server_count(model, request, prepared)
    if window != plan.max_model_len:
        # Not the window planned with (the server restarted with another one, or a given
        # plan was made for another): ask the server again.
        model._discovery.forget(model.root_client, model.model_name)
        info = model._server_info()
        budget = model._effective_budget(info).with_max_model_len(window)
        corrected = prepare(model, request, info=info, budget=budget, counter=server)
    elif server is not None and exact is not None and exact > plan.input_tokens:
        corrected = prepare(model, request, counter=server)
    else:  # the count was the server's, or right: nothing to correct
        raise error from exc
    logger.warning(
        "vLLM rejected the request for length (planned %d input tokens, server %s%s, "
        "window %d); correcting and retrying once.",
        plan.input_tokens,
        "at least " if details.input_tokens_is_lower_bound else "",
        server_input,
        window,
    )
    return replace(corrected, retried=True)


def _server_count(
    model: ChatVLLM, request: Request, prepared: Prepared
) -> tuple[ServerTokenCounter | None, int | None]:
    """The server's counter and its count of the sent messages, for a retry.

    ``(None, None)`` when the request was already counted by the server, or its
    ``/tokenize`` cannot count (the retry then keeps the counter it had).
    """
    if isinstance(prepared.counter, ServerTokenCounter):
        return None, None
    server = model._server_counter()
    try:
        return server, request.count(server, prepared.messages)
    except VLLMError:
        return None, None


# ---------------------------------------------------------------------- send


def _mark(
    model: ChatVLLM, item: ChatResult | ChatGenerationChunk, report: dict[str, Any], *, first: bool
) -> None:
    """Put the plan on the first item's message(s); log the usage where it arrives."""
    if isinstance(item, ChatResult):
        messages = [generation.message for generation in item.generations]
    else:
        messages = [item.message]
    for message in messages:
        if first:
            message.response_metadata["budget"] = report
        if isinstance(message, AIMessage) and message.usage_metadata:
            _log_usage(model, message, report)


def _log_usage(model: ChatVLLM, message: AIMessage, report: dict[str, Any]) -> None:
    usage: dict[str, Any] = dict(message.usage_metadata or {})
    logger.info(
        "vLLM %s: input_tokens=%s (planned %d, %s) output_tokens=%s max_tokens=%d "
        "window=%d action=%s",
        model.model_name,
        usage.get("input_tokens"),
        report["input_tokens"],
        report["counter"] or "given plan",
        usage.get("output_tokens"),
        report["max_tokens"],
        report["max_model_len"],
        report["action"],
    )


def run(
    model: ChatVLLM,
    messages: list[BaseMessage],
    kwargs: dict[str, Any],
    send: Callable[[Prepared], Iterator[Item]],
) -> Iterator[Item]:
    """Prepare, send within a slot, and after a length rejection send the corrected request.

    ``send`` makes the request (``_generate`` yields one result, ``_stream`` its chunks);
    vLLM accepts or rejects it when the first item is asked for. A stream keeps its slot
    until it ends. :func:`arun` is the async twin; the retry rule itself is :func:`correct`,
    shared by both.
    """
    with model._mapped_errors():
        prepared = prepare(model, read_request(model, messages, kwargs))
        while True:
            with model._slot():
                items = send(prepared)
                try:
                    first = next(items, _END)
                except openai.BadRequestError as exc:
                    rejection = exc
                else:
                    report = prepared.report()
                    if first is not _END:
                        _mark(model, first, report, first=True)
                        yield first
                        for item in items:
                            _mark(model, item, report, first=False)
                            yield item
                    return
            # Re-counting or summarizing may call the model: outside the slot.
            prepared = correct(model, rejection, prepared)


async def arun(
    model: ChatVLLM,
    messages: list[BaseMessage],
    kwargs: dict[str, Any],
    send: Callable[[Prepared], AsyncIterator[Item]],
) -> AsyncIterator[Item]:
    """Async :func:`run`: discovery and counting never block the event loop."""
    with model._mapped_errors():
        prepared = await aprepare(model, read_request(model, messages, kwargs))
        while True:
            async with model._aslot():
                items = send(prepared)
                try:
                    first = await anext(items, _END)
                except openai.BadRequestError as exc:
                    rejection = exc
                else:
                    report = prepared.report()
                    if first is not _END:
                        _mark(model, first, report, first=True)
                        yield first
                        async for item in items:
                            _mark(model, item, report, first=False)
                            yield item
                    return
            # Counting with the server's /tokenize (and re-planning) blocks: in a thread.
            prepared = await asyncio.to_thread(correct, model, rejection, prepared)


def once(call: Callable[[], _T]) -> Iterator[_T]:
    """A one-item iterator of ``call()`` (``_generate`` sent through :func:`run`)."""
    yield call()


async def aonce(awaitable: Awaitable[_T]) -> AsyncIterator[_T]:
    """A one-item async iterator of ``awaitable`` (``_agenerate`` through :func:`arun`)."""
    yield await awaitable
