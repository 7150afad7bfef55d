"""Agent loops past the window on the real vLLM: prefix-cache hits and tool-output compression.

``python -m benchmarks.agent_loop`` (or ``python -m benchmarks.run --only agent_loop``).

Part 1, **compaction** (``--parts chat``, also called ``compaction``): a chat that grows by
one ~280-token turn per call, run to about three times a 4,096-token window (tiny-qwen, random
weights, the real Qwen tokenizer and template; ``--chat-window``: another window, with the
calls scaled to it), on one server, once per variant. A turn is the
user's request about a ticket, a scripted ``get_ticket`` tool call and the ticket (IDs,
addresses, times, numbers, paths) as its tool result, then the model's real call, which
replies (the random model cannot choose tools, so the tool call is scripted, as in part 2,
and costs no model call). The variants:

* ``trim``/``summarize`` *every call*: ``ChatVLLM(compaction_target=1.0)``, which compacts
  just enough on every over-window call: the behaviour before cache-friendly compaction
  (the summarize one, the slowest, runs only with ``--all-variants`` or ``--only``);
* ``trim``/``summarize``: ``ChatVLLM(on_overflow=...)`` with the default target (0.6): the
  compaction in the model;
* ``middleware (summarize, in state)``:
  :class:`~langchain_vllm_budget.middleware.ContextCompactionMiddleware` in a
  ``create_agent`` graph with a checkpointer (the compaction lives in state);
* LangChain's ``SummarizationMiddleware`` and ``ContextEditingMiddleware``
  (``ClearToolUsesEdit``, which replaces older tool results by a placeholder) in the same
  graph, with the exact token counter and the same trigger, near the limit.

The server's prefix cache is emptied before each variant (``POST /reset_prefix_cache``; the
server started here runs with ``VLLM_SERVER_DEV_MODE=1``; the summary says so when a server
given by URL does not allow it). This package's summarizer is the chat model itself (the
default); LangChain's is a copy of it with the same summary cap. Every variant has the
same system prompt and three tool definitions. Its models send their requests through one
recording HTTP client, so what is measured is what was sent, after any compaction: per
request, vLLM's
``usage.prompt_tokens`` and ``prompt_tokens_details.cached_tokens`` (the server runs with
``--enable-prompt-tokens-details``); in a turn, the last request is the agent's call and the
ones before it are the summarizer's. Reported per variant: the prefix-cache hit rate under
the window and over it (all requests, the agent's calls only, the summarizer requests apart),
tokens prefilled (prompted minus cached) over the window, prompt rewrites (calls whose prompt
does not extend the previous prompt), summarizer calls, wall time per turn over the window
(median / p95), errors (the typed overflow error of a conversation that no longer fits; any
other exception is a crash: the variant is marked, the others still run, and the run fails),
and the share of every labelled fact of every ticket of the run present in the last prompt
the model was sent (the summary included): present, not proven answerable; and, less
dependent on where the last compaction fell, the mean over the calls over the window of the
share of the facts told so far present in each call's prompt.

Part 2, **tool outputs**: an agent on a 12,288-token window whose tools return 2-5K-token
results (incident tickets, config diffs, plans and run reports from
:mod:`benchmarks.corpus`), with and without
:class:`~langchain_vllm_budget.middleware.ToolOutputCompressionMiddleware`. The random model
cannot choose tools, so each step's decision is scripted, but each step's model call is real
(its reply is replaced by the scripted tool call): tokens per call are vLLM's
``usage.prompt_tokens``. Reported: tokens per call, calls until the window is hit (ChatVLLM's
typed overflow error), and the entity retention of what the agent saw (the share of each raw
result's entities present in the tool message it got).

Results go to ``benchmarks/results/agent_loop/`` (``results.json``, ``summary.md``,
``agent_loop.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from langchain.agents import create_agent
from langchain.agents.middleware import (
    ClearToolUsesEdit,
    ContextEditingMiddleware,
    SummarizationMiddleware,
    wrap_model_call,
)
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from benchmarks.calls import percentile
from benchmarks.corpus import build_stage_outputs
from benchmarks.servers import QWEN, Served, reset_prefix_cache, server_spec
from langchain_vllm_budget import ChatVLLM, TokenBudget, TokenCounter, TransformersTokenCounter
from langchain_vllm_budget.compression import extract_entities, is_entity_present
from langchain_vllm_budget.errors import VLLMContextOverflowError, VLLMFixedPromptOverflowError
from langchain_vllm_budget.middleware import (
    ContextCompactionMiddleware,
    ToolOutputCompressionMiddleware,
)
from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalVLLMServer
from langchain_vllm_budget.serving.profiles import HERMES_TOOL_CALL_ARGS

__all__ = [
    "Call",
    "SentRequest",
    "Turn",
    "extends",
    "facts_present",
    "hit_rate",
    "main",
    "prompt_text",
    "run_agent_loop",
    "summarize_calls",
    "ticket_facts",
    "ticket_turn",
]

CHAT_WINDOW = 4096
CHAT_CALLS = 42  # calls on a CHAT_WINDOW window: to about three times it
TOOL_WINDOW = 12288
TURN_TOKENS = 280  # a turn: request, tool call, ticket and reply, as the template renders them
SUMMARY_CAP = 250
REPLY_TOKENS = 16
_DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "agent_loop"

SYSTEM_PROMPT = (
    "You are the operations assistant of a platform team. Keep track of every ticket, host, "
    "path and number you are told about, answer from what you were told, and call a tool "
    "when you need data you do not have."
)


@tool
def get_ticket(ticket_id: str) -> str:
    """Fetch a ticket with its timeline, owners and linked changes."""
    return f"{ticket_id}: open"


@tool
def query_metrics(service: str, metric: str, window_minutes: int = 30) -> str:
    """Query a service metric (latency_p99, error_rate, queue_depth) over a window."""
    return f"{service} {metric}: ok"


@tool
def restart_service(service: str, drain_timeout_s: int = 30) -> str:
    """Restart a service after draining its connections."""
    return f"{service}: restarted"


CHAT_TOOLS: list[BaseTool] = [get_ticket, query_metrics, restart_service]


# ------------------------------------------------------------------------------ the workload


@dataclass(frozen=True)
class Turn:
    """One turn of the chat: the user's request, the scripted ``get_ticket`` call, its result.

    Attributes:
        messages: The user's request, the assistant's tool call and the tool's result.
        facts: The ticket's labelled must-keep facts (label to value), each unique to it.
    """

    messages: tuple[BaseMessage, ...]
    facts: dict[str, str]


def ticket_facts(i: int) -> dict[str, str]:
    """The labelled must-keep facts of ticket ``i`` (every value unique to its ticket).

    Example:
        >>> ticket_facts(3)["ticket"], ticket_facts(3)["address"]
        ('INC-7003', '10.4.3.121')
    """
    return {
        "ticket": f"INC-{7000 + i}",
        "address": f"10.4.{i}.{10 + (37 * i) % 200}",
        "since": f"2024-05-{1 + i % 28:02d}T{i % 24:02d}:{(7 * i) % 60:02d}Z",
        "p99": f"{1200 + 13 * i} ms",
        "trace": f"/var/log/checkout/web-{i:02d}/trace-{(97 * i) % 1000:03d}.log",
    }


def ticket_turn(i: int, counter: TokenCounter, tokens: int = TURN_TOKENS) -> Turn:
    """Turn ``i``: the user asks about a ticket, ``get_ticket`` returns it (~``tokens`` in all).

    The ticket grows by log lines until the turn, with a reply of ``REPLY_TOKENS``, would
    pass ``tokens`` tokens of the rendered prompt.
    """
    facts = ticket_facts(i)
    head = (
        f"Ticket {facts['ticket']}: checkout-api on host web-{i:02d}.prod "
        f"({facts['address']}) is slow since {facts['since']}; p99 {facts['p99']}, first "
        f"trace in {facts['trace']}."
    )
    call_id = f"call_{i}"
    ask = HumanMessage(f"Ticket {facts['ticket']} came in: what should I check first?")
    call = AIMessage(
        "",
        tool_calls=[{"name": "get_ticket", "args": {"ticket_id": facts["ticket"]}, "id": call_id}],
    )

    def turn(lines: list[str]) -> tuple[BaseMessage, ...]:
        result = ToolMessage("\n".join(lines), tool_call_id=call_id, name="get_ticket")
        return (ask, call, result)

    system = [SystemMessage(SYSTEM_PROMPT)]
    base = counter.count_messages(system)
    lines = [head]
    for j in range(64):
        line = (
            f"- log /var/log/checkout/web-{i:02d}-{j}.log: p99 {150 + 7 * j + i} ms, "
            f"pool_size={8 + j}, queue orders.v{j % 3} depth {40 * j + i}."
        )
        grown = counter.count_messages([*system, *turn([*lines, line])]) - base
        if grown + REPLY_TOKENS > tokens:
            break
        lines.append(line)
    return Turn(turn(lines), facts)


# ------------------------------------------------------------------------------ measuring


@dataclass(frozen=True)
class SentRequest:
    """One chat-completions request as sent, and the server's usage for it.

    Attributes:
        messages: The request's ``messages`` (JSON), the prompt the model was sent.
        prompt_tokens: ``usage.prompt_tokens``.
        cached_tokens: ``usage.prompt_tokens_details.cached_tokens`` (prefix-cache hits).
    """

    messages: list[dict[str, Any]]
    prompt_tokens: int
    cached_tokens: int


class _Wire:
    """Records every chat-completions request sent through :attr:`client`, with its usage.

    The models of a variant (the agent's and the summarizer's) share the client, so what
    was really sent, after any compaction inside the model, is what is measured.
    """

    def __init__(self) -> None:
        self.sent: list[SentRequest] = []
        self.client = httpx.Client(timeout=600, event_hooks={"response": [self._record]})

    def _record(self, response: httpx.Response) -> None:
        if not response.request.url.path.endswith("/chat/completions"):
            return
        response.read()
        if not response.is_success:
            return
        usage = response.json().get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None:
            msg = (
                "the server reports no usage.prompt_tokens_details.cached_tokens: start it "
                "with --enable-prompt-tokens-details"
            )
            raise RuntimeError(msg)
        body = json.loads(response.request.content)
        self.sent.append(SentRequest(body["messages"], int(usage["prompt_tokens"]), int(cached)))


class _Requests(BaseCallbackHandler):
    """Usage of every chat model call it is attached to, in call order (part 2)."""

    def __init__(self) -> None:
        self.prompt_tokens: list[int] = []

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                usage = getattr(generation.message, "usage_metadata", None) or {}
                self.prompt_tokens.append(int(usage.get("input_tokens", 0)))


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The text of a chat-completions request's messages: contents and tool-call arguments.

    Example:
        >>> prompt_text([{"role": "user", "content": "a"}, {"role": "assistant",
        ...     "content": None, "tool_calls": [{"function": {"arguments": '{"x": 1}'}}]}])
        'a\\n{"x": 1}'
    """
    parts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
        for call in message.get("tool_calls") or []:
            parts.append(str((call.get("function") or {}).get("arguments", "")))
    return "\n".join(p for p in parts if p)


