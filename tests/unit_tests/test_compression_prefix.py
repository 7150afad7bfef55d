"""The summarizer request that reuses the conversation's prefix (offline).

When the summarizer is the chat model itself, a compaction's summarizer request is the
conversation as it was sent, up to the cut, with the same tools and prompt fields, then one
instruction; a separate summarizer, or a prefix that does not fit, gets the fresh prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import Field

from langchain_vllm_budget import ChatVLLM, TokenBudget
from langchain_vllm_budget.budget import BudgetPlan
from langchain_vllm_budget.chat_models import _pipeline
from langchain_vllm_budget.compaction import CompactionMemory, CompactionResult, Compactor
from langchain_vllm_budget.compression import COMPRESSION_SYSTEM_PROMPT, SummarySpec
from langchain_vllm_budget.compression.prefix import (
    PREFIX_STACKED_SUMMARY_INSTRUCTION,
    PREFIX_SUMMARY_INSTRUCTION,
    PrefixCall,
)
from langchain_vllm_budget.middleware import ContextCompactionMiddleware
from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.tokenizers import (
    ApproximateTokenCounter,
    PromptOptions,
    TokenCounter,
    TransformersTokenCounter,
    tools_to_openai_dicts,
)

COUNTER = ApproximateTokenCounter()
LIMIT = 1200
CAP = 60
SYSTEM = SystemMessage("You are an operations assistant. Track every ticket and host.")
FIRST_LINE = PREFIX_SUMMARY_INSTRUCTION.split("\n", 1)[0]


@tool
def lookup(host: str) -> str:
    """Look a host up."""
    return f"{host}: healthy"


TOOLS = tools_to_openai_dicts([lookup])
assert TOOLS is not None
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


class Recording(FakeListChatModel):
    """Replies from a list; remembers each call's messages and keyword arguments."""

    calls: list[tuple[list[BaseMessage], dict[str, Any]]] = Field(default_factory=list)

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.calls.append(
            (list(messages), {k: v for k, v in kwargs.items() if k not in ("stop", "run_manager")})
        )
        return super()._call(messages, *args, **kwargs)

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Recording:
        return self

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None, **kwargs: Any
    ) -> int:
        return COUNTER.count_messages(messages, tools_to_openai_dicts(tools))


class WindowedRecording(Recording):
    """A :class:`Recording` that knows a window (a ``BudgetedModel``, like ChatVLLM)."""

    window: int = 4096

    def get_token_counter(self) -> TokenCounter:
        return COUNTER

    def get_budget(self) -> TokenBudget:
        return TokenBudget(
            max_model_len=self.window, safety_margin=0, output_reserve=16, min_output_tokens=16
        )

    def get_budget_plan(self, messages: Any, **kwargs: Any) -> BudgetPlan:
        raise NotImplementedError

    async def aget_budget_plan(self, messages: Any, **kwargs: Any) -> BudgetPlan:
        raise NotImplementedError

    def get_requested_max_tokens(self, **kwargs: Any) -> int | None:
        requested = kwargs.get("max_completion_tokens", kwargs.get("max_tokens"))
        return requested if isinstance(requested, int) else None


def _count(messages: Sequence[BaseMessage]) -> int:
    return COUNTER.count_messages(messages, TOOLS)


def _history(turns: int = 14) -> list[BaseMessage]:
    history: list[BaseMessage] = [SYSTEM]
    for i in range(turns):
        history.append(
            HumanMessage(
                f"Ticket INC-{1000 + i}: host db-{i}.prod at /var/log/db-{i}.log reports "
                f"latency {200 + i} ms with retries={i}. " + "Notes follow. " * 6
            )
        )
        history.append(AIMessage(f"Noted INC-{1000 + i}; checking db-{i}.prod."))
    return history


def _compactor(model: Recording, *, prefix: PrefixCall | None, strategy: str = "llm") -> Compactor:
    spec = SummarySpec(max_tokens=CAP, model=model, counter=COUNTER, strategy=strategy)  # type: ignore[arg-type]
    return Compactor(target=0.6, memory=CompactionMemory(), summary=spec, prefix=prefix)


def _sent_prefix(history: list[BaseMessage], result: CompactionResult) -> list[BaseMessage]:
    """The messages the summary replaced, with the system message: the prefix up to the cut."""
    return history[: 1 + result.report.replaced]


