"""Overflow policies with the exact local Qwen counter and a fake summarizer model."""

from __future__ import annotations

import logging

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.errors import VLLMContextOverflowError
from langchain_vllm_budget.overflow import SUMMARY_PREFIX, apply_budget
from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.tokenizers import TransformersTokenCounter

BUDGET = TokenBudget(max_model_len=2048, output_reserve=512, safety_margin=64)


@pytest.fixture(scope="module")
def counter() -> TransformersTokenCounter:
    return TransformersTokenCounter(ensure_local_model("tiny-qwen"))


def _conversation(turns: int) -> list:
    messages: list = [SystemMessage("You are a travel assistant.")]
    for i in range(turns):
        messages.append(HumanMessage(f"Question {i}: tell me about city number {i}. " * 6))
        if i % 3 == 1:
            messages.append(
                AIMessage(
                    "",
                    tool_calls=[{"name": "lookup", "args": {"city": f"c{i}"}, "id": f"t{i}"}],
                )
            )
            messages.append(ToolMessage(f"city {i}: population {i * 1000}", tool_call_id=f"t{i}"))
        messages.append(AIMessage(f"City {i} is lovely, with parks and museums. " * 6))
    return messages


def _limit(budget: TokenBudget) -> int:
    assert budget.max_model_len is not None
    return budget.max_model_len - budget.safety_margin - budget.min_output_tokens


def test_fitting_input_is_untouched(counter) -> None:
    messages = _conversation(2)
    outcome = apply_budget(messages, budget=BUDGET, count=counter.count_messages, policy="raise")
    assert outcome.messages == messages
    assert outcome.action == "none"
    assert outcome.plan.input_tokens == counter.count_messages(messages)


def test_raise_policy(counter) -> None:
    messages = _conversation(30)
    with pytest.raises(VLLMContextOverflowError) as info:
        apply_budget(messages, budget=BUDGET, count=counter.count_messages, policy="raise")
    err = info.value
    assert err.input_tokens == counter.count_messages(messages)
    assert err.max_model_len == 2048
    assert err.shortfall == err.input_tokens + 64 + 256 - 2048


def test_trim_keeps_system_and_newest_turns_whole(counter) -> None:
    messages = _conversation(30)
    outcome = apply_budget(messages, budget=BUDGET, count=counter.count_messages, policy="trim")
    kept = outcome.messages
    assert outcome.action == "trimmed"
    assert kept[0] == messages[0]
    assert isinstance(kept[1], HumanMessage)
    assert kept[-1] == messages[-1]
    assert outcome.plan.fits
    assert counter.count_messages(kept) <= _limit(BUDGET)
    assert outcome.dropped_messages == len(messages) - len(kept)
    call_ids = {c["id"] for m in kept if isinstance(m, AIMessage) for c in m.tool_calls}
    result_ids = {m.tool_call_id for m in kept if isinstance(m, ToolMessage)}
    assert call_ids == result_ids


def test_trim_raises_when_the_newest_turn_alone_is_too_big(counter) -> None:
    messages = [SystemMessage("s"), HumanMessage("word " * 3000)]
    with pytest.raises(VLLMContextOverflowError):
        apply_budget(messages, budget=BUDGET, count=counter.count_messages, policy="trim")


def test_warn_sends_what_fits_and_logs(counter, caplog) -> None:
    budget = TokenBudget(max_model_len=2048, output_reserve=512, safety_margin=64)
    text = "hello " * 1800
    messages = [HumanMessage(text)]
    with caplog.at_level(logging.WARNING):
        outcome = apply_budget(messages, budget=budget, count=counter.count_messages, policy="warn")
    assert "Input too large" in caplog.text
    assert f"sending with max_tokens={outcome.plan.max_tokens}" in caplog.text
    assert outcome.action == "warned"
    assert 1 <= outcome.plan.max_tokens < 256
    assert outcome.plan.input_tokens + outcome.plan.max_tokens + 64 == 2048


def test_warn_raises_when_nothing_fits(counter, caplog) -> None:
    messages = [HumanMessage("hello " * 2100)]
    with caplog.at_level(logging.WARNING), pytest.raises(VLLMContextOverflowError):
        apply_budget(messages, budget=BUDGET, count=counter.count_messages, policy="warn")
    assert "nothing fits, raising instead of sending" in caplog.text
    assert "sending with" not in caplog.text


def test_summarize_replaces_oldest_turns(counter) -> None:
    summaries = iter([AIMessage("- cities 0-20 discussed; populations looked up")] * 20)
    summarizer = GenericFakeChatModel(messages=summaries)
    prompts: list = []

    def summarize(prompt, max_tokens):
        prompts.append((prompt, max_tokens))
        assert counter.count_messages(prompt) + 64 + 1 <= 2048
        return summarizer.invoke(prompt).text

    messages = _conversation(30)
    outcome = apply_budget(
        messages,
        budget=BUDGET,
        count=counter.count_messages,
        count_text=counter.count_text,
        policy="summarize",
        summarize=summarize,
        summary_max_tokens=200,
    )
    assert outcome.action == "summarized"
    assert prompts, "the summarizer was called"
    assert all(max_tokens == 200 for _, max_tokens in prompts)
    first = outcome.messages[0]
    assert isinstance(first, SystemMessage)
    assert first.text.startswith("You are a travel assistant.")
    assert SUMMARY_PREFIX + "- cities 0-20" in first.text
    assert isinstance(outcome.messages[1], HumanMessage)
    assert outcome.messages[-1] == messages[-1]
    assert counter.count_messages(outcome.messages) <= _limit(BUDGET)


def test_summarize_needs_a_summarizer(counter) -> None:
    with pytest.raises(ValueError, match="summarizer"):
        apply_budget(
            _conversation(30), budget=BUDGET, count=counter.count_messages, policy="summarize"
        )
