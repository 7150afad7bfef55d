"""Loss-aware compression: entities, the guard, the hard cap, fallbacks, chunking (offline)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel

from langchain_vllm_budget.compression import (
    COMPRESSION_PROMPT,
    CompressionResult,
    SummarySpec,
    acompress_stage_result,
    compress_stage_result,
    extract_entities,
    extract_entity_list,
    extractive_summary,
    is_entity_present,
    render_stage_result,
    summarize,
)
from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

from ..fakes import RecordingFakeModel

COUNTER = ApproximateTokenCounter()


def _fake(*responses: str) -> RecordingFakeModel:
    return RecordingFakeModel(responses=list(responses), prompts=[])


def _stage_output(n: int = 30) -> str:
    return "\n".join(
        f"Step {i}: ticket INC-{4800 + i} touches /srv/app/module_{i}.py with retries={i}. "
        + "This narrative sentence explains the background at length without any detail. " * 3
        for i in range(n)
    )


# ------------------------------------------------------------------ entity extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ticket INC-4821 is open", {"INC-4821"}),
        (
            "job 3f2a9c1e-1111-4c2d-9a8b-0123456789ab failed",
            {"3f2a9c1e-1111-4c2d-9a8b-0123456789ab"},
        ),
        ("edit /etc/app/config.yaml now", {"/etc/app/config.yaml"}),
        ("see src/app/main.py", {"src/app/main.py"}),
        ("open https://api.example.com/v1/jobs?id=7.", {"https://api.example.com/v1/jobs?id=7"}),
        ("latency 350 ms and 4 GiB cache, 95% hits", {"350 ms", "4 GiB", "95%"}),
        ("set max_tokens=250, temperature=0.1", {"max_tokens=250", "temperature=0.1"}),
        ("--max-model-len 12288 --enforce-eager", {"--max-model-len 12288", "--enforce-eager"}),
        ("call search_tickets then client.fetch(x)", {"search_tickets", "client.fetch"}),
        ("env LLM_SAFETY_MARGIN is read", {"LLM_SAFETY_MARGIN"}),
        ("commit a1b2c3d4 merged #1234", {"a1b2c3d4", "#1234"}),
        ("max_model_len: 12288", {"max_model_len: 12288"}),
    ],
)
def test_extract_entities_finds_each_kind(text: str, expected: set[str]) -> None:
    assert extract_entities(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The plan looks good and the team agreed to ship it.",
        "We should do it in 3 steps with 2 people on the 1st of May.",
        "Yes. No. Maybe, if it is okay with you (and them).",
        "",
    ],
)
def test_extract_entities_ignores_plain_prose(text: str) -> None:
    assert extract_entities(text) == set()


def test_nested_entities_keep_the_outer_one() -> None:
    entities = extract_entities("fetch https://h.example.com/tickets/INC-9 and INC-9 alone")
    assert entities == {"https://h.example.com/tickets/INC-9"}


def test_entity_list_is_in_priority_order() -> None:
    kinds = [
        e.kind for e in extract_entity_list("350 ms, search_tickets, mode=fast, /a/b.py, INC-42")
    ]
    assert kinds == ["id", "path", "param", "name", "value"]


def test_presence_is_whitespace_and_separator_tolerant_but_word_bounded() -> None:
    assert is_entity_present("500 ms", "timeout 500ms")
    assert is_entity_present("max_tokens=250", "max_tokens: 250")
    assert not is_entity_present("INC-1", "INC-12 only")
    assert not is_entity_present("max_tokens=250", "max_tokens=2500")


# ------------------------------------------------------------------ rendering non-text inputs


def test_render_dict_uses_key_value_lines() -> None:
    text = render_stage_result({"job_id": "job-7f3a", "cfg": {"max_tokens": 250, "tags": ["a"]}})
    assert text.splitlines() == [
        "job_id=job-7f3a",
        "cfg:",
        "  max_tokens=250",
        "  tags:",
        "    - a",
    ]
    assert {"job_id=job-7f3a", "max_tokens=250"} <= extract_entities(text)


def test_render_tool_messages_keep_the_call_and_the_tool_not_the_call_id() -> None:
    """A call's arguments and its tool's name are facts to keep; the random ID that pairs a
    call with its result is not, and must not count as an entity a summary has to keep."""
    call_id = "chatcmpl-tool-5f0c2a9e41b74d3c"
    messages = [
        HumanMessage("find the ticket"),
        AIMessage(
            "",
            tool_calls=[{"name": "search_tickets", "args": {"query": "INC-77"}, "id": call_id}],
        ),
        ToolMessage('{"ticket": "INC-77"}', tool_call_id=call_id, name="search_tickets"),
    ]
    kept = render_stage_result(messages)  # a raw output, kept as it was
    assert f"tool_call search_tickets(query=INC-77) id={call_id}" in kept
    assert f"[tool name=search_tickets tool_call_id={call_id}]" in kept
    text = render_stage_result(messages, call_ids=False)  # what a summary is written from
    assert "tool_call search_tickets(query=INC-77)" in text
    assert "[tool name=search_tickets]" in text
    entities = extract_entities(text)
    assert {"query=INC-77", "name=search_tickets"} <= entities
    assert call_id not in text
    assert not any("5f0c2a9e41b74d3c" in entity for entity in entities)
    # A conversation summarized (compaction's span) is rendered without them.
    summary = summarize(messages, SummarySpec(max_tokens=60, counter=COUNTER))
    assert call_id not in summary.summary
    assert not any("5f0c2a9e41b74d3c" in entity for entity in summary.entities)


def test_render_pydantic_and_none() -> None:
    class Plan(BaseModel):
        plan_id: str
        steps: list[str]

    assert render_stage_result(Plan(plan_id="P-12", steps=["x"])) == "plan_id=P-12\nsteps:\n  - x"
    assert render_stage_result(None) == ""


def test_render_rejects_values_that_are_not_json_able() -> None:
    with pytest.raises(TypeError, match="JSON-able"):
        render_stage_result({"x": object()})


# ------------------------------------------------------------------ the guard and the cap


def test_short_result_is_kept_verbatim_without_a_model_call() -> None:
    model = _fake("should not be used")
    result = compress_stage_result(
        "ticket INC-1 done", model=model, stage_name="A", user_request="r", tokenizer=COUNTER
    )
    assert result.method == "verbatim"
    assert result.summary == "ticket INC-1 done"
    assert model.prompts == []


def test_empty_result() -> None:
    result = compress_stage_result(
        "  ", model=_fake("x"), stage_name="A", user_request="r", tokenizer=COUNTER
    )
    assert (result.summary, result.raw_tokens, result.summary_tokens, result.retention) == (
        "",
        0,
        0,
        1.0,
    )


def test_good_llm_summary_is_kept_and_measured() -> None:
    raw = _stage_output(3)
    good = "Summary:\n- " + "\n- ".join(
        f"INC-{4800 + i} edits /srv/app/module_{i}.py, retries={i}" for i in range(3)
    )
    model = _fake(good)
    result = compress_stage_result(
        raw,
        strategy="llm",
        model=model,
        stage_name="Stage C",
        user_request="fix",
        tokenizer=COUNTER,
        max_tokens=80,
    )
    assert result.method == "llm"
    assert not result.summary.startswith("Summary")
    assert result.missing == ()
    assert result.retention == 1.0
    assert result.summary_tokens == COUNTER.count_text(result.summary) <= 80
    assert result.ratio == pytest.approx(result.raw_tokens / result.summary_tokens, rel=1e-3)
    prompt = model.prompts[0][1].text
    assert "**Stage C Result:**" in prompt
    assert "Preserve: numeric settings, file paths, API params, tool names, entity IDs" in prompt


def test_missing_entities_are_restored_as_bullets() -> None:
    raw = _stage_output(3)
    partial = (
        "- INC-4800 and INC-4801 edit /srv/app/module_0.py, /srv/app/module_1.py, retries=0\n"
        "- the rest was similar"
    )
    result = compress_stage_result(
        raw,
        strategy="llm",
        model=_fake(partial),
        stage_name="B",
        user_request="r",
        tokenizer=COUNTER,
        max_tokens=120,
    )
    assert result.method == "llm+restored"
    assert set(result.restored) == {"INC-4802", "/srv/app/module_2.py", "retries=1", "retries=2"}
    assert result.missing == ()
    assert result.summary.startswith(partial)
    assert "- IDs: INC-4802" in result.summary


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", "empty"),
        ("ok " * 60, "repetition"),
        ("- INC-4800 done\n" * 5, "repetition"),
        ("- the tickets were handled and the plan is fine", "low retention"),
        ("- " + "INC-4800 /srv/app/module_0.py retries=0 " * 40, "over the cap"),
    ],
)
def test_degenerate_summaries_fall_back_to_extractive(reply: str, reason: str) -> None:
    raw = _stage_output(4)
    result = compress_stage_result(
        raw,
        strategy="llm",
        model=_fake(reply),
        stage_name="A",
        user_request="r",
        tokenizer=COUNTER,
        max_tokens=150,
    )
    assert result.method == "extractive"
    assert result.fallback_reason is not None
    assert reason in result.fallback_reason
    assert result.summary_tokens <= 150
    assert result.missing == ()
    assert result.retention == 1.0


def test_restoration_over_the_cap_falls_back_to_extractive() -> None:
    raw = _stage_output(6)
    wordy = (
        "- "
        + ", ".join(f"INC-{4800 + i}" for i in range(6))
        + ", "
        + ", ".join(f"/srv/app/module_{i}.py" for i in range(3))
        + "\n- "
        + " ".join(f"note{i}" for i in range(50))
    )
    result = compress_stage_result(
        raw,
        strategy="llm",
        model=_fake(wordy),
        stage_name="A",
        user_request="r",
        tokenizer=COUNTER,
        max_tokens=140,
    )
    assert result.method == "extractive"
    assert "exceed the cap" in (result.fallback_reason or "")
    assert result.summary_tokens <= 140
    assert result.missing == ()


def test_entities_beyond_the_cap_are_prioritised_and_reported() -> None:
    raw = _stage_output(30)
    result = compress_stage_result(
        raw, model=_fake("- nothing"), stage_name="A", user_request="r", tokenizer=COUNTER
    )
    assert result.summary_tokens <= 250
    assert result.missing, "30 IDs + 30 paths + 30 params cannot fit 250 tokens"
    # IDs first, then paths; the dropped ones are the lowest priority (params)
    assert all(is_entity_present(f"INC-{4800 + i}", result.summary) for i in range(30))
    assert all(m.startswith("retries=") for m in result.missing)
    assert result.retention == pytest.approx(1 - len(result.missing) / len(result.entities), 1e-3)


@pytest.mark.parametrize("cap", [1, 3, 17, 64, 250])
def test_hard_cap_holds_for_any_cap(cap: int) -> None:
    raw = _stage_output(10)
    for reply in ("", "- fine", "- " + "word " * 600):
        result = compress_stage_result(
            raw,
            model=_fake(reply),
            stage_name="A",
            user_request="r",
            tokenizer=COUNTER,
            max_tokens=cap,
        )
        expected = COUNTER.count_text(result.summary) if result.summary else 0
        assert result.summary_tokens == expected
        assert result.summary_tokens <= cap


def test_invalid_cap_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        compress_stage_result("x", model=_fake("y"), stage_name="A", user_request="r", max_tokens=0)


def test_default_tokenizer_is_approximate_for_other_models() -> None:
    result = compress_stage_result(
        _stage_output(5), model=_fake("- x"), stage_name="A", user_request="r"
    )
    assert result.tokenizer == "approximate"
    assert result.exact is False


def test_tool_message_and_json_inputs_keep_their_entities() -> None:
    payload = {
        "results": [
            {"ticket_id": f"INC-{i}", "path": f"/var/log/app/{i}.log", "latency_ms": 100 + i}
            for i in range(40)
        ]
    }
    tool = ToolMessage(json.dumps(payload), tool_call_id="call_abc123", name="search_logs")
    for raw in (payload, tool, [tool]):
        result = compress_stage_result(
            raw,
            model=_fake("- searched logs"),
            stage_name="select",
            user_request="r",
            tokenizer=COUNTER,
        )
        assert result.summary_tokens <= 250
        assert "INC-0" in result.summary
        assert result.retention == pytest.approx(
            1 - len(result.missing) / len(result.entities), 1e-3
        )


# ------------------------------------------------------------------ chunking


def test_results_larger_than_the_window_are_chunked_and_merged() -> None:
    raw = _stage_output(20)  # ~1,600 approximate tokens
    replies = [f"- part {i}: INC-48{i:02d}" for i in range(40)]
    model = _fake(*replies)
    result = compress_stage_result(
        raw,
        strategy="llm",
        model=model,
        stage_name="execute",
        user_request="r",
        tokenizer=COUNTER,
        max_tokens=250,
        chunk_tokens=900,
    )
    assert result.chunks >= 3
    assert len(model.prompts) >= result.chunks
    window_budget = 900
    for messages in model.prompts:
        assert sum(COUNTER.count_text(m.text) for m in messages) <= window_budget
    assert "(part 1/" in model.prompts[0][1].text
    assert result.summary_tokens <= 250


def test_custom_prompt_template() -> None:
    model = _fake("- INC-4800")
    template = "Squeeze {stage_name} for {user_request} into {max_tokens}: {result}"
    compress_stage_result(
        _stage_output(2),
        strategy="llm",
        model=model,
        stage_name="plan",
        user_request="ship",
        tokenizer=COUNTER,
        max_tokens=40,
        prompt_template=template,
    )
    assert model.prompts[0][1].text.startswith("Squeeze plan for ship into 40: Step 0")
    assert "{result}" in COMPRESSION_PROMPT


async def test_async_twin_matches_sync() -> None:
    raw = _stage_output(3)
    reply = "- INC-4800 edits /srv/app/module_0.py"
    sync = compress_stage_result(
        raw,
        strategy="llm",
        model=_fake(reply),
        stage_name="A",
        user_request="r",
        tokenizer=COUNTER,
        max_tokens=120,
    )
    asyn = await acompress_stage_result(
        raw,
        strategy="llm",
        model=_fake(reply),
        stage_name="A",
        user_request="r",
        tokenizer=COUNTER,
        max_tokens=120,
    )
    assert isinstance(asyn, CompressionResult)
    assert asyn == sync


def test_to_dict_is_json_able() -> None:
    result = compress_stage_result(
        _stage_output(3), model=_fake("- x"), stage_name="A", user_request="r", tokenizer=COUNTER
    )
    assert json.loads(json.dumps(result.to_dict()))["method"] == result.method


def test_extractive_summary_skips_repeated_and_looping_sentences() -> None:
    raw = (
        "- 1000 customers in 1000 orders affected by INC-7\n" * 6
        + "The outage is caused by a server-side server-side server-side server-side bug.\n"
        + "Root cause: pool_timeout=30s on db-replica-03 is too low.\n"
        + "filler text without details " * 40
    )
    result = compress_stage_result(
        raw, model=_fake(""), stage_name="A", user_request="r", tokenizer=COUNTER, max_tokens=80
    )
    assert result.method == "extractive"
    assert result.summary.count("1000 customers") == 1
    assert "server-side server-side" not in result.summary
    assert "pool_timeout=30s" in result.summary


# ------------------------------------------------------------------ realistic stage outputs

# An incident write-up as a plan stage of the pipeline produces it: ticket and order IDs, a
# trace UUID, a commit, paths, a URL, parameters (key=value and a YAML diff), an environment
# variable, tool names, numbers with units, and the narrative around them (~1,200 tokens).
REALISTIC_STAGE_OUTPUT = """## Incident INC-4821: checkout requests time out under load

