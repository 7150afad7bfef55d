"""Overflow policies with the exact local Qwen counter and a fake summarizer model.

The compaction engine itself is tested in test_compaction.py; these check the policies
as ``apply_budget`` applies them: the plan, the action, the errors.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.compaction import CompactionMemory, Compactor, is_summary_message
from langchain_vllm_budget.compression import COMPRESSION_SYSTEM_PROMPT, SummarySpec
from langchain_vllm_budget.errors import VLLMContextOverflowError, VLLMFixedPromptOverflowError
from langchain_vllm_budget.overflow import SUMMARY_PREFIX, aapply_budget, apply_budget
from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.tokenizers import TransformersTokenCounter
from tests.fakes import RecordingFakeModel

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
    # compacted with room to spare: down to the target share of the input limit
    assert counter.count_messages(kept) <= int(_limit(BUDGET) * 0.6)
    assert outcome.dropped_messages == len(messages) - len(kept)
    assert outcome.compaction is not None
    assert outcome.compaction.compacted
    assert outcome.compaction.replaced == outcome.dropped_messages
    call_ids = {c["id"] for m in kept if isinstance(m, AIMessage) for c in m.tool_calls}
    result_ids = {m.tool_call_id for m in kept if isinstance(m, ToolMessage)}
    assert call_ids == result_ids


def test_trim_reapplies_the_same_cut_until_the_limit(counter) -> None:
    memory = CompactionMemory()
    compactor = Compactor(memory=memory)
    messages = _conversation(30)
    first = apply_budget(
        messages, budget=BUDGET, count=counter.count_messages, policy="trim", compactor=compactor
    )
    sent = first.messages
    grown = list(messages)
    for i in range(30, 33):
        grown += [HumanMessage(f"And city {i}?"), AIMessage(f"City {i} is fine.")]
        outcome = apply_budget(
            grown, budget=BUDGET, count=counter.count_messages, policy="trim", compactor=compactor
        )
        assert outcome.compaction is not None
        assert outcome.compaction.reused
        assert outcome.messages[: len(sent)] == sent, "the prefix sent before is sent again"
        sent = outcome.messages


@pytest.mark.parametrize("policy", ["trim", "summarize"])
@pytest.mark.parametrize("system", [True, False])
def test_compaction_raises_when_the_newest_turn_alone_is_too_big(
    counter, policy: str, system: bool
) -> None:
    """The context-overflow error (which LangChain's fallbacks recognise), with or without a
    system prompt, saying that compaction was applied and what to change instead."""
    messages = [*([SystemMessage("s")] if system else []), HumanMessage("word " * 3000)]
    with pytest.raises(VLLMContextOverflowError) as info:
        apply_budget(messages, budget=BUDGET, count=counter.count_messages, policy=policy)
    assert info.value.compacted
    assert info.value.input_tokens == counter.count_messages(messages)
    assert "compaction could not bring it under the limit" in str(info.value)
    assert "set on_overflow" not in str(info.value)


@pytest.mark.parametrize("policy", ["trim", "summarize"])
def test_tools_over_the_limit_without_a_system_prompt_are_named_as_the_cause(
    counter, policy: str
) -> None:
    """The chat template renders no empty conversation: the tools alone are counted with an
    empty turn, and the error says the tool definitions fill the limit."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": "Looks up one record of the inventory by its key. " * 6,
                "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
            },
        }
        for i in range(30)
    ]

    def count(messages: list[BaseMessage]) -> int:
        return counter.count_messages(messages, tools)

    assert count([HumanMessage("")]) > _limit(BUDGET)
    with pytest.raises(VLLMFixedPromptOverflowError):
        apply_budget([HumanMessage("hi")], budget=BUDGET, count=count, policy=policy)


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