def facts_present(facts: list[dict[str, str]], prompt: str) -> dict[str, Any]:
    """How many of the run's labelled facts ``prompt`` still holds, in all and per label.

    Example:
        >>> facts_present([{"ticket": "INC-1", "p99": "5 ms"}, {"ticket": "INC-2"}],
        ...               "INC-1 had 5ms")["by_label"]
        {'ticket': 0.5, 'p99': 1.0}
    """
    found: dict[str, list[bool]] = {}
    for ticket in facts:
        for label, value in ticket.items():
            found.setdefault(label, []).append(is_entity_present(value, prompt))
    flags = [flag for values in found.values() for flag in values]
    return {
        "total": len(flags),
        "present": sum(flags),
        "share": round(sum(flags) / len(flags), 4) if flags else None,
        "by_label": {label: round(sum(v) / len(v), 4) for label, v in found.items()},
    }


def extends(previous: list[dict[str, Any]] | None, messages: list[dict[str, Any]]) -> bool:
    """Whether a prompt only appends to the previous one (what the prefix cache rewards).

    Example:
        >>> a, b = {"role": "user", "content": "a"}, {"role": "user", "content": "b"}
        >>> extends([a], [a, b]), extends([a, b], [b]), extends(None, [a])
        (True, False, True)
    """
    return previous is None or messages[: len(previous)] == previous


