"""The compaction engine: compact once with room to spare, then only append (offline)."""

from __future__ import annotations

import copy
import itertools
import threading
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_vllm_budget.compaction import (
    SUMMARY_PREFIX,
    CompactionMemory,
    CompactionResult,
    Compactor,
    is_summary_message,
    summary_message,
)
from langchain_vllm_budget.compression import COMPRESSION_SYSTEM_PROMPT, SummarySpec
from langchain_vllm_budget.tokenizers import ApproximateTokenCounter
from tests.fakes import RecordingFakeModel, ThreadRecordingCounter

COUNTER = ApproximateTokenCounter()
LIMIT = 1200
SYSTEM = SystemMessage("You are an operations assistant. Track every ticket and host.")


def count(messages) -> int:
    return COUNTER.count_messages(messages)


def _turn(i: int) -> list[BaseMessage]:
    return [
        HumanMessage(
            f"Ticket INC-{1000 + i}: host db-{i}.prod at /var/log/db-{i}.log reports "
            f"latency {200 + i} ms. " + "Details follow in the attached notes. " * 4
        ),
        AIMessage(f"Noted INC-{1000 + i}; checking db-{i}.prod."),
    ]


def _agent_turn(i: int) -> list[BaseMessage]:
    call = {"name": "lookup", "args": {"host": f"db-{i}.prod"}, "id": f"call_{i}"}
    return [
        AIMessage("", tool_calls=[call]),
        ToolMessage(f"db-{i}.prod: load {i}.5, disk 8{i}% used. " * 6, tool_call_id=f"call_{i}"),
    ]


def _tool_pairs_intact(messages: list[BaseMessage]) -> bool:
    calls = {c["id"] for m in messages if isinstance(m, AIMessage) for c in m.tool_calls}
    results = [m.tool_call_id for m in messages if isinstance(m, ToolMessage)]
    answered = set(results)
    return all(r in calls for r in results) and all(c in answered for c in calls)


class _Loop:
    """A chat that grows by one turn per call, compacted whenever it does not fit."""

    def __init__(self, compactor: Compactor, policy: str, turn=_turn) -> None:
        self.compactor = compactor
        self.policy = policy
        self.turn = turn
        self.history: list[BaseMessage] = [SYSTEM]
        self.sent: list[list[BaseMessage]] = []
        self.results: list[Any] = []

    def step(self, i: int) -> list[BaseMessage]:
        self.history += self.turn(i)
        if count(self.history) <= LIMIT:
            sent = list(self.history)
            self.results.append(None)
        else:
            result = self.compactor.compact(
                self.history, policy=self.policy, count=count, limit=LIMIT
            )
            assert result.fits
            assert result.tokens == count(result.messages) <= LIMIT
            sent = result.messages
            self.results.append(result)
        self.sent.append(sent)
        return sent


@pytest.mark.parametrize("policy", ["trim", "summarize"])
def test_the_prefix_is_byte_stable_between_compactions(policy: str) -> None:
    loop = _Loop(Compactor(target=0.6, memory=CompactionMemory()), policy)
    for i in range(40):
        loop.step(i)
    compactions = [r for r in loop.results if r is not None and r.report.compacted]
    reused = [r for r in loop.results if r is not None and r.report.reused]
    assert 2 <= len(compactions) < len(reused), "compacts once, then reuses"
    for before, after, result in zip(loop.sent, loop.sent[1:], loop.results[1:], strict=False):
        if result is None or result.report.reused:
            # only appended: what was sent before is the start of what is sent now
            assert after[: len(before)] == before
    for result in compactions:
        # room to spare: down to the target, not just under the limit
        assert result.tokens <= int(LIMIT * 0.6)
        assert result.messages[0] is SYSTEM
        assert isinstance(result.messages[1 if policy == "trim" else 2], HumanMessage)
    if policy == "summarize":
        assert all(is_summary_message(r.messages[1]) for r in compactions)


