"""The seed's pipeline (graphs/) with fake chat models: stages, state, store, ledger, runs."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.pipeline import prompts
from langchain_vllm_budget.pipeline.context import Context
from langchain_vllm_budget.pipeline.graph import STAGES, build_pipeline, graph
from langchain_vllm_budget.pipeline.state import State
from langchain_vllm_budget.stages import (
    ROLLING_SUMMARY_PROMPT,
    StageInput,
    raw_output_namespace,
    stage_messages,
)
from langchain_vllm_budget.stages.prompt import EARLIER_STAGES_HEADER, ROLLING_SUMMARY_HEADER
from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

from ..fakes import RecordingFakeModel

COUNTER = ApproximateTokenCounter()
REQUEST = "Fix INC-4821 in /srv/app.yaml"
BUDGET = TokenBudget(max_model_len=4096, output_reserve=512, safety_margin=32, min_output_tokens=64)


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


def _ctx(**overrides: Any) -> Context:
    values: dict[str, Any] = {
        "summary_max_tokens": 120,
        # every output over the cap is compressed (these tests are about compression)
        "handoff_verbatim_share": 0.0,
        "rolling_summary_max_tokens": 80,
        "compression": "llm",
    }
    values.update(overrides)
    return Context(**values)


def _run(
    models: Models,
    ctx: Context,
    *,
    budget: TokenBudget = BUDGET,
    thread: str = "t1",
    request: str = REQUEST,
    app: Any = None,
) -> tuple[dict[str, Any], Any, Any]:
    if app is None:
        app = build_pipeline(models.reasoning, models.summarizer, budget=budget).compile(
            checkpointer=InMemorySaver(), store=InMemoryStore()
        )
    config = {"configurable": {"thread_id": thread}}
    result = app.invoke({"request": request}, config, context=ctx)
    return result, app.store, app


def _raw_forward_tokens(stage: str, raw: dict[str, str]) -> int:
    """The same stage prompt with the earlier raw outputs in place of their summaries."""
    earlier = tuple((s, raw[s]) for s in STAGES[: STAGES.index(stage)])
    build = stage_messages(prompts.STAGE_SYSTEM_PROMPTS[stage])
    return COUNTER.count_messages(build(StageInput(stage, REQUEST, earlier)))


def test_graph_structure_is_start_run_then_the_four_stages() -> None:
    edges = {(e.source, e.target) for e in graph.get_graph().edges}
    chain = ["__start__", "start_run", *STAGES, "__end__"]
    assert edges == set(itertools.pairwise(chain))
    assert graph.builder.context_schema is Context
    assert graph.checkpointer is None  # the LangGraph server brings its own
    assert graph.name == "pipeline"


def test_state_holds_summaries_not_raw_outputs() -> None:
    models = Models()
    result, store, app = _run(models, _ctx())
    assert list(result["summaries"]) == list(STAGES)
    state_json = json.dumps(result)
    namespace = raw_output_namespace("t1", result["run_id"])
    for stage in STAGES:
        assert models.raw[stage] not in state_json
        item = store.get(namespace, stage)
        assert item is not None
        assert item.value["content"] == models.raw[stage]
        assert result["ledger"][stage]["raw_output"] == [*namespace, stage]
    for snapshot in app.get_state_history({"configurable": {"thread_id": "t1"}}):
        dumped = json.dumps(snapshot.values, default=str)
        assert all(models.raw[s] not in dumped for s in STAGES)


def test_stage_prompts_carry_summaries_never_raw_outputs() -> None:
    models = Models()
    _run(models, _ctx())
    assert len(models.reasoning.prompts) == 4
    for index, prompt in enumerate(models.reasoning.prompts):
        text = "\n".join(m.text for m in prompt)
        assert REQUEST in text
        for earlier in STAGES[:index]:
            assert models.raw[earlier] not in text
            assert f"[{earlier}]" in text  # its compressed summary is there
            assert f"/srv/{earlier}/unit_0.yaml" in text  # the guard kept its entities


def test_ledger_per_stage_reports_the_one_plan() -> None:
    models = Models()
    result, _, _ = _run(models, _ctx())
    ledger = result["ledger"]
    assert list(ledger) == list(STAGES)
    for stage in STAGES:
        entry = ledger[stage]
        assert entry["run_id"] == result["run_id"]
        assert entry["summary_tokens"] <= entry["summary_cap"] == 120
        assert entry["raw_tokens"] == COUNTER.count_text(models.raw[stage])
        assert entry["ratio"] == pytest.approx(entry["raw_tokens"] / entry["summary_tokens"], 1e-2)
        assert entry["ratio"] > 3
        assert entry["method"] in {"llm+restored", "extractive"}
        assert entry["retention"] == pytest.approx(
            1 - len(entry["missing"]) / entry["entities"], 1e-3
        )
        prompt = models.reasoning.prompts[STAGES.index(stage)]
        plan = BUDGET.plan(COUNTER.count_messages(prompt))
        # the plan the call was sent with, and the counter that made it
        assert entry["budget"] == {
            **plan.as_dict(),
            "counter": "approximate",
            "counter_exact": False,
        }
        assert (entry["input_tokens"], entry["max_tokens"]) == (plan.input_tokens, 512)
        assert entry["output_tokens"] == COUNTER.count_text(models.raw[stage])
        assert entry["degraded"] == []
        assert entry["rolling_summary_tokens"] <= 80
        assert entry["counter"] == "approximate"
    # compressed hand-offs are smaller than raw ones from the second stage on
    for stage in STAGES[1:]:
        assert ledger[stage]["input_tokens"] < _raw_forward_tokens(stage, models.raw)
    assert ledger["classify"]["input_tokens"] == _raw_forward_tokens("classify", models.raw)


def test_short_outputs_cost_exactly_what_raw_forwarding_costs() -> None:
    models = Models(n=1)
    for stage in STAGES:  # short outputs, within the summary cap: kept verbatim
        models.raw[stage] = f"- {stage}: INC-48{STAGES.index(stage)} /srv/{stage}.yaml"
    models.reasoning.responses = [models.raw[s] for s in STAGES]
    result, _, _ = _run(models, _ctx(summary_max_tokens=250, rolling_summary_max_tokens=400))
    for stage in STAGES:
        entry = result["ledger"][stage]
        assert entry["method"] == "verbatim"
        assert entry["input_tokens"] == _raw_forward_tokens(stage, models.raw)
        assert entry["summarizer_calls"] == 0  # nothing to compress, rolling summary appended


def test_prompts_never_say_the_same_thing_twice() -> None:
    models = Models()
    result, _, _ = _run(models, _ctx())
    for index, prompt in enumerate(models.reasoning.prompts):
        text = prompt[1].text
        assert ROLLING_SUMMARY_HEADER not in text  # nothing folded: no rolling summary
        assert (EARLIER_STAGES_HEADER in text) == (index > 0)
        for earlier in STAGES[:index]:
            assert text.count(result["summaries"][earlier].strip()) == 1
    assert list(result["rolling_summaries"]) == list(STAGES)
    assert result["rolling_summary"] == result["rolling_summaries"]["execute"]
    assert all(result["ledger"][s]["folded_summary_tokens"] == 0 for s in STAGES)


def test_degrade_is_recorded_in_the_ledger_and_state() -> None:
    models = Models(n=20)
    # a window that holds the request and the rolling summary but not every earlier summary
    budget = TokenBudget(
        max_model_len=700, output_reserve=200, safety_margin=32, min_output_tokens=64
    )
    result, _, _ = _run(
        models, _ctx(summary_max_tokens=200, rolling_summary_max_tokens=60), budget=budget
    )
    degraded = {s: result["ledger"][s]["degraded"] for s in STAGES}
    assert degraded["classify"] == []
    assert any(d.startswith("folded the classify summary") for s in STAGES for d in degraded[s])
    assert result["folded"]["classify"] in STAGES[2:]
    folded_at = STAGES.index(result["folded"]["classify"])
    # once folded, a summary stays out of later prompts, and the digest stands in for it
    for index in range(folded_at, 4):
        text = models.reasoning.prompts[index][1].text
        assert "[classify]\n" not in text.split(EARLIER_STAGES_HEADER)[-1]
        assert text.count(ROLLING_SUMMARY_HEADER) == 1
        assert result["ledger"][STAGES[index]]["folded_summary_tokens"] > 0
    for index in range(folded_at):
        assert result["ledger"][STAGES[index]]["folded_summary_tokens"] == 0
    for stage in STAGES:
        entry = result["ledger"][stage]
        assert COUNTER.count_text(result["rolling_summaries"][stage]) <= 60
        assert entry["input_tokens"] + entry["max_tokens"] + 32 <= 700


def test_rolling_summary_merges_without_a_model_call_by_default() -> None:
    models = Models()
    result, _, _ = _run(models, _ctx())
    # one compression call per stage (weak summaries, guarded), none for the rolling summary
    assert len(models.summarizer.prompts) == 4
    assert all(result["ledger"][s]["summarizer_calls"] == 1 for s in STAGES)
    assert all(result["ledger"][s]["summarizer_input_tokens"] > 0 for s in STAGES)
    for stage in STAGES:
        assert COUNTER.count_text(result["rolling_summaries"][stage]) <= 80
    assert "INC-4800" in result["rolling_summary"]


def test_rolling_summary_by_the_summarizer_when_asked() -> None:
    models = Models()
    result, _, _ = _run(models, _ctx(rolling_summary_mode="llm"))
    head = ROLLING_SUMMARY_PROMPT.split("(")[0]
    rolling_prompts = [p for p in models.summarizer.prompts if head in p[1].text]
    assert rolling_prompts  # the seed's _create_rolling_summary: a summarizer call
    total_calls = sum(result["ledger"][s]["summarizer_calls"] for s in STAGES)
    assert total_calls == len(models.summarizer.prompts)
    assert COUNTER.count_text(result["rolling_summary"]) <= 80


def test_auto_compression_calls_no_summarizer_when_nothing_would_be_lost() -> None:
    models = Models(n=2)
    result, _, _ = _run(models, _ctx(compression="auto", summary_max_tokens=120))
    assert models.summarizer.prompts == []
    for stage in STAGES:
        entry = result["ledger"][stage]
        assert (entry["method"], entry["missing"], entry["summarizer_calls"]) == (
            "extractive",
            [],
            0,
        )


def test_a_new_request_on_a_used_thread_is_a_new_run() -> None:
    first, second = Models(), Models()
    second.raw = {s: r.replace("INC-", "BUG-") for s, r in second.raw.items()}
    second.reasoning.responses = [second.raw[s] for s in STAGES]
    result1, store, app = _run(first, _ctx(), request="Fix INC-1 first")
    # same graph, same thread, new request: the stage model now answers about BUG-*
    first.reasoning.responses = [second.raw[s] for s in STAGES]
    first.reasoning.i = 0
    result2, _, _ = _run(first, _ctx(), request="Fix BUG-2 second", app=app)
    assert result1["run_id"] != result2["run_id"]
    assert all("INC-48" not in summary for summary in result2["summaries"].values())
    assert "INC-48" not in result2["rolling_summary"]
    assert all(entry["run_id"] == result2["run_id"] for entry in result2["ledger"].values())
    # the second run's prompts never saw the first run's summaries
    for prompt in first.reasoning.prompts[4:]:
        assert "INC-48" not in prompt[1].text
    # both runs' raw outputs are kept, each under its own run
    runs = {item.namespace[2] for item in store.search(("stage_outputs", "t1"), limit=100)}
    assert runs == {result1["run_id"], result2["run_id"]}
    for stage in STAGES:
        one = store.get(raw_output_namespace("t1", result1["run_id"]), stage)
        two = store.get(raw_output_namespace("t1", result2["run_id"]), stage)
        assert one is not None
        assert "INC-48" in one.value["content"]
        assert two is not None
        assert "BUG-48" in two.value["content"]


async def test_async_run_matches_the_sync_run() -> None:
    sync_models, async_models = Models(), Models()
    sync, _, _ = _run(sync_models, _ctx())
    app = build_pipeline(async_models.reasoning, async_models.summarizer, budget=BUDGET).compile(
        checkpointer=InMemorySaver(), store=InMemoryStore()
    )
    asyn = await app.ainvoke(
        {"request": REQUEST}, {"configurable": {"thread_id": "t1"}}, context=_ctx()
    )
    assert asyn["summaries"] == sync["summaries"]
    assert asyn["rolling_summary"] == sync["rolling_summary"]
    for stage in STAGES:
        a, s = asyn["ledger"][stage], sync["ledger"][stage]
        assert {k: v for k, v in a.items() if k not in ("seconds", "run_id", "raw_output")} == {
            k: v for k, v in s.items() if k not in ("seconds", "run_id", "raw_output")
        }


def test_state_class_defaults() -> None:
    state = State(request="r")
    assert (state.run_id, state.summaries, state.rolling_summary, state.ledger, state.folded) == (
        "",
        {},
        "",
        {},
        {},
    )


def test_context_reads_the_environment_and_explicit_values_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_BUDGET_SUMMARY_MAX_TOKENS", "99")
    monkeypatch.setenv("VLLM_API_BASE", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("VLLM_BUDGET_TEMPERATURE", "0.7")
    ctx = Context()
    assert (ctx.summary_max_tokens, ctx.base_url, ctx.temperature) == (
        99,
        "http://127.0.0.1:9/v1",
        0.7,
    )
    # an explicit value wins, also when it equals the default
    assert Context(summary_max_tokens=250).summary_max_tokens == 250
    assert Context(temperature=0.0).temperature == 0.0
    monkeypatch.setenv("VLLM_BUDGET_MAX_MODEL_LEN", "lots")
    with pytest.raises(ValueError, match=r"VLLM_BUDGET_MAX_MODEL_LEN must be a whole number"):
        Context()


def test_context_rejects_bad_sampling_settings() -> None:
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        Context(repetition_penalty=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        Context(temperature=-1)


def test_bad_handoff_settings_from_the_context_say_what_to_change() -> None:
    with pytest.raises(ValueError, match="rolling_summary_mode must be 'extractive' or 'llm'"):
        _run(Models(), _ctx(rolling_summary_mode="abstractive"))
    with pytest.raises(ValueError, match=r"summary_max_tokens .* must be at least 1"):
        _run(Models(), _ctx(summary_max_tokens=0))


def test_every_setting_the_app_container_gets_reaches_the_app() -> None:
    """The compose app's VLLM_* variables are Context fields or read by ChatVLLM itself."""
    from dataclasses import fields
    from pathlib import Path

    import yaml

    from langchain_vllm_budget import settings

    compose = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "docker" / "compose.yaml").read_text()
    )
    by_env = {s.env: s for s in settings.SETTINGS}
    context_fields = {f.name for f in fields(Context)}
    read_by_chat_model = {settings.API_KEY.env, settings.MAX_CONCURRENCY.env}
    read_by_runner = {settings.CHECKPOINTER_DSN.env}  # `vllm-budget run`, the app's command
    apps = [s for name, s in compose["services"].items() if name.startswith("app")]
    assert apps
    for app in apps:
        for var in app["environment"]:
            if not var.startswith("VLLM_") or var in read_by_runner:
                continue
            assert var in by_env, var
            assert by_env[var].name in context_fields or var in read_by_chat_model, var


def test_a_server_that_is_not_there_is_a_connection_error_not_a_missing_model() -> None:
    """With no model configured the pipeline asks the server which one it serves: a closed
    port says the server cannot be reached, not that a model setting is missing."""
    import socket

    from langchain_vllm_budget.errors import VLLMConnectionError
    from langchain_vllm_budget.pipeline.graph import make_model

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = Context(base_url=f"http://127.0.0.1:{port}/v1", model="")
    with pytest.raises(VLLMConnectionError, match=f"127.0.0.1:{port}") as caught:
        make_model(context, "reasoning")
    assert caught.value.is_retryable  # a server that is down may come up
