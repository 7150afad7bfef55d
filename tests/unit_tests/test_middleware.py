"""The create_agent middlewares, in real LangGraph agents with a scripted chat model (offline)."""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import regex
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain.agents.structured_output import ToolStrategy
from langchain.tools import ToolRuntime
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_config
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command
from pydantic import BaseModel, Field

from langchain_vllm_budget.budget import BudgetPlan, TokenBudget, compaction_target
from langchain_vllm_budget.capabilities import budgeted, token_counter_of
from langchain_vllm_budget.compaction import is_summary_message, summary_message
from langchain_vllm_budget.compression import extract_entities
from langchain_vllm_budget.middleware import (
    ContextCompactionMiddleware,
    ToolOutputCompressionMiddleware,
    load_tool_output,
    tool_outputs,
)
from langchain_vllm_budget.middleware.tool_outputs import (
    METADATA_KEY,
    READ_TOOL_NAME,
    _last_request,
    find_lines,
)
from langchain_vllm_budget.tokenizers import ApproximateTokenCounter, tools_to_openai_dicts
from tests.fakes import ThreadRecordingCounter

COUNTER = ApproximateTokenCounter()
LIMIT = 1500
SYSTEM = "You are an operations assistant. Track every ticket and host you are told about."


class ScriptedModel(BaseChatModel):
    """Answers with scripted messages (then "ok"), counts like ChatVLLM, records prompts."""

    script: list[AIMessage] = Field(default_factory=list)
    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    tools_seen: list[Any] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.prompts.append(list(messages))
        reply = self.script.pop(0) if self.script else AIMessage("ok")
        return ChatResult(generations=[ChatGeneration(message=reply)])

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedModel:
        self.tools_seen = list(tools)
        return self

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None, **kwargs: Any
    ) -> int:
        return COUNTER.count_messages(messages, tools_to_openai_dicts(tools))


def _model(**kwargs: Any) -> ScriptedModel:
    return ScriptedModel(profile={"max_input_tokens": LIMIT}, **kwargs)


def _ticket(i: int) -> str:
    return (
        f"Ticket INC-{1000 + i}: host db-{i}.prod at /var/log/db-{i}.log reports latency "
        f"{200 + i} ms. " + "The on-call engineer attached the usual notes. " * 5
    )


@tool
def lookup(host: str) -> str:
    """Look a host up."""
    return f"{host}: healthy"


def _chat_agent(model: ScriptedModel, middleware: ContextCompactionMiddleware) -> Any:
    return create_agent(
        model,
        tools=[lookup],
        system_prompt=SYSTEM,
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )


@pytest.mark.parametrize("policy", ["summarize", "trim"])
def test_compaction_happens_once_in_state_and_the_prefix_stays(policy: str) -> None:
    model = _model()
    middleware = ContextCompactionMiddleware(model, policy=policy, summarizer="extractive")
    agent = _chat_agent(model, middleware)
    config = {"configurable": {"thread_id": "t"}}
    for i in range(30):
        agent.invoke({"messages": [HumanMessage(_ticket(i))]}, config)
    prompts = model.prompts
    tools = tools_to_openai_dicts(model.tools_seen)
    sizes = [COUNTER.count_messages(p, tools) for p in prompts]
    assert max(sizes) <= LIMIT, "no request over the limit"
    assert all(isinstance(p[0], SystemMessage) and p[0].text == SYSTEM for p in prompts)
    changed = [
        i for i in range(1, len(prompts)) if prompts[i][: len(prompts[i - 1])] != prompts[i - 1]
    ]
    # a compaction changes the prefix once, then calls only append until the next one
    assert 2 <= len(changed) <= len(prompts) // 4
    for i in changed:
        assert sizes[i] <= int(LIMIT * 0.6) + 40  # down to the target, plus the new turn
    state = agent.get_state(config).values["messages"]
    assert len(state) < 60  # 30 turns of 2 messages were compacted in the checkpoint
    if policy == "summarize":
        assert is_summary_message(state[0])
        assert "INC-" in state[0].text
    else:
        assert not any(is_summary_message(m) for m in state)
        assert isinstance(state[0], HumanMessage)


