"""The pipeline graph with fake chat models: structure, state, store, ledger, degrade order."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from graphs import Context, State
from graphs.pipeline import (
    STAGES,
    StageInputTooLargeError,
    build_graph,
    build_stage_messages,
    fit_stage_input,
    graph,
    raw_output_namespace,
)
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

COUNTER = ApproximateTokenCounter()


class RecordingFakeModel(FakeListChatModel):
    """FakeListChatModel that remembers its prompts."""

    prompts: list[list[BaseMessage]] = []  # noqa: RUF012

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.prompts.append(list(messages))
        return super()._call(messages, *args, **kwargs)


def _raw_output(stage: str, n: int = 12) -> str:
    lines = [
        f"- {stage} step {i}: ticket INC-{4800 + i} file /srv/{stage}/unit_{i}.yaml "
        f"pool_timeout={30 + i}s via update_config"
        for i in range(n)
    ]
    prose = f"The {stage} narrative goes on about context that nobody needs later. " * 12
    return "\n".join(lines) + "\n" + prose


class Models:
    def __init__(self, n: int = 12) -> None:
        self.raw = {stage: _raw_output(stage, n) for stage in STAGES}
        self.reasoning = RecordingFakeModel(responses=[self.raw[s] for s in STAGES], prompts=[])
        # the summarizer writes a weak summary: the guard has to fix it
        self.summarizer = RecordingFakeModel(responses=["- it went fine"], prompts=[])

    def factory(self, ctx: Context, role: str) -> BaseChatModel:
        return self.reasoning if role == "reasoning" else self.summarizer


def _ctx(**overrides: Any) -> Context:
    values: dict[str, Any] = {
        "max_model_len": 4096,
        "stage_max_tokens": 512,
        "summary_max_tokens": 120,
        "rolling_summary_max_tokens": 80,
    }
    values.update(overrides)
    return Context(**values)


def _run(models: Models, ctx: Context, thread: str = "t1") -> tuple[dict[str, Any], Any, Any]:
    store = InMemoryStore()
    saver = InMemorySaver()
    app = build_graph(
        saver, store, model_factory=models.factory, counter_factory=lambda c, m: COUNTER
    )
    config = {"configurable": {"thread_id": thread}}
    result = app.invoke({"request": "Fix INC-4821 in /srv/app.yaml"}, config, context=ctx)
    return result, store, app


def test_graph_structure_is_the_four_stages_in_order() -> None:
    edges = {(e.source, e.target) for e in graph.get_graph().edges}
    chain = ["__start__", *STAGES, "__end__"]
    assert edges == set(itertools.pairwise(chain))
    assert graph.context_schema is Context
    assert graph.checkpointer is None  # the LangGraph server brings its own


def test_pipeline_state_holds_summaries_not_raw_outputs() -> None:
    models = Models()
    result, store, app = _run(models, _ctx())
    assert list(result["summaries"]) == list(STAGES)
    state_json = json.dumps(result)
    for stage in STAGES:
        raw = models.raw[stage]
        assert raw not in state_json
        assert "nobody needs later. The" not in state_json
        item = store.get(raw_output_namespace("t1"), stage)
        assert item is not None
        assert item.value["content"] == raw
    # every checkpoint along the way, too
    for snapshot in app.get_state_history({"configurable": {"thread_id": "t1"}}):
        dumped = json.dumps(snapshot.values, default=str)
        assert all(models.raw[s] not in dumped for s in STAGES)


def test_stage_prompts_carry_summaries_never_raw_outputs() -> None:
    models = Models()
    _run(models, _ctx())
    assert len(models.reasoning.prompts) == 4
    for index, prompt in enumerate(models.reasoning.prompts):
        text = "\n".join(m.text for m in prompt)
        assert "Fix INC-4821" in text
        for earlier in STAGES[:index]:
            assert models.raw[earlier] not in text
            assert f"[{earlier}]" in text  # its compressed summary is there
            assert f"/srv/{earlier}/unit_0.yaml" in text  # the guard kept its entities


def test_ledger_per_stage() -> None:
    models = Models()
    result, _, _ = _run(models, _ctx())
    ledger = result["ledger"]
    assert list(ledger) == list(STAGES)
    for stage in STAGES:
        entry = ledger[stage]
        assert entry["summary_tokens"] <= 120
        assert entry["raw_tokens"] == COUNTER.count_text(models.raw[stage])
        assert entry["ratio"] == pytest.approx(entry["raw_tokens"] / entry["summary_tokens"], 1e-2)
        assert entry["ratio"] > 3
        assert entry["method"] in {"llm+restored", "extractive"}
        assert entry["retention"] == pytest.approx(
            1 - len(entry["missing"]) / entry["entities"], 1e-3
        )
        assert entry["max_tokens_granted"] == 512
        assert entry["input_tokens"] > 0
        assert entry["output_tokens"] == COUNTER.count_text(models.raw[stage])
        assert entry["degraded"] == []
        assert entry["rolling_summary_tokens"] <= 80
    # compressed hand-offs are smaller than raw ones from the second stage on
    for stage in STAGES[1:]:
        assert ledger[stage]["input_tokens"] < ledger[stage]["raw_forward_input_tokens"]
    assert ledger["classify"]["input_tokens"] == ledger["classify"]["raw_forward_input_tokens"]


def test_empty_request_is_a_clear_error() -> None:
    models = Models()
    app = build_graph(
        None, InMemoryStore(), model_factory=models.factory, counter_factory=lambda c, m: COUNTER
    )
    with pytest.raises(ValueError, match="non-empty 'request'"):
        app.invoke({"request": "  "}, context=_ctx())


def test_missing_store_is_a_clear_error() -> None:
    models = Models()
    app = build_graph(model_factory=models.factory, counter_factory=lambda c, m: COUNTER)
    with pytest.raises(RuntimeError, match="needs a store"):
        app.invoke({"request": "x"}, context=_ctx())


# ------------------------------------------------------------------ degrade order


def _budget(window: int) -> TokenBudget:
    return TokenBudget(
        max_model_len=window, output_reserve=64, safety_margin=8, min_output_tokens=32
    )


SUMMARIES = [(s, f"- {s} " + "detail " * 40) for s in ("classify", "select", "plan")]
ROLLING = "\n".join(f"[{s}] line " + "word " * 30 for s in ("classify", "select", "plan"))


def _size(request: str, summaries: list[tuple[str, str]], rolling: str) -> int:
    return COUNTER.count_messages(build_stage_messages("execute", request, summaries, rolling))


def test_fits_without_degrading() -> None:
    full = _size("req", SUMMARIES, ROLLING)
    result = fit_stage_input(
        "execute", "req", SUMMARIES, ROLLING, counter=COUNTER, budget=_budget(full + 8 + 64)
    )
    assert result.degraded == []
    assert result.input_tokens == full
    assert result.plan.max_tokens == 64


def test_degrade_folds_oldest_summaries_first() -> None:
    without_first = _size("req", SUMMARIES[1:], ROLLING)
    result = fit_stage_input(
        "execute",
        "req",
        SUMMARIES,
        ROLLING,
        counter=COUNTER,
        budget=_budget(without_first + 8 + 32),
    )
    assert result.folded == ["classify"]
    assert len(result.degraded) == 1
    assert result.degraded[0].startswith("folded the classify summary")
    assert "[select]" in result.messages[1].text
    assert "[classify]" not in result.messages[1].text.split("Earlier stages")[-1]


def test_degrade_then_trims_rolling_summary_keeping_the_newest() -> None:
    no_summaries = _size("req", [], ROLLING)
    result = fit_stage_input(
        "execute",
        "req",
        SUMMARIES,
        ROLLING,
        counter=COUNTER,
        budget=_budget(no_summaries - 40 + 8 + 32),
    )
    assert result.folded == ["classify", "select", "plan"]
    assert [d.split(" ")[0] for d in result.degraded] == ["folded"] * 3 + ["trimmed"]
    assert "rolling summary" in result.degraded[-1]
    assert result.rolling_summary
    assert ROLLING.endswith(result.rolling_summary)
    assert result.plan.fits


def test_degrade_finally_trims_the_request() -> None:
    request = "Fix INC-1 " + "context " * 200
    bare = _size("Fix INC-1", [], "")
    result = fit_stage_input(
        "execute", request, SUMMARIES, ROLLING, counter=COUNTER, budget=_budget(bare + 60 + 8 + 32)
    )
    assert result.degraded[-1].startswith("trimmed the request")
    assert result.degraded[-2].startswith("trimmed the rolling summary")
    assert "Fix INC-1" in result.messages[1].text
    assert result.plan.fits


def test_degrade_gives_up_with_numbers() -> None:
    with pytest.raises(StageInputTooLargeError, match=r"max_model_len 70") as info:
        fit_stage_input("execute", "req", SUMMARIES, ROLLING, counter=COUNTER, budget=_budget(70))
    assert info.value.max_model_len == 70
    assert info.value.input_tokens > 0


def test_degrade_is_recorded_in_the_ledger_and_state() -> None:
    models = Models(n=20)
    # a window that holds the request and the rolling summary but not every earlier summary
    ctx = _ctx(
        max_model_len=700,
        stage_max_tokens=200,
        min_stage_output_tokens=64,
        summary_max_tokens=200,
        rolling_summary_max_tokens=60,
    )
    result, _, _ = _run(models, ctx)
    degraded = {s: result["ledger"][s]["degraded"] for s in STAGES}
    assert degraded["classify"] == []
    assert any(d.startswith("folded the classify summary") for s in STAGES for d in degraded[s])
    assert result["folded"]["classify"] in STAGES[2:]
    folded_at = STAGES.index(result["folded"]["classify"])
    # once folded, a summary stays out of later prompts
    for index in range(folded_at, 4):
        earlier_part = models.reasoning.prompts[index][1].text.split("Earlier stages")[-1]
        assert "[classify]" not in earlier_part
    for stage in STAGES:
        assert (
            result["ledger"][stage]["input_tokens"]
            + result["ledger"][stage]["max_tokens_granted"]
            + ctx.safety_margin
            <= 700
        )


def test_state_class_defaults() -> None:
    state = State(request="r")
    assert (state.summaries, state.rolling_summary, state.ledger, state.folded) == ({}, "", {}, {})


def test_ledger_table_and_totals() -> None:
    from rich.console import Console

    from graphs.runner import ledger_table, totals

    result, _, _ = _run(Models(), _ctx())
    ledger = result["ledger"]
    total = totals(ledger)
    assert total["raw_tokens"] == sum(e["raw_tokens"] for e in ledger.values())
    assert total["input_tokens"] < total["raw_forward_input_tokens"]
    console = Console(record=True, width=200)
    console.print(ledger_table(ledger))
    text = console.export_text()
    for stage in STAGES:
        assert stage in text
    assert f"{ledger['plan']['summary_tokens']}/120" in text
    assert "total" in text


def test_context_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_BUDGET_SUMMARY_MAX_TOKENS", "99")
    monkeypatch.setenv("VLLM_BUDGET_BASE_URL", "http://127.0.0.1:9/v1")
    ctx = Context()
    assert (ctx.summary_max_tokens, ctx.base_url) == (99, "http://127.0.0.1:9/v1")
    assert Context(summary_max_tokens=7).summary_max_tokens == 7  # explicit wins
    monkeypatch.setenv("VLLM_BUDGET_MAX_MODEL_LEN", "lots")
    with pytest.raises(ValueError, match=r"VLLM_BUDGET_MAX_MODEL_LEN must be an? int"):
        Context()


def test_context_rejects_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="min_stage_output_tokens"):
        Context(stage_max_tokens=32, min_stage_output_tokens=64)
    with pytest.raises(ValueError, match="summary_max_tokens must be at least 1"):
        Context(summary_max_tokens=0)