def test_summarize_uses_the_entity_checked_compressor(counter) -> None:
    # a fluent summary that drops the details: the compressor's guard puts them back
    summarizer = RecordingFakeModel(responses=["- cities were discussed"], prompts=[])
    messages = _conversation(30)
    outcome = apply_budget(
        messages,
        budget=BUDGET,
        count=counter.count_messages,
        policy="summarize",
        compactor=Compactor(
            summary=SummarySpec(max_tokens=200, model=summarizer, counter=counter, strategy="llm")
        ),
    )
    assert outcome.action == "summarized"
    assert len(summarizer.prompts) == 1, "one summarizer call for this compaction"
    assert summarizer.prompts[0][0].content == COMPRESSION_SYSTEM_PROMPT
    assert outcome.messages[0] == messages[0], "the system message is unchanged"
    summary = outcome.messages[1]
    assert is_summary_message(summary)
    assert summary.text.startswith(SUMMARY_PREFIX)
    report = outcome.compaction
    assert report is not None
    assert report.summarizer_calls == 1
    assert report.summary_tokens is not None
    assert report.summary_tokens == counter.count_text(summary.text)
    assert report.compression is not None
    assert report.compression["summary_tokens"] <= 200
    assert report.compression["method"] in ("llm+restored", "extractive")
    # the fake's summary kept no detail: the guard's summary keeps every entity
    assert report.compression["retention"] == 1.0
    assert "25000" in summary.text  # the newest summarized lookup's population
    assert "c25" in summary.text
    assert outcome.messages[-1] == messages[-1]
    assert counter.count_messages(outcome.messages) <= int(_limit(BUDGET) * 0.6)


def test_summarize_without_a_model_is_extractive(counter) -> None:
    messages = _conversation(30)
    outcome = apply_budget(
        messages, budget=BUDGET, count=counter.count_messages, policy="summarize"
    )
    assert outcome.action == "summarized"
    assert outcome.compaction is not None
    assert outcome.compaction.summarizer_calls == 0
    assert outcome.compaction.compression is not None
    assert outcome.compaction.compression["method"] == "extractive"
    assert outcome.plan.fits


async def test_async_apply_budget_matches_sync(counter) -> None:
    messages = _conversation(30)
    for policy in ("trim", "summarize"):
        kwargs = {"budget": BUDGET, "count": counter.count_messages, "policy": policy}
        sync = apply_budget(messages, **kwargs)
        for offload in (False, True):
            result = await aapply_budget(messages, **kwargs, offload=offload)
            assert [m.content for m in result.messages] == [m.content for m in sync.messages]
            assert result.plan == sync.plan
            assert result.action == sync.action
    with pytest.raises(VLLMContextOverflowError):
        await aapply_budget(
            messages, budget=BUDGET, count=counter.count_messages, policy="raise", offload=True
        )


def test_unknown_policy_is_a_clear_error(counter) -> None:
    with pytest.raises(ValueError, match="on_overflow must be"):
        apply_budget(_conversation(1), budget=BUDGET, count=counter.count_messages, policy="drop")


# --------------------------------------------------------------------------- the contract
# A compacted request keeps its own max_tokens and the safety margin inside the window
# (budget.compaction_target); a system prompt that alone fills the limit is a typed error that
# names what to change (budget.TokenBudget.check_fixed_part). Windows 2,048 to 131,072.


def _words(messages: list[BaseMessage]) -> int:
    """One token per word: exact and cheap, so that sizes are known in advance."""
    return sum(len(str(message.content).split()) for message in messages)