class _Report(BaseModel):
    """An incident report."""

    ticket: str = Field(description="The ticket ID exactly as the user wrote it. " * 6)
    hosts: list[str] = Field(description="Every affected host, fully qualified. " * 6)
    root_cause: str = Field(description="The root cause, with the parameter and value. " * 6)


@pytest.mark.parametrize("structured", ["tool strategy", "bare schema"])
def test_the_structured_output_tool_is_counted(structured: str) -> None:
    """``create_agent`` binds a ``ToolStrategy``'s schema as one more tool after the
    middleware has seen ``request.tools``: its definition is counted too, so no request
    goes over the limit (a model without the provider's structured output, here)."""
    limit = 800

    class Reporting(ScriptedModel):
        def _generate(self, messages: list[BaseMessage], *a: Any, **k: Any) -> ChatResult:
            self.prompts.append(list(messages))
            args = {"ticket": "INC-1", "hosts": [], "root_cause": "x"}
            call = {"name": "_Report", "args": args, "id": f"r{len(self.prompts)}"}
            return ChatResult(
                generations=[ChatGeneration(message=AIMessage("", tool_calls=[call]))]
            )

    model = Reporting(profile={"max_input_tokens": limit})
    agent = create_agent(
        model,
        tools=[],
        system_prompt="sys",
        middleware=[ContextCompactionMiddleware(model, summarizer="extractive")],
        response_format=ToolStrategy(_Report) if structured == "tool strategy" else _Report,
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "s"}}
    for i in range(20):
        agent.invoke({"messages": [HumanMessage(f"INC-{i} " + "word " * 40)]}, config)
    tools = tools_to_openai_dicts(model.tools_seen)
    assert [t["function"]["name"] for t in tools] == ["_Report"]
    sizes = [COUNTER.count_messages(p, tools) for p in model.prompts]
    assert max(sizes) <= limit
    assert max(sizes) > limit - 200, "the conversation did reach the limit"


def test_summarizer_calls_are_not_streamed_as_the_agents_answer() -> None:
    """LangGraph's ``messages`` stream carries the agent's replies, not the summaries the
    compaction asks for (tagged ``nostream``, as LangChain's own summarization does)."""
    model = _model()
    summarizer = _model(script=[AIMessage("- SUMMARY-TEXT of the tickets")] * 20)
    middleware = ContextCompactionMiddleware(model, summarizer=summarizer, strategy="llm")
    agent = _chat_agent(model, middleware)
    config = {"configurable": {"thread_id": "t"}}
    streamed: list[str] = []
    for i in range(30):
        for chunk, _ in agent.stream(
            {"messages": [HumanMessage(_ticket(i))]}, config, stream_mode="messages"
        ):
            streamed.append(chunk.text)
    assert summarizer.prompts, "the summarizer was called"
    assert "ok" in streamed, "the agent's replies are streamed"
    assert not any("SUMMARY-TEXT" in text for text in streamed)


def test_one_summarizer_call_per_compaction_in_the_graph() -> None:
    model = _model()
    summarizer = _model(script=[AIMessage("- tickets reviewed")] * 20)
    middleware = ContextCompactionMiddleware(model, summarizer=summarizer, strategy="llm")
    agent = _chat_agent(model, middleware)
    config = {"configurable": {"thread_id": "t"}}
    for i in range(30):
        agent.invoke({"messages": [HumanMessage(_ticket(i))]}, config)
    changed = [
        i
        for i in range(1, len(model.prompts))
        if model.prompts[i][: len(model.prompts[i - 1])] != model.prompts[i - 1]
    ]
    assert len(summarizer.prompts) == len(changed) >= 2
    # the guard restored what the fake's summary dropped
    state = agent.get_state(config).values["messages"]
    assert is_summary_message(state[0])
    assert "INC-" in state[0].text


