"""The pipeline graph with fake chat models: structure, state, store, ledger, degrade order."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from graphs import Context, State, prompts
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

from ..fakes import RecordingFakeModel

COUNTER = ApproximateTokenCounter()


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
# the rolling summary after each stage: it covers that stage and every one before it
DIGESTS = {
    "classify": "[classify] digest " + "word " * 12,
    "select": "[classify+select] digest " + "word " * 20,
    "plan": "[classify+select+plan] digest " + "word " * 30,
}


def _size(request: str, summaries: list[tuple[str, str]], rolling: str) -> int:
    return COUNTER.count_messages(build_stage_messages("execute", request, summaries, rolling))


def _fit(request: str, window: int, **kwargs: Any) -> Any:
    return fit_stage_input(
        "execute",
        request,
        SUMMARIES,
        "",
        counter=COUNTER,
        budget=_budget(window),
        rolling_summaries=kwargs.get("rolling_summaries", DIGESTS),
    )


def test_fits_without_degrading_and_without_a_rolling_summary() -> None:
    full = _size("req", SUMMARIES, "")
    result = _fit("req", full + 8 + 64)
    assert result.degraded == []
    assert result.input_tokens == full
    assert result.plan.max_tokens == 64
    assert result.rolling_summary == ""
    assert prompts.ROLLING_SUMMARY_HEADER not in result.messages[1].text


def test_degrade_folds_oldest_summaries_first_into_the_rolling_summary() -> None:
    without_first = _size("req", SUMMARIES[1:], DIGESTS["classify"])
    result = _fit("req", without_first + 8 + 32)
    assert result.folded == ["classify"]
    assert len(result.degraded) == 1
    assert result.degraded[0].startswith("folded the classify summary")
    text = result.messages[1].text
    assert "[select]" in text
    assert "- classify detail" not in text  # the summary itself is out
    assert DIGESTS["classify"].strip() in text  # the digest covering it is in
    assert result.rolling_summary == DIGESTS["classify"]


def test_folding_more_stages_replaces_their_digest_not_adds_to_it() -> None:
    only_plan = _size("req", SUMMARIES[2:], DIGESTS["select"])
    result = _fit("req", only_plan + 8 + 32)
    assert result.folded == ["classify", "select"]
    text = result.messages[1].text
    assert DIGESTS["select"].strip() in text
    assert DIGESTS["classify"].strip() not in text
    assert text.count(prompts.ROLLING_SUMMARY_HEADER) == 1


def test_degrade_then_trims_rolling_summary_keeping_the_newest() -> None:
    no_summaries = _size("req", [], DIGESTS["plan"])
    result = _fit("req", no_summaries - 20 + 8 + 32)
    assert result.folded == ["classify", "select", "plan"]
    assert [d.split(" ")[0] for d in result.degraded] == ["folded"] * 3 + ["trimmed"]
    assert "rolling summary" in result.degraded[-1]
    assert result.rolling_summary
    assert DIGESTS["plan"].endswith(result.rolling_summary)
    assert result.plan.fits


def test_degrade_finally_trims_the_request() -> None:
    request = "Fix INC-1 " + "context " * 200
    bare = _size("Fix INC-1", [], "")
    result = _fit(request, bare + 20 + 8 + 32)
    assert result.degraded[-1].startswith("trimmed the request")
    assert result.degraded[-2].startswith("trimmed the rolling summary")
    assert "Fix INC-1" in result.messages[1].text
    assert result.plan.fits


def test_folding_without_digests_carries_the_summary_into_the_rolling_summary() -> None:
    full = _size("req", SUMMARIES, "")
    result = _fit("req", full + 8 + 32 - 1, rolling_summaries={})
    # carried as they are, the folded summaries save nothing: all fold, then the text is
    # trimmed, keeping the newest part
    assert result.folded == ["classify", "select", "plan"]
    assert [d.split(" ")[0] for d in result.degraded] == ["folded"] * 3 + ["trimmed"]
    assert "[plan]\n- plan detail" in result.rolling_summary
    assert result.plan.fits


def test_degrade_gives_up_with_numbers() -> None:
    with pytest.raises(StageInputTooLargeError, match=r"max_model_len 70") as info:
        _fit("req", 70)
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
    # once folded, a summary stays out of later prompts, and the digest stands in for it
    for index in range(folded_at, 4):
        text = models.reasoning.prompts[index][1].text
        earlier_part = text.split("Earlier stages")[-1]
        assert "[classify]\n" not in earlier_part
        assert text.count(prompts.ROLLING_SUMMARY_HEADER) == 1
        assert result["ledger"][STAGES[index]]["folded_summary_tokens"] > 0
    for index in range(folded_at):
        assert result["ledger"][STAGES[index]]["folded_summary_tokens"] == 0
    for stage in STAGES:
        assert COUNTER.count_text(result["rolling_summaries"][stage]) <= 60
        assert (
            result["ledger"][stage]["input_tokens"]
            + result["ledger"][stage]["max_tokens_granted"]
            + ctx.safety_margin
            <= 700
        )


def test_prompts_never_say_the_same_thing_twice() -> None:
    models = Models()
    result, _, _ = _run(models, _ctx())
    for index, prompt in enumerate(models.reasoning.prompts):
        text = prompt[1].text
        # nothing folded: the earlier summaries, each once, and no rolling summary
        assert prompts.ROLLING_SUMMARY_HEADER not in text
        for earlier in STAGES[:index]:
            assert text.count(result["summaries"][earlier].strip()) == 1
    # the rolling summary is still kept up to date after every stage
    assert list(result["rolling_summaries"]) == list(STAGES)
    assert result["rolling_summary"] == result["rolling_summaries"]["execute"]
    assert all(result["ledger"][s]["folded_summary_tokens"] == 0 for s in STAGES)


def test_short_outputs_cost_exactly_what_raw_forwarding_costs() -> None:
    models = Models(n=1)
    ctx = _ctx(summary_max_tokens=250)
    for stage in STAGES:  # short outputs, within the summary cap: kept verbatim
        models.raw[stage] = f"- {stage}: INC-48{STAGES.index(stage)} /srv/{stage}.yaml"
    models.reasoning.responses = [models.raw[s] for s in STAGES]
    result, _, _ = _run(models, ctx)
    for stage in STAGES:
        entry = result["ledger"][stage]
        assert entry["method"] == "verbatim"
        assert entry["input_tokens"] == entry["raw_forward_input_tokens"]
        assert entry["summarizer_calls"] == 0  # nothing to compress, rolling summary appended


def test_rolling_summary_merges_without_a_model_call_by_default() -> None:
    models = Models()
    result, _, _ = _run(models, _ctx(rolling_summary_max_tokens=80))
    # one compression call per stage (outputs are over the cap), none for the rolling summary
    assert len(models.summarizer.prompts) == 4
    assert all(result["ledger"][s]["summarizer_calls"] == 1 for s in STAGES)
    assert all(result["ledger"][s]["summarizer_input_tokens"] > 0 for s in STAGES)
    for stage in STAGES:
        assert COUNTER.count_text(result["rolling_summaries"][stage]) <= 80
    # the digest keeps the highest-priority entities of every stage seen so far
    assert "INC-4800" in result["rolling_summary"]


def test_rolling_summary_by_the_summarizer_when_asked() -> None:
    models = Models()
    result, _, _ = _run(models, _ctx(rolling_summary_max_tokens=80, rolling_summary_mode="llm"))
    rolling_prompts = [
        p for p in models.summarizer.prompts if "into one running summary" in p[1].text
    ]
    assert rolling_prompts  # the seed's _create_rolling_summary: a summarizer call
    assert sum(result["ledger"][s]["summarizer_calls"] for s in STAGES) == len(
        models.summarizer.prompts
    )
    assert COUNTER.count_text(result["rolling_summary"]) <= 80


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


def test_budget_table_reads_the_reported_budget_then_the_ledger() -> None:
    from rich.console import Console

    from graphs.runner import budget_table

    result, _, _ = _run(Models(), _ctx())
    ledger = dict(result["ledger"])
    assert all(ledger[s]["budget"] == {} for s in STAGES)  # fake models report no budget
    assert all(ledger[s]["max_model_len"] == 4096 for s in STAGES)
    reported = {
        "input_tokens": 300,
        "max_tokens": 200,
        "max_model_len": 2048,
        "safety_margin": 32,
        "counter": "server",
        "counter_exact": True,
        "action": "none",
    }
    ledger["plan"] = {**ledger["plan"], "budget": reported}
    console = Console(record=True, width=200)
    console.print(budget_table(ledger))
    rows = {r.split()[0]: r.split() for r in console.export_text().splitlines() if r.strip()}
    assert rows["plan"][1:7] == ["300", "200", "2048", "32", "1548", "server"]
    assert "(exact)" in rows["plan"]
    classify = ledger["classify"]
    left = 4096 - classify["input_tokens"] - classify["max_tokens_granted"]
    assert rows["classify"][1:7] == [
        str(classify["input_tokens"]),
        str(classify["max_tokens_granted"]),
        "4096",
        "?",
        str(left),
        "approximate",
    ]


def test_final_answer_is_the_last_stage_output_shortened() -> None:
    from graphs.runner import final_answer

    models = Models()
    _, store, _ = _run(models, _ctx())
    assert final_answer(store, "t1", max_chars=10_000) == models.raw["execute"].strip()
    short = final_answer(store, "t1", max_chars=300)
    assert short is not None
    assert len(short) < 400
    assert short.endswith("more characters in the store)")
    assert models.raw["execute"].startswith(short.split("\n…")[0])
    assert final_answer(store, "no-such-thread") is None


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
    with pytest.raises(ValueError, match="rolling_summary_mode must be one of extractive, llm"):
        Context(rolling_summary_mode="abstractive")
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        Context(repetition_penalty=0)
