"""The benchmarks' pure helpers: /metrics, must-keep retention, outcome columns, KV demand."""

from __future__ import annotations

import json

import pytest

from benchmarks.calls import CallRecord, percentile
from benchmarks.concurrency import kv_demand
from benchmarks.corpus import build_stage_outputs
from benchmarks.metrics import Sample, counter_delta, parse_metrics, summarize_samples
from benchmarks.overflow_sweep import CLIENTS, OUTCOMES, classify, summarize_sweep
from benchmarks.requests import request_variant
from benchmarks.retention import (
    MUST_KEEP_PATH,
    MustKeep,
    Retention,
    load_must_keep,
    must_keep_retention,
)
from graphs.prompts import DEMO_REQUEST

METRICS_TEXT = """\
# HELP vllm:num_preemptions Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
vllm:num_preemptions_created{engine="0",model_name="m"} 1.796e+09
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.75
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 3.0
vllm:num_requests_running{engine="0",model_name="m"} 5.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 1200.0
vllm:prompt_tokens_total{engine="1",model_name="m"} 800.0
vllm:generation_tokens_total{engine="0",model_name="m"} NaN
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 2.0
"""


# ----------------------------------------------------------------------------- /metrics


def test_parse_metrics_reads_counters_and_gauges_and_sums_engines() -> None:
    values = parse_metrics(METRICS_TEXT)
    assert values["vllm:num_preemptions"] == 7.0  # the _total line, not _created
    assert values["vllm:kv_cache_usage_perc"] == 0.75
    assert values["vllm:num_requests_waiting"] == 3.0  # not the by-reason gauge
    assert values["vllm:num_requests_running"] == 5.0
    assert values["vllm:prompt_tokens"] == 2000.0
    assert "vllm:generation_tokens" not in values  # NaN is no reading
    assert not any("bucket" in name for name in values)


def test_parse_metrics_without_labels_and_other_names() -> None:
    assert parse_metrics("vllm:num_requests_waiting 4\nother_metric 9\n") == {
        "vllm:num_requests_waiting": 4.0
    }
    assert parse_metrics("x_total 1", names=("x",)) == {"x": 1.0}


def test_counter_delta_only_for_counters_in_both() -> None:
    before = {"vllm:num_preemptions": 2.0, "vllm:kv_cache_usage_perc": 0.1}
    after = {"vllm:num_preemptions": 9.0, "vllm:kv_cache_usage_perc": 0.9, "vllm:prompt_tokens": 5}
    assert counter_delta(before, after) == {"vllm:num_preemptions": 7.0}


def test_summarize_samples_timeline() -> None:
    def sample(t: float, kv: float, waiting: float, preempt: float) -> Sample:
        return Sample(
            t,
            {
                "vllm:kv_cache_usage_perc": kv,
                "vllm:num_requests_waiting": waiting,
                "vllm:num_requests_running": 8 - waiting,
                "vllm:num_preemptions": preempt,
            },
        )

    samples = [
        sample(0.0, 0.1, 0, 4),
        sample(0.5, 0.995, 2, 4),
        sample(1.5, 1.0, 4, 6),
        sample(2.0, 0.3, 0, 6),
    ]
    summary = summarize_samples(samples)
    assert summary["peak_kv_cache_usage"] == 1.0
    assert summary["seconds_kv_full"] == 1.5  # from 0.5 to 2.0
    assert summary["preemptions"] == 2  # the counter's rise during the run, not its value
    assert summary["first_preemption_s"] == 1.5
    assert (summary["max_waiting"], summary["max_running"]) == (4, 8)
    assert summary["mean_waiting"] == 1.5
    assert summarize_samples([]) == {"samples": 0}
    quiet = summarize_samples([sample(0.0, 0.2, 0, 0), sample(1.0, 0.4, 0, 0)])
    assert (quiet["preemptions"], quiet["first_preemption_s"], quiet["seconds_kv_full"]) == (
        0,
        None,
        0,
    )


# ----------------------------------------------------------------------------- must-keep