def test_a_first_request_over_the_limit_is_compacted_and_then_persisted() -> None:
    model = _model()
    middleware = ContextCompactionMiddleware(model, policy="summarize", summarizer="extractive")
    agent = _chat_agent(model, middleware)
    config = {"configurable": {"thread_id": "t"}}
    history: list[BaseMessage] = []
    for i in range(20):
        history += [HumanMessage(_ticket(i)), AIMessage(f"Noted INC-{1000 + i}.")]
    history.append(HumanMessage("Which hosts were slow?"))
    agent.invoke({"messages": history}, config)
    first = model.prompts[0]
    tools = tools_to_openai_dicts(model.tools_seen)
    # the system prompt and tools were unknown before this call: compacted inside it
    assert COUNTER.count_messages(first, tools) <= LIMIT
    assert is_summary_message(first[1])
    agent.invoke({"messages": [HumanMessage("And the slowest?")]}, config)
    second = model.prompts[1]
    # the next turn put that same compaction into the state: same prefix, no new summary
    assert second[: len(first)] == first
    state = agent.get_state(config).values["messages"]
    assert is_summary_message(state[0])
    assert state[0].text == first[1].text


async def test_async_agent_compacts_the_same_way() -> None:
    model = _model()
    middleware = ContextCompactionMiddleware(model, policy="summarize", summarizer="extractive")
    agent = _chat_agent(model, middleware)
    config = {"configurable": {"thread_id": "t"}}
    for i in range(30):
        await agent.ainvoke({"messages": [HumanMessage(_ticket(i))]}, config)
    tools = tools_to_openai_dicts(model.tools_seen)
    assert max(COUNTER.count_messages(p, tools) for p in model.prompts) <= LIMIT
    state = (await agent.aget_state(config)).values["messages"]
    assert is_summary_message(state[0])


def test_compaction_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_input_tokens"):
        ContextCompactionMiddleware(ScriptedModel())
    with pytest.raises(ValueError, match="policy"):
        ContextCompactionMiddleware(_model(), policy="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compaction target"):
        ContextCompactionMiddleware(_model(), target=2.0)
    middleware = ContextCompactionMiddleware(ScriptedModel(), max_input_tokens=900)
    assert middleware._limit(ScriptedModel()) == 900


def test_missing_agents_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n.startswith("langchain_vllm_budget.middleware")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain.agents.middleware", None)
    with pytest.raises(ImportError, match=r"langchain-vllm-budget\[agents\]"):
        importlib.import_module("langchain_vllm_budget.middleware")


# --------------------------------------------------------------------------- tool outputs

REPORT = "\n".join(
    f"Run {i}: job_{i:04d} on node gpu-{i % 7}.eu-west finished in {30 + i} s, "
    f"artifact s3://runs/job_{i:04d}/model.safetensors, exit_code=0. "
    "Nothing unusual happened during this run and the logs look normal."
    for i in range(120)
)


@tool
def fetch_report(day: str) -> str:
    """Fetch the day's job report."""
    return REPORT


def _tool_agent(model: ScriptedModel, middleware: ToolOutputCompressionMiddleware, **kw: Any):
    return create_agent(
        model, tools=[fetch_report], middleware=[middleware], checkpointer=InMemorySaver(), **kw
    )


def _call(name: str, args: dict[str, Any], call_id: str) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id}])


@tool("fetch_report")
def fetch_report_command(day: str, runtime: ToolRuntime) -> Command[Any]:
    """Fetch the day's job report (as a subagent or handoff tool answers: a Command)."""
    del day  # the report is the same every day
    result = ToolMessage(REPORT, tool_call_id=runtime.tool_call_id, name="fetch_report")
    note = AIMessage("Fetched by the reports subagent.")
    # A second result for the call: only the one compressed is replaced.
    again = ToolMessage("Report sent again.", tool_call_id=runtime.tool_call_id)
    return Command(update={"messages": [note, result, again]})


@pytest.mark.parametrize("use_async", [False, True])
def test_a_large_result_in_a_command_is_summarized_and_stored(use_async: bool) -> None:
    model = _model(script=[_call("fetch_report", {"day": "2024-05-14"}, "call_report")])
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=500, summary_max_tokens=200, summarizer="extractive"
    )
    store = InMemoryStore()
    agent = create_agent(
        model,
        tools=[fetch_report_command],
        middleware=[middleware],
        checkpointer=InMemorySaver(),
        store=store,
    )
    config = {"configurable": {"thread_id": "c"}}
    request = {"messages": [HumanMessage("Which jobs ran on gpu-3?")]}
    asyncio.run(agent.ainvoke(request, config)) if use_async else agent.invoke(request, config)
    messages = agent.get_state(config).values["messages"]
    result, again = [m for m in messages if isinstance(m, ToolMessage)]
    assert again.text == "Report sent again."
    assert METADATA_KEY in result.response_metadata
    assert COUNTER.count_text(result.text.rsplit("\n\n[", 1)[0]) <= 200
    assert "job_0003 on node gpu-3.eu-west" in result.text
    assert load_tool_output(store, "call_report", thread_id="c")["content"] == REPORT
    # the Command's other messages stay as they were
    assert any(m.text == "Fetched by the reports subagent." for m in messages)


