"""The agent-loop benchmark's pure helpers: the ticket workload, its facts, the columns."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from benchmarks import agent_loop
from benchmarks.agent_loop import (
    Call,
    SentRequest,
    extends,
    facts_present,
    hit_rate,
    prompt_text,
    summarize_calls,
    ticket_facts,
    ticket_turn,
)


class _WordCounter:
    """Counts words: enough to size a turn without a tokenizer."""

    name = "words"
    exact = False

    def count_text(self, text: str) -> int:
        return len(text.split())

    def count_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: Any = None,
    ) -> int:
        return sum(self.count_text(m.text) + 4 for m in messages)


def test_every_ticket_fact_is_unique_to_its_ticket() -> None:
    tickets = [ticket_facts(i) for i in range(60)]
    for label in tickets[0]:
        values = [t[label] for t in tickets]
        assert len(set(values)) == len(values), label
    # No value of one ticket is found in another ticket's text.
    counter = _WordCounter()
    texts = [ticket_turn(i, counter).messages[2].text for i in range(60)]
    for i, facts in enumerate(tickets):
        present = facts_present([facts], texts[(i + 1) % 60])
        assert present["present"] == 0


def test_a_turn_is_a_request_a_scripted_tool_call_and_the_ticket_as_its_result() -> None:
    turn = ticket_turn(4, _WordCounter(), tokens=120)
    ask, call, result = turn.messages
    assert isinstance(ask, HumanMessage)
    assert isinstance(call, AIMessage)
    assert call.tool_calls[0]["name"] == "get_ticket"
    assert call.tool_calls[0]["args"] == {"ticket_id": "INC-7004"}
    assert isinstance(result, ToolMessage)
    assert result.tool_call_id == call.tool_calls[0]["id"]
    assert facts_present([turn.facts], result.text)["share"] == 1.0


def test_a_turn_grows_to_its_size_and_not_past_it() -> None:
    counter = _WordCounter()
    small = ticket_turn(1, counter, tokens=80)
    large = ticket_turn(1, counter, tokens=400)
    size = counter.count_messages(large.messages)
    assert counter.count_messages(small.messages) < size
    assert 400 - 40 < size + 16 <= 400  # a log line is under 40 words


def test_prompt_text_reads_contents_parts_and_tool_arguments() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "part"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "get_ticket", "arguments": '{"id": "INC-1"}'}}],
        },
    ]
    assert prompt_text(messages) == 'sys\npart\n{"id": "INC-1"}'


def test_facts_present_counts_all_and_per_label() -> None:
    facts = [ticket_facts(0), ticket_facts(1)]
    prompt = f"summary: {facts[0]['ticket']} at {facts[0]['address']}; {facts[1]['ticket']}"
    present = facts_present(facts, prompt)
    assert present["total"] == 10
    assert present["present"] == 3
    assert present["share"] == 0.3
    assert present["by_label"]["ticket"] == 1.0
    assert present["by_label"]["address"] == 0.5
    assert present["by_label"]["trace"] == 0.0
    assert facts_present([], "x")["share"] is None


def test_a_prompt_extends_the_previous_one_only_by_appending() -> None:
    a = {"role": "user", "content": "a"}
    b = {"role": "assistant", "content": "b"}
    cleared = {"role": "tool", "content": "[cleared]"}
    assert extends(None, [a])
    assert extends([a], [a, b])
    assert not extends([a, b], [a, cleared, b])
    assert not extends([a, b], [a])


def _request(prompt: int, cached: int) -> SentRequest:
    return SentRequest([], prompt, cached)


def test_hit_rates_split_agent_calls_and_summarizer_requests() -> None:
    calls = [
        Call(False, _request(100, 0), [], 1.0),  # the first call: left out under the window
        Call(False, _request(200, 100), [], 1.0),
        Call(True, _request(400, 300), [_request(1000, 0)], 9.0, rewrote=True),
        Call(True, _request(500, 400), [], 2.0),
        Call(True, None, [], 0.1, error="VLLMContextOverflowError"),
    ]
    columns = summarize_calls(calls)
    assert columns["hit_rate_under_window"] == 0.5
    assert columns["hit_rate_over_window"] == round(700 / 1900, 4)
    assert columns["hit_rate_over_window_agent_calls"] == round(700 / 900, 4)
    assert columns["summarizer_hit_rate"] == 0.0
    assert columns["tokens_prefilled_over_window"] == 100 + 1000 + 100
    assert columns["summarizer_calls"] == 1
    assert columns["prompt_rewrites"] == 1
    assert columns["errors"] == 1
    assert columns["error_types"] == {"VLLMContextOverflowError": 1}
    # Latency over the window, failed turns left out.
    assert columns["seconds_per_call_median"] == 5.5
    assert columns["per_call_hit_rate"] == [0.0, 0.5, round(300 / 1400, 4), 0.8, None]
    assert columns["per_call_over_window"] == [False, False, True, True, True]


def test_hit_rate_without_requests_is_none() -> None:
    assert hit_rate([]) is None
    assert summarize_calls([])["summarizer_hit_rate"] is None


def test_a_crashed_variant_is_marked_and_fails_the_run_after_the_others_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @contextlib.contextmanager
    def server(window: int, url: str | None, tokenizer: Any = None) -> Iterator[Any]:
        class Served:
            max_model_len = window
            model_path = "unused"

        yield Served()

    def run_chat(served: Any, name: str, turns: Any) -> dict[str, Any]:
        if name == "trim":
            raise TypeError(name)
        return {"policy": name}

    monkeypatch.setattr(agent_loop, "_server", server)
    monkeypatch.setattr(agent_loop, "_turns", lambda counter, calls: [ticket_turn(0, counter)])
    monkeypatch.setattr(agent_loop, "TransformersTokenCounter", lambda path: _WordCounter())
    monkeypatch.setattr(agent_loop, "_run_chat", run_chat)
    saved: list[dict[str, Any]] = []
    with pytest.raises(agent_loop.VariantsCrashed, match="trim"):
        agent_loop.run_agent_loop(
            quick=True, variants=("trim", "summarize"), parts=("chat",), done=saved.append
        )
    runs = saved[-1]["chat"]["runs"]
    assert runs == [{"policy": "trim", "crashed": "TypeError"}, {"policy": "summarize"}]
    table = agent_loop._chat_markdown(saved[-1]["chat"] | {"runs": runs[:1]})
    assert "| trim | **CRASHED: TypeError** |" in "\n".join(table)


def test_the_chat_runs_to_three_windows_and_saves_after_each_variant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[tuple[int, str | None, Any]] = []
    turns_for: list[int] = []

    @contextlib.contextmanager
    def server(window: int, url: str | None, tokenizer: Any = None) -> Iterator[Any]:
        opened.append((window, url, tokenizer))

        class Served:
            max_model_len = window
            model_path = "unused"

        yield Served()

    def turns(counter: Any, calls: int) -> list[Any]:
        turns_for.append(calls)
        return [ticket_turn(0, counter)]

    monkeypatch.setattr(agent_loop, "_server", server)
    monkeypatch.setattr(agent_loop, "_turns", turns)
    monkeypatch.setattr(agent_loop, "TransformersTokenCounter", lambda path: _WordCounter())
    monkeypatch.setattr(agent_loop, "_run_chat", lambda served, name, turns: {"policy": name})
    runs_seen: list[int] = []
    agent_loop.run_agent_loop(
        chat_window=12288,
        chat_tokenizer="tok",  # type: ignore[arg-type]
        variants=("trim", "summarize"),
        parts=("chat",),
        done=lambda results: runs_seen.append(len(results["chat"]["runs"])),
    )
    assert opened == [(12288, None, "tok")]
    assert turns_for == [agent_loop.chat_calls(12288)] == [126]
    assert agent_loop.chat_calls(agent_loop.CHAT_WINDOW) == agent_loop.CHAT_CALLS
    assert runs_seen == [1, 2]


def test_the_summary_names_the_variants_not_run() -> None:
    chat = {"window": 4096, "calls": 42, "turn_tokens": 280, "facts_per_turn": 5, "runs": []}
    chat |= {"finished": "now", "seconds": 1.0, "load_average_end": [0.0, 0.0, 0.0]}
    text = "\n".join(agent_loop._chat_markdown(chat))
    assert "Not run: `trim, every call (before)`, `summarize, every call (before)`, `trim`" in text
    assert "Not finished" not in text
    chat |= {"variants": ["trim", "summarize"], "runs": [{"policy": "trim", "crashed": "X"}]}
    text = "\n".join(agent_loop._chat_markdown(chat))
    assert "Not finished (the run stopped first): `summarize`." in text
    assert "Not run: `trim, every call (before)`, `summarize, every call (before)`, `middle" in text


def test_the_cli_refuses_a_window_it_cannot_use(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, says in [
        (["--chat-window", "1024"], "give at least 2048"),
        (["--chat-window", "4096", "--chat-url", "http://127.0.0.1:1/v1"], "--chat-url"),
    ]:
        with pytest.raises(SystemExit) as exited:
            agent_loop.main([*argv, "--out", str(tmp_path)])
        assert exited.value.code == 2
        assert says in capsys.readouterr().err
    assert agent_loop.window_arg("12288") == 12288
