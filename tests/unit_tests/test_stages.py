"""The compressed-stage building block, offline: prompt fitting, any stage, runs, errors."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.runnables import RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.store.memory import InMemoryStore
from typing_extensions import TypedDict

from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.compression.spec import verbatim_limit
from langchain_vllm_budget.stages import (
    StageInput,
    StageInputTooLargeError,
    StageLedger,
    StagesInput,
    StagesState,
    build_stage_graph,
    compressed_stage,
    fit_stage_prompt,
    get_raw_output,
    merge_run_dicts,
    stage_messages,
    start_run,
)
from langchain_vllm_budget.stages.prompt import ROLLING_SUMMARY_HEADER
from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

from ..fakes import RecordingFakeModel, ThreadRecordingCounter

COUNTER = ApproximateTokenCounter()
SMALL = TokenBudget(max_model_len=2048, output_reserve=64, safety_margin=8, min_output_tokens=16)

# ------------------------------------------------------------------ the degrade order


def _budget(window: int) -> TokenBudget:
    return TokenBudget(
        max_model_len=window, output_reserve=64, safety_margin=8, min_output_tokens=32
    )


SUMMARIES = tuple((s, f"- {s} " + "detail " * 40) for s in ("classify", "select", "plan"))
# the rolling summary after each stage: it covers that stage and every one before it
DIGESTS = {
    "classify": "[classify] digest " + "word " * 12,
    "select": "[classify+select] digest " + "word " * 20,
    "plan": "[classify+select+plan] digest " + "word " * 30,
}
BUILD = stage_messages("You execute.")


def _size(request: str, summaries: tuple[tuple[str, str], ...], rolling: str) -> int:
    return COUNTER.count_messages(BUILD(StageInput("execute", request, summaries, rolling)))


def _fit(request: str, window: int, digests: dict[str, str] | None = None) -> Any:
    budget = _budget(window)
    return fit_stage_prompt(
        StageInput("execute", request, SUMMARIES),
        BUILD,
        plan=lambda messages: budget.plan(COUNTER.count_messages(messages)),
        counter=COUNTER,
        rolling_summaries=DIGESTS if digests is None else digests,
    )


def test_fits_without_degrading_and_without_a_rolling_summary() -> None:
    full = _size("req", SUMMARIES, "")
    fitted = _fit("req", full + 8 + 64)
    assert fitted.degraded == []
    assert fitted.plan.input_tokens == full
    assert fitted.plan.max_tokens == 64
    assert fitted.stage_input.rolling_summary == ""
    assert ROLLING_SUMMARY_HEADER not in fitted.messages[1].text


def test_degrade_folds_oldest_summaries_first_into_the_rolling_summary() -> None:
    without_first = _size("req", SUMMARIES[1:], DIGESTS["classify"])
    fitted = _fit("req", without_first + 8 + 32)
    assert fitted.folded == ["classify"]
    assert len(fitted.degraded) == 1
    assert fitted.degraded[0].startswith("folded the classify summary")
    text = fitted.messages[1].text
    assert "[select]" in text
    assert "- classify detail" not in text  # the summary itself is out
    assert DIGESTS["classify"].strip() in text  # the digest covering it is in
    assert fitted.stage_input.rolling_summary == DIGESTS["classify"]


def test_folding_more_stages_replaces_their_digest_not_adds_to_it() -> None:
    only_plan = _size("req", SUMMARIES[2:], DIGESTS["select"])
    fitted = _fit("req", only_plan + 8 + 32)
    assert fitted.folded == ["classify", "select"]
    text = fitted.messages[1].text
    assert DIGESTS["select"].strip() in text
    assert DIGESTS["classify"].strip() not in text
    assert text.count(ROLLING_SUMMARY_HEADER) == 1


def test_degrade_then_trims_rolling_summary_keeping_the_newest() -> None:
    no_summaries = _size("req", (), DIGESTS["plan"])
    fitted = _fit("req", no_summaries - 20 + 8 + 32)
    assert fitted.folded == ["classify", "select", "plan"]
    assert [d.split(" ")[0] for d in fitted.degraded] == ["folded"] * 3 + ["trimmed"]
    assert "rolling summary" in fitted.degraded[-1]
    assert fitted.stage_input.rolling_summary
    assert DIGESTS["plan"].endswith(fitted.stage_input.rolling_summary)
    assert fitted.plan.fits


def test_degrade_finally_trims_the_request() -> None:
    request = "Fix INC-1 " + "context " * 200
    bare = _size("Fix INC-1", (), "")
    fitted = _fit(request, bare + 20 + 8 + 32)
    assert fitted.degraded[-1].startswith("trimmed the request")
    assert fitted.degraded[-2].startswith("trimmed the rolling summary")
    assert "Fix INC-1" in fitted.messages[1].text
    assert fitted.plan.fits


def test_folding_without_digests_carries_the_summary_into_the_rolling_summary() -> None:
    full = _size("req", SUMMARIES, "")
    fitted = _fit("req", full + 8 + 32 - 1, digests={})
    assert fitted.folded == ["classify", "select", "plan"]
    assert [d.split(" ")[0] for d in fitted.degraded] == ["folded"] * 3 + ["trimmed"]
    assert "[plan]\n- plan detail" in fitted.stage_input.rolling_summary
    assert fitted.plan.fits


def test_degrade_gives_up_with_numbers() -> None:
    budget = TokenBudget(max_model_len=60, output_reserve=40, safety_margin=8, min_output_tokens=40)
    with pytest.raises(StageInputTooLargeError, match=r"max_model_len 60") as info:
        fit_stage_prompt(
            StageInput("execute", "req", SUMMARIES),
            BUILD,
            plan=lambda messages: budget.plan(COUNTER.count_messages(messages)),
            counter=COUNTER,
            rolling_summaries=DIGESTS,
        )
    assert info.value.max_model_len == 60
    assert info.value.input_tokens > 60 - 8 - 40


def test_each_candidate_is_planned_once() -> None:
    budget = _budget(_size("req", SUMMARIES[2:], DIGESTS["select"]) + 8 + 32)
    planned: list[int] = []

    def plan(messages: Any) -> Any:
        planned.append(COUNTER.count_messages(messages))
        return budget.plan(planned[-1])

    fitted = fit_stage_prompt(
        StageInput("execute", "req", SUMMARIES),
        BUILD,
        plan=plan,
        counter=COUNTER,
        rolling_summaries=DIGESTS,
    )
    assert len(planned) == 3  # the full prompt, then one candidate per folded stage
    assert fitted.plan.input_tokens == planned[-1]


# ------------------------------------------------------------------ any stage, any state


def _graph(*stages: Any) -> Any:
    return build_stage_graph(list(stages)).compile(
        checkpointer=InMemorySaver(), store=InMemoryStore()
    )


def test_a_plain_function_and_a_runnable_are_stages_too() -> None:
    seen: list[str] = []

    def lookup(text: str) -> dict[str, Any]:
        seen.append(text)
        return {"ticket_id": "INC-7", "owner": "team-payments", "runbook": "/wiki/inc-7.md"}

    search = RunnableLambda(
        lambda text: [f"hit {i}: /logs/app-{i}.log latency=9{i}ms" for i in range(40)]
    )
    app = _graph(
        compressed_stage("lookup", lookup),
        compressed_stage("search", search, summary_max_tokens=60),
    )
    config = {"configurable": {"thread_id": "t"}}
    final = app.invoke({"request": "INC-7: checkout is down"}, config)
    assert seen == ["INC-7: checkout is down"]
    assert final["summaries"]["lookup"] == (
        "ticket_id=INC-7\nowner=team-payments\nrunbook=/wiki/inc-7.md"
    )
    search_entry: StageLedger = final["ledger"]["search"]
    assert search_entry["summary_tokens"] <= 60 < search_entry["raw_tokens"]
    assert "input_tokens" not in search_entry  # no model call of ours to account for
    raw = get_raw_output(app.store, "t", final["run_id"], "search")
    assert raw is not None
    assert raw.count("hit ") == 40


def test_a_custom_input_and_a_typed_dict_state() -> None:
    class MyState(TypedDict, total=False):
        question: str
        run_id: str
        summaries: Annotated[dict[str, str], merge_run_dicts]
        ledger: Annotated[dict[str, Any], merge_run_dicts]
        folded: Annotated[dict[str, str], merge_run_dicts]
        rolling_summaries: Annotated[dict[str, str], merge_run_dicts]
        rolling_summary: str

    stage = compressed_stage(
        "answer",
        lambda inputs: f"asked: {inputs['q']}; earlier: {inputs['context'] or 'none'}",
        stage_input=lambda s: {"q": s.request, "context": s.context},
        request_key="question",
    )
    builder = StateGraph(MyState)
    builder.add_node("start_run", start_run)
    builder.add_node(stage)
    builder.add_edge(START, "start_run")
    builder.add_edge("start_run", "answer")
    final = builder.compile(store=InMemoryStore()).invoke({"question": "why INC-9?"})
    assert final["summaries"]["answer"] == "asked: why INC-9?; earlier: none"


def test_explicit_handoff_settings_win_over_the_context() -> None:
    @dataclass
    class Ctx:
        summary_max_tokens: int = 20

    long_output = "\n".join(f"- step {i}: INC-{i:03d} /srv/{i}.yaml" for i in range(30))
    fixed = compressed_stage("a", lambda _: long_output, summary_max_tokens=80)
    from_context = compressed_stage("b", lambda _: long_output)
    builder = build_stage_graph([fixed, from_context], context_schema=Ctx)
    final = builder.compile(store=InMemoryStore()).invoke({"request": "r"}, context=Ctx())
    assert final["ledger"]["a"]["summary_cap"] == 80
    assert final["ledger"]["b"]["summary_cap"] == 20
    assert final["ledger"]["b"]["summary_tokens"] <= 20


# ------------------------------------------------------------------ what is handed off verbatim


def test_the_verbatim_limit_is_a_share_of_the_window_never_below_the_cap() -> None:
    assert verbatim_limit(250, 2048, 0.2) == 409
    assert verbatim_limit(250, 32768, 0.2) == 6553
    assert verbatim_limit(250, 1024, 0.2) == 250  # a small window: the cap
    assert verbatim_limit(250, None, 0.2) == 250  # no window known: the cap
    assert verbatim_limit(48, 2048, 0.0) == 48  # 0: every output over the cap is compressed
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="handoff_verbatim_share"):
            verbatim_limit(250, 2048, bad)


def _lines(tokens: int) -> str:
    """About ``tokens`` approximate tokens of output, every line holding entities."""
    line = "- step {i:03d}: INC-{i:03d} /srv/app/{i:03d}.yaml retries=2"  # ~13 tokens
    text = "\n".join(line.format(i=i) for i in range(tokens // 13 + 1))
    return text


def _ledger(stage: Any) -> tuple[dict[str, Any], str]:
    final = _graph(stage).invoke({"request": "INC-001"}, {"configurable": {"thread_id": "t"}})
    return final["ledger"]["a"], final["summaries"]["a"]


def test_by_default_an_output_within_a_share_of_the_window_is_handed_off_verbatim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_BUDGET_HANDOFF_VERBATIM_SHARE", raising=False)
    monkeypatch.delenv("VLLM_BUDGET_SUMMARY_MAX_TOKENS", raising=False)
    output = _lines(300)  # over the 250-token cap, within a fifth of the 2,048-token window
    assert 250 < COUNTER.count_text(output) <= 409
    entry, summary = _ledger(compressed_stage("a", lambda _: output, budget=SMALL))
    assert (entry["method"], entry["verbatim_limit"], entry["summary_cap"]) == (
        "verbatim",
        409,
        250,
    )
    assert summary == output
    assert entry["summarizer_calls"] == 0


def test_an_output_over_the_verbatim_limit_is_compressed_to_the_cap() -> None:
    output = _lines(600)
    assert COUNTER.count_text(output) > 409
    entry, summary = _ledger(compressed_stage("a", lambda _: output, budget=SMALL))
    assert entry["method"] == "extractive"
    assert entry["summary_tokens"] <= 250 == entry["summary_cap"]
    assert COUNTER.count_text(summary) <= 250


def test_share_zero_or_no_known_window_compresses_every_output_over_the_cap() -> None:
    output = _lines(300)
    for stage in (
        compressed_stage("a", lambda _: output, budget=SMALL, handoff_verbatim_share=0.0),
        compressed_stage("a", lambda _: output),  # a tool stage without a budget: no window
    ):
        entry, _ = _ledger(stage)
        assert entry["verbatim_limit"] == 250
        assert entry["method"] == "extractive"
        assert entry["summary_tokens"] <= 250


def test_the_verbatim_share_is_read_from_the_environment_and_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output = _lines(300)
    monkeypatch.setenv("VLLM_BUDGET_HANDOFF_VERBATIM_SHARE", "0.05")
    entry, _ = _ledger(compressed_stage("a", lambda _: output, budget=SMALL))
    assert (entry["verbatim_limit"], entry["method"]) == (250, "extractive")
    with pytest.raises(ValueError, match="handoff_verbatim_share must be at least 0"):
        compressed_stage("a", lambda _: output, handoff_verbatim_share=1.0)


def test_compression_ratio_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="langchain_vllm_budget.stages.node")
    output = "\n".join(f"- step {i}: INC-{i:03d} /srv/{i}.yaml" for i in range(30))
    _graph(compressed_stage("a", lambda _: output, summary_max_tokens=50)).invoke(
        {"request": "r"}, {"configurable": {"thread_id": "t"}}
    )
    (record,) = [r for r in caplog.records if r.getMessage().startswith("stage a:")]
    assert "entities kept" in record.getMessage()
    assert "x)" in record.getMessage()


# ------------------------------------------------------------------ errors say what to change


def test_stage_needs_exactly_one_of_stage_and_model() -> None:
    with pytest.raises(ValueError, match="exactly one of `stage`"):
        compressed_stage("a")
    with pytest.raises(ValueError, match="exactly one of `stage`"):
        compressed_stage("a", lambda x: x, model=FakeListChatModel(responses=["x"]))


def test_a_model_that_plans_no_budget_needs_one() -> None:
    app = _graph(compressed_stage("a", FakeListChatModel(responses=["x"])))
    with pytest.raises(ValueError, match=r"pass budget=TokenBudget\(max_model_len=...\)"):
        app.invoke({"request": "r"}, {"configurable": {"thread_id": "t"}})


def test_empty_request_missing_store_and_missing_start_run_are_clear_errors() -> None:
    model = RecordingFakeModel(responses=["- ok"], prompts=[])
    stage = compressed_stage("a", model, budget=SMALL)
    with pytest.raises(ValueError, match="non-empty 'request'"):
        _graph(stage).invoke({"request": "  "}, {"configurable": {"thread_id": "t"}})
    with pytest.raises(RuntimeError, match="needs a store"):
        build_stage_graph([stage]).compile().invoke({"request": "x"})
    builder = StateGraph(build_stage_graph([stage]).state_schema)
    builder.add_node(stage)
    builder.add_edge(START, "a")
    with pytest.raises(ValueError, match="make start_run the first node"):
        builder.compile(store=InMemoryStore()).invoke({"request": "x"})


def test_stage_names_must_be_distinct() -> None:
    stage = compressed_stage("a", lambda x: x)
    with pytest.raises(ValueError, match="distinct names"):
        build_stage_graph([stage, stage])


def test_a_stage_prompt_too_large_for_the_window_is_a_typed_error() -> None:
    model = RecordingFakeModel(responses=["- ok"], prompts=[])
    tiny = TokenBudget(max_model_len=80, output_reserve=32, safety_margin=8, min_output_tokens=32)
    app = _graph(compressed_stage("a", model, system_prompt="S " * 60, budget=tiny))
    with pytest.raises(StageInputTooLargeError, match="Stage 'a'"):
        app.invoke({"request": "r"}, {"configurable": {"thread_id": "t"}})
    assert model.prompts == []  # nothing was sent


async def test_an_async_stage_counts_off_the_event_loop() -> None:
    # A server counter's count_text is sync HTTP: every count of an async stage (raw record,
    # compression, rolling summary, ledger) runs in a worker thread.
    counter = ThreadRecordingCounter()
    output = "\n".join(f"- step {i}: INC-{i:03d} /srv/{i}.yaml" for i in range(30))
    app = _graph(compressed_stage("a", lambda _: output, summary_max_tokens=50, counter=counter))
    loop_thread = threading.get_ident()
    final = await app.ainvoke({"request": "r"}, {"configurable": {"thread_id": "t"}})
    assert final["ledger"]["a"]["raw_tokens"] > final["ledger"]["a"]["summary_tokens"]
    assert counter.threads, "nothing was counted"
    assert loop_thread not in counter.threads


def test_stages_in_parallel_branches_join_with_both_summaries() -> None:
    """Two stages fanned out from one run both write the rolling summary in one step: no
    InvalidUpdateError, and the stage after the join sees both branches' summaries."""
    graph = StateGraph(StagesState, input_schema=StagesInput)
    graph.add_node("start_run", start_run)
    graph.add_node("logs", compressed_stage("logs", lambda _: {"host": "db-3", "error": "OOM"}))
    graph.add_node("metrics", compressed_stage("metrics", lambda _: {"p99_ms": 1840}))
    graph.add_node("report", compressed_stage("report", lambda _: "report: db-3 restarted"))
    graph.add_edge(START, "start_run")
    for branch in ("logs", "metrics"):
        graph.add_edge("start_run", branch)
        graph.add_edge(branch, "report")
    app = graph.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    out = app.invoke({"request": "Why is db-3 down?"}, {"configurable": {"thread_id": "p"}})
    assert set(out["summaries"]) == {"logs", "metrics", "report"}
    # One branch's rolling summary survives the join; the stage after it adds the other's.
    for fact in ("error=OOM", "p99_ms=1840", "db-3 restarted"):
        assert fact in out["rolling_summary"]
    assert set(out["ledger"]["report"]["rolling_covers"]) == {"logs", "metrics", "report"}
    assert out["ledger"]["logs"]["rolling_covers"] == {"logs": 1}