# A period is what LangGraph's stores refuse in a namespace label; thread ids often have one.
@pytest.mark.parametrize(
    ("thread", "label"), [("t1", "t1"), ("alice@example.com", "%alice@example%2Ecom")]
)
def test_a_large_tool_result_is_summarized_stored_and_readable(thread: str, label: str) -> None:
    model = _model(
        script=[
            _call("fetch_report", {"day": "2024-05-14"}, "call_report"),
            _call(READ_TOOL_NAME, {"tool_call_id": "call_report", "offset": 100}, "call_read"),
        ]
    )
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=500, summary_max_tokens=200, summarizer="extractive"
    )
    store = InMemoryStore()
    agent = _tool_agent(model, middleware, store=store)
    config = {"configurable": {"thread_id": thread}}
    agent.invoke({"messages": [HumanMessage("Which jobs ran on gpu-3?")]}, config)
    assert READ_TOOL_NAME in [t.name for t in model.tools_seen]
    messages = agent.get_state(config).values["messages"]
    compressed = next(
        m for m in messages if isinstance(m, ToolMessage) and m.name == "fetch_report"
    )
    raw_tokens = COUNTER.count_text(REPORT)
    summary = compressed.text.rsplit("\n\n[", 1)[0]
    assert COUNTER.count_text(summary) <= 200 < raw_tokens
    assert f'{READ_TOOL_NAME}(tool_call_id="call_report")' in compressed.text
    savings = compressed.response_metadata[METADATA_KEY]
    assert savings["raw_tokens"] == raw_tokens
    assert savings["saved_tokens"] == raw_tokens - savings["summary_tokens"] > 0
    assert savings["store_namespace"] == ["tool_outputs", label]
    # the summary keeps what the question asks for first (the runs on gpu-3), and says what
    # 120 runs' worth of paths could not fit under the cap
    assert "job_0003 on node gpu-3.eu-west" in summary
    assert "s3://runs/job_0010/model.safetensors" in summary  # the next run on gpu-3
    assert "s3://runs/job_0002/model.safetensors" not in summary  # gpu-2: not asked for
    assert summary.splitlines()[-1].startswith("- left out (less related to the request")
    assert savings["missing"]
    assert savings["retention"] == pytest.approx(
        1 - len(savings["missing"]) / len(extract_entities(REPORT)), abs=0.01
    )
    # nothing lost: the raw output is in the store, by tool-call id
    assert load_tool_output(store, "call_report", thread_id=thread)["content"] == REPORT
    assert load_tool_output(store, "call_report")["content"] == REPORT
    assert load_tool_output(store, "call_report", thread_id="t2") is None
    # and the agent read it back through the tool, uncompressed
    read = next(m for m in messages if isinstance(m, ToolMessage) and m.name == READ_TOOL_NAME)
    assert METADATA_KEY not in read.response_metadata
    header, piece = read.text.split("\n", 1)
    assert REPORT[100:].startswith(piece)
    assert COUNTER.count_text(piece) <= 500
    assert f"offset={100 + len(piece)}" in header
    # the model was sent the summary, never the raw output
    assert all(REPORT not in m.text for prompt in model.prompts for m in prompt)