@dataclass
class Call:
    """One turn of a variant: its requests (the agent's last; the ones before it are the
    summarizer's), whether the conversation was over the window, time and error.

    Attributes:
        over_window: The whole conversation no longer fit the input limit.
        agent: The agent's request (``None`` when the turn failed before sending it).
        summarizer: The summarizer requests of the turn.
        seconds: Wall time of the turn.
        error: The error's type, when the turn failed.
        rewrote: The agent's prompt did not extend its previous prompt.
    """

    over_window: bool
    agent: SentRequest | None
    summarizer: list[SentRequest]
    seconds: float
    error: str | None = None
    rewrote: bool = False


def hit_rate(requests: list[SentRequest]) -> float | None:
    """Cached prompt tokens over prompt tokens (``None`` without requests).

    Example:
        >>> hit_rate([SentRequest([], 100, 80), SentRequest([], 300, 0)])
        0.2
    """
    prompted = sum(r.prompt_tokens for r in requests)
    return round(sum(r.cached_tokens for r in requests) / prompted, 4) if prompted else None


def summarize_calls(calls: list[Call]) -> dict[str, Any]:
    """The columns of a variant's turns (see the module docstring).

    Hit rates are per request (``cached_tokens / prompt_tokens``, summed); "under the window"
    leaves out the first call (nothing to hit yet); latency is per turn over the window
    (summarizer requests included).
    """

    def requests(
        selected: list[Call], *, agent: bool = True, summary: bool = True
    ) -> list[SentRequest]:
        out: list[SentRequest] = []
        for call in selected:
            out += call.summarizer if summary else []
            out += [call.agent] if agent and call.agent is not None else []
        return out

    under = [c for c in calls[1:] if not c.over_window]
    over = [c for c in calls if c.over_window]
    over_requests = requests(over)
    seconds = [c.seconds for c in over if c.error is None]
    errors: dict[str, int] = {}
    for call in calls:
        if call.error:
            errors[call.error] = errors.get(call.error, 0) + 1
    return {
        "calls": len(calls),
        "over_window_calls": len(over),
        "hit_rate_under_window": hit_rate(requests(under)),
        "hit_rate_over_window": hit_rate(over_requests),
        "hit_rate_over_window_agent_calls": hit_rate(requests(over, summary=False)),
        "summarizer_hit_rate": hit_rate(requests(calls, agent=False)),
        "tokens_prefilled_over_window": sum(
            r.prompt_tokens - r.cached_tokens for r in over_requests
        ),
        "tokens_prompted_over_window": sum(r.prompt_tokens for r in over_requests),
        "prompt_rewrites": sum(c.rewrote for c in calls),
        "summarizer_calls": sum(len(c.summarizer) for c in calls),
        "seconds_per_call_median": round(statistics.median(seconds), 3) if seconds else None,
        "seconds_per_call_p95": round(percentile(seconds, 95), 3) if seconds else None,
        "errors": sum(errors.values()),
        "error_types": errors,
        "per_call_hit_rate": [hit_rate(requests([c])) for c in calls],
        "per_call_over_window": [c.over_window for c in calls],
    }


