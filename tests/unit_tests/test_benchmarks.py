"""The benchmarks' pure helpers: /metrics, must-keep retention, outcome columns, KV demand."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.calls import CallRecord, percentile
from benchmarks.concurrency import kv_demand
from benchmarks.corpus import build_stage_outputs
from benchmarks.metrics import Sample, counter_delta, parse_metrics, summarize_samples
from benchmarks.overflow_sweep import CLIENTS, OUTCOMES, classify, summarize_sweep
from benchmarks.overhead import counting_goals
from benchmarks.report import _agent_loop_goal_md, _counting_goals_md
from benchmarks.requests import request_variant
from benchmarks.retention import (
    MUST_KEEP_PATH,
    MustKeep,
    Retention,
    load_must_keep,
    must_keep_retention,
)
from benchmarks.run import keep_earlier_sections
from benchmarks.sessions import LoopLagProbe, lag_summary, sessions_md
from langchain_vllm_budget.pipeline.prompts import DEMO_REQUEST

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
    from langchain_vllm_budget.pipeline.graph import STAGES
    from langchain_vllm_budget.pipeline.prompts import STAGE_SYSTEM_PROMPTS
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


# ----------------------------------------------------------- sessions, counting goals, merging


def _sessions_result(running: float, waiting: float, failures: list[str]) -> dict:
    return {
        "settings": {
            "sessions": 6,
            "turns": 2,
            "max_concurrency": 4,
            "max_num_seqs": 4,
            "max_tokens": 32,
            "model": "SmolLM2-135M-Instruct",
            "lag_tick_ms": 5.0,
        },
        "calls": 12,
        "failures": failures,
        "seconds": 9.5,
        "calls_per_s": 1.26,
        "latency_p50_s": 2.1,
        "latency_p95_s": 3.4,
        "loop_lag": lag_summary([0.0002] * 50 + [0.003]),
        "metrics": {"max_running": running, "max_waiting": waiting},
        "goal": {
            "no_failures": not failures,
            "running_within_limit": running <= 4,
            "server_queue_empty": waiting == 0,
        },
    }


def test_lag_summary_percentiles_in_ms() -> None:
    lags = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    summary = lag_summary(lags)
    assert summary["ticks"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == 100.0
    assert lag_summary([]) == {"ticks": 0}


async def test_loop_lag_probe_sees_a_blocked_loop() -> None:
    import asyncio
    import time

    probe = LoopLagProbe(tick=0.001)
    probe.start()
    await asyncio.sleep(0.01)
    time.sleep(0.05)  # blocks the loop: the probe wakes at least 40 ms late once
    await asyncio.sleep(0.01)
    await probe.stop()
    assert max(probe.lags) >= 0.04


def test_sessions_section_says_what_was_kept_and_what_was_not() -> None:
    ok = "\n".join(sessions_md(_sessions_result(4.0, 0.0, [])))
    assert "| 6 x 2 | 12 | 0 | 9.5 s | 1.26 | 2.1 s | 3.4 s |" in ok
    assert "at most 4 requests running (<= 4: yes)" in ok
    assert "(empty: yes)" in ok
    assert "p99 " in ok
    bad = "\n".join(sessions_md(_sessions_result(5.0, 2.0, ["APITimeoutError: slow"])))
    assert "(<= 4: NO)" in bad
    assert "(empty: NO)" in bad
    assert "no failures: NO" in bad
    assert "`APITimeoutError: slow`" in bad


def _counting(first_ms: float, loop_ms: float) -> dict:
    cases = {
        "whole_prompt": {"median_ms": 40.0, "p90_ms": 45.0},
        "grown_by_one_turn": {"median_ms": loop_ms, "p90_ms": loop_ms},
        "same_again": {"median_ms": 1.0, "p90_ms": 1.2},
        "first_count": {"median_ms": first_ms, "p90_ms": first_ms},
        "raw_encode": {"median_ms": 36.0, "p90_ms": 38.0},
    }
    return {
        "tokenizer": "tiny-qwen",
        "messages": 42,
        "input_tokens": 11_500,
        "calls": 10,
        "cases": cases,
        **counting_goals(cases, 11_500),
    }


def test_counting_goals_are_marked_met_or_missed_with_the_raw_ratio() -> None:
    lines = "\n".join(_counting_goals_md(_counting(first_ms=39.6, loop_ms=1.5)))
    assert "319,444 tokens/s" in lines
    assert "1.1x the raw tokenizer" in lines
    assert "agent loop (the conversation grows from 42 to 62 messages over the 10 calls): " in lines
    assert "< 2 ms median: 1.5 ms (met)" in lines
    assert "cold (~12K tokens): < 10 ms median: 39.6 ms (MISSED)" in lines
    missed = "\n".join(_counting_goals_md(_counting(first_ms=9.0, loop_ms=2.5)))
    assert "2.5 ms (MISSED)" in missed
    assert "9.0 ms (met)" in missed
    assert _counting_goals_md({"cases": {}}) == []  # results from before the goals


def test_the_agent_loop_goal_is_judged_at_12k_tokens_on_chatvllms_budgeting() -> None:
    def over(ms: float) -> dict[str, Any]:
        entry = {"input_tokens": 11_903, "budget_local_ms": ms}
        return {"cases": {"agent_loop": {"1000": {}, "12000": entry}}}

    assert _agent_loop_goal_md(over(1.3)) == [
        "Goal, agent loop at 11,903 tokens (ChatVLLM's budgeting per call, table above): "
        "< 2 ms median: 1.3 ms (met)."
    ]
    assert _agent_loop_goal_md(over(2.4))[0].endswith("2.4 ms (MISSED).")
    assert _agent_loop_goal_md({"cases": {}}) == []


def test_an_only_run_keeps_the_other_sections_and_says_which_run_made_them(tmp_path) -> None:
    earlier = {
        "meta": {"command": "make bench", "started": "2026-12-01 00:00 UTC"},
        "planner": {"rows": [], "exact": 0, "total": 0},
        "sessions": {"error": "old failure", "command": "x --only sessions", "started": "t"},
        "overhead": {"stale": True},
        "timings": {"planner": 12.0, "overhead": 99.0},
    }
    now = {
        "meta": {
            "command": "python -m benchmarks.run --only compression",
            "started": "2026-12-01 03:00 UTC",
        },
        "compression": {"error": "boom", "command": "c", "started": "s"},
        "timings": {"compression": 1.0},
    }
    merged = keep_earlier_sections(now, earlier, ["compression", "overhead"])
    assert merged["planner"]["command"] == "make bench"
    assert merged["planner"]["started"] == "2026-12-01 00:00 UTC"
    assert merged["sessions"]["command"] == "x --only sessions"  # its own, not the meta's
    assert "overhead" not in merged  # selected in this run (and failed to produce): not stale
    assert merged["timings"] == {"compression": 1.0, "planner": 12.0}
    assert merged["meta"]["kept_from_earlier"] == ["planner", "sessions"]
    assert "kept_from_earlier" not in now["meta"]  # the input is not changed
    assert keep_earlier_sections(now, {}, ["compression"]) == now


def test_the_summary_names_the_run_of_each_kept_section(tmp_path) -> None:
    from benchmarks.report import write_results

    results = keep_earlier_sections(
        {
            "meta": {
                "started": "2026-12-01 03:00 UTC",
                "machine": "x86_64 Linux, 2 CPU cores",
                "vllm": "0",
                "quick": True,
                "command": "python -m benchmarks.run --only sessions",
                "seconds": 10.0,
            },
            "sessions": {
                **_sessions_result(4.0, 0.0, []),
                "command": "python -m benchmarks.run --only sessions",
                "started": "2026-12-01 03:00 UTC",
            },
        },
        {
            "meta": {"command": "make bench", "started": "2026-11-30 22:00 UTC"},
            "planner": {"rows": [], "exact": 0, "total": 0},
        },
        ["sessions"],
    )
    write_results(results, tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert "Kept from earlier runs (each says which): planner." in summary
    assert "_From an earlier run: 2026-11-30 22:00 UTC, `make bench`._" in summary
    assert summary.count("_From an earlier run") == 1  # the sessions section is this run's
    assert "### 9. 6 concurrent agent sessions" in summary
    assert json.loads((tmp_path / "results.json").read_text())["planner"]["command"] == (
        "make bench"
    )


def test_the_labelled_tool_outputs_hold_their_facts_and_sizes() -> None:
    import json

    from benchmarks.data.make_heldout2_tool_outputs import HELDOUT2_PATH, build_heldout2_outputs
    from benchmarks.data.make_heldout3_tool_outputs import HELDOUT3_PATH, build_heldout3_outputs
    from benchmarks.data.make_heldout_tool_outputs import HELDOUT_PATH, build_heldout_outputs
    from benchmarks.retention import MustKeep
    from benchmarks.tool_output_retention import SETS, summary_md
    from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

    # the held-out sets on disk are what their scripts build (seeded)
    assert json.loads(HELDOUT_PATH.read_text()) == build_heldout_outputs()
    assert json.loads(HELDOUT2_PATH.read_text()) == build_heldout2_outputs()
    assert json.loads(HELDOUT3_PATH.read_text()) == build_heldout3_outputs()
    sizes = {"tuning": (10, 60), "held-out 1": (10, 60), "held-out 2": (10, 60)}
    sizes["held-out 3"] = (10, 60)
    for name, (outputs_path, facts_path) in SETS.items():
        outputs = json.loads(outputs_path.read_text())
        facts = json.loads(facts_path.read_text())
        assert len(outputs) >= sizes[name][0]
        labelled_total = 0
        for item in outputs:
            assert item["request"]
            assert item["tool_call"]["name"]
            # 2,000-5,000 tokens by the Qwen tokenizer (the benchmark counts them exactly)
            assert 1000 <= ApproximateTokenCounter().count_text(item["output"]) <= 6000
            labelled = [MustKeep.parse(f) for f in facts[item["name"]]]
            assert labelled
            assert all(f.found_in(item["output"]) for f in labelled), item["name"]
            labelled_total += len(labelled)
        assert labelled_total >= sizes[name][1]
    row = {
        "output": "o",
        "tool_call": "t({})",
        "raw_tokens": 3000,
        "summary_tokens": 240,
        "kept": 9,
        "facts": 10,
        "kept_without_query": 2,
        "summarizer_call": False,
        "missing": ["x"],
    }
    total = {
        "kept": 9,
        "facts": 10,
        "rate": 0.9,
        "goal": 0.9,
        "goal_met": True,
        "rate_without_query": 0.2,
        "under_cap": 1,
        "outputs": 1,
        "raw_2k_to_5k": 1,
        "summarizer_calls": 0,
        "summarizer_calls_with_all_facts_kept": 0,
    }
    one_set = {
        "outputs_file": "o.json",
        "facts_file": "f.json",
        "rows": [row],
        "by_kind": {"id": {"kept": 9, "facts": 10, "rate": 0.9}},
        "summary": total,
    }
    lines = summary_md(
        {"cap": 250, "tokenizer": "q", "strategy": "auto", "sets": {"held-out": one_set}}
    )
    assert "#### held-out set (`o.json`, facts `f.json`)" in lines
    assert "| o | `t({})` | 3000 | 240 | 9/10 | 2/10 | no | `x` |" in lines
    assert "Facts kept (held-out): 9/10 (90.0%; goal 90%: met)" in lines[-1]
    assert "By kind: id 9/10." in lines[-1]


def test_the_rounds_table_has_a_row_per_round_and_a_column_per_set() -> None:
    from benchmarks.tool_output_rounds import ROUNDS, rounds_md

    assert list(ROUNDS)[-1] == "now"
    one = {"kept": 9, "facts": 10, "rate": 0.9}
    result = {
        "rounds": {
            "round 1": {"commit": "abc1234", "sets": {"tuning": one, "held-out 1": one}},
            "now": {"commit": "def5678", "sets": {"tuning": one, "held-out 1": one}},
        }
    }
    lines = rounds_md(result)
    assert lines[0] == "| round (commit) | tuning | held-out 1 |"
    assert lines[2] == "| round 1 (`abc1234`) | 9/10 (90.0%) | 9/10 (90.0%) |"
    assert len(lines) == 4