def test_a_loop_over_parallel_branches_keeps_each_rerun_in_the_rolling_summary() -> None:
    """Two branches run again by a loop: each rerun's summary reaches the stage after the
    join, although the rolling summary kept at the join covers the other branch's first run."""
    rounds = {"logs": 0, "metrics": 0}

    def branch(name: str, fact: str) -> Callable[[Any], str]:
        def run(_: Any) -> str:
            rounds[name] += 1
            return f"{name} round {rounds[name]}: {fact}-{rounds[name]}"

        return run

    graph = StateGraph(StagesState, input_schema=StagesInput)
    graph.add_node("start_run", start_run)
    graph.add_node("logs", compressed_stage("logs", branch("logs", "OOM-host")))
    graph.add_node("metrics", compressed_stage("metrics", branch("metrics", "P99-ms")))
    graph.add_node("report", compressed_stage("report", lambda _: "report: db-3 restarted"))
    graph.add_edge(START, "start_run")
    for name in ("logs", "metrics"):
        graph.add_edge("start_run", name)
        graph.add_edge(name, "report")
    graph.add_conditional_edges(
        "report", lambda _: ["logs", "metrics"] if rounds["logs"] < 2 else "__end__"
    )
    app = graph.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    out = app.invoke({"request": "Why is db-3 down?"}, {"configurable": {"thread_id": "lp"}})
    assert rounds == {"logs": 2, "metrics": 2}
    for fact in ("OOM-host-2", "P99-ms-2"):
        assert fact in out["rolling_summary"]
    ledger = out["ledger"]
    assert (ledger["logs"]["attempt"], ledger["report"]["attempt"]) == (2, 2)
    assert ledger["report"]["rolling_covers"] == {"logs": 2, "metrics": 2, "report": 2}


