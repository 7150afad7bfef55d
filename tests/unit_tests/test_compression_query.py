"""Query-aware ranking: blocks, filters on numbers, columns, headers and the focus."""

from __future__ import annotations

import json

import pytest

from langchain_vllm_budget.compression import Query, needs_model, query_summary
from langchain_vllm_budget.compression.entities import extract_entity_list
from langchain_vllm_budget.compression.extractive import is_diff, json_records, query_units
from langchain_vllm_budget.compression.query import _parents, focus_entities, line_scores
from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

COUNTER = ApproximateTokenCounter()


def test_a_short_indented_block_is_one_unit_and_a_long_one_is_not() -> None:
    text = "\n".join(
        [
            "Containers:",
            "  ingest:",
            "    Last State:  Terminated",
            "      Reason:    OOMKilled",
            "      Exit Code: 137",
            "    Limits:",
            "      memory:  2Gi",
            *(f"    OPT_{i}: {i}" for i in range(20)),
        ]
    )
    units = query_units(text)
    assert "    Last State:  Terminated Reason:    OOMKilled Exit Code: 137" in units
    assert "    Limits: memory:  2Gi" in units
    assert units[0] == "Containers:"  # its block is over 24 words: lines of their own
    assert "    OPT_3: 3" in units


def test_a_filter_in_the_request_is_parsed_and_its_number_is_no_query_word() -> None:
    query = Query.of("Which deployments run an image older than 1.20, and where?")
    (bound,) = query.bounds
    assert (bound.op, bound.value, bound.version) == ("<", (1.0, 20.0), True)
    assert bound.passes("1.18.3")
    assert not bound.passes("1.20.6")
    assert not bound.passes("1.24")
    assert all(name != "1.20" for name, _ in query.names)
    assert all(term != "1.20" for term, _ in query.terms)
    more = Query.of("Which customers had more than 3 failed payments?").bounds[0]
    assert (more.op, more.value, more.version, more.subject) == (
        ">",
        (3.0,),
        False,
        ("fail", "payment"),
    )
    assert Query.of("orders stuck for at least 48 hours").bounds[0].op == ">"
    assert Query.of("services with fewer than 2 replicas").bounds[0].op == "<"


def test_rows_passing_the_filter_outrank_the_others_in_pipe_tables_csv_and_json() -> None:
    query = Query.of("Which customers had more than 3 failed payments this week?")
    rows = [f"cus_{i:03d} | FR | {i % 3} | stripe" for i in range(30)]
    rows[17] = "cus_017 | SE | 7 | adyen"
    pipe = ["customer_id | country | failed_payments | psp", "-" * 40, *rows]
    scores = line_scores(pipe, query)
    assert max(range(2, len(pipe)), key=scores.__getitem__) == 2 + 17
    csv = [line.replace(" | ", ",") for line in pipe if not line.startswith("-")]
    scores = line_scores(csv, query)
    assert max(range(1, len(csv)), key=scores.__getitem__) == 1 + 17
    json_lines = [f'  "failed_payments": {i % 3},' for i in range(30)]
    json_lines[5] = '  "failed_payments": 9,'
    scores = line_scores(json_lines, query)
    assert max(range(len(json_lines)), key=scores.__getitem__) == 5
    # a version filter looks at the versions anywhere on the line
    images = [f'"image": "reg.example/app-{i}:1.2{i % 9}.0",' for i in range(20)]
    images[11] = '"image": "reg.example/ledger-sync:1.18.3",'
    scores = line_scores(images, Query.of("Which images are older than 1.20?"))
    assert max(range(len(images)), key=scores.__getitem__) == 11


def test_a_number_standing_out_of_its_key_or_csv_column_scores() -> None:
    query = Query.of("Why was the request slow?")
    spans = [f'  "duration_ms": {10 + i % 30},' for i in range(30)]
    spans[20] = '  "duration_ms": 5412,'
    scores = line_scores(spans, query, near=False)
    assert scores[20] > 0
    assert max(s for i, s in enumerate(scores) if i != 20) == 0