def test_the_read_tool_finds_the_lines_a_summary_left_out() -> None:
    model = _model(
        script=[
            _call("fetch_report", {"day": "d"}, "c1"),
            _call(READ_TOOL_NAME, {"tool_call_id": "c1", "pattern": r"JOB_011[0-2]"}, "r1"),
            _call(READ_TOOL_NAME, {"tool_call_id": "c1", "pattern": "gpu-3"}, "r2"),
            _call(READ_TOOL_NAME, {"tool_call_id": "c1", "pattern": "gpu-[3"}, "r3"),
            _call(READ_TOOL_NAME, {"tool_call_id": "c1", "pattern": "gpu-9"}, "r4"),
        ]
    )
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=200, summary_max_tokens=100, summarizer="extractive"
    )
    agent = _tool_agent(model, middleware, store=InMemoryStore())
    config = {"configurable": {"thread_id": "t"}}
    agent.invoke({"messages": [HumanMessage("How long did the last jobs take?")]}, config)
    reads = {
        m.tool_call_id: m.text
        for m in agent.get_state(config).values["messages"]
        if isinstance(m, ToolMessage) and m.name == READ_TOOL_NAME
    }
    lines = REPORT.splitlines(keepends=True)
    offsets = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    # every match, each line with its offset (case-insensitive: JOB_ finds job_)
    header, *found = reads["r1"].splitlines()
    assert "3 lines match pattern='JOB_011[0-2]', shown all of them" in header
    assert found == [f"{offsets[i]}: {lines[i].strip()}" for i in range(110, 113)]
    # more matches than one reply holds: the first ones, and where to go on
    header, *found = reads["r2"].splitlines()
    gpu3 = [i for i in range(120) if i % 7 == 3]
    assert f"{len(gpu3)} lines match pattern='gpu-3'" in header
    assert 0 < len(found) < len(gpu3)
    assert COUNTER.count_text("\n".join(found)) <= 200
    assert found[0] == f"{offsets[3]}: {lines[3].strip()}"
    assert f"call again with offset={offsets[gpu3[len(found)]]}" in header
    # a bad pattern says what to change; no match says so
    assert "not a valid regular expression" in reads["r3"]
    assert "escape the special characters" in reads["r3"]
    assert "no line matches pattern='gpu-9'" in reads["r4"]


def test_a_search_shows_the_match_of_a_long_line_and_stops_a_runaway_pattern(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # minified JSON: one long line, the match far from its start
    minified = '{"rows": [' + ", ".join(f'{{"id": "r{i}"}}' for i in range(400)) + "]}"
    found = find_lines(minified, regex.compile("r371"))
    ((line_start, start, text),) = found.lines
    assert '"r371"' in text
    assert minified[start : start + len(text)] == text  # the offset is where the text starts
    assert line_start == 0  # paging goes on from the line: its match is not skipped
    assert len(text) <= 400
    assert find_lines("  indented needle\n", regex.compile("needle")).lines == [
        (0, 2, "indented needle")
    ]
    # a pattern that backtracks for ever is stopped, and the reply says where
    monkeypatch.setattr(tool_outputs, "_SEARCH_SECONDS", 0.2)
    runaway = "ok line\n" + "a" * 30_000 + "b\n"
    stopped = find_lines(runaway + "needle\n", regex.compile(r"(a+)+$|needle"))
    assert stopped.stopped_at == len(runaway)  # after the line it could not finish
    assert stopped.lines == []
    after = find_lines(runaway + "needle\n", regex.compile(r"(a+)+$|needle"), len(runaway))
    assert [text for _, _, text in after.lines] == ["needle"]
    # the limit is for the whole search: past it, no line is searched
    monkeypatch.setattr(tool_outputs, "_SEARCH_SECONDS", 0.0)
    assert find_lines("x\n" * 5, regex.compile("x")) == tool_outputs.FoundLines([], 0)
    monkeypatch.setattr(tool_outputs, "_SEARCH_SECONDS", 0.2)
    # one match longer than a reply holds is cut to fit: the reply always moves on
    middleware = ToolOutputCompressionMiddleware(
        _model(script=[]), threshold_tokens=20, summary_max_tokens=10, summarizer="extractive"
    )
    value = {"tool": "t", "content": "x " * 300 + "needle\nneedle again\n"}
    reply = middleware._read(value, "c1", 0, 8000, "needle")
    header, first = reply.split("\n")
    assert "2 lines match" in header
    assert "offset=" in header
    assert COUNTER.count_text(first) <= 20
    slow = middleware._read({"tool": "t", "content": runaway}, "c1", 0, 8000, r"(a+)+$")
    assert "no line matches" in slow
    assert f"before offset={len(runaway)} (call again with that offset to go on" in slow


def test_small_results_and_unknown_ids_pass_through() -> None:
    model = _model(
        script=[
            _call("fetch_report", {"day": "2024-05-14"}, "call_small"),
            _call(READ_TOOL_NAME, {"tool_call_id": "nope"}, "call_read"),
        ]
    )
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=100_000, summarizer="extractive"
    )
    agent = _tool_agent(model, middleware, store=InMemoryStore())
    config = {"configurable": {"thread_id": "t"}}
    agent.invoke({"messages": [HumanMessage("report?")]}, config)
    messages = agent.get_state(config).values["messages"]
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert results[0].text == REPORT
    assert METADATA_KEY not in results[0].response_metadata
    assert "No stored output for tool_call_id='nope'" in results[1].text