@pytest.mark.parametrize("policy", ["trim", "summarize"])
def test_target_one_compacts_on_every_call(policy: str) -> None:
    # target=1.0 is the old behaviour: compacting just enough, into one summary, means
    # compacting again
    loop = _Loop(Compactor(target=1.0, memory=CompactionMemory()), policy)
    for i in range(30):
        loop.step(i)
    over = [r for r in loop.results if r is not None]
    assert over
    assert sum(r.report.compacted for r in over) >= len(over) - 1
    assert all(r.report.summaries == (policy == "summarize") for r in over)


def test_one_summarizer_call_per_compaction() -> None:
    summarizer = RecordingFakeModel(
        responses=["- INC tickets reviewed; hosts db-*.prod checked"], prompts=[]
    )
    loop = _Loop(
        Compactor(
            target=0.6,
            memory=CompactionMemory(),
            summary=SummarySpec(model=summarizer, counter=COUNTER, strategy="llm"),
        ),
        "summarize",
    )
    for i in range(40):
        loop.step(i)
    prompts = summarizer.prompts
    over = [r for r in loop.results if r is not None]
    compactions = [r for r in over if r.report.compacted]
    assert len(prompts) == len(compactions) == sum(r.report.summarizer_calls for r in over)
    assert all(r.report.summarizer_calls == 0 for r in over if r.report.reused)
    # the package's compressor wrote them: its prompt, its entity guard
    assert all(p[0].content == COMPRESSION_SYSTEM_PROMPT for p in prompts)
    for result in compactions:
        assert result.report.compression is not None
        assert result.report.compression["method"] in ("llm+restored", "extractive")
        summary = result.messages[1].text
        assert summary.startswith(SUMMARY_PREFIX)
        assert result.report.compression["summary_tokens"] <= 250


def test_auto_calls_the_summarizer_only_when_the_extract_loses_entities() -> None:
    summarizer = RecordingFakeModel(responses=["- INC tickets reviewed"], prompts=[])
    compactor = Compactor(
        target=0.6,
        memory=CompactionMemory(),
        summary=SummarySpec(model=summarizer, counter=COUNTER, strategy="auto"),
    )
    loop = _Loop(compactor, "summarize")
    for i in range(40):
        loop.step(i)
    compactions = [r for r in loop.results if r is not None and r.report.compacted]
    calls = [r.report.summarizer_calls for r in compactions]
    assert len(summarizer.prompts) == sum(calls)
    # at most one call per compaction; none where the extractive summary kept everything
    assert 0 < sum(calls) < len(compactions)
    for result in compactions:
        details = result.report.compression
        assert details is not None
        if result.report.summarizer_calls == 0:
            assert details["method"] == "extractive"
            assert details["missing"] == 0
        else:
            assert result.report.summarizer_calls == 1


def test_strategy_reads_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    summarizer = RecordingFakeModel(responses=["- reviewed"], prompts=[])
    monkeypatch.setenv("VLLM_BUDGET_COMPRESSION", "extractive")
    compactor = Compactor(summary=SummarySpec(model=summarizer, counter=COUNTER))
    assert compactor.summary.strategy == "extractive"
    history = [SYSTEM, *[m for i in range(14) for m in _turn(i)]]
    result = compactor.compact(history, policy="summarize", count=count, limit=LIMIT)
    assert result.fits
    assert summarizer.prompts == []
    assert result.report.summarizer_calls == 0
    with pytest.raises(ValueError, match="'auto', 'llm' or 'extractive'"):
        SummarySpec(strategy="always")  # type: ignore[arg-type]


def test_entities_survive_rolling_summaries() -> None:
    loop = _Loop(Compactor(target=0.6, memory=CompactionMemory()), "summarize")
    for i in range(40):
        loop.step(i)
    last = next(r for r in reversed(loop.results) if r is not None and r.report.compacted)
    summaries = last.messages[1 : 1 + last.report.summaries]
    assert summaries
    assert all(is_summary_message(m) for m in summaries)
    # the newest summarized ticket is there, by ID, in the newest summary; the cap is kept
    dropped = [m for m in loop.history if isinstance(m, HumanMessage) and m not in last.messages]
    assert "INC-" in summaries[-1].text
    newest_dropped = dropped[-1].text.split(":")[0].removeprefix("Ticket ")
    assert newest_dropped in summaries[-1].text
    assert last.report.compression is not None
    assert last.report.compression["summary_tokens"] <= 250
    # every ticket dropped is in one of the summaries
    text = "\n".join(m.text for m in summaries)
    for message in dropped:
        assert message.text.split(":")[0].removeprefix("Ticket ") in text