def test_the_header_of_a_matching_hunk_shares_its_score_and_a_long_block_does_not() -> None:
    diff = [
        "diff --git a/config/logging.yaml b/config/logging.yaml",
        "+  level: debug",
        "diff --git a/config/http_client.yaml b/config/http_client.yaml",
        "   psp:",
        "-    timeout_ms: 2000",
        "+    timeout_ms: 800",
        "diff --git a/src/fx.py b/src/fx.py",
        "+    rate = fetch(rate)",
    ]
    scores = line_scores(diff, Query.of("What changed in the PSP timeouts?"))
    assert scores[2] > scores[0]  # the header of the hunk that matched
    assert scores[2] > scores[6]
    # a trace's root line has many spans under it: they are records of their own
    trace = ["trace 4f0a POST /v1/checkout 4,812 ms total"] + [
        f"  span {i:04x} cart.get {10 + i} ms" for i in range(20)
    ]
    scores = line_scores(trace, Query.of("Why did this checkout take so long?"))
    assert max(scores[1:]) < 0.5 * scores[0]


def test_severity_weighs_as_the_request_when_it_asks_what_went_wrong() -> None:
    lines = ["Restart Count: 14", "Reason: OOMKilled", "Image: ingest:3.8", "cpu: 1"] * 3
    calm = line_scores(lines, Query.of("What image does the ingest pod run?"), near=False)
    why = line_scores(lines, Query.of("Why does the ingest pod keep restarting?"), near=False)
    assert Query.of("Why does it crash?").diagnostic
    assert not Query.of("What image does it run?").diagnostic
    assert why[1] > calm[1]


def test_dates_are_not_focus_and_the_summary_bullets_the_focus_before_other_entities() -> None:
    lines = ["2026-11-30T14:02:11Z ERROR job ck-88412 failed: pool_size=20", "ok"]
    entities = extract_entity_list("\n".join(lines))
    focus = [e.text for e in focus_entities(lines, [2.0, 0.0], entities)]
    assert focus == ["ck-88412", "pool_size=20"]
    log = "\n".join(
        [
            *(f"14:{i:02d} svc-{i} INFO heartbeat req=a{i:03d}f latency={i} ms" for i in range(40)),
            "14:41 checkout-3 ERROR job ck-88412 failed: pool exhausted, waiting 143 requests",
            *(
                f"14:{i:02d} svc-{i} INFO heartbeat req=b{i:03d}f latency={i} ms"
                for i in range(42, 80)
            ),
        ]
    )
    query = Query.of("Why do checkout jobs fail?", tool="search_logs", args={"service": "checkout"})
    result = query_summary(log, query=query, max_tokens=60, tokenizer=COUNTER)
    assert "ck-88412" in result.summary
    assert "143 requests" in result.summary
    assert result.query_missing == ()
    assert not needs_model(result, "auto", has_model=True)


def test_bare_headers_and_brackets_are_not_quoted_alone() -> None:
    text = "\n".join(
        ["Events:", "},", "-----"]
        + [f"  Normal Pulled {i}m kubelet pulled image-{i}" for i in range(60)]
    )
    query = Query.of("What events happened?", tool="kubectl_describe")
    result = query_summary(text, query=query, max_tokens=60, tokenizer=COUNTER)
    quoted = result.summary.splitlines()
    assert "- Events:" not in quoted
    assert "- }," not in quoted
    assert "- -----" not in quoted


def test_a_number_with_two_dots_is_a_version_whatever_the_word() -> None:
    (bound,) = Query.of("Which nodes run kubelet above 1.20.6?").bounds
    assert bound.version
    assert bound.op == ">"
    assert bound.passes("1.21.0")
    assert not bound.passes("1.20.5")
    assert not bound.passes("n/a")  # a value that does not parse does not pass


def test_a_filter_names_the_words_after_its_own_number() -> None:
    query = Query.of("On node 3 the jobs restart: which had more than 3 failed payments?")
    (bound,) = query.bounds
    assert bound.subject == ("fail", "payment")