**Summary.** Since the deploy of commit 9c1d7e2 the checkout service returns HTTP 504 for
about 3.8% of requests at peak. Orders ORD-99812 and ORD-99813 failed on
https://api.shop.example.com/v2/orders while the customers were paying. The trace
7f3e2a1c-9b4d-4e8f-a2c6-1d5b8e9f0a34 shows the request waiting for a free database
connection, not for the database itself.

### What we looked at
The error log /var/log/checkout/error.log is full of "upstream timeout" lines, and every one
of them names the host db-replica-03; the other replica is quiet. The database is not under
pressure: its CPU stays low, memory is fine and replication lag is small. The connection pool
of the service, however, is saturated for most of the peak, and requests queue behind it until
they give up. The deploy that started it doubled the number of worker threads without giving
them more connections, so twice as many workers now compete for the same pool.

The service reads its settings from /srv/checkout/config/app.yaml. Today that file has
max_connections=64 and pool_timeout=30s, and it keeps retries=2. With thirty seconds of pool
timeout a waiting request holds its worker for a long time, which makes the queue longer and
the timeouts more frequent: the problem feeds itself. Nothing else changed in that deploy, and
the staging environment shows the same behaviour as soon as it receives production-like load.

### Environment
The service runs as two instances in the cluster prod-eu-west-1 and reads one override from the
environment: CHECKOUT_POOL_SIZE, which is unset in production, so the file is what counts. The
pool dashboard shows the pool at its limit for the whole peak, every day of the last week, and
the number of waiting requests climbs in step with the traffic. On staging the same symptoms
appear with the load test job load-test-0515 at 310 req/s, which is close to what production
sees on a busy evening, and they disappear as soon as the load drops again, which is what a
pool that is too small for its workers does.