def test_a_summarizer_model_writes_the_summary_under_the_cap() -> None:
    summarizer = _model(script=[AIMessage("- jobs ran fine")])
    model = _model(script=[_call("fetch_report", {"day": "d"}, "c1")])
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=500, summary_max_tokens=150, summarizer=summarizer
    )
    agent = _tool_agent(model, middleware, store=InMemoryStore())
    config = {"configurable": {"thread_id": "t"}}
    agent.invoke({"messages": [HumanMessage("Which jobs ran on gpu-3?")]}, config)
    assert len(summarizer.prompts) == 1
    assert "Which jobs ran on gpu-3?" in summarizer.prompts[0][1].text
    result = next(
        m for m in agent.get_state(config).values["messages"] if isinstance(m, ToolMessage)
    )
    savings = result.response_metadata[METADATA_KEY]
    assert savings["summary_tokens"] <= 150
    assert savings["method"] in ("llm+restored", "extractive")


async def test_async_tool_compression_and_read_back() -> None:
    model = _model(
        script=[
            _call("fetch_report", {"day": "d"}, "c1"),
            _call(READ_TOOL_NAME, {"tool_call_id": "c1", "limit": 50}, "c2"),
        ]
    )
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=500, summarizer="extractive"
    )
    store = InMemoryStore()
    agent = _tool_agent(model, middleware, store=store)
    config = {"configurable": {"thread_id": "a"}}
    await agent.ainvoke({"messages": [HumanMessage("report?")]}, config)
    messages = (await agent.aget_state(config)).values["messages"]
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert METADATA_KEY in results[0].response_metadata
    assert results[1].text.split("\n", 1)[1] == REPORT[:50]
    assert (await store.aget(("tool_outputs", "a"), "c1")).value["content"] == REPORT


def test_without_a_store_nothing_is_compressed_silently() -> None:
    model = _model(script=[_call("fetch_report", {"day": "d"}, "c1")])
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=500, summarizer="extractive"
    )
    agent = _tool_agent(model, middleware)
    with pytest.raises(ValueError, match="store"):
        agent.invoke({"messages": [HumanMessage("report?")]}, {"configurable": {"thread_id": "t"}})


class CountingScriptedModel(ScriptedModel):
    """A scripted model that is a BudgetedModel: its own counter and window, as ChatVLLM."""

    counter: Any = None

    def get_token_counter(self) -> Any:
        return self.counter

    def get_budget(self) -> TokenBudget:
        return TokenBudget(max_model_len=4 * LIMIT)

    def get_budget_plan(self, messages: Any, **kwargs: Any) -> BudgetPlan:
        return self.get_budget().plan(self.counter.count_messages(messages))

    async def aget_budget_plan(self, messages: Any, **kwargs: Any) -> BudgetPlan:
        return self.get_budget_plan(messages, **kwargs)

    def get_requested_max_tokens(self, **kwargs: Any) -> int | None:
        requested = kwargs.get("max_completion_tokens", kwargs.get("max_tokens"))
        return requested if isinstance(requested, int) else None


def test_the_scripted_model_with_a_counter_is_a_budgeted_model() -> None:
    model = CountingScriptedModel(counter=ApproximateTokenCounter())
    assert budgeted(model) is model
    assert token_counter_of(model) is model.counter
    assert budgeted(_model()) is None
    assert token_counter_of(_model()).name == "approximate"