def test_before_and_earlier_point_below_a_plain_number() -> None:
    assert Query.of("invoices issued before 2024").bounds[0].op == "<"
    assert Query.of("runs earlier than 1700000000").bounds[0].op == "<"
    assert Query.of("backups older than 3 days").bounds[0].op == ">"  # an age


def test_a_json_result_is_ranked_and_quoted_as_whole_records() -> None:
    issues = [
        {
            "key": f"IDP-{1000 + i}",
            "summary": "Password reset email delayed",
            "priority": "P3",
            "region": "US",
            "assignee": "m.garcia",
            "labels": {"team": "idp"},
        }
        for i in range(30)
    ]
    issues[21] = {
        "key": "IDP-2417",
        "summary": "SSO login times out for EU tenants",
        "priority": "P1",
        "region": "EU",
        "assignee": "k.brandt",
        "labels": {"team": "sso"},
    }
    raw = json.dumps({"total": 30, "issues": issues}, indent=2)
    units = query_units(raw)
    assert units[0] == "total: 30"
    assert units[22] == (
        "key: IDP-2417; summary: SSO login times out for EU tenants; priority: P1; "
        "region: EU; assignee: k.brandt; team: sso"
    )
    query = Query.of("Open tickets about SSO login timeouts for EU users? IDs and owners.")
    scores = line_scores(units, query)
    assert max(range(len(units)), key=scores.__getitem__) == 22
    result = query_summary(raw, query=query, max_tokens=80, tokenizer=COUNTER)
    assert "key: IDP-2417" in result.summary
    assert "assignee: k.brandt" in result.summary  # the record's own fields, kept together
    assert not needs_model(result, "auto", has_model=True)


def test_json_records_flatten_nested_objects_and_keep_lists_of_objects_apart() -> None:
    raw = json.dumps(
        {
            "trace_id": "t1",
            "root": {"service": "gw", "ok": True, "parent": None},
            "spans": [{"span_id": "a", "attributes": {"retry.count": 2}}, {"span_id": "b"}],
            "tags": ["x", "y"],
        }
    )
    assert json_records(raw) == [
        "trace_id: t1; service: gw; ok: true; parent: null; tags: x, y",
        "span_id: a; retry.count: 2",
        "span_id: b",
    ]
    assert json_records("[1, 2, 3]") == ["1, 2, 3"]
    assert json_records('{"truncated": ') is None  # not JSON: the result's lines are ranked
    assert json_records("plain text") is None
    long_value = json_records(json.dumps({"description": " ".join(["word"] * 50)}))
    assert long_value is not None
    assert long_value[0].endswith("…")


def test_a_diff_is_ranked_by_its_changed_lines() -> None:
    diff = [
        "diff --git a/config/batching.yaml b/config/batching.yaml",
        "index 3e1f0a2..b77c9d4 100644",
        "--- a/config/batching.yaml",
        "+++ b/config/batching.yaml",
        "@@ -4,6 +4,6 @@ bulk:",
        "   endpoint: http://es-bulk:9200/_bulk",
        "-  batch_size: 500",
        "+  batch_size: 2000",
        "   batch_timeout_ms: 40",
        "   max_concurrent_requests: 4",
    ]
    assert is_diff(diff)
    assert not is_diff(["--- a note", "text"])
    units = query_units("\n".join(diff))
    assert "index 3e1f0a2..b77c9d4 100644" not in units  # repeats the diff --git line
    assert "--- a/config/batching.yaml" not in units
    assert "+  batch_size: 2000" in units  # not joined with the context lines under it
    scores = dict(
        zip(units, line_scores(units, Query.of("What changed in batch sizes?")), strict=True)
    )
    assert scores["-  batch_size: 500"] > scores["   batch_timeout_ms: 40"]  # context: unchanged


