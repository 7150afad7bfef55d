"""The whole pipeline on a real vLLM server (SmolLM2-135M-Instruct), through ChatVLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from langchain_vllm_budget.compression import extract_entity_list, is_entity_present
from langchain_vllm_budget.persistence import sqlite_persistence
from langchain_vllm_budget.pipeline.context import Context
from langchain_vllm_budget.pipeline.graph import STAGES
from langchain_vllm_budget.pipeline.prompts import DEMO_REQUEST, STAGE_SYSTEM_PROMPTS
from langchain_vllm_budget.stages import StageInput, raw_output_namespace, stage_messages
from langchain_vllm_budget.tokenizers import TransformersTokenCounter
from tests.integration_tests._pipeline_helpers import pipeline
from tests.integration_tests.conftest import ServedModel

pytestmark = pytest.mark.integration

SUMMARY_CAP = 48
SAFETY_MARGIN = 32


@pytest.fixture(scope="module")
def demo_run(smollm2: ServedModel) -> dict:
    ctx = Context(
        base_url=smollm2.base_url,
        model=smollm2.model,
        tokenizer=str(smollm2.model_path),
        output_reserve=96,
        min_output_tokens=32,
        safety_margin=SAFETY_MARGIN,
        summary_max_tokens=SUMMARY_CAP,
        handoff_verbatim_share=0.0,  # compress every output over the cap
        rolling_summary_max_tokens=64,
        compression="llm",
        temperature=0.0,
    )
    store = InMemoryStore()
    app = pipeline(InMemorySaver(), store)
    config = {"configurable": {"thread_id": "demo"}}
    final = app.invoke({"request": DEMO_REQUEST}, config, context=ctx)
    namespace = raw_output_namespace("demo", final["run_id"])
    raw = {s: store.get(namespace, s) for s in STAGES}
    return {"final": final, "raw": raw, "ctx": ctx, "served": smollm2}


def _raw_forward_tokens(demo_run: dict, stage: str) -> int:
    """The stage prompt with the earlier raw outputs in place of their summaries (counted)."""
    raw = demo_run["raw"]
    earlier = tuple((s, raw[s].value["content"]) for s in STAGES[: STAGES.index(stage)])
    messages = stage_messages(STAGE_SYSTEM_PROMPTS[stage])(StageInput(stage, DEMO_REQUEST, earlier))
    return TransformersTokenCounter(str(demo_run["served"].model_path)).count_messages(messages)


def test_every_stage_ran_and_every_summary_is_within_the_cap(demo_run: dict) -> None:
    final = demo_run["final"]
    counter = TransformersTokenCounter(str(demo_run["served"].model_path))
    assert list(final["summaries"]) == list(STAGES)
    for stage in STAGES:
        summary = final["summaries"][stage]
        tokens = counter.count_text(summary) if summary else 0
        assert tokens <= SUMMARY_CAP
        assert final["ledger"][stage]["summary_tokens"] == tokens
    assert counter.count_text(final["rolling_summary"]) <= 64


def test_every_extracted_entity_is_retained(demo_run: dict) -> None:
    final, raw = demo_run["final"], demo_run["raw"]
    for stage in STAGES:
        entry = final["ledger"][stage]
        content = raw[stage].value["content"]
        entities = [e.text for e in extract_entity_list(content)]
        assert entry["entities"] == len(entities)
        if entry["missing"]:  # only when the entities alone exceed the cap, and reported
            assert entry["retention"] < 1.0
        else:
            assert entry["retention"] == 1.0
            assert all(is_entity_present(e, final["summaries"][stage]) for e in entities)


def test_raw_outputs_are_in_the_store_not_in_the_state(demo_run: dict) -> None:
    final, raw = demo_run["final"], demo_run["raw"]
    state_json = json.dumps(final)
    for stage in STAGES:
        item = raw[stage]
        assert item is not None
        content = item.value["content"]
        assert content.strip()
        assert item.value["tokens"] == final["ledger"][stage]["raw_tokens"]
        if final["ledger"][stage]["method"] != "verbatim":
            assert json.dumps(content)[1:-1] not in state_json


def test_ledger_matches_the_server(demo_run: dict) -> None:
    final = demo_run["final"]
    window = demo_run["served"].max_model_len
    for stage in STAGES:
        entry = final["ledger"][stage]
        assert entry["counter"] == "transformers"
        assert 0 < entry["output_tokens"] <= entry["max_tokens"] <= 96
        assert entry["input_tokens"] + entry["max_tokens"] + SAFETY_MARGIN <= window
        assert entry["ratio"] == pytest.approx(
            entry["raw_tokens"] / max(entry["summary_tokens"], 1), rel=1e-2
        )
        assert entry["method"] in {"verbatim", "llm", "llm+restored", "extractive"}
    # the budget ChatVLLM applied, as it reported it, is in the ledger
    for stage in STAGES:
        entry = final["ledger"][stage]
        budget = entry["budget"]
        assert budget["max_tokens"] == entry["max_tokens"]
        assert budget["input_tokens"] == entry["input_tokens"]
        assert budget["max_model_len"] == entry["max_model_len"] == window
        assert budget["counter"] == "transformers"
        assert budget["counter_exact"] is True
        assert budget["plan_source"] == "given"  # sent as the stage planned it, not recounted
        assert budget["safety_margin"] == SAFETY_MARGIN
    # a summary is never larger than what it summarizes
    for stage in STAGES:
        entry = final["ledger"][stage]
        assert entry["summary_tokens"] <= entry["raw_tokens"]
        if entry["method"] != "verbatim":
            assert entry["summary_tokens"] <= SUMMARY_CAP < entry["raw_tokens"]


def test_compressed_prompts_never_cost_more_than_raw_forwarding(demo_run: dict) -> None:
    """Compression costs are recorded; raw forwarding is counted here, not in the graph."""
    final = demo_run["final"]
    for stage in STAGES:
        entry = final["ledger"][stage]
        # nothing was folded in a 2K window, so no rolling summary was sent either
        assert entry["degraded"] == []
        assert entry["folded_summary_tokens"] == 0
        assert entry["input_tokens"] <= _raw_forward_tokens(demo_run, stage)
        if entry["method"] == "verbatim":
            assert entry["summarizer_calls"] == 0
        else:  # compression called the summarizer; its real cost is recorded
            assert entry["summarizer_calls"] >= 1
            assert entry["summarizer_input_tokens"] > entry["raw_tokens"]
            assert 0 < entry["summarizer_output_tokens"] <= SUMMARY_CAP * entry["summarizer_calls"]
    assert final["ledger"]["classify"]["input_tokens"] == _raw_forward_tokens(demo_run, "classify")
    assert list(final["rolling_summaries"]) == list(STAGES)
    assert final["rolling_summary"] == final["rolling_summaries"]["execute"]


def test_cli_run_prints_the_ledger_the_budget_and_the_answer(
    smollm2: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from langchain_vllm_budget.cli import app

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # where langgraph.json is
    db = tmp_path / "run.sqlite"
    args = [
        "run",
        "Fix INC-4821: /srv/checkout/app.yaml has pool_timeout=30s and retries=2.",
        "--base-url",
        smollm2.base_url,
        "--model",
        smollm2.model,
        "--tokenizer",
        str(smollm2.model_path),
        "--summary-max-tokens",
        "32",
        "--set",
        "output_reserve=48",
        "--set",
        "min_output_tokens=16",
        "--thread-id",
        "cli-run",
        "--db",
        str(db),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "embedded local server" not in out  # a configured server is used as it is
    assert f"server[/] {smollm2.base_url}" in out or smollm2.base_url in out
    assert "Token ledger" in out
    assert "Budget applied per stage" in out
    assert "Answer (execute)" in out
    with sqlite_persistence(db) as (saver, store):
        values = pipeline(saver, store).get_state({"configurable": {"thread_id": "cli-run"}}).values
        item = store.get(raw_output_namespace("cli-run", values["run_id"]), "execute")
    ledger = values["ledger"]
    assert item is not None
    first_line = item.value["content"].strip().splitlines()[0].strip()
    assert first_line[:40] in out  # the model's own answer is printed
    for stage in STAGES:
        entry = ledger[stage]
        assert entry["max_tokens"] <= 48
        row = next(line for line in out.splitlines() if line.strip().startswith(stage))
        assert row.split()[1:4] == [
            str(entry["input_tokens"]),
            str(entry["output_tokens"]),
            str(entry["max_tokens"]),
        ]
        budget_row = [
            line
            for line in out.splitlines()
            if line.strip().startswith(stage) and "transformers (exact)" in line
        ]
        assert budget_row, f"no budget row for {stage}"
        assert budget_row[0].split()[1:4] == [
            str(entry["input_tokens"]),
            str(entry["max_tokens"]),
            str(smollm2.max_model_len),
        ]
    # a second request on the same thread, with the server from VLLM_API_BASE and the model
    # discovered from it: a new run, and the first run's outputs are still there
    monkeypatch.setenv("VLLM_API_BASE", smollm2.base_url)
    second = CliRunner().invoke(
        app,
        [
            "run",
            "Restart db-replica-03 after raising max_connections=128.",
            "--set",
            "output_reserve=24",
            "--set",
            "min_output_tokens=16",
            "--thread-id",
            "cli-run",
            "--db",
            str(db),
        ],
    )
    assert second.exit_code == 0, second.output
    assert "embedded local server" not in second.output
    with sqlite_persistence(db) as (saver, store):
        values2 = (
            pipeline(saver, store).get_state({"configurable": {"thread_id": "cli-run"}}).values
        )
        runs = {item.namespace[2] for item in store.search(("stage_outputs", "cli-run"), limit=20)}
    assert values2["run_id"] != values["run_id"]
    assert runs == {values["run_id"], values2["run_id"]}
    assert values2["request"].startswith("Restart db-replica-03")
    assert all(e["run_id"] == values2["run_id"] for e in values2["ledger"].values())
