"""Exact counting and budgeting against the real vLLM server (tiny-qwen, 12K window)."""

from __future__ import annotations

import json
import logging

import pytest
from langchain_core.exceptions import ContextOverflowError
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_vllm_budget import (
    ChatVLLM,
    ServerTokenCounter,
    TokenBudget,
    TransformersTokenCounter,
    VLLMContextOverflowError,
    VLLMModelNotFoundError,
)

pytestmark = pytest.mark.integration

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}

CASES = {
    "plain": ([HumanMessage("What is the capital of France?")], None),
    "system": ([SystemMessage("Answer in one word."), HumanMessage("Capital of Peru?")], None),
    "multi_turn": (
        [
            SystemMessage("You are terse."),
            HumanMessage("Hi"),
            AIMessage("Hello."),
            HumanMessage("Name three rivers."),
            AIMessage("Nile, Amazon, Danube."),
            HumanMessage("And two lakes?"),
        ],
        None,
    ),
    "tool_definitions": ([HumanMessage("Weather in Oslo?")], [WEATHER_TOOL]),
    "tool_results": (
        [
            HumanMessage("Weather in Oslo?"),
            AIMessage(
                "",
                tool_calls=[
                    {"name": "get_weather", "args": {"city": "Oslo", "unit": "c"}, "id": "c1"}
                ],
            ),
            ToolMessage('{"temp": -3, "sky": "snow"}', tool_call_id="c1"),
        ],
        [WEATHER_TOOL],
    ),
    "chinese": ([HumanMessage("请用中文介绍一下长城的历史，以及它为什么如此重要。" * 5)], None),  # noqa: RUF001
    "json": (
        [
            HumanMessage(
                json.dumps(
                    [
                        {"id": f"9f1c{i:04d}-4b7e-a2d1", "qty": i, "ok": i % 2 == 0}
                        for i in range(60)
                    ]
                )
            )
        ],
        None,
    ),
}


def _model(served, **kwargs) -> ChatVLLM:
    return ChatVLLM(model=served.model, base_url=served.base_url, max_tokens=1, **kwargs)


def _invoke(model: ChatVLLM, messages, tools):
    runnable = model.bind_tools(tools, tool_choice="none") if tools else model
    return runnable.invoke(messages)


@pytest.mark.parametrize("counter", ["transformers", "server"])
@pytest.mark.parametrize("case", list(CASES))
def test_count_equals_prompt_tokens(tiny_qwen, case, counter) -> None:
    messages, tools = CASES[case]
    model = _model(tiny_qwen, token_counter=counter)
    counted = model.get_num_tokens_from_messages(messages, tools=tools)
    reply = _invoke(model, messages, tools)
    assert reply.usage_metadata is not None
    assert counted == reply.usage_metadata["input_tokens"]
    budget = reply.response_metadata["budget"]
    assert budget["input_tokens"] == counted
    assert budget["counter"] == counter
    assert budget["max_model_len"] == tiny_qwen.max_model_len


PROMPT_FIELDS = {
    "enable_thinking_off": {"chat_template_kwargs": {"enable_thinking": False}},
    "enable_thinking_on": {"chat_template_kwargs": {"enable_thinking": True}},
    "reasoning_effort_none": {"reasoning_effort": "none"},
    "reasoning_effort_high": {"reasoning_effort": "high"},
    "add_special_tokens": {"add_special_tokens": True},
    "documents_ignored_by_template": {"documents": [{"title": "t", "text": "Lima, 1535."}]},
}


@pytest.mark.parametrize("counter", ["transformers", "server"])
@pytest.mark.parametrize("fields", list(PROMPT_FIELDS))
def test_request_fields_that_shape_the_prompt_are_counted(tiny_qwen, fields, counter) -> None:
    """Each field as a call's extra_body, and as the model's own: the count is the server's."""
    extra_body = PROMPT_FIELDS[fields]
    messages = CASES["system"][0]
    for model, call in (
        (_model(tiny_qwen, token_counter=counter), {"extra_body": extra_body}),
        (_model(tiny_qwen, token_counter=counter, extra_body=extra_body), {}),
    ):
        counted = model.get_num_tokens_from_messages(messages, **call)
        reply = model.invoke(messages, **call)
        assert reply.usage_metadata is not None
        assert counted == reply.usage_metadata["input_tokens"]
        assert reply.response_metadata["budget"]["input_tokens"] == counted