def _check_prefix_call(model: Recording, history: list[BaseMessage], result: CompactionResult):
    ((messages, kwargs),) = model.calls
    assert result.report.summary_request == "prefix"
    assert result.report.summarizer_calls == 1
    assert messages[:-1] == _sent_prefix(history, result)
    instruction = messages[-1]
    assert isinstance(instruction, HumanMessage)
    assert instruction.text.startswith(FIRST_LINE)
    assert f"at most {CAP} tokens" in instruction.text
    # the newest request is named in the instruction, the summary lands in the compaction
    assert "INC-1013" in instruction.text
    # the same tools, no tool call, the call's prompt fields (not its sampling fields)
    assert kwargs == {
        "tools": TOOLS,
        "tool_choice": "none",
        "max_tokens": CAP,
        "extra_body": NO_THINKING,
    }


SENT = PrefixCall.from_call(TOOLS, {"temperature": 0.2, "extra_body": {**NO_THINKING, "top_k": 3}})


def test_the_summarizer_request_is_the_sent_prefix_and_the_instruction() -> None:
    model = Recording(responses=["- INC-1000 db-0.prod latency 200 ms"])
    history = _history()
    result = _compactor(model, prefix=SENT).compact(
        history, policy="summarize", count=_count, limit=LIMIT
    )
    assert result.fits
    _check_prefix_call(model, history, result)
    assert result.report.as_dict()["summary_request"] == "prefix"


def test_async_compaction_sends_the_same_prefix_request() -> None:
    model = Recording(responses=["- INC-1000 db-0.prod latency 200 ms"])
    history = _history()
    result = asyncio.run(
        _compactor(model, prefix=SENT).acompact(
            history, policy="summarize", count=_count, limit=LIMIT
        )
    )
    _check_prefix_call(model, history, result)


def test_a_remembered_summary_is_part_of_the_prefix() -> None:
    model = Recording(responses=["- INC-1000 reviewed"] * 10)
    compactor = _compactor(model, prefix=SENT)
    full = _history(40)
    history = full[:3]
    sent: list[list[BaseMessage]] = []
    for end in range(5, len(full) + 1, 2):  # one turn per call, as an agent loop grows
        history = full[:end]
        calls = len(model.calls)
        if _count(history) > LIMIT:
            result = compactor.compact(history, policy="summarize", count=_count, limit=LIMIT)
            if len(model.calls) > calls and len(sent) > 1 and sent[-1][1] != history[1]:
                break  # a second compaction, after one that is remembered
            sent.append(result.messages)
        else:
            sent.append(history)
    else:
        pytest.fail("the loop never compacted twice")
    assert result.report.summary_request == "prefix"
    messages, _ = model.calls[-1]
    last = sent[-1]  # the last request sent: system, the remembered summary, the turns
    assert messages[1].text.startswith("Summary of the earlier conversation:")
    assert messages[:-1] == last[: len(messages) - 1]
    # the remembered summary stays: the instruction asks for what came after it, and the
    # new summary follows it in the compacted prompt
    scope = PREFIX_STACKED_SUMMARY_INSTRUCTION.split("\n")[1].format(max_tokens=CAP)
    assert messages[-1].text.split("\n")[1] == scope
    assert "after the last summary" in scope
    assert result.messages[1] == last[1]
    assert result.messages[2].text.startswith("Summary of the earlier conversation:")
    assert result.report.summaries == 2


def test_a_separate_summarizer_gets_the_fresh_prompt() -> None:
    model = Recording(responses=["- INC-1000 reviewed"])
    result = _compactor(model, prefix=None).compact(
        _history(), policy="summarize", count=_count, limit=LIMIT
    )
    ((messages, kwargs),) = model.calls
    assert messages[0] == SystemMessage(COMPRESSION_SYSTEM_PROMPT)
    assert "tools" not in kwargs
    assert result.report.summary_request == "fresh"