def test_must_keep_scores_only_facts_the_raw_output_has() -> None:
    facts = [
        MustKeep(("INC-7",)),
        MustKeep(("pool_size=8", "pool_size: 8")),
        MustKeep(("db-3.internal",)),
        MustKeep(("/etc/app.yaml",)),
    ]
    raw = "INC-7 happened.\nThe fix set pool_size:\n   8 in /etc/app.yaml."
    summary = "- INC-7\n- pool_size: 8"
    result = must_keep_retention(raw, summary, facts)
    assert (result.total, result.kept) == (3, 2)
    assert result.missing == ("/etc/app.yaml",)
    assert result.absent == ("db-3.internal",)
    assert result.rate == pytest.approx(2 / 3)


def test_must_keep_is_case_sensitive_and_needs_the_whole_spelling() -> None:
    fact = MustKeep(("ORD-99812",))
    assert not fact.found_in("ord-99812")
    assert not fact.found_in("ORD-9981")
    assert fact.found_in("orders ORD-99812, ORD-99813")


def test_retention_adds_up_and_is_one_without_facts() -> None:
    total = Retention(2, 1, ("a",)) + Retention(3, 3, (), ("b",))
    assert (total.total, total.kept, total.missing, total.absent) == (5, 4, ("a",), ("b",))
    assert Retention(0, 0).rate == 1.0
    assert total.as_dict()["rate"] == 0.8


def test_must_keep_rejects_an_empty_fact() -> None:
    with pytest.raises(ValueError, match="non-empty spellings"):
        MustKeep.parse([])
    with pytest.raises(ValueError, match="non-empty spellings"):
        MustKeep.parse(["INC-1", "  "])


def test_every_labelled_compression_fact_is_in_its_output() -> None:
    """The labels were written from the outputs: a corpus change must not orphan them."""
    labelled = load_must_keep()["compression"]
    outputs = {o.name: o.text for o in build_stage_outputs()}
    assert set(labelled) == set(outputs)
    for name, facts in labelled.items():
        assert len(facts) >= 10, name
        assert [f.label for f in facts if not f.found_in(outputs[name])] == [], name


def test_the_demo_request_holds_every_labelled_fact() -> None:
    facts = load_must_keep()["requests"]["demo"]
    assert [f.label for f in facts if not f.found_in(DEMO_REQUEST)] == []


def test_the_must_keep_file_is_hand_written_lists() -> None:
    data = json.loads(MUST_KEEP_PATH.read_text())
    for section in ("compression", "requests"):
        for entries in data[section].values():
            assert all(isinstance(e, str | list) for e in entries)


def test_request_variants_are_distinct_and_carry_their_facts() -> None:
    variants = [request_variant(i) for i in range(9)]
    assert variants[0].text == DEMO_REQUEST
    assert len({v.text for v in variants}) == 9
    for variant in variants:
        assert [f.label for f in variant.must_keep if not f.found_in(variant.text)] == []
    # Every accepted spelling of a changed value changes with it.
    other = variants[3]
    connections = next(f for f in other.must_keep if f.label.startswith("max_connections"))
    values = {s.split("=")[-1].split(":")[-1].strip() for s in connections.spellings}
    assert len(values) == 1
    assert values != {"64"}
    assert request_variant(3) == other  # deterministic


# ----------------------------------------------------------------------------- sweep columns


def test_classify_each_column() -> None:
    sent = {"outcome": "sent"}
    assert classify({**sent, "finish_reason": "length", "completion_tokens": 128}, 128) == "served"
    assert classify({**sent, "finish_reason": "stop", "completion_tokens": 12}, 128) == "served"
    assert (
        classify({**sent, "finish_reason": "length", "completion_tokens": 121}, 128)
        == "silently_truncated"
    )
    # Cut at the window's end with no max_tokens asked: truncated too.
    assert (
        classify({**sent, "finish_reason": "length", "completion_tokens": 121}, None)
        == "silently_truncated"
    )
    reduced = {"action": "none", "max_tokens": 121, "retried": False}
    assert (
        classify(
            {**sent, "budget": reduced, "finish_reason": "length", "completion_tokens": 121}, 128
        )
        == "served_adjusted"
    )
    # The budget said 121 and the answer still came back shorter, cut: silent after all.
    assert (
        classify(
            {**sent, "budget": reduced, "finish_reason": "length", "completion_tokens": 90}, 128
        )
        == "silently_truncated"
    )
    trimmed = {"action": "trimmed", "max_tokens": 3000, "retried": False}
    assert classify({**sent, "budget": trimmed}, None) == "served_adjusted"
    retried = {"action": "none", "max_tokens": 128, "retried": True}
    assert classify({**sent, "budget": retried}, 128) == "served_adjusted"
    plain_budget = {"action": "none", "max_tokens": 128, "retried": False}
    assert classify({**sent, "budget": plain_budget}, 128) == "served"
    for outcome in ("refused_before_sending", "length_400", "error"):
        assert classify({"outcome": outcome}, 128) == outcome