async def test_async_tool_compression_never_counts_on_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    counter = ThreadRecordingCounter()
    summarizer = _model(script=[AIMessage("- jobs ran fine")])
    model = CountingScriptedModel(
        profile={"max_input_tokens": LIMIT},
        counter=counter,
        script=[_call("fetch_report", {"day": "d"}, "c1")],
    )
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=500, summary_max_tokens=150, summarizer=summarizer
    )
    agent = _tool_agent(model, middleware, store=InMemoryStore())
    config = {"configurable": {"thread_id": "t"}}
    await agent.ainvoke({"messages": [HumanMessage("Which jobs ran on gpu-3?")]}, config)
    result = next(
        m for m in (await agent.aget_state(config)).values["messages"] if isinstance(m, ToolMessage)
    )
    assert result.response_metadata[METADATA_KEY]["summary_tokens"] <= 150
    assert len(summarizer.prompts) == 1
    # the result, the span and the summary were counted, never on the event loop
    assert counter.threads
    assert loop_thread not in counter.threads


def test_settings_come_from_the_environment_and_are_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_BUDGET_SUMMARY_MAX_TOKENS", "120")
    monkeypatch.setenv("VLLM_BUDGET_COMPRESSION", "extractive")
    tools = ToolOutputCompressionMiddleware(_model(), threshold_tokens=500)
    assert (tools.summary_max_tokens, tools.strategy) == (120, "extractive")
    compaction = ContextCompactionMiddleware(_model())
    assert compaction.compactor.summary.max_tokens == 120
    assert compaction.compactor.summary.strategy == "extractive"
    explicit = ContextCompactionMiddleware(_model(), summary_max_tokens=90, strategy="llm")
    assert (explicit.summary.max_tokens, explicit.compactor.summary.strategy) == (90, "llm")
    with pytest.raises(ValueError, match="'auto', 'llm' or 'extractive'"):
        ToolOutputCompressionMiddleware(_model(), strategy="never")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'auto', 'llm' or 'extractive'"):
        ContextCompactionMiddleware(_model(), strategy="never")  # type: ignore[arg-type]


def test_threshold_must_exceed_the_cap() -> None:
    with pytest.raises(ValueError, match="threshold_tokens"):
        ToolOutputCompressionMiddleware(_model(), threshold_tokens=100, summary_max_tokens=200)


def test_the_request_a_tool_output_summary_ranks_by_is_never_a_summary() -> None:
    """After a compaction cut inside a tool loop, the newest human message can be a summary
    (this package's, or LangChain's ``SummarizationMiddleware``'s): the user's request is
    the one before it."""
    langchains = HumanMessage(
        "Here is a summary of the conversation to date: ...",
        additional_kwargs={"lc_source": "summarization"},
    )
    for summary in (summary_message("- INC-1 reviewed"), langchains):
        messages = [HumanMessage("Why is db-3 slow?"), summary, _call("lookup", {}, "c1")]
        assert _last_request({"messages": messages}) == "Why is db-3 slow?"
    assert _last_request({"messages": [summary_message("- x")]}) == ""


def test_no_summarizer_call_when_the_ranked_summary_keeps_what_the_request_asks() -> None:
    summarizer = _model(script=[AIMessage("- should not be asked")])
    model = _model(script=[_call("fetch_report", {"day": "2024-05-14"}, "c1")])
    middleware = ToolOutputCompressionMiddleware(
        model, threshold_tokens=500, summary_max_tokens=150, summarizer=summarizer
    )
    agent = _tool_agent(model, middleware, store=InMemoryStore())
    config = {"configurable": {"thread_id": "t"}}
    agent.invoke({"messages": [HumanMessage("Where is the artifact of job_0042?")]}, config)
    result = next(
        m for m in agent.get_state(config).values["messages"] if isinstance(m, ToolMessage)
    )
    savings = result.response_metadata[METADATA_KEY]
    assert summarizer.prompts == []
    assert savings["method"] == "extractive"
    assert savings["query_missing"] == []
    assert "s3://runs/job_0042/model.safetensors" in result.text