def test_a_filter_ends_at_its_clause_and_lines_failing_it_lose_half_their_score() -> None:
    query = Query.of(
        "Which orders are stuck awaiting capture for more than 48 hours? List amounts."
    )
    assert query.bounds[0].subject == ("hour",)  # not "amount": the next clause
    header = "order_id | status | amount_eur | hours_in_status"
    rows = [
        f"ORD-{i} | {'awaiting_capture' if i % 2 else 'captured'} | {100 + i}.00 | {i}"
        for i in range(30, 70)
    ]
    scores = line_scores([header, "-" * 40, *rows], query)
    by_row = dict(zip(rows, scores[2:], strict=True))
    passing = by_row["ORD-55 | awaiting_capture | 155.00 | 55"]
    failing = by_row["ORD-41 | awaiting_capture | 141.00 | 41"]
    assert passing > 1.5 * failing
    # a failing row keeps half of what the same words score without the filter
    unfiltered = Query.of("Which orders are stuck awaiting capture for long? List amounts.")
    own = line_scores([header, "-" * 40, *rows], query, near=False)
    without = line_scores([header, "-" * 40, *rows], unfiltered, near=False)
    failing_row = 2 + rows.index("ORD-41 | awaiting_capture | 141.00 | 41")
    assert own[failing_row] == pytest.approx(0.5 * without[failing_row])
    # the header names the asked-for columns, but is worth no more than its best row
    assert scores[0] <= max(scores[2:])


def test_a_nested_record_names_the_record_it_belongs_to() -> None:
    flags = {
        "project": "storefront",
        "flags": [
            {"key": "new-checkout", "on": True, "rules": [{"tenant": "eu", "rollout": 35}]},
            {"key": "dark-mode", "on": True, "rules": [{"tenant": "us", "rollout": 100}]},
        ],
    }
    assert json_records(json.dumps(flags)) == [
        "project: storefront",  # the envelope passes nothing down
        "key: new-checkout; on: true",
        "key: new-checkout; tenant: eu; rollout: 35",
        "key: dark-mode; on: true",
        "key: dark-mode; tenant: us; rollout: 100",
    ]


def test_a_json_log_is_ranked_and_quoted_as_compact_records() -> None:
    lines = [
        json.dumps({"level": "warn", "msg": "payment declined", "order_id": f"ord_{i}"})
        for i in range(20)
    ]
    lines[13] = json.dumps(
        {"level": "error", "msg": "gateway timeout", "order_id": "ord_13", "http_status": 504}
    )
    units = query_units("\n".join([*lines, "-- end of page --"]))
    assert units[13] == "level: error; msg: gateway timeout; order_id: ord_13; http_status: 504"
    assert units[-1] == "-- end of page --"  # a line that is no JSON object stays
    assert query_units("{not json}\nplain log line\nanother one") == [
        "{not json}",
        "plain log line",
        "another one",
    ]


def test_negated_words_numbers_in_plural_and_acronyms_in_the_request() -> None:
    query = Query.of(
        "Which orders failed at the gateway (not card declines)? Any 401s in the EU? go"
    )
    terms = dict(query.terms)
    assert "card" not in terms  # "not card declines": what the request is not about
    assert "declin" not in terms
    assert "gateway" in terms
    assert "401" in terms  # "401s" are 401 responses
    assert "eu" in terms  # two capitals: an acronym
    assert "go" not in terms  # two small letters: noise
    lines = ["tenant: us rollout: 100", "tenant: eu rollout: 35", "tenant: de rollout: 50"]
    scores = line_scores(lines, Query.of("rollouts for the EU tenant"))
    assert scores[1] > scores[0]
    assert scores[1] > scores[2]  # "de" abbreviates nothing


def test_the_extremes_of_the_measure_the_request_names_stand_out() -> None:
    # evenly spread lags: none is an outlier, so only the superlative can single one out
    metrics = [
        f'kafka_consumergroup_lag{{group="g{i % 3}",partition="{i % 8}"}} {1000 + 37 * i}'
        for i in range(24)
    ]
    query = Query.of("Which consumer group is furthest behind, and how big is its lag?")
    assert query.extreme == "max"
    scores = line_scores(metrics, query)
    top = sorted(range(len(metrics)), key=scores.__getitem__, reverse=True)[:3]
    assert sorted(top) == [21, 22, 23]  # the three largest lags
    assert min(scores[i] for i in top) > 5 * max(scores[:21])
    plain = line_scores(metrics, Query.of("Which consumer group is behind, and by what lag?"))
    assert max(plain) == min(plain)  # without the superlative no lag stands out
    # the partition label repeats: it is no measure, its largest value is no answer
    assert scores[7] == scores[6]  # partitions 7 and 6, lags neither at the top
    assert Query.of("lowest latency").extreme == "min"
    assert Query.of("What failed most recently?").extreme is None  # a time, not a measure


