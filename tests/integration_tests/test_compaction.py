"""Compaction against the real vLLM server (tiny-qwen): stable prefixes, nothing over the window.

Every request and response goes through an httpx event hook, so the tests read what was
really sent and what vLLM really tokenized: ``return_token_ids`` makes vLLM return each
request's ``prompt_token_ids``, and between two compactions the earlier prompt's tokens must
be the start of the later one's (what vLLM's prefix cache keys on). Hit rates are measured
in ``benchmarks/agent_loop.py``, not here.
"""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config
from langgraph.store.memory import InMemoryStore

from benchmarks.summarizer_cache import ticket_text as _turn_text
from langchain_vllm_budget import ChatVLLM, TokenBudget, TransformersTokenCounter
from langchain_vllm_budget.compaction import is_summary_message
from langchain_vllm_budget.compression import COMPRESSION_SYSTEM_PROMPT
from langchain_vllm_budget.compression.prefix import PREFIX_SUMMARY_INSTRUCTION
from langchain_vllm_budget.middleware import (
    ContextCompactionMiddleware,
    ToolOutputCompressionMiddleware,
    load_tool_output,
)
from langchain_vllm_budget.middleware.tool_outputs import METADATA_KEY, READ_TOOL_NAME

pytestmark = pytest.mark.integration

SYSTEM = SystemMessage("You are an operations assistant. Keep track of every ticket and host.")
INSTRUCTION_START = PREFIX_SUMMARY_INSTRUCTION.split("\n", 1)[0]


class Recorder:
    """Records every chat completion exchanged with the server (request and response JSON)."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def _record(self, response: httpx.Response) -> None:
        if response.request.url.path.endswith("/chat/completions"):
            self.calls.append((json.loads(response.request.content), response.json()))

    def client(self) -> httpx.Client:
        def hook(response: httpx.Response) -> None:
            response.read()
            self._record(response)

        return httpx.Client(event_hooks={"response": [hook]}, timeout=600)

    def async_client(self) -> httpx.AsyncClient:
        async def hook(response: httpx.Response) -> None:
            await response.aread()
            self._record(response)

        return httpx.AsyncClient(event_hooks={"response": [hook]}, timeout=600)

    def main_calls(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The agent's own calls (not the summarizer's)."""
        return [c for c in self.calls if not _is_summarizer(c[0])]

    def summarizer_calls(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [c for c in self.calls if _is_summarizer(c[0])]


def _is_summarizer(request: dict[str, Any]) -> bool:
    """A summarizer request: the fresh compression prompt, or the prefix and instruction."""
    last = request["messages"][-1].get("content")
    return request["messages"][0].get("content") == COMPRESSION_SYSTEM_PROMPT or (
        isinstance(last, str) and last.startswith(INSTRUCTION_START)
    )


class Usage(BaseCallbackHandler):
    """Each chat model call's prompt and usage (vLLM's cached prompt tokens included, which
    the server reports with ``--enable-prompt-tokens-details``)."""

    def __init__(self) -> None:
        self.prompts: dict[Any, list[BaseMessage]] = {}
        self.calls: list[tuple[list[BaseMessage], int, int | None]] = []

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[BaseMessage]], *, run_id: Any, **kwargs: Any
    ) -> None:
        self.prompts[run_id] = messages[0]

    def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
        prompt = self.prompts.pop(run_id, [])
        for generations in response.generations:
            for generation in generations:
                usage = generation.message.usage_metadata or {}
                cached = (usage.get("input_token_details") or {}).get("cache_read")
                self.calls.append((prompt, int(usage.get("input_tokens", 0)), cached))

    def summarizer_calls(self) -> list[tuple[int, int | None]]:
        """``(prompt tokens, cached tokens)`` of each prefix summarizer request."""
        return [
            (tokens, cached)
            for prompt, tokens, cached in self.calls
            if prompt and prompt[-1].text.startswith(INSTRUCTION_START)
        ]