def _chat(system: int, turn: int, turns: int) -> list[BaseMessage]:
    chat: list[BaseMessage] = [SystemMessage("rule " * system)]
    for i in range(turns):
        chat += [HumanMessage(f"q{i} " * turn), AIMessage(f"a{i} " * 8)]
    return [*chat, HumanMessage("and now? " * (turn // 3))]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=st.integers(2048, 131_072),
    margin=st.integers(0, 512),
    share=st.floats(0.1, 1.0),
    requested=st.none() | st.integers(1, 6000),
    system_share=st.floats(0.0, 0.6),
    policy=st.sampled_from(["trim", "summarize"]),
)
def test_a_compaction_keeps_the_requests_max_tokens_inside_the_window(
    window: int,
    margin: int,
    share: float,
    requested: int | None,
    system_share: float,
    policy: str,
) -> None:
    budget = TokenBudget(max_model_len=window, output_reserve=1024, safety_margin=margin)
    system = int(system_share * window)
    turn = max(1, window // 24)
    chat = _chat(system, turn, turns=30)
    compactor = Compactor(target=share, summary=SummarySpec(max_tokens=64))
    target = budget.compaction_target(share, requested)
    newest = _words([chat[0], chat[-1]])
    # the summary's cap, its slack and its message's prefix (trim needs none)
    summary_room = 64 + 64 if policy == "summarize" else 0
    try:
        outcome = apply_budget(
            chat,
            budget=budget,
            count=_words,
            policy=policy,  # type: ignore[arg-type]
            requested_max_tokens=requested,
            compactor=compactor,
        )
    except VLLMFixedPromptOverflowError as error:
        assert system >= budget.input_limit(requested) == error.room  # noqa: PT017
        return
    except VLLMContextOverflowError:
        assert newest + summary_room > budget.input_limit(requested)
        return
    assert outcome.action in ("trimmed", "summarized")
    assert outcome.plan.fits
    assert outcome.compaction is not None
    assert outcome.compaction.target_tokens == target
    # what a compaction aims at is reachable (the system prompt, the summary's room and the
    # newest turn fit the target): it is reached, and the request keeps its whole max_tokens
    if newest + summary_room <= target:
        assert outcome.plan.input_tokens <= target
        if requested is not None:
            assert outcome.plan.input_tokens + requested + margin <= window
            assert outcome.plan.max_tokens == requested


def test_a_system_prompt_that_fills_the_limit_says_what_to_shorten() -> None:
    budget = TokenBudget(max_model_len=4096, output_reserve=1024)
    chat = _chat(system=3800, turn=100, turns=4)
    with pytest.raises(VLLMFixedPromptOverflowError) as caught:
        apply_budget(chat, budget=budget, count=_words, policy="trim")
    error = caught.value
    assert (error.fixed_tokens, error.room, error.shortfall) == (3800, 3712, 89)
    assert "Remove at least 89 tokens from the system prompt or the tool definitions" in str(error)
    assert "lower safety_margin or min_output_tokens" in str(error)
    # a system prompt that leaves room, with a newest turn that does not: today's error
    with pytest.raises(VLLMContextOverflowError):
        apply_budget(_chat(3000, 2400, 4), budget=budget, count=_words, policy="trim")


def test_tools_that_fill_the_limit_without_a_system_prompt_say_what_to_shorten() -> None:
    budget = TokenBudget(max_model_len=4096, output_reserve=1024)
    chat = _chat(system=0, turn=100, turns=4)[1:]  # no system message

    def with_tools(messages: list[BaseMessage]) -> int:
        return 3800 + _words(messages)  # 3,800 tokens of tool definitions in every prompt

    with pytest.raises(VLLMFixedPromptOverflowError) as caught:
        apply_budget(chat, budget=budget, count=with_tools, policy="trim")
    assert (caught.value.fixed_tokens, caught.value.shortfall) == (3800, 89)


def test_a_template_that_renders_no_system_prompt_alone_still_names_the_cause(counter) -> None:
    """Some chat templates need a user turn: the system prompt is then counted with an empty
    one, and a system prompt over the limit is still the typed fixed-part error."""
    from langchain_vllm_budget.errors import TokenCountError

    def count(messages: list[BaseMessage]) -> int:
        if not any(isinstance(m, HumanMessage) for m in messages):
            raise TokenCountError("this template needs a user message")
        return counter.count_messages(messages)

    system = SystemMessage("Follow the runbook. " * 600)
    with pytest.raises(VLLMFixedPromptOverflowError) as caught:
        apply_budget([system, HumanMessage("hi")], budget=BUDGET, count=count, policy="trim")
    assert caught.value.fixed_tokens == counter.count_messages([system, HumanMessage("")])