def test_a_loop_over_parallel_branches_folds_each_rerun_into_a_later_prompt() -> None:
    """The join stage's window is too small for both branches: it folds them, and the digest
    a later stage gets holds the branches' second runs, not one branch's stale rolling summary."""
    rounds = {"logs": 0, "metrics": 0}
    seen: list[StageInput] = []

    def branch(name: str, fact: str) -> Callable[[Any], str]:
        def run(_: Any) -> str:
            rounds[name] += 1
            return f"{fact}-{rounds[name]} " + f"filler words about the {name} here. " * 12

        return run

    logs, metrics = branch("logs", "OOMHOST"), branch("metrics", "P99MS")
    app = _join_then_fold(logs, metrics, seen, again=lambda: rounds["logs"] < 2)
    out = app.invoke({"request": "Why is db-3 down?"})
    assert rounds == {"logs": 2, "metrics": 2}
    assert {"logs", "metrics"} <= set(out["folded"])
    (final_input,) = seen
    assert "OOMHOST-2" in final_input.rolling_summary
    assert "P99MS-2" in final_input.rolling_summary


def test_a_ledger_from_before_runs_were_recorded_covers_first_runs_only() -> None:
    """A checkpoint written when ``rolling_covers`` held stage names: resumed, a stage run
    again since is not taken as covered by the old rolling summary."""
    from langchain_vllm_budget.stages.node import _fold_digests, _previous_rolling

    # Written before: A then B in a straight line; since: A ran again (its second run).
    ledger: dict[str, Any] = {
        "B": {"rolling_covers": ["A", "B"]},
        "A": {"rolling_covers": {"B": 1, "A": 2}, "attempt": 2},
    }
    summaries = {"B": "sb", "A": "A-second"}
    digests = {"B": "[A]\nA-first\n[B]\nsb", "A": "[A]\nA-first\n[B]\nsb\n[A]\nA-second"}
    assert "B" not in _fold_digests(["A", "B"], digests, ledger)  # B's digest misses A-second
    assert "A" in _fold_digests(["B", "A"], digests, ledger)
    # Extending B's old rolling summary adds A's second run to it.
    previous, covers = _previous_rolling(digests["B"], summaries, digests, ledger, "C")
    assert previous.endswith("[A]\nA-second")
    assert covers == {"A": 2, "B": 1}
    # Names alone, nothing run again: covered as they were (the old behaviour).
    old = {"A": {"rolling_covers": ["A"]}, "B": {"rolling_covers": ["A", "B"]}}
    assert set(_fold_digests(["A", "B"], digests, old)) == {"A", "B"}
    assert _previous_rolling(digests["B"], summaries, digests, old, "C") == (
        digests["B"],
        {"A": 1, "B": 1},
    )