def _stacked_compactions(summary_share: float, calls: int) -> list[CompactionResult]:
    """The compactions of a growing chat with 60-token summaries (~70 with their first line)."""
    compactor = Compactor(
        target=0.6,
        memory=CompactionMemory(),
        summary=SummarySpec(max_tokens=60, strategy="extractive"),
        summary_share=summary_share,
    )
    loop = _Loop(compactor, "summarize")
    for i in range(calls):
        loop.step(i)
    return [r for r in loop.results if r is not None and r.report.compacted]


def test_summaries_stack_and_the_prefix_up_to_them_stays() -> None:
    compactions = _stacked_compactions(0.9, 40)
    assert len(compactions) >= 3
    assert [r.report.summaries for r in compactions] == list(range(1, len(compactions) + 1))
    for before, after in itertools.pairwise(compactions):
        kept = before.report.summaries
        # the system message and the earlier summaries are sent again byte for byte
        assert after.messages[: 1 + kept] == before.messages[: 1 + kept]
        assert is_summary_message(after.messages[1 + kept])
        assert after.tokens <= int(LIMIT * 0.6)


def test_summaries_over_their_share_are_merged_into_one() -> None:
    # the summaries may take 0.4 of the 720-token target: three or four, then a merge
    compactions = _stacked_compactions(0.4, 60)
    counts = [r.report.summaries for r in compactions]
    merges = [i for i in range(1, len(counts)) if counts[i] < counts[i - 1]]
    assert merges, counts
    for i in merges:
        before, merged = compactions[i - 1], compactions[i]
        assert counts[i] == 1
        assert counts[i - 1] > 1
        # the earlier summaries are gone from the prompt: one new summary replaced them
        old = before.messages[1 : 1 + counts[i - 1]]
        assert not any(m in merged.messages for m in old)
        assert "INC-" in merged.messages[1].text
    assert max(counts) >= 3, "summaries stacked before they were merged"
    for result in compactions:
        assert result.tokens <= int(LIMIT * 0.6)


def test_stacking_falls_back_to_a_merge_when_only_that_fits() -> None:
    # a large system prompt, a summary already in state (always within its share: 1.0), and
    # a large newest request: with the summary kept nothing fits the limit, merged it does
    system = SystemMessage("You are an operations assistant. " + "Rule: be exact. " * 80)
    old = summary_message("- INC-0042 closed; " + "host db-9.prod checked; " * 12)
    newest = HumanMessage("Ticket INC-2000: " + "detail " * 300)
    history = [system, old, *[m for i in range(6) for m in _turn(i)], newest]
    compactor = Compactor(target=0.6, summary_share=1.0)
    result = compactor.compact(history, policy="summarize", count=count, limit=LIMIT)
    assert result.fits
    assert old not in result.messages, "merged into the new summary"
    assert result.report.summaries == 1
    assert result.messages[-1] is newest


def test_kept_summaries_are_not_counted_as_replaced_when_resent_as_new_objects() -> None:
    # a conversation that starts with a summary, re-sent whole on each call as new objects
    # (loaded from a checkpoint): the remembered compaction is found, and the summary it
    # kept is still sent as it was
    old = summary_message("- INC-0042 closed; config /etc/app/limits.yaml")
    compactor = Compactor(
        target=0.6,
        memory=CompactionMemory(),
        summary=SummarySpec(max_tokens=60, strategy="extractive"),
    )
    history: list[BaseMessage] = [SYSTEM, old]
    results = []
    for i in range(30):
        history = [*history, *_turn(i)]
        if count(history) > LIMIT:
            sent = copy.deepcopy(history)
            result = compactor.compact(sent, policy="summarize", count=count, limit=LIMIT)
            assert result.fits
            # equal, not the same objects: the kept summary is the remembered one
            unchanged = [m for m in sent[1:] if m in result.messages]
            assert result.report.replaced == len(sent) - 1 - len(unchanged)
            results.append(result)
    assert any(r.report.reused for r in results)
    # compactions after the first: the remembered summaries kept, the conversation's own first
    assert [r.report.summaries for r in results if r.report.compacted][:2] == [2, 3]
    assert all(r.messages[1] == old for r in results)