def test_a_warning_weighs_half_an_error_when_the_request_asks_what_failed() -> None:
    lines = [
        "tests/test_api.py::test_rate DeprecationWarning: warning, app shortcut deprecated",
        "FAILED fx rounding - ReconciliationError: 1043.27 != 1043.26",
        *(f"PASSED tests/test_{i}.py::test_{i}" for i in range(20)),
    ]
    scores = line_scores(lines, Query.of("Which test failed and why?"))
    # at an error's full weight the warning line would score 5.8 to the failure's 8.2
    assert scores[0] < 0.6 * scores[1]


def test_the_parts_of_a_name_in_the_request_weigh_less_than_the_name() -> None:
    query = Query.of("Why is test_partial_refund_updates_balance failing?")
    terms = dict(query.terms)
    assert terms["refund"] == 0.5  # a part of the name
    assert terms["fail"] == 1.0  # a word of its own
    assert ("test_partial_refund_updates_balance", 1.0) in query.names


def test_a_banner_starts_a_section() -> None:
    lines = [
        "=" * 10 + " FAILURES " + "=" * 10,
        "_" * 10 + " test_partial_refund " + "_" * 10,
        "E   AssertionError: assert 7450 == 7500",
        "tests/test_refunds.py:142: AssertionError",
        "plain text",
    ]
    assert _parents(lines) == [-1, -1, 1, 1, 1]


def test_the_best_record_is_quoted_cut_to_the_room_when_longer_than_it() -> None:
    rows = [{"id": f"r{i}", "note": "fine"} for i in range(30)]
    rows.append({"id": "r99", "note": "disk full " + "detail " * 120 + "on /var/lib/docker"})
    result = query_summary(
        json.dumps({"rows": rows}),
        query=Query.of("Why is the disk full?"),
        max_tokens=60,
        tokenizer=COUNTER,
    )
    assert "- id: r99; note: disk full detail" in result.summary  # its head, where its ID is
    assert " …" in result.summary
    assert COUNTER.count_text(result.summary) <= 60


def test_sizes_as_df_and_du_write_them_are_numbers_with_a_unit() -> None:
    du = [f"{g}G /var/lib/app{g}" for g in (3, 4, 5, 4, 3, 6, 5, 4, 3, 2)] + [
        "412G /var/lib/docker"
    ]
    scores = line_scores(du, Query.of("What is eating the space?"))
    assert max(range(len(du)), key=scores.__getitem__) == len(du) - 1


def test_a_plain_not_states_a_symptom_and_only_an_exclusion_leaves_words_out() -> None:
    symptom = dict(Query.of("Why are the pods not running in namespace payments-prod?").terms)
    assert {"pod", "runn", "namespace"} <= set(symptom)
    assert ("payments-prod", 1.0) in Query.of("pods not running in payments-prod").names
    for request in (
        "Show the errors rather than the warnings",
        "Show the errors apart from the warnings",
        "Show the errors, excluding the warnings",
    ):
        terms = dict(Query.of(request).terms)
        assert "error" in terms
        assert "warning" not in terms
    assert "30s" in dict(Query.of("requests slower than usual, around 30s").terms)


def test_json_numbers_are_quoted_as_written_and_deep_json_falls_back_to_lines() -> None:
    assert json_records('{"amount_eur": 86.40, "ratio": 1e3, "count": 7}') == [
        "amount_eur: 86.40; ratio: 1e3; count: 7"
    ]
    deep = "[" * 100_000 + "]" * 100_000
    assert json_records(deep) is None  # nested deeper than Python recurses: read as lines
    assert query_units(deep) == [deep]