### Proposed change
```diff
-max_connections: 64
+max_connections: 128
-pool_timeout: 30s
+pool_timeout: 10s
 retries: 2
```
Doubling the pool matches the doubled worker count. A shorter pool timeout turns slow waits
into fast failures that the existing retries absorb. The replica accepts far more connections
than two instances of checkout will open after the change, so it has room for the new pool.

### Plan
1. Call update_config with the new values on /srv/checkout/config/app.yaml and attach the
   change to change request CR-1187, which needs one approval from the platform team.
2. Call restart_service for checkout with strategy=rolling so that only one instance is down
   at any time and customers never see an outage.
3. Call run_load_test against staging at the peak rate and check that the p99 latency stays
   under 800 ms, well below the current 2800 ms.
4. If errors stay above 0.5% after the restart, roll back to the previous configuration and
   escalate to the database team through ticket OPS-2291.

### Notes
The change is small and reversible: rolling it back takes a few minutes and needs no data
migration. We agreed in the incident channel that the on-call engineer keeps watching the
dashboards during the rollout, that nobody deploys other changes to checkout until the load
test has passed, and that the owning team writes the post-mortem once the fix has been in
production for at least one full business day. Customer support has been told about the two
failed orders and will contact both customers with the usual apology; no refund is needed,
because both orders went through on a second attempt later the same afternoon. The team also
wants a dashboard panel for pool saturation and an alert when the pool stays full for more than
a few minutes, so that the next regression of this kind is caught before customers notice it.
Several people asked whether the database itself should be scaled up as well; the answer for
now is no, because every measurement points at the pool in front of it and not at the database,
and scaling the database would cost money without removing the queue that causes the timeouts.
If the load test shows that the new pool size is still not enough, the next step would be to
look at how long each request holds its connection, rather than to keep raising the limit.
Those follow-ups are tracked separately and are not part of this fix, which only touches the
pool settings of one configuration file and restarts one service. Everyone involved agreed that
the root cause is understood, that the fix is proportionate, and that the rollout plan is
careful enough for a Friday afternoon, given that the rollback path has been rehearsed.