def test_a_prefix_over_the_call_room_falls_back_to_the_fresh_prompt() -> None:
    history = _history()
    prefix_tokens = _count(history[:-4])
    # the summarizer's window holds the span as text in chunks, not the whole prefix
    model = WindowedRecording(responses=["- INC-1000 reviewed"] * 8, window=prefix_tokens // 2)
    result = _compactor(model, prefix=SENT).compact(
        history, policy="summarize", count=_count, limit=LIMIT
    )
    assert model.calls
    assert all(m[0] == SystemMessage(COMPRESSION_SYSTEM_PROMPT) for m, _ in model.calls)
    assert result.report.summary_request == "fresh"
    # and the same model with room enough is sent the prefix
    roomy = WindowedRecording(responses=["- INC-1000 reviewed"], window=LIMIT * 4)
    again = _compactor(roomy, prefix=SENT).compact(
        history, policy="summarize", count=_count, limit=LIMIT
    )
    _check_prefix_call(roomy, history, again)


def test_the_guard_checks_the_prefix_reply() -> None:
    # a reply that keeps no entity and carries a tool call: its text is guarded, never trusted
    reply = "Sure, I will look it up."
    model = Recording(responses=[reply])
    history = _history()
    result = _compactor(model, prefix=SENT).compact(
        history, policy="summarize", count=_count, limit=LIMIT
    )
    compression = result.report.compression
    assert compression is not None
    assert compression["method"] in ("llm+restored", "extractive")
    assert compression["summary_tokens"] <= CAP
    assert result.report.summary_request == "prefix"
    assert "INC-" in result.messages[1].text


def test_auto_makes_no_call_when_the_extract_keeps_every_entity() -> None:
    model = Recording(responses=["- unused"])
    history: list[BaseMessage] = [SYSTEM]
    for _ in range(14):
        history += [HumanMessage("Please keep an eye on things. " * 12), AIMessage("Will do.")]
    result = _compactor(model, prefix=SENT, strategy="auto").compact(
        history, policy="summarize", count=_count, limit=LIMIT
    )
    assert result.report.compacted
    assert model.calls == []
    assert result.report.summary_request is None


# ------------------------------------------------------------------ the two callers


def test_chat_vllm_asks_itself_with_the_requests_tools_and_fields() -> None:
    model = ChatVLLM(
        model="m",
        base_url="http://127.0.0.1:9/v1",
        on_overflow="summarize",
        token_counter="approximate",
        budget=TokenBudget(max_model_len=4096),
    )
    call = {"tools": TOOLS, "tool_choice": "auto", "temperature": 0.1, "extra_body": NO_THINKING}
    request = _pipeline.read_request(model, _history(), call)
    compactor = _pipeline._compactor(model, COUNTER, request)
    assert compactor is not None
    assert compactor.prefix == PrefixCall(tools=TOOLS, fields={"extra_body": NO_THINKING})
    summarizer = compactor.summary.model
    assert isinstance(summarizer, ChatVLLM)
    assert summarizer.on_overflow == "raise", "the summarizer call never compacts again"
    # a separate summarizer keeps the fresh prompt
    separate = model.model_copy(update={"summarizer": Recording(responses=["x"])})
    other = _pipeline._compactor(separate, COUNTER, request)
    assert other is not None
    assert other.prefix is None


def _agent(model: Recording, **kwargs: Any) -> Any:
    middleware = ContextCompactionMiddleware(
        model, summary_max_tokens=CAP, strategy="llm", **kwargs
    )
    return create_agent(
        model,
        tools=[lookup],
        system_prompt=SYSTEM.text,
        middleware=[middleware],
        checkpointer=InMemorySaver(),
    )


@pytest.mark.parametrize(("use_async", "itself"), [(False, False), (True, False), (False, True)])
def test_the_middleware_asks_the_calls_model_with_the_calls_prefix(
    use_async: bool, itself: bool
) -> None:
    model = WindowedRecording(responses=["ok"] * 40, profile={"max_input_tokens": LIMIT // 2})
    agent = _agent(model, summarizer=model) if itself else _agent(model)
    config = {"configurable": {"thread_id": "t"}}
    for turn in _history()[1::2]:
        payload = {"messages": [turn]}
        if use_async:
            asyncio.run(agent.ainvoke(payload, config))
        else:
            agent.invoke(payload, config)
    summaries = [(m, k) for m, k in model.calls if m[-1].text.startswith(FIRST_LINE)]
    assert summaries, "the loop passed the limit and compacted"
    messages, kwargs = summaries[0]
    index = model.calls.index(summaries[0])
    last_sent, _ = model.calls[index - 1]
    # the last agent request's messages, up to the cut, then the instruction
    assert messages[:-1] == last_sent[: len(messages) - 1]
    assert isinstance(messages[0], SystemMessage)
    assert messages[0].text == SYSTEM.text
    assert kwargs == {"tools": TOOLS, "tool_choice": "none", "max_tokens": CAP}


def test_a_model_that_is_not_budgeted_gets_the_fresh_prompt() -> None:
    """Tools and tool_choice as call arguments are vLLM's (ChatVLLM's); other models may
    reject them, so they summarize from the fresh compression prompt."""
    model = Recording(responses=["ok"] * 40, profile={"max_input_tokens": LIMIT // 2})
    agent = _agent(model)
    config = {"configurable": {"thread_id": "t"}}
    for turn in _history()[1::2]:
        agent.invoke({"messages": [turn]}, config)
    assert any(m[0] == SystemMessage(COMPRESSION_SYSTEM_PROMPT) for m, _ in model.calls)
    assert not any(m[-1].text.startswith(FIRST_LINE) for m, _ in model.calls)


def test_the_middleware_with_a_separate_summarizer_sends_the_fresh_prompt() -> None:
    model = Recording(responses=["ok"] * 40, profile={"max_input_tokens": LIMIT // 2})
    summarizer = Recording(responses=["- INC-1000 reviewed"] * 5)
    agent = _agent(model, summarizer=summarizer)
    config = {"configurable": {"thread_id": "t"}}
    for turn in _history()[1::2]:
        agent.invoke({"messages": [turn]}, config)
    assert summarizer.calls
    assert all(m[0] == SystemMessage(COMPRESSION_SYSTEM_PROMPT) for m, _ in summarizer.calls)
    assert not any(m[-1].text.startswith(FIRST_LINE) for m, _ in model.calls)


# ------------------------------------------------------------------ token level, real Qwen


def test_the_rendered_summarizer_prompt_starts_with_the_agent_requests_tokens() -> None:
    """With Qwen's real tokenizer and chat template, and the payloads ChatVLLM sends."""
    folder = ensure_local_model("tiny-qwen")
    counter = TransformersTokenCounter(folder)
    model = ChatVLLM(
        model="tiny-qwen",
        base_url="http://127.0.0.1:9/v1",
        tokenizer=str(folder),
        on_overflow="summarize",
        budget=TokenBudget(max_model_len=4096),
    )
    history = _history()
    call = {"tools": TOOLS, "extra_body": NO_THINKING}
    options = PromptOptions.from_request(call["extra_body"])

    def count(messages: Sequence[BaseMessage]) -> int:
        return counter.count_messages(messages, TOOLS, options)

    recording = WindowedRecording(responses=["- INC-1000 reviewed"], window=4096)
    spec = SummarySpec(max_tokens=CAP, model=recording, counter=counter, strategy="llm")
    compactor = Compactor(target=0.6, summary=spec, prefix=PrefixCall.from_call(TOOLS, call))
    limit = count(history) - 200
    result = compactor.compact(history, policy="summarize", count=count, limit=limit)
    assert result.report.summary_request == "prefix"
    ((messages, kwargs),) = recording.calls

    def text(payload: dict[str, Any]) -> str:
        extra = payload.get("extra_body") or {}
        rendered = counter.tokenizer.apply_chat_template(
            payload["messages"],
            tools=payload.get("tools"),
            tokenize=False,
            add_generation_prompt=True,
            **extra.get("chat_template_kwargs", {}),
        )
        return str(rendered)

    def encode(prompt: str) -> list[int]:
        return list(counter.tokenizer.encode(prompt, add_special_tokens=False))

    agent_text = text(model._get_request_payload(history, **call))
    summarizer_text = text(model._get_request_payload(messages, **kwargs))
    # the prompt up to the instruction's turn: the system message, tools and the messages
    # up to the cut, rendered as they are in front of a later user turn
    prefix = summarizer_text[: summarizer_text.index("<|im_start|>user\n" + FIRST_LINE)]
    assert history[len(messages) - 2].text in prefix, "the whole span is in the prefix"
    prefix_ids = encode(prefix)
    assert encode(agent_text)[: len(prefix_ids)] == prefix_ids
    assert encode(summarizer_text)[: len(prefix_ids)] == prefix_ids
    assert len(prefix_ids) >= 0.8 * len(encode(summarizer_text)), "mostly served from cache"
