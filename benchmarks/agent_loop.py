"""Agent loops past the window on the real vLLM: prefix-cache hits and tool-output compression.

``python -m benchmarks.agent_loop`` (or ``python -m benchmarks.run --only agent_loop``).

Part 1, **compaction**: a chat that grows by one ~280-token turn per call (a ticket full of
IDs, plus the model's short reply), run to about three times a 4,096-token window
(tiny-qwen, random weights, the real Qwen tokenizer and template), once per policy:

* ``trim``/``summarize`` *every call*: ``ChatVLLM(compaction_target=1.0)``, which compacts
  just enough on every over-window call: the behaviour before cache-friendly compaction;
* ``trim``/``summarize``: ``ChatVLLM(on_overflow=...)`` with the default target (0.6);
* ``middleware (summarize)``: :class:`~langchain_vllm_budget.middleware.ContextCompactionMiddleware`
  in a ``create_agent`` graph with a checkpointer (the compaction lives in state);
* LangChain's stock ``SummarizationMiddleware`` in the same graph (exact token counter,
  triggered near the same limit, keeping the same target).

Every variant has the same system prompt and three tool definitions. Before and after each
call the server's ``/metrics`` counters ``vllm:prefix_cache_queries`` and
``vllm:prefix_cache_hits`` are read: their differences are the prompt tokens the server
looked up and the ones it found cached (summarizer requests included: they run on the same
server). Reported per policy: hit rate on the calls under the window and on the calls whose
conversation no longer fits, the same for the agent's own requests only, tokens prefilled
(looked up minus found), compactions, summarizer calls, wall time per call, errors.

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
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware, wrap_model_call
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from benchmarks.corpus import build_stage_outputs
from benchmarks.servers import QWEN, Served, server_spec
from langchain_vllm_budget import ChatVLLM, TokenBudget, TransformersTokenCounter
from langchain_vllm_budget.compression import extract_entities, is_entity_present
from langchain_vllm_budget.errors import VLLMContextOverflowError
from langchain_vllm_budget.middleware import (
    ContextCompactionMiddleware,
    ToolOutputCompressionMiddleware,
)
from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalVLLMServer

__all__ = ["main", "run_agent_loop"]

CHAT_WINDOW = 4096
TOOL_WINDOW = 12288
TURN_TOKENS = 250  # the human part of a turn; the reply and template bring it to ~280
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


# ------------------------------------------------------------------------------ measuring


def _metric(text: str, name: str) -> float:
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE):
        total += float(match.group(1))
    return total


@dataclass
class _Counters:
    """The server's prefix-cache counters (cumulative)."""

    queries: float
    hits: float


def _read_counters(root: str) -> _Counters:
    text = httpx.get(f"{root}/metrics", timeout=30).text
    return _Counters(
        _metric(text, "vllm:prefix_cache_queries_total"),
        _metric(text, "vllm:prefix_cache_hits_total"),
    )


class _Requests(BaseCallbackHandler):
    """Usage of every chat model call it is attached to, in call order: prompt tokens and
    the cached ones (vLLM's ``prompt_tokens_details.cached_tokens``, reported when the server
    runs with ``--enable-prompt-tokens-details``)."""

    def __init__(self) -> None:
        self.prompt_tokens: list[int] = []
        self.cached_tokens: list[int | None] = []

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                usage = getattr(generation.message, "usage_metadata", None) or {}
                self.prompt_tokens.append(int(usage.get("input_tokens", 0)))
                cached = (usage.get("input_token_details") or {}).get("cache_read")
                self.cached_tokens.append(None if cached is None else int(cached))


@dataclass
class _Call:
    index: int
    over_window: bool
    queries: float
    hits: float
    summarizer_queries: int
    summarizer_hits: int
    seconds: float
    error: str | None = None
    compacted: bool = False

    @property
    def rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