def test_the_ledger_attempt_is_the_stores_when_a_retried_run_stored_its_output() -> None:
    """A run that fails after storing its output and is retried (RetryPolicy): the ledger's
    attempt numbers the raw output the summary was made from, as the store does."""
    from langgraph.types import RetryPolicy

    class FailsOnce(ApproximateTokenCounter):
        calls = 0

        def count_text(self, text: str) -> int:
            FailsOnce.calls += 1
            if FailsOnce.calls == 2:  # the first count after the raw record is stored
                raise RuntimeError("transient")
            return super().count_text(text)

    outputs = iter(["first output FAILED-1", "second output OK-2"])
    graph = StateGraph(StagesState, input_schema=StagesInput)
    graph.add_node("start_run", start_run)
    graph.add_node(
        "act",
        compressed_stage("act", lambda _: next(outputs), counter=FailsOnce()),
        retry_policy=RetryPolicy(retry_on=RuntimeError, initial_interval=0.01, jitter=False),
    )
    graph.add_edge(START, "start_run")
    graph.add_edge("start_run", "act")
    app = graph.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    out = app.invoke({"request": "go"}, {"configurable": {"thread_id": "r"}})
    entry = out["ledger"]["act"]
    assert app.store is not None
    assert entry["attempt"] == 2
    assert entry["rolling_covers"] == {"act": 2}
    kept = get_raw_output(app.store, "r", out["run_id"], "act", attempt=entry["attempt"])
    assert kept == "second output OK-2"
    assert "OK-2" in out["summaries"]["act"]