def test_enable_thinking_off_is_no_longer_undercounted(tiny_qwen) -> None:
    """Qwen3's template adds an empty thinking block: 4 tokens the old count missed."""
    messages = [HumanMessage("Capital of Peru?")]
    model = _model(tiny_qwen, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    reply = model.invoke(messages)
    assert reply.usage_metadata is not None
    served = reply.usage_metadata["input_tokens"]
    assert reply.response_metadata["budget"]["input_tokens"] == served
    plain = _model(tiny_qwen).get_num_tokens_from_messages(messages)
    assert served - plain == model.get_num_tokens("<think>\n\n</think>\n\n") == 4


@pytest.mark.parametrize("counter", ["transformers", "server"])
def test_continuing_the_last_message_is_counted(tiny_qwen, counter) -> None:
    messages = [HumanMessage("Write a haiku about snow."), AIMessage("Silent white blanket")]
    extra_body = {"add_generation_prompt": False, "continue_final_message": True}
    model = _model(tiny_qwen, token_counter=counter, extra_body=extra_body)
    counted = model.get_num_tokens_from_messages(messages)
    reply = model.invoke(messages)
    assert reply.usage_metadata is not None
    assert counted == reply.usage_metadata["input_tokens"]
    assert counted < _model(tiny_qwen).get_num_tokens_from_messages(messages)


def test_auto_counter_uses_the_local_tokenizer(tiny_qwen) -> None:
    model = _model(tiny_qwen)
    assert isinstance(model.resolved_token_counter, TransformersTokenCounter)
    server = ServerTokenCounter(tiny_qwen.base_url, tiny_qwen.model)
    text = 'Grüße, 世界! {"k": [1, 2, 3]}'
    assert model.get_num_tokens(text) == server.count_text(text)


def test_window_is_discovered_from_the_server(tiny_qwen, caplog) -> None:
    assert _model(tiny_qwen).get_max_model_len() == tiny_qwen.max_model_len
    wrong = _model(tiny_qwen, budget=TokenBudget(max_model_len=4096, output_reserve=1000))
    with caplog.at_level(logging.WARNING):
        reply = wrong.invoke("hi")
        wrong.invoke("hi again")
    assert reply.response_metadata["budget"]["max_model_len"] == tiny_qwen.max_model_len
    assert caplog.text.count("differs from the server's") == 1


def _filler_messages(counter: TransformersTokenCounter, target: int) -> list:
    """A single user message whose prompt counts exactly ``target`` tokens."""
    base = counter.count_messages([HumanMessage("")])
    words = max(target - base, 0)
    messages = [HumanMessage(" a" * words)]
    got = counter.count_messages(messages)
    assert got == target, (got, target)
    return messages


def test_sweep_around_the_window_edge_has_no_length_400(tiny_qwen) -> None:
    window = tiny_qwen.max_model_len
    budget = TokenBudget(output_reserve=4, safety_margin=0, min_output_tokens=2)
    model = _model(tiny_qwen, budget=budget, on_overflow="warn", max_retries=0)
    model.max_tokens = None
    counter = model.resolved_token_counter
    assert isinstance(counter, TransformersTokenCounter)
    for target in (window - 40, window - 5, window - 3, window - 2, window - 1):
        reply = model.invoke(_filler_messages(counter, target))
        usage = reply.usage_metadata
        assert usage is not None
        assert usage["input_tokens"] == target
        assert usage["input_tokens"] + reply.response_metadata["budget"]["max_tokens"] <= window
    for target in (window, window + 3):
        with pytest.raises(VLLMContextOverflowError) as info:
            model.invoke(_filler_messages(counter, target))
        assert info.value.source == "budget"
        assert info.value.input_tokens == target


def _long_conversation(turns: int, words: int) -> list:
    messages: list = [SystemMessage("You keep track of warehouse orders.")]
    for i in range(turns):
        messages.append(
            HumanMessage(f"Order {i}: " + " ".join(f"item{i}-{j}" for j in range(words)))
        )
        messages.append(AIMessage(f"Noted order {i}."))
    messages.append(HumanMessage("Which orders are open?"))
    return messages


def test_trim_keeps_the_request_inside(tiny_qwen) -> None:
    messages = _long_conversation(turns=40, words=150)
    model = _model(
        tiny_qwen, on_overflow="trim", budget=TokenBudget(output_reserve=8, min_output_tokens=8)
    )
    assert model.get_num_tokens_from_messages(messages) > tiny_qwen.max_model_len
    reply = model.invoke(messages)
    budget = reply.response_metadata["budget"]
    assert budget["action"] == "trimmed"
    assert budget["input_tokens"] == reply.usage_metadata["input_tokens"]
    assert budget["input_tokens"] + budget["max_tokens"] <= tiny_qwen.max_model_len
    assert budget["dropped_messages"] > 0


def test_summarize_keeps_the_request_inside(tiny_qwen) -> None:
    messages = _long_conversation(turns=40, words=150)
    model = _model(
        tiny_qwen,
        on_overflow="summarize",
        summary_max_tokens=16,
        budget=TokenBudget(output_reserve=8, min_output_tokens=8),
    )
    reply = model.invoke(messages)
    budget = reply.response_metadata["budget"]
    assert budget["action"] == "summarized"
    assert budget["input_tokens"] == reply.usage_metadata["input_tokens"]
    assert budget["input_tokens"] + budget["max_tokens"] <= tiny_qwen.max_model_len


def test_stream_reports_usage_and_budget(tiny_qwen) -> None:
    model = _model(tiny_qwen)
    model.max_tokens = 3
    full = None
    for chunk in model.stream([SystemMessage("s"), HumanMessage("count to ten")]):
        full = chunk if full is None else full + chunk
    assert full is not None
    assert full.usage_metadata is not None
    assert full.usage_metadata["input_tokens"] == full.response_metadata["budget"]["input_tokens"]
    assert full.usage_metadata["output_tokens"] <= 3


async def test_async_paths(tiny_qwen) -> None:
    model = _model(tiny_qwen, token_counter="server")
    reply = await model.ainvoke("hello")
    assert reply.usage_metadata["input_tokens"] == reply.response_metadata["budget"]["input_tokens"]
    chunks = [chunk async for chunk in model.astream("hello")]
    assert any(c.usage_metadata for c in chunks)
    assert chunks[0].response_metadata["budget"]["counter"] == "server"


class _HalfCounter:
    """Undercounts by half: stands in for a wrong tokenizer."""

    name = "half"
    exact = False

    def __init__(self, inner: TransformersTokenCounter) -> None:
        self.inner = inner

    def count_text(self, text: str) -> int:
        return self.inner.count_text(text) // 2

    def count_messages(self, messages, tools=None, options=None) -> int:
        return self.inner.count_messages(messages, tools, options) // 2


def test_server_length_400_becomes_a_typed_error(tiny_qwen) -> None:
    exact = TransformersTokenCounter(tiny_qwen.model_path)
    messages = _filler_messages(exact, tiny_qwen.max_model_len + 2000)
    model = _model(tiny_qwen, token_counter=_HalfCounter(exact), max_retries=0)
    with pytest.raises(VLLMContextOverflowError) as info:
        model.invoke(messages)
    err = info.value
    assert isinstance(err, ContextOverflowError)
    assert err.max_model_len == tiny_qwen.max_model_len
    assert err.input_tokens > tiny_qwen.max_model_len


def test_undercount_is_corrected_and_retried_once(tiny_qwen) -> None:
    exact = TransformersTokenCounter(tiny_qwen.model_path)
    messages = _long_conversation(turns=40, words=150)
    model = _model(
        tiny_qwen,
        token_counter=_HalfCounter(exact),
        on_overflow="trim",
        budget=TokenBudget(output_reserve=8, min_output_tokens=8),
        max_retries=0,
    )
    assert exact.count_messages(messages) > tiny_qwen.max_model_len
    reply = model.invoke(messages)
    budget = reply.response_metadata["budget"]
    assert budget["retried"] is True
    assert reply.usage_metadata["input_tokens"] <= tiny_qwen.max_model_len
    assert budget["counter"] == "server"
    assert budget["input_tokens"] == reply.usage_metadata["input_tokens"]


def test_unknown_model_is_a_typed_error(tiny_qwen) -> None:
    model = ChatVLLM(model="no-such-model", base_url=tiny_qwen.base_url)
    with pytest.raises(VLLMModelNotFoundError) as info:
        model.invoke("hi")
    assert tiny_qwen.model in info.value.available


async def test_a_budget_plan_is_sent_as_planned(tiny_qwen) -> None:
    """get_budget_plan counts once with the bound tools; budget_plan= sends that plan."""
    model = _model(tiny_qwen, budget=TokenBudget(output_reserve=6, min_output_tokens=4))
    model.max_tokens = None
    bound = model.bind_tools([WEATHER_TOOL], tool_choice="none")
    messages, _ = CASES["tool_results"]
    plan = model.get_budget_plan(messages, **bound.kwargs)
    assert plan == await model.aget_budget_plan(messages, **bound.kwargs)
    assert (plan.fits, plan.max_tokens, plan.max_model_len) == (True, 6, tiny_qwen.max_model_len)
    replies = [
        bound.invoke(messages, budget_plan=plan),
        await bound.ainvoke(messages, budget_plan=plan),
        model.bind(budget_plan=plan, **bound.kwargs).invoke(messages),
    ]
    chunks = list(bound.stream(messages, budget_plan=plan))
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    for reply in (*replies, streamed):
        assert reply.usage_metadata is not None
        assert reply.usage_metadata["input_tokens"] == plan.input_tokens
        assert reply.usage_metadata["output_tokens"] <= plan.max_tokens
        budget = reply.response_metadata["budget"]
        assert budget["plan_source"] == "given"
        assert (budget["input_tokens"], budget["max_tokens"]) == (plan.input_tokens, 6)


@pytest.mark.parametrize(
    ("wrong", "turns"),
    [
        ("count", 16),  # planned with half the prompt: re-counted by /tokenize
        # Planned for twice the window by a counter that undercounts by half: re-planning
        # with that counter at the server's window would still send too much, so the one
        # retry corrects both, with /tokenize.
        ("window and count", 22),
    ],
)
def test_a_wrong_plan_is_corrected_in_the_one_retry(tiny_qwen, wrong: str, turns: int) -> None:
    """vLLM rejects the prompt; it is counted by /tokenize, re-planned and trimmed, once."""
    window = tiny_qwen.max_model_len
    exact = TransformersTokenCounter(tiny_qwen.model_path)
    messages = _long_conversation(turns=turns, words=150)
    real = exact.count_messages(messages)
    assert window < real < 2 * window  # over the window, yet half of it fits
    budget = TokenBudget(output_reserve=8, min_output_tokens=8)
    counter = {"token_counter": _HalfCounter(exact)} if wrong == "window and count" else {}
    model = _model(tiny_qwen, on_overflow="trim", budget=budget, max_retries=0, **counter)
    planned_window = 2 * window if wrong == "window and count" else window
    plan = budget.with_max_model_len(planned_window).plan(real // 2)
    assert plan.fits
    reply = model.invoke(messages, budget_plan=plan)
    usage = reply.usage_metadata
    assert usage is not None
    report = reply.response_metadata["budget"]
    assert (report["retried"], report["counter"], report["action"]) == (True, "server", "trimmed")
    assert (report["original_input_tokens"], report["max_model_len"]) == (real, window)
    assert report["input_tokens"] == usage["input_tokens"]
    assert report["input_tokens"] + report["max_tokens"] <= window