@dataclass
class _Run:
    name: str
    calls: list[_Call] = field(default_factory=list)
    summarizer_calls: int = 0
    compactions: int = 0

    def summary(self) -> dict[str, Any]:
        def rate(calls: list[_Call], *, agent_only: bool = False) -> float | None:
            queries = sum(c.queries - (c.summarizer_queries if agent_only else 0) for c in calls)
            hits = sum(c.hits - (c.summarizer_hits if agent_only else 0) for c in calls)
            return round(hits / queries, 4) if queries else None

        under = [c for c in self.calls if not c.over_window and c.index > 0 and not c.error]
        over = [c for c in self.calls if c.over_window and not c.error]
        seconds = [c.seconds for c in over]
        return {
            "policy": self.name,
            "calls": len(self.calls),
            "over_window_calls": len(over),
            "hit_rate_under_window": rate(under),
            "hit_rate_over_window": rate(over),
            "hit_rate_over_window_agent_calls": rate(over, agent_only=True),
            "tokens_prefilled_over_window": int(sum(c.queries - c.hits for c in over)),
            "tokens_looked_up_over_window": int(sum(c.queries for c in over)),
            "compactions": self.compactions,
            "summarizer_calls": self.summarizer_calls,
            "seconds_per_call_median": round(statistics.median(seconds), 3) if seconds else None,
            "seconds_per_call_max": round(max(seconds), 3) if seconds else None,
            "errors": sum(1 for c in self.calls if c.error),
            "per_call_hit_rate": [round(c.rate, 4) for c in self.calls],
            "per_call_over_window": [c.over_window for c in self.calls],
        }


def _ticket(i: int, counter: TransformersTokenCounter) -> str:
    lines = [
        f"Ticket INC-{7000 + i}: checkout-api on host web-{i % 17:02d}.prod "
        f"(10.4.{i % 250}.{10 + i % 200}) is slow since 2024-05-{1 + i % 28:02d}T0{i % 10}:15Z."
    ]
    j = 0
    while counter.count_text("\n".join(lines)) < TURN_TOKENS:
        lines.append(
            f"- log /var/log/checkout/web-{i % 17:02d}-{j}.log: p99 {150 + 7 * j + i} ms, "
            f"pool_size={8 + j}, queue orders.v{j % 3} depth {40 * j + i}."
        )
        j += 1
    return "\n".join(lines)


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
    # sends one turn; returns the reply's text and its budget metadata (or {})
    step: Callable[[str], tuple[str, dict[str, Any]]]


def _direct_variant(
    name: str, served: Served, summarize_requests: _Requests, **kwargs: Any
) -> _Variant:
    model = _chat_model(
        served,
        [],
        summarizer=_summarizer(served, summarize_requests),
        summary_max_tokens=SUMMARY_CAP,
        **kwargs,
    )
    bound = model.bind_tools(CHAT_TOOLS, tool_choice="none")
    history: list[BaseMessage] = [SystemMessage(SYSTEM_PROMPT)]

    def step(text: str) -> tuple[str, dict[str, Any]]:
        history.append(HumanMessage(text))
        reply = bound.invoke(history)
        history.append(AIMessage(reply.text))
        return reply.text, dict(reply.response_metadata.get("budget", {}))

    return _Variant(name, step)