def chat_calls(window: int) -> int:
    """Calls of the compaction part on a ``window``-token window: to about three times it.

    Example:
        >>> chat_calls(4096), chat_calls(12288)
        (42, 126)
    """
    return round(CHAT_CALLS * window / CHAT_WINDOW)


MIN_CHAT_WINDOW = 2048  # the system prompt, the tools and a few turns past the summary


def window_arg(text: str) -> int:
    """The window flags' type (``--chat-window``, ``--window``): at least :data:`MIN_CHAT_WINDOW`.

    Raises:
        argparse.ArgumentTypeError: Not a whole number, or below the minimum.

    Example:
        >>> window_arg("12288")
        12288
    """
    try:
        window = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens") from None
    if window < MIN_CHAT_WINDOW:
        raise argparse.ArgumentTypeError(
            f"{window} tokens is too small for the chat: give at least {MIN_CHAT_WINDOW}"
        )
    return window


def _turns(counter: TokenCounter, calls: int) -> list[Turn]:
    return [ticket_turn(i, counter) for i in range(calls)]


# ------------------------------------------------------------------------------ part 1


def _chat_model(served: Served, callbacks: list[BaseCallbackHandler], **kwargs: Any) -> ChatVLLM:
    settings: dict[str, Any] = {
        "max_tokens": REPLY_TOKENS,
        "max_retries": 0,
        "timeout": 600,
        "budget": TokenBudget(output_reserve=256, min_output_tokens=REPLY_TOKENS),
        **kwargs,
    }
    return ChatVLLM(
        model=served.model,
        base_url=served.base_url,
        tokenizer=str(served.model_path),
        callbacks=callbacks,
        **settings,
    )


def _summarizer(served: Served, requests: _Requests) -> ChatVLLM:
    return _chat_model(served, [requests], max_tokens=SUMMARY_CAP)


@dataclass
class _Variant:
    name: str
    # sends one turn; returns the reply's text
    step: Callable[[Turn], str]


def _direct_variant(name: str, served: Served, wire: _Wire, **kwargs: Any) -> _Variant:
    # The summarizer is the model itself (the default).
    model = _chat_model(
        served, [], http_client=wire.client, summary_max_tokens=SUMMARY_CAP, **kwargs
    )
    bound = model.bind_tools(CHAT_TOOLS, tool_choice="none")
    history: list[BaseMessage] = [SystemMessage(SYSTEM_PROMPT)]

    def step(turn: Turn) -> str:
        history.extend(turn.messages)
        reply = bound.invoke(history)
        history.append(AIMessage(reply.text))
        return reply.text

    return _Variant(name, step)