### Verdict
Root cause: the connection pool is exhausted since commit 9c1d7e2 doubled the workers. Fix:
max_connections=128 and pool_timeout=10s in /srv/checkout/config/app.yaml via update_config,
then restart_service and run_load_test. Tracking: INC-4821, CR-1187, OPS-2291.
"""

REALISTIC_ENTITIES = {
    "INC-4821",
    "9c1d7e2",
    "ORD-99812",
    "ORD-99813",
    "7f3e2a1c-9b4d-4e8f-a2c6-1d5b8e9f0a34",
    "db-replica-03",
    "prod-eu-west-1",
    "load-test-0515",
    "CR-1187",
    "OPS-2291",
    "https://api.shop.example.com/v2/orders",
    "/var/log/checkout/error.log",
    "/srv/checkout/config/app.yaml",
    "max_connections=64",
    "max_connections: 128",
    "pool_timeout=30s",
    "pool_timeout: 10s",
    "retries=2",
    "strategy=rolling",
    "CHECKOUT_POOL_SIZE",
    "update_config",
    "restart_service",
    "run_load_test",
    "HTTP 504",
    "3.8%",
    "310 req/s",
    "800 ms",
    "2800 ms",
    "0.5%",
}

# what a small summarizer writes: fluent, and nearly free of the details that matter
WEAK_SUMMARIES = [
    "Summary:\n- INC-4821: checkout times out; the connection pool is exhausted.\n"
    "- Fix: a bigger pool and a shorter timeout, then a restart and a load test.",
    "The incident was analysed and the team agreed on a careful fix and rollout.",
    "",
]


@pytest.fixture(scope="module")
def qwen_counter() -> Any:
    from langchain_vllm_budget.serving.local_models import ensure_local_model
    from langchain_vllm_budget.tokenizers import TransformersTokenCounter

    return TransformersTokenCounter(ensure_local_model("tiny-qwen"))


def test_realistic_output_entities_are_exactly_the_meaningful_ones() -> None:
    assert extract_entities(REALISTIC_STAGE_OUTPUT) == REALISTIC_ENTITIES


def test_realistic_output_entities_do_not_nest_or_repeat() -> None:
    entities = [e.text for e in extract_entity_list(REALISTIC_STAGE_OUTPUT)]
    assert len(entities) == len(set(entities))
    for entity in entities:
        for other in entities:
            if other != entity:
                assert not is_entity_present(entity, other), (entity, other)
        assert not entity.isdigit() or len(entity) >= 4  # no bare small numbers
        assert not entity.startswith(("*", "#", "-", "`")), entity  # no markdown
        assert entity.strip(".,;:") == entity  # no trailing punctuation


@pytest.mark.parametrize("reply", WEAK_SUMMARIES)
def test_realistic_output_meets_the_goals_under_a_250_token_cap(
    reply: str, qwen_counter: Any
) -> None:
    raw_tokens = qwen_counter.count_text(REALISTIC_STAGE_OUTPUT)
    assert 1100 <= raw_tokens <= 1300
    result = compress_stage_result(
        REALISTIC_STAGE_OUTPUT,
        model=_fake(reply),
        stage_name="plan",
        user_request="Fix INC-4821",
        tokenizer=qwen_counter,
        max_tokens=250,
    )
    assert result.method in {"llm+restored", "extractive"}  # the model's summary was not enough
    assert result.summary_tokens == qwen_counter.count_text(result.summary) <= 250
    assert result.ratio >= 4.0
    assert result.raw_tokens == raw_tokens
    assert set(result.entities) == REALISTIC_ENTITIES
    assert result.missing == ()
    assert result.retention == 1.0
    assert all(is_entity_present(e, result.summary) for e in REALISTIC_ENTITIES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a number inside a longer number with the same unit is its own entity
        ("p99 went from 2800 ms to 800 ms", {"2800 ms", "800 ms"}),
        # one parameter, two spellings
        ("set retries=2 (diff: retries: 2)", {"retries=2"}),
        # a date is one value, not a year
        ("expires on 2024-05-14 at noon", {"2024-05-14"}),
        # sentence punctuation is not part of a path
        ("Edit /srv/app/config.yaml. Then restart.", {"/srv/app/config.yaml"}),
        # a command in backticks: its parts, not the whole command line
        ("run `grep upstream /var/log/app/error.log` now", {"/var/log/app/error.log"}),
        # JSON pairs with scalar values become key=value
        (
            '{"ticket_id": "INC-7", "latency_ms": 2800, "tags": ["a", "b"]}',
            {"ticket_id=INC-7", "latency_ms=2800"},
        ),
        # YAML settings in a diff, image references, Kubernetes quantities
        (
            "-  replicas: 2\n+  replicas: 4\n+  image: registry.example.com/shop/app:1.15.0\n"
            "+  memory: 2Gi",
            {"replicas: 2", "replicas: 4", "registry.example.com/shop/app:1.15.0", "memory: 2Gi"},
        ),
        # model repository IDs keep their organisation
        ("serve Qwen/Qwen2.5-7B-Instruct-AWQ today", {"Qwen/Qwen2.5-7B-Instruct-AWQ"}),
        # vocabulary that looks like an ID, markdown, small counts and clock times are not
        ("**Step 1:** UTF-8 logs, 3 retries at 14:02, see below.", set()),
        # nor a looping model's run-on word
        ("tool: incident-inc-4821" + "-incarceration-of-4821" * 8, set()),
    ],
)
def test_entity_precision(text: str, expected: set[str]) -> None:
    assert extract_entities(text) == expected


def test_entity_bullets_group_a_keys_values_on_one_line(qwen_counter: Any) -> None:
    raw = REALISTIC_STAGE_OUTPUT
    result = compress_stage_result(
        raw,
        model=_fake("- INC-4821 fixed"),
        stage_name="plan",
        user_request="r",
        tokenizer=qwen_counter,
        max_tokens=250,
    )
    assert "- max_connections: 64, 128" in result.summary
    assert "- pool_timeout: 30s, 10s" in result.summary
    assert "retries=2" in result.summary  # a single-valued parameter stays key=value
    assert "- IDs: INC-4821, 9c1d7e2," in result.summary


def test_extractive_summary_needs_no_model(qwen_counter: Any) -> None:
    result = extractive_summary(REALISTIC_STAGE_OUTPUT, max_tokens=250, tokenizer=qwen_counter)
    assert result.method == "extractive"
    assert result.summary_tokens <= 250
    assert result.retention == 1.0
    short = extractive_summary("- INC-7 done", max_tokens=250, tokenizer=qwen_counter)
    assert (short.method, short.summary) == ("verbatim", "- INC-7 done")
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        extractive_summary("x", max_tokens=0)


# ------------------------------------------------------------------ strategies


def test_auto_uses_no_model_when_the_extractive_summary_keeps_every_entity() -> None:
    model = _fake("should not be used")
    raw = _stage_output(2)
    result = compress_stage_result(
        raw, model=model, stage_name="A", user_request="r", tokenizer=COUNTER, max_tokens=120
    )
    assert (result.method, result.missing, result.model_calls) == ("extractive", (), 0)
    assert model.prompts == []
    assert result == compress_stage_result(
        raw, stage_name="A", tokenizer=COUNTER, max_tokens=120, strategy="extractive"
    )


def test_auto_asks_the_model_only_when_the_extractive_summary_loses_entities() -> None:
    raw = _stage_output(30)
    extractive = extractive_summary(raw, max_tokens=250, tokenizer=COUNTER)
    assert extractive.missing
    model = _fake("- nothing useful")
    result = compress_stage_result(
        raw, model=model, stage_name="A", user_request="r", tokenizer=COUNTER
    )
    assert len(model.prompts) == 1
    assert result.model_calls == 1
    assert result.retention >= extractive.retention
    assert result.summary_tokens <= 250


def test_extractive_strategy_never_calls_the_model() -> None:
    model = _fake("should not be used")
    result = compress_stage_result(
        _stage_output(30), model=model, tokenizer=COUNTER, strategy="extractive"
    )
    assert model.prompts == []
    assert (result.method, result.model_calls) == ("extractive", 0)


def test_strategy_errors_say_what_to_change() -> None:
    with pytest.raises(ValueError, match="strategy='llm' needs a summarizer model"):
        compress_stage_result(_stage_output(3), tokenizer=COUNTER, strategy="llm")
    with pytest.raises(ValueError, match="strategy must be 'auto', 'llm' or 'extractive'"):
        compress_stage_result(_stage_output(3), tokenizer=COUNTER, strategy="fast")  # type: ignore[arg-type]


async def test_async_chunking_matches_sync_and_counts_every_call() -> None:
    raw = _stage_output(20)
    replies = [f"- part {i}: INC-48{i:02d}" for i in range(40)]
    kwargs: dict[str, Any] = {
        "stage_name": "execute",
        "user_request": "r",
        "tokenizer": COUNTER,
        "chunk_tokens": 900,
        "strategy": "llm",
    }
    sync_model, async_model = _fake(*replies), _fake(*replies)
    sync = compress_stage_result(raw, model=sync_model, **kwargs)
    asyn = await acompress_stage_result(raw, model=async_model, **kwargs)
    assert asyn == sync
    assert sync.model_calls == len(sync_model.prompts) == len(async_model.prompts) >= 3


def test_possible_carriers_include_every_carrier() -> None:
    # the fast search may propose too many carriers (each is then checked exactly), never
    # too few: compared with every pair checked the slow way
    from langchain_vllm_budget.compression.entities import (
        Entity,
        _carries,
        _possible_carriers,
        extract_entity_list,
    )

    texts = [
        "https://h.example/v1/jobs/42",
        "/v1/jobs/42",
        "INC-7",
        "ticket_id=INC-7",
        "INC-12",
        "INC-1",
        "800 ms",
        "2800 ms",
        "2800ms",
        "retries=3",
        "retries: 1, 2, 3",
        "30 s",
        "timeout=30 s",
        "timeout: 30s",
        "--timeout",
        "TIMEOUT_S=30",
        "max_tokens=250",
        "max_tokens = 250 tokens",
        "db-4.prod",
        "host=db-4.prod:5432",
        "db-4",
    ]
    found = [Entity(text, "id", i) for i, text in enumerate(texts)]
    possible = _possible_carriers(found)
    pairs = 0
    for i, inner in enumerate(found):
        for j, outer in enumerate(found):
            if i != j and _carries(outer.text, inner.text):
                pairs += 1
                assert j in possible[i], (outer.text, inner.text)
    assert pairs >= 8  # the list has carried entities to find
    # and the result is what it was: a carried entity is dropped, the carrier kept
    kept = [e.text for e in extract_entity_list("GET https://h.example/v1/jobs/42 and /v1/jobs/42")]
    assert kept == ["https://h.example/v1/jobs/42"]


# ------------------------------------------------------------------ query-aware summaries

_SERVICES_LOG = "\n".join(
    f"2026-11-30T14:{i:02d}:00Z svc-{i:02d} INFO deploy dep-{i:03d}7 done, "
    f"pool_size={10 + i}, latency {100 + i} ms"
    for i in range(60)
)


def test_query_terms_rank_what_the_summary_keeps_first() -> None:
    from langchain_vllm_budget.compression import Query, query_summary

    plain = extractive_summary(_SERVICES_LOG, max_tokens=80, tokenizer=COUNTER)
    assert "dep-0427" not in plain.summary  # position and kind decide: the first services
    query = Query.of("What pool size does svc-42 use?", tool="search_logs", args={"since": "1h"})
    ranked = query_summary(_SERVICES_LOG, query=query, max_tokens=80, tokenizer=COUNTER)
    assert ranked.summary_tokens <= 80
    # the line the request names is kept, quoted whole (its key and unit with it)
    line = "- 2026-11-30T14:42:00Z svc-42 INFO deploy dep-0427 done, pool_size=52, latency 142 ms"
    assert line in ranked.summary.splitlines()
    # its date stamps the line; it is not what the request asked about
    assert set(ranked.focus) == {
        "svc-42",
        "dep-0427",
        "pool_size=52",
        "142 ms",
    }
    assert ranked.query_missing == ()
    # the degrade order says what went: the last line counts the lost entities by kind
    last = ranked.summary.splitlines()[-1]
    assert last.startswith("- left out (less related to the request; full output stored): ")
    assert "IDs" in last


def test_a_query_word_matches_its_stem_and_a_compound_name_matches_whole() -> None:
    from langchain_vllm_budget.compression import Query
    from langchain_vllm_budget.compression.query import line_scores

    query = Query.of("Why do jobs on gpu-3 keep failing?")
    scores = line_scores(
        ["job 7 on gpu-3 failed", "job 8 on gpu-31 ok", "job 9 on gpu-2 ok", "idle"], query
    )
    assert scores[0] > scores[1] > 0  # gpu-3 is not gpu-31: only its parts match there
    assert scores[3] < scores[2]


def test_the_model_is_needed_only_when_the_focus_was_lost() -> None:
    from langchain_vllm_budget.compression import (
        Query,
        better_for_query,
        needs_model,
        query_summary,
    )

    query = Query.of("What pool size does svc-42 use?")
    kept = query_summary(_SERVICES_LOG, query=query, max_tokens=80, tokenizer=COUNTER)
    assert not needs_model(kept, "auto", has_model=True)
    assert needs_model(kept, "llm", has_model=True)
    assert not needs_model(kept, "llm", has_model=False)
    tight = query_summary(_SERVICES_LOG, query=query, max_tokens=12, tokenizer=COUNTER)
    assert tight.query_missing
    assert needs_model(tight, "auto", has_model=True)
    assert not needs_model(tight, "extractive", has_model=True)
    # of two summaries, the one keeping more of the focus wins (a tie: the model's)
    other = extractive_summary("nothing relevant here " * 40, max_tokens=12, tokenizer=COUNTER)
    assert better_for_query(kept, other).summary == kept.summary
    assert better_for_query(kept, kept).query_missing == ()


# ------------------------------------------------------------------------- one typed spec


def test_the_summary_spec_reads_the_settings_and_is_checked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import FrozenInstanceError

    from langchain_vllm_budget import ChatVLLM
    from langchain_vllm_budget.compression import SummarySpec
    from langchain_vllm_budget.middleware import ContextCompactionMiddleware

    monkeypatch.setenv("VLLM_BUDGET_SUMMARY_MAX_TOKENS", "120")
    monkeypatch.setenv("VLLM_BUDGET_COMPRESSION", "extractive")
    spec = SummarySpec()
    assert (spec.max_tokens, spec.strategy) == (120, "extractive")
    with pytest.raises(FrozenInstanceError):
        spec.max_tokens = 5  # type: ignore[misc]
    # every entry point that writes summaries takes the same defaults
    assert ChatVLLM(model="m").summary_max_tokens == 120
    compaction = ContextCompactionMiddleware(ChatVLLM(model="m"), max_input_tokens=900)
    assert compaction.summary.max_tokens == 120
    assert SummarySpec.from_settings(max_tokens=30).max_tokens == 30
    # one check, one message, wherever the strategy comes from
    for make in (
        lambda: SummarySpec(strategy="sometimes"),  # type: ignore[arg-type]
        lambda: ContextCompactionMiddleware(
            ChatVLLM(model="m"),
            max_input_tokens=900,
            strategy="sometimes",  # type: ignore[arg-type]
        ),
        lambda: compress_stage_result("x", strategy="sometimes"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError, match="strategy must be 'auto', 'llm' or 'extractive'"):
            make()


def test_summarize_with_a_spec_equals_the_keyword_form() -> None:
    from langchain_vllm_budget.compression import SummarySpec, summarize

    text = "Deploy job-7f3a with replicas=4 to /srv/app. " + "It went fine. " * 40
    counter = ApproximateTokenCounter()
    spec = SummarySpec(max_tokens=40, counter=counter, strategy="auto")
    by_spec = summarize(text, spec, subject="deploy")
    by_keywords = compress_stage_result(
        text, stage_name="deploy", max_tokens=40, tokenizer=counter, strategy="auto"
    )
    assert by_spec == by_keywords
    assert by_spec.summary_tokens <= 40