@pytest.mark.parametrize("use_async", [False, True])
def test_a_stage_run_again_in_a_loop_keeps_every_output(use_async: bool) -> None:
    """A conditional edge that runs a stage again: its latest output under its name, the
    earlier ones numbered, nothing overwritten."""
    attempts: list[str] = []

    def act(_: Any) -> str:
        attempts.append(f"attempt {len(attempts) + 1}: MIG-{len(attempts) + 1}")
        return attempts[-1] + (" FAILED" if len(attempts) < 3 else " ok")

    graph = StateGraph(StagesState, input_schema=StagesInput)
    graph.add_node("start_run", start_run)
    graph.add_node("act", compressed_stage("act", act))
    graph.add_edge(START, "start_run")
    graph.add_edge("start_run", "act")
    graph.add_conditional_edges(
        "act", lambda s: "act" if "FAILED" in s.summaries["act"] else "__end__"
    )
    app = graph.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    config = {"configurable": {"thread_id": "loop"}}
    request = {"request": "Run the migration"}
    out = asyncio.run(app.ainvoke(request, config)) if use_async else app.invoke(request, config)
    assert app.store is not None
    run = out["run_id"]
    assert get_raw_output(app.store, "loop", run, "act") == "attempt 3: MIG-3 ok"
    for n in (1, 2):
        assert get_raw_output(app.store, "loop", run, "act", attempt=n) == (
            f"attempt {n}: MIG-{n} FAILED"
        )
    assert get_raw_output(app.store, "loop", run, "act", attempt=3) == "attempt 3: MIG-3 ok"