def test_stacked_summaries_in_state_keep_their_prefix() -> None:
    # state mode, no memory: each call sends the compacted messages plus one new turn
    compactor = Compactor(target=0.6, summary=SummarySpec(max_tokens=60, strategy="extractive"))
    state: list[BaseMessage] = [SYSTEM]
    compactions: list[tuple[list[BaseMessage], CompactionResult]] = []
    for i in range(40):
        state = [*state, *_turn(i)]
        if count(state) > LIMIT:
            result = compactor.compact(state, policy="summarize", count=count, limit=LIMIT)
            assert result.fits
            compactions.append((state, result))
            state = result.messages
    counts = [r.report.summaries for _, r in compactions]
    assert counts[:3] == [1, 2, 3], counts
    for (_, before), (sent, after) in itertools.pairwise(compactions):
        if after.report.summaries > before.report.summaries:
            kept = before.report.summaries
            assert after.messages[: 1 + kept] == before.messages[: 1 + kept]
        # the kept summaries are sent as they were: only the others count as replaced
        unchanged = [m for m in sent[1:] if any(m is k for k in after.messages)]
        assert after.report.replaced == len(sent) - 1 - len(unchanged)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_summary_share_outside_0_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match=r"summary_share must be in \(0, 1\]"):
        Compactor(summary_share=share)


def test_an_agent_turn_is_cut_inside_keeping_its_request_and_tool_pairs() -> None:
    # one request, then a long tool loop: no turn boundary to cut at
    request = HumanMessage("Check every db host of cluster EU-7 and report the fullest disk.")
    history: list[BaseMessage] = [SYSTEM, request]
    compactor = Compactor(target=0.6, memory=CompactionMemory())
    for i in range(30):
        history += _agent_turn(i)
        if count(history) > LIMIT:
            result = compactor.compact(history, policy="trim", count=count, limit=LIMIT)
            assert result.fits
            sent = result.messages
            assert sent[0] is SYSTEM
            assert sent[1] is request, "the request is kept in front"
            assert isinstance(sent[2], AIMessage)
            assert _tool_pairs_intact(sent)
            assert result.report.pinned
            assert sent[-1] is history[-1]


def test_nothing_fits_is_reported_not_sent() -> None:
    messages = [SYSTEM, HumanMessage("word " * 4000)]
    result = Compactor().compact(messages, policy="trim", count=count, limit=LIMIT)
    assert not result.fits
    assert result.messages == messages
    assert not result.report.compacted


def test_memory_is_keyed_by_content_not_objects() -> None:
    memory = CompactionMemory()
    compactor = Compactor(target=0.6, memory=memory)
    history = [SYSTEM, *[m for i in range(12) for m in _turn(i)]]
    first = compactor.compact(history, policy="trim", count=count, limit=LIMIT)
    assert first.report.compacted
    # the same conversation rebuilt from text (as a chat server would) plus a new turn
    rebuilt = [type(m)(m.content) for m in history] + _turn(12)
    again = compactor.compact(rebuilt, policy="trim", count=count, limit=LIMIT)
    assert again.report.reused
    assert [m.content for m in again.messages[: len(first.messages)]] == [
        m.content for m in first.messages
    ]


def test_memory_is_bounded_least_recently_used_first() -> None:
    memory = CompactionMemory(max_entries=1)
    compactor = Compactor(target=0.6, memory=memory)
    chat_a = [SYSTEM, *[m for i in range(12) for m in _turn(i)]]
    chat_b = [SYSTEM, *[m for i in range(100, 112) for m in _turn(i)]]
    assert compactor.compact(chat_a, policy="trim", count=count, limit=LIMIT).report.compacted
    assert compactor.compact(chat_b, policy="trim", count=count, limit=LIMIT).report.compacted
    assert len(memory) == 1
    # chat_a's compaction was dropped: it is compacted again (never wrong, one more miss)
    assert compactor.compact(chat_a, policy="trim", count=count, limit=LIMIT).report.compacted
    memory.clear()
    assert len(memory) == 0