def _agent_variant(name: str, middleware: Any, model: ChatVLLM) -> _Variant:
    agent = create_agent(
        model,
        tools=CHAT_TOOLS,
        system_prompt=SYSTEM_PROMPT,
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    config: RunnableConfig = {"configurable": {"thread_id": name}}

    def step(turn: Turn) -> str:
        # The scripted tool call and its result enter the state with the request: the
        # graph's one model call per turn reads the ticket and replies.
        inputs: Any = {"messages": list(turn.messages)}
        result = agent.invoke(inputs, config)
        return str(result["messages"][-1].text)

    return _Variant(name, step)


def _input_limit(served: Served) -> int:
    budget = TokenBudget(output_reserve=256, min_output_tokens=REPLY_TOKENS)
    return served.max_model_len - budget.safety_margin - REPLY_TOKENS


def _tool_dicts() -> list[dict[str, Any]]:
    return [convert_to_openai_tool(t) for t in CHAT_TOOLS]


def _make_variant(name: str, served: Served, wire: _Wire, limit: int) -> _Variant:
    if name == "trim, every call (before)":
        return _direct_variant(name, served, wire, on_overflow="trim", compaction_target=1.0)
    if name == "summarize, every call (before)":
        return _direct_variant(name, served, wire, on_overflow="summarize", compaction_target=1.0)
    if name == "trim":
        return _direct_variant(name, served, wire, on_overflow="trim")
    if name == "summarize":
        return _direct_variant(name, served, wire, on_overflow="summarize")
    model = _chat_model(served, [], http_client=wire.client)
    if name == "middleware (summarize, in state)":
        middleware: Any = ContextCompactionMiddleware(model, summary_max_tokens=SUMMARY_CAP)
        return _agent_variant(name, middleware, model)
    counter = model.resolved_token_counter
    # LangChain's counters see the messages only: leave the system prompt and tools their
    # room, and trigger a little before the limit, as the other variants compact at it.
    overhead = counter.count_messages([SystemMessage(SYSTEM_PROMPT)], _tool_dicts())
    trigger = limit - overhead - 300

    def count(messages: Iterable[Any]) -> int:
        return counter.count_messages(list(messages))

    if name == "LangChain SummarizationMiddleware":
        summarizer = _chat_model(served, [], http_client=wire.client, max_tokens=SUMMARY_CAP)
        middleware = SummarizationMiddleware(
            summarizer,
            trigger=("tokens", trigger),
            keep=("tokens", int(0.6 * limit) - overhead - SUMMARY_CAP),
            token_counter=count,
        )
        return _agent_variant(name, middleware, model)
    if name == "LangChain ContextEditingMiddleware":
        # Its defaults otherwise: keep the 3 latest tool results, clear all older ones.
        middleware = ContextEditingMiddleware(
            edits=[ClearToolUsesEdit(trigger=trigger)], token_counter=count
        )
        return _agent_variant(name, middleware, model)
    msg = f"unknown variant {name!r}"
    raise ValueError(msg)


def _run_chat(served: Served, name: str, turns: list[Turn]) -> dict[str, Any]:
    counter = TransformersTokenCounter(served.model_path)
    wire = _Wire()
    limit = _input_limit(served)
    variant = _make_variant(name, served, wire, limit)
    # A variant must not hit the previous variant's prompts.
    cache_reset = reset_prefix_cache(served)
    started = time.perf_counter()
    calls: list[Call] = []
    previous: list[dict[str, Any]] | None = None
    shares: list[float] = []
    # The whole conversation, never compacted: says whether a call is over the window.
    full: list[BaseMessage] = [SystemMessage(SYSTEM_PROMPT)]
    for i, turn in enumerate(turns):
        full.extend(turn.messages)
        over = counter.count_messages(full, _tool_dicts()) > limit
        sent = len(wire.sent)
        began = time.perf_counter()
        error, reply = None, ""
        try:
            reply = variant.step(turn)
        except (VLLMContextOverflowError, VLLMFixedPromptOverflowError) as exc:  # counted
            error = type(exc).__name__
        # Any other exception is a crash of the variant: it propagates.
        seconds = time.perf_counter() - began
        new = wire.sent[sent:]
        agent = new[-1] if new and error is None else None
        rewrote = agent is not None and not extends(previous, agent.messages)
        previous = agent.messages if agent is not None else previous
        calls.append(Call(over, agent, new[:-1] if agent else new, seconds, error, rewrote))
        if over and agent is not None:  # the facts told so far, in the prompt of this call
            told = [t.facts for t in turns[: i + 1]]
            shares.append(facts_present(told, prompt_text(agent.messages))["share"] or 0.0)
        full.append(AIMessage(reply))
        rate = hit_rate([*calls[-1].summarizer, *([agent] if agent else [])])
        print(
            f"[agent_loop] {name} call {i}: over={over} hit={rate} "
            f"summaries={len(calls[-1].summarizer)} rewrote={rewrote} {seconds:.1f}s "
            f"{error or ''}",
            flush=True,
        )
    return {
        "policy": name,
        **summarize_calls(calls),
        # The last prompt the model was sent (summary included) against every ticket's facts.
        "facts_in_final_prompt": facts_present(
            [t.facts for t in turns], prompt_text(previous or [])
        ),
        # Less dependent on where the last compaction fell than the final prompt alone.
        "facts_so_far_present_mean_over_window": (
            round(statistics.mean(shares), 4) if shares else None
        ),
        "seconds": round(time.perf_counter() - started, 1),
        "prefix_cache_reset_before": cache_reset,
    }


CHAT_VARIANTS: tuple[str, ...] = (
    "trim, every call (before)",
    "summarize, every call (before)",
    "trim",
    "summarize",
    "middleware (summarize, in state)",
    "LangChain SummarizationMiddleware",
    "LangChain ContextEditingMiddleware",
)
# Summarizing on every over-window call took ~400 s of the ~1,900 s of part 1: left out of
# the default run (``--all-variants`` runs it).
DEFAULT_CHAT_VARIANTS: tuple[str, ...] = tuple(
    v for v in CHAT_VARIANTS if v != "summarize, every call (before)"
)


# ------------------------------------------------------------------------------ part 2


def _tool_results(count: int, counter: TransformersTokenCounter) -> list[str]:
    """Deterministic tool results of 2,000-5,000 tokens each."""
    results = []
    for k in range(count):
        target = 2000 + (k * 1300) % 3001
        parts: list[str] = []
        seed = 100 + k * 7
        while counter.count_text("\n\n".join(parts)) < target:
            parts += [o.text for o in build_stage_outputs(seed=seed)]
            seed += 1
        text = "\n\n".join(parts)
        while counter.count_text(text) > target + 400 and len(parts) > 1:
            parts.pop()
            text = "\n\n".join(parts)
        results.append(text)
    return results


def _run_tools(served: Served, *, cap: int | None, steps: int) -> dict[str, Any]:
    """One agent run; ``cap`` is the tool-output middleware's summary cap (``None``: off)."""
    counter = TransformersTokenCounter(served.model_path)
    results = _tool_results(steps, counter)
    calls = _Requests()
    summaries = _Requests()
    model = _chat_model(served, [calls], max_tokens=4)

    @tool
    def fetch_record(record: int) -> str:
        """Fetch a ticket, config diff, plan or run report by its number."""
        return results[record]

    def decisions() -> Iterator[AIMessage]:
        for k in range(steps):
            yield AIMessage(
                "", tool_calls=[{"name": "fetch_record", "args": {"record": k}, "id": f"rec_{k}"}]
            )

    script = decisions()

    @wrap_model_call
    def scripted(request: Any, handler: Any) -> Any:
        handler(request)  # the real call: vLLM reads the whole context
        return next(script, AIMessage("done"))

    middleware: list[Any] = [scripted]
    if cap is not None:
        middleware.append(
            ToolOutputCompressionMiddleware(
                model,
                threshold_tokens=1000,
                summary_max_tokens=cap,
                summarizer=_summarizer(served, summaries),
            )
        )
    agent = create_agent(
        model,
        tools=[fetch_record],
        system_prompt=SYSTEM_PROMPT,
        middleware=middleware,
        checkpointer=InMemorySaver(),
        store=InMemoryStore(),
    )
    config: RunnableConfig = {
        "configurable": {"thread_id": "tools"},
        "recursion_limit": 4 * steps + 10,
    }
    hit_window_at: int | None = None
    started = time.perf_counter()
    try:
        agent.invoke(
            {"messages": [HumanMessage("Review every record and list the open risks.")]}, config
        )
    except (VLLMContextOverflowError, VLLMFixedPromptOverflowError):
        hit_window_at = len(calls.prompt_tokens) + 1
    seconds = time.perf_counter() - started
    state = agent.get_state(config).values["messages"]
    seen = {m.tool_call_id: m.text for m in state if isinstance(m, ToolMessage)}
    retention = []
    for k, raw in enumerate(results):
        entities = extract_entities(raw)
        shown = seen.get(f"rec_{k}")
        if shown is None or not entities:
            continue
        retention.append(sum(is_entity_present(e, shown) for e in entities) / len(entities))
    return {
        "middleware": cap is not None,
        "summary_cap": cap,
        "summarizer_calls": len(summaries.prompt_tokens),
        "tool_result_tokens": [counter.count_text(r) for r in results],
        "prompt_tokens_per_call": calls.prompt_tokens,
        "calls": len(calls.prompt_tokens),
        "window_hit_at_call": hit_window_at,
        "results_seen": len(seen),
        "entity_retention_mean": round(statistics.mean(retention), 4) if retention else None,
        "entity_retention_min": round(min(retention), 4) if retention else None,
        "seconds": round(seconds, 1),
    }


# ------------------------------------------------------------------------------ running


@contextlib.contextmanager
def _server(window: int, url: str | None, tokenizer: Path | None = None) -> Iterator[Served]:
    if url:
        data = httpx.get(f"{url.rstrip('/')}/models", timeout=30).json()["data"][0]
        yield Served(
            QWEN,
            url.rstrip("/"),
            str(data["id"]),
            tokenizer or ensure_local_model(QWEN),
            int(data["max_model_len"]),
        )
        return
    spec = server_spec(
        QWEN,
        max_model_len=window,
        extra_args=(
            *HERMES_TOOL_CALL_ARGS,
            "--enable-prompt-tokens-details",  # cached tokens per request, in usage
        ),
        env={"VLLM_SERVER_DEV_MODE": "1"},  # POST /reset_prefix_cache between variants
    )
    log = cache_dir() / "logs" / f"bench-agent-loop-{window}.log"
    # A loaded machine can take many minutes to start vLLM.
    with LocalVLLMServer(spec, log_path=log, startup_timeout=1800) as server:
        yield Served(QWEN, server.base_url, spec.name, Path(spec.model), window, server.log_path)


PARTS: tuple[str, ...] = ("chat", "tools")


def _run_info(started: float) -> dict[str, Any]:
    """When and how long a part ran, and the machine's load (slows timings, not counts)."""
    return {
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_end": [round(x, 1) for x in os.getloadavg()],
    }


class VariantsCrashed(RuntimeError):
    """Some compaction variants raised an unexpected error (their tracebacks were printed)."""


def run_agent_loop(
    *,
    quick: bool = False,
    chat_url: str | None = None,
    chat_window: int = CHAT_WINDOW,
    chat_tokenizer: Path | None = None,
    tools_url: str | None = None,
    variants: tuple[str, ...] = DEFAULT_CHAT_VARIANTS,
    parts: tuple[str, ...] = PARTS,
    done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the parts; return the results (see the module docstring).

    The compaction part runs :func:`chat_calls` calls on a tiny-qwen server with a
    ``chat_window`` window started here, or on the server at ``chat_url`` (its window;
    ``chat_tokenizer``: its model's tokenizer folder, tiny-qwen's by default). ``done`` is
    called with the results after each compaction variant and each part (to save them as
    they come).

    Raises:
        VariantsCrashed: A compaction variant crashed (after both parts ran and ``done``
            saw the results, where the variant is marked ``crashed``).
    """
    steps = 6 if quick else 12
    results: dict[str, Any] = {}
    crashed: list[str] = []
    if "chat" in parts:
        started = time.perf_counter()
        with _server(chat_window, chat_url, chat_tokenizer) as served:
            calls = 20 if quick else chat_calls(served.max_model_len)
            turns = _turns(TransformersTokenCounter(served.model_path), calls)
            chat: list[dict[str, Any]] = []
            for name in variants:
                try:
                    chat.append(_run_chat(served, name, turns))
                except Exception as exc:  # reported, and the section fails at the end
                    traceback.print_exc()
                    print(f"[agent_loop] {name} CRASHED: {type(exc).__name__}", flush=True)
                    chat.append({"policy": name, "crashed": type(exc).__name__})
                    crashed.append(name)
                results["chat"] = {
                    "window": served.max_model_len,
                    "calls": calls,
                    "turn_tokens": TURN_TOKENS,
                    "facts_per_turn": len(turns[0].facts),
                    "variants": list(variants),
                    "runs": chat,
                    **_run_info(started),
                }
                if done is not None:
                    done(results)
    if "tools" in parts:
        started = time.perf_counter()
        with _server(TOOL_WINDOW, tools_url) as served:
            tools = [_run_tools(served, cap=cap, steps=steps) for cap in (None, SUMMARY_CAP, 500)]
            results["tools"] = {
                "window": served.max_model_len,
                "steps": steps,
                "runs": tools,
                **_run_info(started),
            }
        if done is not None:
            done(results)
    if crashed:
        msg = f"compaction variant(s) crashed: {', '.join(crashed)} (tracebacks above)"
        raise VariantsCrashed(msg)
    return results


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def summary_markdown(
    results: dict[str, Any], command: str, server: str = "vLLM CPU build"
) -> list[str]:
    lines = [
        "# Agent loop: compaction and tool outputs",
        "",
        f"Command: `{command}` ({server}; timings depend on the machine's load, the "
        "token counts do not).",
        "",
    ]
    if "chat" in results:
        lines += _chat_markdown(results["chat"])
    if "tools" in results:
        lines += _tools_markdown(results["tools"])
    return lines


def _chat_markdown(chat: dict[str, Any]) -> list[str]:
    lines = [
        f"## Compaction: a chat to ~3x a {chat['window']}-token window "
        f"({chat['calls']} calls, one ~{chat['turn_tokens']}-token turn per call: a request, "
        "a scripted `get_ticket` call and the ticket as its tool result)",
        "",
        _info(chat),
        "",
        "Hit rates are the server's `cached_tokens` over `prompt_tokens`, summed over the "
        "requests; over the window: all requests, the agent's own calls, and the summarizer "
        "requests apart. A prompt rewrite is a call whose prompt does not extend the previous "
        "one. The last column: the share of all labelled facts of the run's "
        f"{chat['calls']} tickets ({chat.get('facts_per_turn', 5)} each: ticket ID, address, "
        "time, p99, trace path) present in the last prompt the model was sent (summary "
        "included); it does not say the model can answer from it. As it depends on where "
        "the last compaction fell, the next column averages, over the calls over the "
        "window, the share of the facts told so far present in each call's prompt.",
        "",
        "| policy | hit rate under the window | over the window: all requests "
        "| agent calls | summarizer requests | tokens prefilled over the window "
        "| prompt rewrites | summarizer calls | s per call (median / p95) | errors "
        "| must-keep facts present in the final prompt "
        "| facts told so far present, mean over the window |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in chat["runs"]:
        if "crashed" in run:
            lines.append(f"| {run['policy']} | **CRASHED: {run['crashed']}** |" + " |" * 10)
            continue
        facts = run["facts_in_final_prompt"]
        lines.append(
            f"| {run['policy']} | {_pct(run['hit_rate_under_window'])} "
            f"| {_pct(run['hit_rate_over_window'])} "
            f"| {_pct(run['hit_rate_over_window_agent_calls'])} "
            f"| {_pct(run['summarizer_hit_rate'])} "
            f"| {run['tokens_prefilled_over_window']:,} | {run['prompt_rewrites']} "
            f"| {run['summarizer_calls']} | {run['seconds_per_call_median']} / "
            f"{run['seconds_per_call_p95']} | {_errors(run)} "
            f"| {_pct(facts['share'])} ({facts['present']}/{facts['total']}) "
            f"| {_pct(run.get('facts_so_far_present_mean_over_window'))} |"
        )
    if not all(r.get("prefix_cache_reset_before", True) for r in chat["runs"]):
        lines += [
            "",
            "**The server's prefix cache could not be emptied between variants** (a server "
            "given by URL, started without `VLLM_SERVER_DEV_MODE=1`): a variant may hit the "
            "cache of an earlier one.",
        ]
    ran = {r["policy"] for r in chat["runs"]}
    asked = chat.get("variants", [])
    unfinished = [v for v in asked if v not in ran]
    if unfinished:
        lines += ["", "Not finished (the run stopped first): " + _names(unfinished) + "."]
    missing = [v for v in CHAT_VARIANTS if v not in ran and v not in asked]
    if missing:
        lines += ["", "Not run: " + _names(missing) + " (`--only` picks the variants)."]
    return lines


def _names(variants: list[str]) -> str:
    return ", ".join(f"`{v}`" for v in variants)


def _errors(run: dict[str, Any]) -> str:
    types = ", ".join(f"{n} {t}" for t, n in run["error_types"].items())
    return f"{run['errors']} ({types})" if types else str(run["errors"])


def _info(part: dict[str, Any]) -> str:
    return (
        f"Finished {part['finished']} after {part['seconds']:.0f} s; load average (1/5/15 min) "
        f"at the end {part['load_average_end']}."
    )


def _tools_markdown(tools: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Tool outputs: 2-5K-token results on a {tools['window']}-token window "
        f"({tools['steps']} tool calls)",
        "",
        _info(tools),
        "",
        "| tool-output middleware | model calls made | window hit at call | prompt tokens per "
        "call (mean / max) | results the agent saw | entity retention (mean / min) "
        "| summarizer calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in tools["runs"]:
        tokens = run["prompt_tokens_per_call"] or [0]
        setting = f"on, summary cap {run['summary_cap']}" if run["middleware"] else "off"
        lines.append(
            f"| {setting} | {run['calls']} "
            f"| {run['window_hit_at_call'] or 'never'} "
            f"| {statistics.mean(tokens):,.0f} / {max(tokens):,} | {run['results_seen']} "
            f"| {_pct(run['entity_retention_mean'])} / {_pct(run['entity_retention_min'])} "
            f"| {run['summarizer_calls']} |"
        )
    return lines


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    if "chat" in results:
        _plot_chat(left, results["chat"])
    if "tools" in results:
        _plot_tools(right, results["tools"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_chat(axes: Any, chat: dict[str, Any]) -> None:
    runs = [run for run in chat["runs"] if "crashed" not in run]
    for run in runs:
        rates = [float("nan") if r is None else r for r in run["per_call_hit_rate"]]
        axes.plot(range(len(rates)), rates, label=run["policy"])
    over = runs[0]["per_call_over_window"] if runs else []
    first_over = next((i for i, flag in enumerate(over) if flag), None)
    if first_over is not None:
        axes.axvline(first_over, color="grey", linestyle=":", label="chat passes the window")
    axes.set_xlabel("call")
    axes.set_ylabel("prefix-cache hit rate of the call")
    axes.set_title(f"Chat to ~3x a {chat['window']}-token window")
    axes.legend(fontsize=7)


def _plot_tools(axes: Any, tools: dict[str, Any]) -> None:
    for run in tools["runs"]:
        label = f"middleware, cap {run['summary_cap']}" if run["middleware"] else "no middleware"
        tokens = run["prompt_tokens_per_call"]
        axes.plot(range(1, len(tokens) + 1), tokens, marker="o", label=label)
    axes.axhline(tools["window"], color="grey", linestyle=":", label="window")
    axes.set_xlabel("model call")
    axes.set_ylabel("prompt tokens")
    axes.set_title("Tools returning 2-5K tokens")
    axes.legend(fontsize=7)


def write(results: dict[str, Any], out: Path, command: str) -> list[Path]:
    """Write ``results.json``, ``summary.md`` and ``agent_loop.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "summary.md", out / "agent_loop.png"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(
        "\n".join([*summary_markdown(results, command), "", "![agent loop](agent_loop.png)", ""])
    )
    _plot(results, paths[2])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agent_loop", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--chat-url", help="a running tiny-qwen server for the compaction part (its window)"
    )
    parser.add_argument(
        "--chat-window",
        type=window_arg,
        help=f"the compaction part's window when no --chat-url is given (default {CHAT_WINDOW})",
    )
    parser.add_argument(
        "--tools-url", help=f"a running tiny-qwen server with a {TOOL_WINDOW} window"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=CHAT_VARIANTS,
        metavar="VARIANT",
        help="a compaction variant to run (repeat the flag for more; default: "
        f"{'; '.join(DEFAULT_CHAT_VARIANTS)})",
    )
    parser.add_argument(
        "--all-variants",
        action="store_true",
        help="run every compaction variant, the summarize-every-call baseline included",
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="chat (also called compaction), tools or both; a part not run keeps its "
        "results already in --out",
    )
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args(argv)
    variants = (
        CHAT_VARIANTS
        if args.all_variants
        else tuple(dict.fromkeys(args.only))
        if args.only
        else DEFAULT_CHAT_VARIANTS
    )
    if args.chat_window is not None and args.chat_url:
        parser.error("--chat-window starts a server; with --chat-url the server's window is used")
    parts = tuple("chat" if p == "compaction" else p for p in args.parts.split(","))
    if set(parts) - set(PARTS):
        parser.error("--parts takes chat (or compaction) and tools")
    previous = args.out / "results.json"
    kept = json.loads(previous.read_text()) if previous.is_file() else {}
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "benchmarks.agent_loop", *given])

    def save(results: dict[str, Any]) -> None:
        merged = {k: v for k, v in kept.items() if k in PARTS and k not in parts}
        merged.update(results)
        for path in write(merged, args.out, command):
            print(f"[agent_loop] wrote {path}", flush=True)

    run_agent_loop(
        quick=args.quick,
        chat_url=args.chat_url,
        chat_window=args.chat_window or CHAT_WINDOW,
        tools_url=args.tools_url,
        variants=variants,
        parts=parts,
        done=save,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