def test_a_thread_id_with_a_period_keeps_its_raw_outputs() -> None:
    """LangGraph's stores refuse a period in a namespace label: the id is written escaped."""
    graph = StateGraph(StagesState, input_schema=StagesInput)
    graph.add_node("start_run", start_run)
    graph.add_node("act", compressed_stage("act", lambda _: "MIG-7 applied"))
    graph.add_edge(START, "start_run")
    graph.add_edge("start_run", "act")
    app = graph.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    thread = "1715000000.123456"  # a chat message's timestamp
    out = app.invoke({"request": "Migrate"}, {"configurable": {"thread_id": thread}})
    assert app.store is not None
    assert get_raw_output(app.store, thread, out["run_id"], "act") == "MIG-7 applied"
    assert out["ledger"]["act"]["raw_output"][1] == "%1715000000%2E123456"


def test_a_stage_summary_has_no_tool_call_ids_but_its_raw_output_keeps_them() -> None:
    """A stage that returns messages: its summary is written without the IDs pairing calls
    with results (no fact, and the guard would rank them as IDs), its raw output is kept whole."""
    from langchain_core.messages import AIMessage, ToolMessage

    call_id = "chatcmpl-tool-5f0c2a9e41b74d3c"

    def agent(_: Any) -> list[Any]:
        call = {"name": "search_tickets", "args": {"query": "INC-77"}, "id": call_id}
        return [
            AIMessage("", tool_calls=[call]),
            ToolMessage("INC-77: db-3 OOMKilled at 03:12", tool_call_id=call_id),
        ]

    graph = StateGraph(StagesState, input_schema=StagesInput)
    graph.add_node("start_run", start_run)
    graph.add_node("look", compressed_stage("look", agent))
    graph.add_edge(START, "start_run")
    graph.add_edge("start_run", "look")
    app = graph.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    out = app.invoke({"request": "What happened to INC-77?"}, {"configurable": {"thread_id": "i"}})
    assert "INC-77" in out["summaries"]["look"]
    assert "OOMKilled" in out["summaries"]["look"]
    assert call_id not in out["summaries"]["look"]
    assert app.store is not None
    raw = get_raw_output(app.store, "i", out["run_id"], "look")
    assert raw is not None
    assert call_id in raw


