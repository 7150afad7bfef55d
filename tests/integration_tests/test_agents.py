"""ChatVLLM in LangChain v1 agents, with the stock middleware, against the real vLLM server.

``create_agent`` with ``SummarizationMiddleware`` (a fractional trigger on the profile read
from the server, and the trigger on reported usage), ``ContextEditingMiddleware`` counting
with the model's exact counter, and ``with_fallbacks`` on ``ContextOverflowError``.
"""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import (
    AgentMiddleware,
    ClearToolUsesEdit,
    ContextEditingMiddleware,
    SummarizationMiddleware,
)
from langchain_core.exceptions import ContextOverflowError
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from langchain_vllm_budget import ChatVLLM, VLLMContextOverflowError

pytestmark = pytest.mark.integration

SUMMARY_HEADER = "Here is a summary of the conversation to date"


def _model(served, **kwargs) -> ChatVLLM:
    return ChatVLLM(
        model=served.model, base_url=served.base_url, max_tokens=8, temperature=0, **kwargs
    )


def _orders(turns: int, words: int) -> list[BaseMessage]:
    messages: list[BaseMessage] = []
    for i in range(turns):
        items = " ".join(f"item{i}-{j}" for j in range(words))
        messages.append(HumanMessage(f"Order {i}: {items}"))
        messages.append(AIMessage(f"Noted order {i}."))
    messages.append(HumanMessage("Which orders are open?"))
    return messages


def test_the_profile_comes_from_the_server(tiny_qwen) -> None:
    model = _model(tiny_qwen)
    profile = model.profile
    assert profile is not None
    budget = model.budget
    assert profile["max_input_tokens"] == (
        tiny_qwen.max_model_len - budget.safety_margin - budget.min_output_tokens
    )
    # The largest prompt that ChatVLLM sends without its overflow policy acting.
    window = budget.with_max_model_len(tiny_qwen.max_model_len)
    assert window.plan(profile["max_input_tokens"]).fits
    assert not window.plan(profile["max_input_tokens"] + 1).fits
    # vLLM's structured outputs; the Qwen3 template renders tools and has a thinking switch.
    assert profile["structured_output"] is True
    assert (profile["tool_calling"], profile["reasoning_output"]) == (True, True)
    assert model.profile == profile


async def test_summarization_fraction_trigger_fires_before_chatvllm_must_trim(tiny_qwen) -> None:
    model = _model(tiny_qwen, on_overflow="trim")
    # In async code reading `profile` never asks the server (it would block the event loop):
    # the server's facts come with the first call, or with aget_profile.
    profile = await model.aget_profile()
    assert profile is not None
    assert model.profile == profile
    summarization = SummarizationMiddleware(
        model=model,
        trigger=("fraction", 0.8),
        keep=("messages", 3),
        token_counter=model.get_num_tokens_from_messages,
    )
    assert model.profile is not None
    limit = model.profile["max_input_tokens"]
    history = _orders(turns=13, words=150)
    counted = model.get_num_tokens_from_messages(history)
    assert 0.8 * limit < counted <= limit
    agent = create_agent(model, middleware=[summarization])
    result = await agent.ainvoke({"messages": history})
    messages = result["messages"]
    assert isinstance(messages[0], HumanMessage)
    assert messages[0].text.startswith(SUMMARY_HEADER)
    assert len(messages) == 1 + 3 + 1  # the summary, the turns kept, the answer
    answer = messages[-1]
    assert isinstance(answer, AIMessage)
    budget = answer.response_metadata["budget"]
    # The middleware made room first: ChatVLLM sent the request as it came.
    assert budget["action"] == "none"
    assert budget["input_tokens"] == answer.usage_metadata["input_tokens"]
    assert budget["input_tokens"] < 0.8 * limit


def test_summarization_usage_trigger_fires_on_vllm_responses(tiny_qwen) -> None:
    """The trigger on reported usage needs model_provider == ls_provider: both are "vllm"."""
    model = _model(tiny_qwen)
    summarization = SummarizationMiddleware(
        model=model,
        trigger=("tokens", 20),
        keep=("messages", 1),
        # Counts nothing, so that only the usage the server reported can fire the trigger.
        token_counter=lambda messages: 0,
    )
    agent = create_agent(model, middleware=[summarization], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "usage-trigger"}}
    question = "Name the three longest rivers of Europe and the countries they cross."
    first = agent.invoke({"messages": [HumanMessage(question)]}, config)
    reply = first["messages"][-1]
    assert isinstance(reply, AIMessage)
    assert reply.response_metadata["model_provider"] == model._get_ls_params()["ls_provider"]
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["total_tokens"] >= 20
    assert not any(SUMMARY_HEADER in m.text for m in first["messages"])

    second = agent.invoke({"messages": [HumanMessage("And two lakes?")]}, config)
    assert second["messages"][0].text.startswith(SUMMARY_HEADER)
    assert second["messages"][1].text == "And two lakes?"


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"Weather report for {city}: cold, light snow, wind from the north at 20 km/h."


class _SeenByModel(AgentMiddleware):
    """Records the messages each model call receives (after the middleware before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[BaseMessage]] = []

    def wrap_model_call(self, request, handler):
        self.calls.append(list(request.messages))
        return handler(request)


def _tool_history() -> list[BaseMessage]:
    messages: list[BaseMessage] = []
    for call_id, city in (("c1", "Oslo"), ("c2", "Lima")):
        messages += [
            HumanMessage(f"Weather in {city}?"),
            AIMessage(
                "", tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": call_id}]
            ),
            ToolMessage(get_weather.invoke({"city": city}), tool_call_id=call_id),
        ]
    return messages


@pytest.mark.parametrize("margin", [-1, 0], ids=["just-over", "at-trigger"])
def test_context_editing_counts_with_the_models_exact_counter(tiny_qwen, margin: int) -> None:
    model = _model(tiny_qwen)
    history = _tool_history()
    exact = model.get_num_tokens_from_messages(history, tools=[get_weather])
    assert count_tokens_approximately(history) != exact
    seen = _SeenByModel()
    editing = ContextEditingMiddleware(
        edits=[ClearToolUsesEdit(trigger=exact + margin, keep=1)], token_count_method="model"
    )
    agent = create_agent(model, tools=[get_weather], middleware=[editing, seen])
    agent.invoke({"messages": history})
    first_tool_result = seen.calls[0][2]
    assert isinstance(first_tool_result, ToolMessage)
    # Cleared exactly when the exact count is over the trigger.
    assert (first_tool_result.text == "[cleared]") is (exact > exact + margin)
    assert seen.calls[0][5].text == history[5].text  # the newest result is kept


def test_fallback_to_a_larger_window_on_context_overflow(smollm2, tiny_qwen) -> None:
    small = _model(smollm2)
    large = _model(tiny_qwen)
    messages = [HumanMessage("Summarize: " + "the quick brown fox jumps over the lazy dog " * 300)]
    with pytest.raises(VLLMContextOverflowError) as info:
        small.invoke(messages)
    assert info.value.source == "budget"  # raised before anything was sent
    assert isinstance(info.value, ContextOverflowError)
    chain = small.with_fallbacks([large], exceptions_to_handle=(ContextOverflowError,))
    reply = chain.invoke(messages)
    assert reply.response_metadata["model_name"] == tiny_qwen.model
    assert reply.response_metadata["budget"]["max_model_len"] == tiny_qwen.max_model_len