def test_no_memory_remembers_nothing() -> None:
    memory = CompactionMemory(max_entries=0)
    history = [SYSTEM, *[m for i in range(12) for m in _turn(i)]]
    for _ in range(2):
        result = Compactor(memory=memory).compact(history, policy="trim", count=count, limit=LIMIT)
        assert result.report.compacted
    assert len(memory) == 0


def test_trim_and_summarize_memories_do_not_mix() -> None:
    memory = CompactionMemory()
    history = [SYSTEM, *[m for i in range(12) for m in _turn(i)]]
    compactor = Compactor(target=0.6, memory=memory)
    trimmed = compactor.compact(history, policy="trim", count=count, limit=LIMIT)
    summarized = compactor.compact(history, policy="summarize", count=count, limit=LIMIT)
    assert summarized.report.compacted
    assert is_summary_message(summarized.messages[1])
    assert not any(is_summary_message(m) for m in trimmed.messages)


def test_a_summary_in_state_is_kept_or_folded_into_the_next_one() -> None:
    # state-mode: the conversation already starts with a summary (ours or LangChain's)
    old = HumanMessage(
        "Here is a summary of the conversation to date:\n\nTicket INC-0042 closed; "
        "config at /etc/app/limits.yaml set max_tokens=250.",
        additional_kwargs={"lc_source": "summarization"},
    )
    assert is_summary_message(old)
    assert is_summary_message(summary_message("x"))
    assert not is_summary_message(HumanMessage("x"))
    history = [SYSTEM, old, *[m for i in range(14) for m in _turn(i)]]
    # within its share: kept as it is, first, and the new summary after it
    kept = Compactor(target=0.6).compact(history, policy="summarize", count=count, limit=LIMIT)
    assert kept.fits
    assert kept.messages[1] is old
    assert is_summary_message(kept.messages[2])
    assert kept.report.summaries == 2
    # the new summary is of the turns after it, not of it again
    assert "INC-0042" not in kept.messages[2].text
    sent = [m for m in history if any(m is k for k in kept.messages)]
    assert kept.report.replaced == len(history) - len(sent)
    # over it: summarized again with the span, into one summary
    folded = Compactor(target=0.6, summary_share=0.05).compact(
        history, policy="summarize", count=count, limit=LIMIT
    )
    assert folded.fits
    assert old not in folded.messages
    assert folded.report.summaries == 1
    summary = folded.messages[1].text
    for entity in ("INC-0042", "/etc/app/limits.yaml", "max_tokens=250"):
        assert entity in summary


def test_system_message_and_tools_never_move() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]

    def count_with_tools(messages) -> int:
        return COUNTER.count_messages(messages, tools)

    history = [SYSTEM, *[m for i in range(14) for m in _turn(i)]]
    for policy in ("trim", "summarize"):
        result = Compactor().compact(history, policy=policy, count=count_with_tools, limit=LIMIT)
        assert result.messages[0] is SYSTEM
        assert result.tokens == count_with_tools(result.messages) <= LIMIT
        assert sum(isinstance(m, SystemMessage) for m in result.messages) == 1


async def test_async_shares_every_step_with_sync() -> None:
    history = [SYSTEM, *[m for i in range(14) for m in _turn(i)]]
    for policy in ("trim", "summarize"):
        sync = Compactor(target=0.6).compact(history, policy=policy, count=count, limit=LIMIT)
        for offload in (False, True):
            result = await Compactor(target=0.6).acompact(
                history, policy=policy, count=count, limit=LIMIT, offload=offload
            )
            assert [m.content for m in result.messages] == [m.content for m in sync.messages]
            assert result.tokens == sync.tokens


async def test_async_counting_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def counting(messages) -> int:
        threads.add(threading.get_ident())
        return count(messages)

    history = [SYSTEM, *[m for i in range(14) for m in _turn(i)]]
    result = await Compactor().acompact(
        history, policy="summarize", count=counting, limit=LIMIT, offload=True
    )
    assert result.fits
    assert loop_thread not in threads