def _join_then_fold(
    logs: Callable[[Any], str],
    metrics: Callable[[Any], str],
    seen: list[StageInput],
    *,
    again: Callable[[], bool] = lambda: False,
) -> Any:
    """Two branches joined by a stage whose 200-token window must fold both summaries, then a
    stage that records what it is handed; ``again()`` sends the join back to both branches."""
    budget = TokenBudget(
        max_model_len=200, output_reserve=64, min_output_tokens=32, safety_margin=0
    )
    verbatim: dict[str, Any] = {"summary_max_tokens": 200, "handoff_verbatim_share": 0.9}
    graph = StateGraph(StagesState, input_schema=StagesInput)
    graph.add_node("start_run", start_run)
    graph.add_node("logs", compressed_stage("logs", logs, **verbatim))
    graph.add_node("metrics", compressed_stage("metrics", metrics, **verbatim))
    graph.add_node(
        "report",
        compressed_stage(
            "report",
            FakeListChatModel(responses=["done"]),
            system_prompt="R.",
            budget=budget,
            counter=ApproximateTokenCounter(),
        ),
    )
    graph.add_node(
        "final",
        compressed_stage("final", lambda s: seen.append(s) or "ok", stage_input=lambda s: s),
    )
    graph.add_edge(START, "start_run")
    for branch in ("logs", "metrics"):
        graph.add_edge("start_run", branch)
    graph.add_edge(["logs", "metrics"], "report")
    graph.add_conditional_edges("report", lambda _: ["logs", "metrics"] if again() else "final")
    return graph.compile(store=InMemoryStore())


def test_folding_after_a_parallel_join_keeps_every_branch() -> None:
    """A stage after the join whose prompt must fold both branches' summaries: the rolling
    summary after one branch covers that branch only, so the fold appends the other's
    summary instead of standing in for both; the next stage's digest has both."""
    seen: list[StageInput] = []
    logs = "host=db-3 error=OOM " + "filler words about the logs here. " * 12
    metrics = "p99_ms=1840 cpu=97 " + "filler words about the metrics here. " * 12
    app = _join_then_fold(lambda _: logs, lambda _: metrics, seen)
    out = app.invoke({"request": "Why is db-3 down?"})
    assert out["folded"] == {"logs": "report", "metrics": "report"}
    assert [name for name, _ in seen[0].summaries] == ["report"]
    assert "OOM" in seen[0].rolling_summary
    assert "1840" in seen[0].rolling_summary