def _model(served, recorder: Recorder, **kwargs: Any) -> ChatVLLM:
    return ChatVLLM(
        model=served.model,
        base_url=served.base_url,
        tokenizer=str(served.model_path),
        http_client=recorder.client(),
        http_async_client=recorder.async_client(),
        max_tokens=4,
        max_retries=0,
        budget=TokenBudget(output_reserve=64, min_output_tokens=16),
        extra_body={"return_token_ids": True},
        **kwargs,
    )


def _prompt_prefix_stable(calls: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[bool]:
    """For each call after the first: do the previous call's prompt tokens start this one's?"""
    ids = [response["prompt_token_ids"] for _, response in calls]
    return [later[: len(earlier)] == earlier for earlier, later in itertools.pairwise(ids)]


def _assert_inside_the_window(calls, window: int) -> None:
    for request, response in calls:
        assert response["usage"]["prompt_tokens"] + request["max_tokens"] <= window


def _chat_loop(model: ChatVLLM, counter, window: int, calls: int) -> list[AIMessage]:
    history: list[BaseMessage] = [SYSTEM]
    replies = []
    for i in range(calls):
        history.append(HumanMessage(_turn_text(i, window // 10, counter)))
        reply = model.invoke(history)
        replies.append(reply)
        history.append(AIMessage(reply.text))
    return replies


@pytest.mark.parametrize("policy", ["trim", "summarize"])
def test_prefix_is_stable_between_compactions_and_nothing_overflows(tiny_qwen, policy) -> None:
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder, on_overflow=policy, summary_max_tokens=48)
    replies = _chat_loop(model, counter, tiny_qwen.max_model_len, calls=22)
    budgets = [r.response_metadata["budget"] for r in replies]
    # nothing over the window: our count is vLLM's, and leaves the output room
    for reply, budget in zip(replies, budgets, strict=True):
        assert budget["input_tokens"] == reply.usage_metadata["input_tokens"]
    _assert_inside_the_window(recorder.calls, tiny_qwen.max_model_len)
    over = [b for b in budgets if b["compaction"] is not None]
    compacted = [
        i for i, b in enumerate(budgets) if b["compaction"] and b["compaction"]["compacted"]
    ]
    assert len(over) >= 10, "the loop ran to about twice the window"
    assert 2 <= len(compacted) < len(over) - len(compacted), "compacts once, then reuses"
    stable = _prompt_prefix_stable(recorder.main_calls())
    for i, prefix_kept in enumerate(stable, start=1):
        # vLLM's own tokens: only a compaction changes what was sent before
        assert prefix_kept == (i not in compacted), f"call {i}"
    if policy == "summarize":
        # the package's compressor: at most one summarizer call per compaction (none where
        # its extractive summary keeps every entity), none on the calls that reuse it
        calls = {
            i: b["compaction"]["summarizer_calls"] for i, b in enumerate(budgets) if b["compaction"]
        }
        assert len(recorder.summarizer_calls()) == sum(calls.values()) >= 1
        assert all(calls[i] <= 1 for i in compacted)
        assert all(n == 0 for i, n in calls.items() if i not in compacted)
        sent = recorder.main_calls()[compacted[-1]][0]["messages"]
        assert sent[0]["content"] == SYSTEM.content
        assert sent[1]["content"].startswith("Summary of the earlier conversation:")
        assert "INC-" in sent[1]["content"]
    else:
        assert recorder.summarizer_calls() == []


async def test_async_summarize_compacts_the_same_way(tiny_qwen) -> None:
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder, on_overflow="summarize", summary_max_tokens=48)
    history: list[BaseMessage] = [SYSTEM]
    budgets = []
    for i in range(18):
        history.append(HumanMessage(_turn_text(i, tiny_qwen.max_model_len // 10, counter)))
        reply = await model.ainvoke(history)
        budgets.append(reply.response_metadata["budget"])
        history.append(AIMessage(reply.text))
    _assert_inside_the_window(recorder.calls, tiny_qwen.max_model_len)
    compacted = [
        i for i, b in enumerate(budgets) if b["compaction"] and b["compaction"]["compacted"]
    ]
    assert compacted
    assert 1 <= len(recorder.summarizer_calls()) <= len(compacted)
    assert len(recorder.summarizer_calls()) == sum(
        budgets[i]["compaction"]["summarizer_calls"] for i in compacted
    )
    stable = _prompt_prefix_stable(recorder.main_calls())
    assert all(kept == (i not in compacted) for i, kept in enumerate(stable, start=1))


@tool
def lookup(host: str) -> str:
    """Look up a host's status."""
    return f"{host}: ok"


def _served_from_cache(usage: Usage, recorder: Recorder) -> dict[str, Any]:
    """The one summarizer request: vLLM served most of its prompt from the prefix cache, and
    it is the previous agent request up to the cut, the same tools, then the instruction."""
    ((prompt_tokens, cached),) = usage.summarizer_calls()
    assert cached is not None, "the server reports cached prompt tokens"
    assert cached >= 0.8 * prompt_tokens, (cached, prompt_tokens)
    ((request_json, _),) = recorder.summarizer_calls()
    index = next(i for i, call in enumerate(recorder.calls) if call[0] is request_json)
    previous = next(c[0] for c in reversed(recorder.calls[:index]) if not _is_summarizer(c[0]))
    sent = request_json["messages"]
    assert sent[:-1] == previous["messages"][: len(sent) - 1]
    assert sent[-1]["role"] == "user"
    assert request_json["tools"] == previous["tools"]
    assert request_json["tool_choice"] == "none"
    return request_json


def test_the_summarizer_request_is_served_from_the_prefix_cache(tiny_qwen, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_BUDGET_COMPRESSION", "llm")  # the model writes every summary
    recorder, usage = Recorder(), Usage()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(
        tiny_qwen, recorder, on_overflow="summarize", summary_max_tokens=48, callbacks=[usage]
    )
    agent_model = model.bind_tools([lookup])
    history: list[BaseMessage] = [SYSTEM]
    report = None
    for i in range(14):
        history.append(HumanMessage(_turn_text(i, tiny_qwen.max_model_len // 10, counter)))
        reply = agent_model.invoke(history)
        history.append(AIMessage(reply.text))
        report = reply.response_metadata["budget"]["compaction"]
        if report is not None:
            break
    assert report is not None, "the chat passed the window"
    assert report["summary_request"] == "prefix"
    assert report["summarizer_calls"] == 1
    request_json = _served_from_cache(usage, recorder)
    assert request_json["max_tokens"] == 48
    _assert_inside_the_window(recorder.calls, tiny_qwen.max_model_len)


async def test_the_middlewares_summarizer_request_is_served_from_the_prefix_cache(
    tiny_qwen,
) -> None:
    recorder, usage = Recorder(), Usage()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder, callbacks=[usage])
    middleware = ContextCompactionMiddleware(
        model, summary_max_tokens=48, max_input_tokens=3000, strategy="llm"
    )
    agent = create_agent(
        model,
        tools=[lookup],
        system_prompt=SYSTEM.content,
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "cache"}}
    for i in range(12):
        text = _turn_text(i, 500, counter)
        await agent.ainvoke({"messages": [HumanMessage(text)]}, config)
        if usage.summarizer_calls():
            break
    _served_from_cache(usage, recorder)
    state = (await agent.aget_state(config)).values["messages"]
    assert is_summary_message(state[0])
    assert max(r["usage"]["prompt_tokens"] for _, r in recorder.main_calls()) <= 3000


def test_tool_calls_stay_with_their_results(tiny_qwen) -> None:
    # one request, then a long tool loop (the agent case): the cut falls inside the turn
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder, on_overflow="trim")
    request = HumanMessage("Check every shard of cluster EU-7 and report the slowest one.")
    history: list[BaseMessage] = [SYSTEM, request]
    for i in range(16):
        call_id = f"call_{i}"
        history.append(
            AIMessage("", tool_calls=[{"name": "read_shard", "args": {"shard": i}, "id": call_id}])
        )
        history.append(
            ToolMessage(_turn_text(i, tiny_qwen.max_model_len // 8, counter), tool_call_id=call_id)
        )
        model.invoke(history)
    _assert_inside_the_window(recorder.calls, tiny_qwen.max_model_len)
    trimmed = [c for c in recorder.main_calls() if len(c[0]["messages"]) < 2 + 2 * 16]
    assert trimmed, "the loop passed the window"
    for request_json, _ in recorder.main_calls():
        sent = request_json["messages"]
        assert sent[1]["content"] == request.content, "the request is kept"
        calls = {c["id"] for m in sent if m["role"] == "assistant" for c in m.get("tool_calls", [])}
        results = [m["tool_call_id"] for m in sent if m["role"] == "tool"]
        assert set(results) == calls
        assert sent[2]["role"] == "assistant"


def test_compaction_middleware_in_a_checkpointed_agent(tiny_qwen) -> None:
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder)

    middleware = ContextCompactionMiddleware(model, policy="summarize", summary_max_tokens=48)
    agent = create_agent(
        model,
        tools=[lookup],
        system_prompt=SYSTEM.content,
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "ops"}}
    for i in range(20):
        text = _turn_text(i, tiny_qwen.max_model_len // 10, counter)
        agent.invoke({"messages": [HumanMessage(text)]}, config)
    _assert_inside_the_window(recorder.calls, tiny_qwen.max_model_len)
    main = recorder.main_calls()
    stable = _prompt_prefix_stable(main)
    changes = [i for i, kept in enumerate(stable, start=1) if not kept]
    assert 2 <= len(changes) <= len(main) // 3
    # at most one summarizer call per compaction, and the compaction is in the checkpoint
    assert 1 <= len(recorder.summarizer_calls()) <= len(changes)
    state = agent.get_state(config).values["messages"]
    assert is_summary_message(state[0])
    assert len(state) < 2 * 20
    for request_json, _ in main:
        assert request_json["messages"][0]["content"] == SYSTEM.content
        assert [t["function"]["name"] for t in request_json["tools"]] == ["lookup"]


def test_concurrent_threads_of_one_agent_compact_on_their_own_shape(tiny_qwen) -> None:
    """Two threads, one compiled agent: a long system prompt with tools, and a short one
    without; each is compacted on its own shape (ChatVLLM raises rather than send a request
    over the window, so a compaction counted on the other thread's shape would fail here)."""
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder)
    wide_system = SYSTEM.content + " Runbook: " + "Page the database on-call twice. " * 300

    @tool
    def lookup(host: str) -> str:
        """Look up a host's status."""
        return f"{host}: ok"

    @tool
    def restart(host: str) -> str:
        """Restart a host."""
        return f"{host}: restarted"

    @wrap_model_call
    def shape(request, handler):
        wide = get_config()["configurable"]["thread_id"] == "wide"
        return handler(
            request.override(
                system_message=SystemMessage(wide_system if wide else SYSTEM.content),
                tools=[lookup, restart] if wide else [],
            )
        )

    compaction = ContextCompactionMiddleware(model, policy="summarize", summarizer="extractive")
    agent = create_agent(
        model,
        tools=[lookup, restart],
        middleware=[shape, compaction],
        checkpointer=InMemorySaver(),
    )
    turns = 12

    def run(thread: str) -> None:
        config = {"configurable": {"thread_id": thread}}
        for i in range(turns):
            text = _turn_text(i, tiny_qwen.max_model_len // 10, counter)
            agent.invoke({"messages": [HumanMessage(text)]}, config)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, ["wide", "narrow"]))
    _assert_inside_the_window(recorder.calls, tiny_qwen.max_model_len)
    prompt_tokens: dict[str, list[int]] = {"wide": [], "narrow": []}
    for request_json, response in recorder.main_calls():
        wide = request_json["messages"][0]["content"] == wide_system
        assert ("tools" in request_json) == wide
        prompt_tokens["wide" if wide else "narrow"].append(response["usage"]["prompt_tokens"])
    assert len(prompt_tokens["wide"]) == len(prompt_tokens["narrow"]) == turns
    limit = model.get_budget().input_limit()
    drops = {}
    for thread, sizes in prompt_tokens.items():
        assert max(sizes) <= limit, thread
        drops[thread] = [i for i in range(1, turns) if sizes[i] < sizes[i - 1]]
        assert drops[thread], f"{thread} never compacted"
    # the wide shape leaves less room: its thread compacted first
    assert drops["wide"][0] < drops["narrow"][0]
    for thread in ("wide", "narrow"):
        state = agent.get_state({"configurable": {"thread_id": thread}}).values["messages"]
        assert is_summary_message(state[0])


def test_tool_output_middleware_stores_summarizes_and_reads_back(tiny_qwen) -> None:
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder)
    # a 4K-token result on the 12K window: one summarizer call holds it
    raw = _turn_text(7, tiny_qwen.max_model_len // 3, counter)

    @tool
    def fetch_report(cluster: str) -> str:
        """Fetch the full incident report of a cluster."""
        return raw

    # The random-weight model cannot choose tools: its first two decisions are scripted,
    # everything else (tools, summarizer, store, the last model call) is real.
    decisions = [
        AIMessage(
            "", tool_calls=[{"name": "fetch_report", "args": {"cluster": "eu-7"}, "id": "r1"}]
        ),
        AIMessage(
            "",
            tool_calls=[
                {"name": READ_TOOL_NAME, "args": {"tool_call_id": "r1", "offset": 40}, "id": "r2"}
            ],
        ),
    ]

    @wrap_model_call
    def scripted(request, handler):
        return decisions.pop(0) if decisions else handler(request)

    # strategy="llm": the summarizer writes it (with "auto", the summary ranked by the
    # request is used without a model call when it keeps what the request points at)
    compression = ToolOutputCompressionMiddleware(
        model, threshold_tokens=1000, summary_max_tokens=150, strategy="llm"
    )
    store = InMemoryStore()
    agent = create_agent(
        model,
        tools=[fetch_report],
        middleware=[scripted, compression],
        checkpointer=InMemorySaver(),
        store=store,
    )
    config = {"configurable": {"thread_id": "incident"}}
    result = agent.invoke({"messages": [HumanMessage("Why is cluster eu-7 slow?")]}, config)
    messages = result["messages"]
    report = next(m for m in messages if isinstance(m, ToolMessage) and m.name == "fetch_report")
    savings = report.response_metadata[METADATA_KEY]
    raw_tokens = counter.count_text(raw)
    assert savings["raw_tokens"] == raw_tokens > 1000
    assert savings["summary_tokens"] <= 150
    assert "INC-4007" in report.text, "the ticket ID survived"
    # one real summarizer call wrote it; the raw output is in the store, by tool-call id
    assert len(recorder.summarizer_calls()) == 1
    _assert_inside_the_window(recorder.calls, tiny_qwen.max_model_len)
    assert load_tool_output(store, "r1", thread_id="incident")["content"] == raw
    # the agent read it back, uncompressed
    read = next(m for m in messages if isinstance(m, ToolMessage) and m.name == READ_TOOL_NAME)
    piece = read.text.split("\n", 1)[1]
    assert raw[40:].startswith(piece)
    assert counter.count_text(piece) <= 1000
    # the last model call went to vLLM with the summary, never the raw output
    assert len(recorder.main_calls()) == 1
    final_request, _ = recorder.main_calls()[-1]
    sent = {m.get("tool_call_id"): m["content"] for m in final_request["messages"]}
    assert sent["r1"] == report.text
    assert raw not in json.dumps(final_request)
    assert isinstance(messages[-1], AIMessage)