async def test_async_summarize_never_counts_on_the_event_loop() -> None:
    # the compressor counts the span and its summary too: with a server's /tokenize that
    # would block the loop, so everything that counts runs in worker threads
    loop_thread = threading.get_ident()
    counter = ThreadRecordingCounter()
    summarizer = RecordingFakeModel(responses=["- INC tickets reviewed"], prompts=[])
    compactor = Compactor(summary=SummarySpec(model=summarizer, counter=counter, strategy="llm"))
    history = [SYSTEM, *[m for i in range(14) for m in _turn(i)]]
    result = await compactor.acompact(
        history, policy="summarize", count=counter.count_messages, limit=LIMIT, offload=True
    )
    assert result.fits
    assert result.report.summarizer_calls == len(summarizer.prompts) == 1
    assert counter.threads
    assert loop_thread not in counter.threads


def test_bad_settings_are_typed_errors() -> None:
    with pytest.raises(ValueError, match="compaction target"):
        Compactor(target=0.0)
    with pytest.raises(ValueError, match="compaction target"):
        Compactor(target=1.5)
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        Compactor(summary=SummarySpec(max_tokens=0))
    with pytest.raises(ValueError, match="max_entries"):
        CompactionMemory(max_entries=-1)
    with pytest.raises(ValueError, match="'trim' or 'summarize'"):
        Compactor().compact([SYSTEM], policy="drop", count=count, limit=LIMIT)  # type: ignore[arg-type]


def test_target_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_BUDGET_COMPACTION_TARGET", "0.4")
    assert Compactor().target == 0.4
    assert Compactor(target=0.7).target == 0.7


# ChatVLLM's wiring: its settings, and one memory shared by its copies (no server needed: the
# window is configured and counting is approximate).


def _chat_vllm(**kwargs: Any) -> Any:
    from langchain_vllm_budget import ChatVLLM, TokenBudget

    return ChatVLLM(
        model="m",
        base_url="http://127.0.0.1:9/v1",
        token_counter=COUNTER,
        budget=TokenBudget(max_model_len=1600, output_reserve=256, min_output_tokens=64),
        **kwargs,
    )


def _report(model: Any, history: list[BaseMessage]) -> dict[str, Any]:
    from langchain_vllm_budget.chat_models._discovery import UNKNOWN_SERVER
    from langchain_vllm_budget.chat_models._pipeline import prepare, read_request

    prepared = prepare(model, read_request(model, history, {}), info=UNKNOWN_SERVER)
    report = prepared.report()
    assert report["input_tokens"] + report["max_tokens"] <= 1600 - report["safety_margin"]
    return report


def test_chat_vllm_compacts_to_its_target_and_its_copies_reuse_it() -> None:
    model = _chat_vllm(on_overflow="trim", compaction_target=0.5)
    history: list[BaseMessage] = [SYSTEM]
    reports = []
    for i in range(30):
        history += _turn(i)
        reports.append(_report(model, history))
    compacted = [r for r in reports if r["compaction"] and r["compaction"]["compacted"]]
    assert compacted, "the chat passed the window"
    first = compacted[0]
    assert first["action"] == "trimmed"
    assert first["input_tokens"] <= first["compaction"]["target_tokens"]
    assert first["compaction"]["target_tokens"] == int(first["compaction"]["input_limit"] * 0.5)
    # a copy (bind, with_config and model_copy share the memory) reuses the compaction
    copy = model.model_copy(update={"temperature": 0.2})
    assert copy._compaction_memory is model._compaction_memory
    again = _report(copy, [*history, *_turn(30)])
    assert again["compaction"]["reused"]
    assert again["dropped_messages"] == reports[-1]["dropped_messages"]


def test_chat_vllm_compaction_target_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("VLLM_BUDGET_COMPACTION_TARGET", "0.45")
    assert _chat_vllm().compaction_target == 0.45
    assert _chat_vllm(compaction_target=0.8).compaction_target == 0.8
    with pytest.raises(ValidationError, match="compaction_target"):
        _chat_vllm(compaction_target=1.5)
