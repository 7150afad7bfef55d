"""The whole pipeline on a real vLLM server (SmolLM2-135M-Instruct), through ChatVLLM."""

from __future__ import annotations

import json

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from graphs import Context, build_graph
from graphs.pipeline import STAGES, raw_output_namespace
from graphs.prompts import DEMO_REQUEST
from langchain_vllm_budget.compression import extract_entity_list, is_entity_present
from langchain_vllm_budget.tokenizers import TransformersTokenCounter
from tests.integration_tests.conftest import ServedModel

pytestmark = pytest.mark.integration

SUMMARY_CAP = 48
SAFETY_MARGIN = 32


@pytest.fixture(scope="module")
def demo_run(smollm2: ServedModel) -> dict:
    ctx = Context(
        base_url=smollm2.base_url,
        reasoning_model=smollm2.model,
        tokenizer_path=str(smollm2.model_path),
        stage_max_tokens=96,
        min_stage_output_tokens=32,
        safety_margin=SAFETY_MARGIN,
        summary_max_tokens=SUMMARY_CAP,
        rolling_summary_max_tokens=64,
        temperature=0.0,
    )
    store = InMemoryStore()
    app = build_graph(InMemorySaver(), store)
    config = {"configurable": {"thread_id": "demo"}}
    final = app.invoke({"request": DEMO_REQUEST}, config, context=ctx)
    raw = {s: store.get(raw_output_namespace("demo"), s) for s in STAGES}
    return {"final": final, "raw": raw, "ctx": ctx, "served": smollm2}


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
        assert entry["tokenizer"] == "transformers"
        assert 0 < entry["output_tokens"] <= entry["max_tokens_granted"] <= 96
        assert entry["input_tokens"] + entry["max_tokens_granted"] + SAFETY_MARGIN <= window
        assert entry["ratio"] == pytest.approx(
            entry["raw_tokens"] / max(entry["summary_tokens"], 1), rel=1e-2
        )
        assert entry["method"] in {"verbatim", "llm", "llm+restored", "extractive"}
    # a summary is never larger than what it summarizes
    for stage in STAGES:
        entry = final["ledger"][stage]
        assert entry["summary_tokens"] <= entry["raw_tokens"]
        if entry["method"] != "verbatim":
            assert entry["summary_tokens"] <= SUMMARY_CAP < entry["raw_tokens"]