def test_summarize_sweep_counts_refusals_vllm_would_have_served() -> None:
    rows = []
    plain = {0.5: "served", 0.99: "silently_truncated", 1.5: "length_400"}
    strict = {0.5: "served", 0.99: "refused_before_sending", 1.5: "refused_before_sending"}
    for fraction in plain:
        rows.append(
            {
                "client": CLIENTS[0],
                "user_max_tokens": 128,
                "fraction": fraction,
                "outcome": plain[fraction],
            }
        )
        rows.append(
            {
                "client": "ChatVLLM raise",
                "user_max_tokens": 128,
                "fraction": fraction,
                "outcome": strict[fraction],
            }
        )
    summary = summarize_sweep(rows)["max_tokens=128"]
    mine, theirs = summary["ChatVLLM raise"], summary[CLIENTS[0]]
    assert (mine["refused_before_sending"], mine["refused_servable"], mine["failures"]) == (2, 1, 0)
    assert (theirs["served"], theirs["silently_truncated"], theirs["length_400"]) == (1, 1, 1)
    assert theirs["failures"] == 2
    assert sum(theirs[o] for o in OUTCOMES) == theirs["requests"] == 3
    assert mine["by_fraction"] == {
        "0.5": "served",
        "0.99": "refused_before_sending",
        "1.5": "refused_before_sending",
    }
    assert summarize_sweep(rows)["no max_tokens"]["ChatVLLM raise"]["requests"] == 0


# ----------------------------------------------------------------------------- KV demand


def test_kv_demand_counts_whole_blocks_of_in_flight_calls() -> None:
    calls = [
        CallRecord("classify", "stage", "p0", 100.0, 4.0, 250, 6),  # 256 tokens: 2 blocks
        CallRecord("classify", "stage", "p1", 101.0, 4.0, 257, 0),  # 3 blocks
        CallRecord("classify", "summarizer", "p0", 104.0, 2.0, 100, 30),  # 2 blocks
    ]
    assert kv_demand(calls, block_size=128, t0=100.0) == [
        (0.0, 2),
        (1.0, 5),
        (4.0, 5),  # p0's stage call ends as its summarizer call starts
        (5.0, 2),
        (6.0, 0),
    ]
    assert kv_demand([], block_size=128) == []


def test_percentile() -> None:
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([3.0], 95) == 3.0


# ----------------------------------------------------------------------------- the demo's table


def test_demo_table_counts_the_raw_forwarding_prompt() -> None:
    from rich.console import Console

    from graphs.__main__ import raw_forwarding_table
    from graphs.graph import STAGES
    from graphs.prompts import STAGE_SYSTEM_PROMPTS
    from langchain_vllm_budget.stages import StageInput, stage_messages
    from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

    counter = ApproximateTokenCounter()
    raw = {stage: f"{stage} output " * 150 for stage in STAGES}  # ~300 tokens each
    budget = {"output_reserve": 512, "safety_margin": 32}
    ledger = {
        stage: {"input_tokens": 300 + 10 * i, "max_model_len": 2048, "budget": budget}
        for i, stage in enumerate(STAGES)
    }
    console = Console(record=True, width=200)
    console.print(raw_forwarding_table(ledger, raw, "Fix INC-1", counter))
    text = console.export_text()
    last = stage_messages(STAGE_SYSTEM_PROMPTS["execute"])(
        StageInput("execute", "Fix INC-1", tuple((s, raw[s]) for s in STAGES[:3]))
    )
    expected = counter.count_messages(last)
    row = next(line for line in text.splitlines() if line.strip().startswith("execute"))
    cells = row.split()
    assert cells[1:5] == ["330", str(expected), str(expected + 544), "2048"]
    fits = expected + 544 <= 2048
    assert ("yes" in row) == fits
    assert "not sent" in text
    first = next(line for line in text.splitlines() if line.strip().startswith("classify"))
    assert "yes" in first