def _agent_variant(name: str, served: Served, middleware: Any, model: ChatVLLM) -> _Variant:
    agent = create_agent(
        model,
        tools=CHAT_TOOLS,
        system_prompt=SYSTEM_PROMPT,
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": name}}

    def step(text: str) -> tuple[str, dict[str, Any]]:
        result = agent.invoke({"messages": [HumanMessage(text)]}, config)
        last = result["messages"][-1]
        return last.text, dict(last.response_metadata.get("budget", {}))

    return _Variant(name, step)


def _input_limit(served: Served) -> int:
    budget = TokenBudget(output_reserve=256, min_output_tokens=REPLY_TOKENS)
    return served.max_model_len - budget.safety_margin - REPLY_TOKENS


def _run_chat(served: Served, variant_name: str, calls: int) -> _Run:
    counter = TransformersTokenCounter(served.model_path)
    summarize_requests = _Requests()
    limit = _input_limit(served)
    variant = _make_variant(variant_name, served, summarize_requests, limit)
    run = _Run(variant_name)
    # The whole conversation, never compacted: says whether a call is over the window.
    full: list[BaseMessage] = [SystemMessage(SYSTEM_PROMPT)]
    for i in range(calls):
        text = _ticket(i, counter)
        full.append(HumanMessage(text))
        over = counter.count_messages(full, _tool_dicts()) > limit
        before = _read_counters(served.server_root)
        summarized_before = len(summarize_requests.prompt_tokens)
        started = time.perf_counter()
        error = None
        reply, budget = "", {}
        try:
            reply, budget = variant.step(text)
        except Exception as exc:  # a failed call is counted, not fatal
            error = type(exc).__name__
        seconds = time.perf_counter() - started
        after = _read_counters(served.server_root)
        new_summaries = summarize_requests.prompt_tokens[summarized_before:]
        summary_hits = summarize_requests.cached_tokens[summarized_before:]
        compacted = bool((budget.get("compaction") or {}).get("compacted")) or bool(new_summaries)
        run.calls.append(
            _Call(
                i,
                over,
                after.queries - before.queries,
                after.hits - before.hits,
                sum(new_summaries),
                sum(h or 0 for h in summary_hits),
                seconds,
                error,
                compacted,
            )
        )
        run.summarizer_calls += len(new_summaries)
        run.compactions += compacted
        full.append(AIMessage(reply))
        print(
            f"[agent_loop] {variant_name} call {i}: over={over} "
            f"hit={run.calls[-1].rate:.2f} compacted={compacted} {seconds:.1f}s {error or ''}",
            flush=True,
        )
    return run


def _tool_dicts() -> list[dict[str, Any]]:
    return [convert_to_openai_tool(t) for t in CHAT_TOOLS]


def _make_variant(name: str, served: Served, requests: _Requests, limit: int) -> _Variant:
    if name == "trim, every call (before)":
        return _direct_variant(name, served, requests, on_overflow="trim", compaction_target=1.0)
    if name == "summarize, every call (before)":
        return _direct_variant(
            name, served, requests, on_overflow="summarize", compaction_target=1.0
        )
    if name == "trim":
        return _direct_variant(name, served, requests, on_overflow="trim")
    if name == "summarize":
        return _direct_variant(name, served, requests, on_overflow="summarize")
    model = _chat_model(served, [])
    if name == "middleware (summarize, in state)":
        middleware: Any = ContextCompactionMiddleware(
            model, summarizer=_summarizer(served, requests), summary_max_tokens=SUMMARY_CAP
        )
        return _agent_variant(name, served, middleware, model)
    if name == "LangChain SummarizationMiddleware":
        counter = model.resolved_token_counter
        # Its counter sees the messages only: leave the system prompt and tools their room.
        overhead = counter.count_messages([SystemMessage(SYSTEM_PROMPT)], _tool_dicts())
        middleware = SummarizationMiddleware(
            model,
            trigger=("tokens", limit - overhead - 300),
            keep=("tokens", int(0.6 * limit) - overhead - SUMMARY_CAP),
            token_counter=lambda messages: counter.count_messages(list(messages)),
            summarizer=_summarizer(served, requests),
        )
        return _agent_variant(name, served, middleware, model)
    msg = f"unknown variant {name!r}"
    raise ValueError(msg)


CHAT_VARIANTS: tuple[str, ...] = (
    "trim, every call (before)",
    "summarize, every call (before)",
    "trim",
    "summarize",
    "middleware (summarize, in state)",
    "LangChain SummarizationMiddleware",
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
    config = {"configurable": {"thread_id": "tools"}, "recursion_limit": 4 * steps + 10}
    hit_window_at: int | None = None
    started = time.perf_counter()
    try:
        agent.invoke(
            {"messages": [HumanMessage("Review every record and list the open risks.")]}, config
        )
    except VLLMContextOverflowError:
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
def _server(window: int, url: str | None) -> Iterator[Served]:
    if url:
        data = httpx.get(f"{url.rstrip('/')}/models", timeout=30).json()["data"][0]
        yield Served(
            QWEN,
            url.rstrip("/"),
            str(data["id"]),
            ensure_local_model(QWEN),
            int(data["max_model_len"]),
        )
        return
    spec = server_spec(
        QWEN,
        max_model_len=window,
        extra_args=(
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            "--enable-prompt-tokens-details",  # cached tokens per request, in usage
        ),
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


def run_agent_loop(
    *,
    quick: bool = False,
    chat_url: str | None = None,
    tools_url: str | None = None,
    variants: tuple[str, ...] = CHAT_VARIANTS,
    parts: tuple[str, ...] = PARTS,
    done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the parts; return the results (see the module docstring).

    ``done`` is called with the results after each part (to save them as they come).
    """
    calls = 24 if quick else 42
    steps = 6 if quick else 12
    results: dict[str, Any] = {}
    if "chat" in parts:
        started = time.perf_counter()
        with _server(CHAT_WINDOW, chat_url) as served:
            chat = [_run_chat(served, name, calls).summary() for name in variants]
            results["chat"] = {
                "window": served.max_model_len,
                "calls": calls,
                "turn_tokens": TURN_TOKENS,
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
    return results


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f} %"


def summary_markdown(results: dict[str, Any], command: str) -> list[str]:
    lines = [
        "# Agent loop: compaction and tool outputs",
        "",
        f"Command: `{command}` (vLLM CPU build; timings depend on the machine's load, the "
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
        f"({chat['calls']} calls, one ~{chat['turn_tokens'] + 30}-token turn per call)",
        "",
        _info(chat),
        "",
        "| policy | hit rate under the window | hit rate over the window (all requests) "
        "| over the window, agent calls only | tokens prefilled over the window "
        "| compactions | summarizer calls | s per call (median / max) | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in chat["runs"]:
        lines.append(
            f"| {run['policy']} | {_pct(run['hit_rate_under_window'])} "
            f"| {_pct(run['hit_rate_over_window'])} "
            f"| {_pct(run['hit_rate_over_window_agent_calls'])} "
            f"| {run['tokens_prefilled_over_window']:,} | {run['compactions']} "
            f"| {run['summarizer_calls']} | {run['seconds_per_call_median']} / "
            f"{run['seconds_per_call_max']} | {run['errors']} |"
        )
    return lines


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
    for run in chat["runs"]:
        rates = run["per_call_hit_rate"]
        axes.plot(range(len(rates)), rates, label=run["policy"])
    over = chat["runs"][0]["per_call_over_window"]
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
        "--chat-url", help=f"a running tiny-qwen server with a {CHAT_WINDOW} window"
    )
    parser.add_argument(
        "--tools-url", help=f"a running tiny-qwen server with a {TOOL_WINDOW} window"
    )
    parser.add_argument("--only", help="comma-separated chat variants", default=None)
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="chat, tools or both; a part not run keeps its results already in --out",
    )
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args(argv)
    variants = tuple(args.only.split(",")) if args.only else CHAT_VARIANTS
    parts = tuple(args.parts.split(","))
    if set(parts) - set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}")
    previous = args.out / "results.json"
    kept = json.loads(previous.read_text()) if previous.is_file() else {}
    command = "python -m benchmarks.agent_loop" + (" --quick" if args.quick else "")

    def save(results: dict[str, Any]) -> None:
        merged = {k: v for k, v in kept.items() if k in PARTS and k not in parts}
        merged.update(results)
        for path in write(merged, args.out, command):
            print(f"[agent_loop] wrote {path}", flush=True)

    run_agent_loop(
        quick=args.quick,
        chat_url=args.chat_url,
        tools_url=args.tools_url,
        variants=variants,
        parts=parts,
        done=save,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