WIDE_SYSTEM = SYSTEM + " Runbook: " + "Escalate to the database on-call after two pages. " * 40


@tool
def restart(host: str) -> str:
    """Restart a host."""
    return f"{host}: restarted"


def _shaped_agent(model: ScriptedModel, compaction: ContextCompactionMiddleware) -> Any:
    """One compiled agent; each thread gets its own system prompt and tools from middleware."""

    @wrap_model_call
    def shape(request: Any, handler: Any) -> Any:
        wide = get_config()["configurable"]["thread_id"] == "wide"
        return handler(
            request.override(
                system_message=SystemMessage(WIDE_SYSTEM if wide else SYSTEM),
                tools=[lookup, restart] if wide else [],
            )
        )

    return create_agent(
        model,
        tools=[lookup, restart],
        middleware=[shape, compaction],
        checkpointer=InMemorySaver(),
    )


def test_concurrent_threads_each_compact_on_their_own_shape() -> None:
    model = _model()
    compaction = ContextCompactionMiddleware(model, policy="summarize", summarizer="extractive")
    attributes = dict(vars(compaction))
    agent = _shaped_agent(model, compaction)

    def run(thread: str) -> None:
        config = {"configurable": {"thread_id": thread}}
        for i in range(24):
            agent.invoke({"messages": [HumanMessage(_ticket(i))]}, config)

    workers = [threading.Thread(target=run, args=(name,)) for name in ("wide", "narrow")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    tools = {"wide": tools_to_openai_dicts([lookup, restart]), "narrow": None}
    sizes: dict[str, list[int]] = {"wide": [], "narrow": []}
    for prompt in model.prompts:
        thread = "wide" if prompt[0].text == WIDE_SYSTEM else "narrow"
        sizes[thread].append(COUNTER.count_messages(prompt, tools[thread]))
    assert len(sizes["wide"]) == len(sizes["narrow"]) == 24
    for thread, counted in sizes.items():
        assert max(counted) <= LIMIT, f"{thread}: a request over the limit"
    # each thread compacted on its own shape: the wide one sooner
    drops = {t: [i for i in range(1, 24) if s[i] < s[i - 1]] for t, s in sizes.items()}
    assert drops["narrow"]
    assert drops["wide"]
    assert drops["wide"][0] < drops["narrow"][0]
    # nothing about a run was kept on the middleware
    assert vars(compaction).keys() == attributes.keys()
    assert all(vars(compaction)[k] is v for k, v in attributes.items())


@pytest.mark.parametrize("max_tokens", [None, 64, 5200])
def test_a_compaction_leaves_the_calls_max_tokens_inside_the_window(
    max_tokens: int | None,
) -> None:
    """The target is within what leaves the call's max_tokens and margin (budget.py's rule)."""
    model = CountingScriptedModel(counter=COUNTER, profile={"max_input_tokens": LIMIT})
    budget = model.get_budget()
    middleware = ContextCompactionMiddleware(model, policy="trim")
    history: list[Any] = []
    for i in range(20):
        history += [HumanMessage(_ticket(i)), AIMessage(f"Noted INC-{1000 + i}.")]
    history.append(HumanMessage("Which hosts were slow?"))
    settings = {} if max_tokens is None else {"max_tokens": max_tokens}
    request = ModelRequest(
        model=model,
        messages=history,
        system_message=SystemMessage(SYSTEM),
        model_settings=settings,
    )
    sent: list[ModelRequest[Any]] = []

    def handler(request: ModelRequest[Any]) -> ModelResponse[Any]:
        sent.append(request)
        return ModelResponse(result=[AIMessage("ok")])

    middleware.wrap_model_call(request, handler)
    tokens = COUNTER.count_messages([SystemMessage(SYSTEM), *sent[0].messages])
    target = compaction_target(
        input_limit=LIMIT, share=middleware.target, output_limit=budget.output_limit(max_tokens)
    )
    assert tokens <= target
    if max_tokens is not None:
        assert tokens + max_tokens + budget.safety_margin <= 4 * LIMIT
    if max_tokens == 5200:  # the call's own reserve, not the share, set the target
        assert target < int(middleware.target * LIMIT)
