"""The token-count corpus: conversations whose token counts are hard to guess.

Every case is built deterministically (seeded) so runs compare: English prose, Python code,
Chinese text, JSON full of IDs/UUIDs/paths, multi-turn chats, and tool definitions with tool
calls and tool results. Sizes span a few hundred to a few thousand tokens.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

__all__ = [
    "CATEGORIES",
    "CorpusCase",
    "StageOutput",
    "build_corpus",
    "build_stage_outputs",
    "filler_conversation",
]

CATEGORIES: tuple[str, ...] = ("prose", "code", "chinese", "json_ids", "multi_turn", "tools")

_PROSE = (
    "The deployment window opens at dawn, when traffic is lowest and the on-call engineer "
    "has had a full night's sleep. Before anything ships, the team reads the change log "
    "aloud, checks that every migration has a rollback, and confirms that the dashboards "
    "show the numbers they expect. It is slow, deliberate work, and nobody apologises for "
    "that: an outage costs far more than an hour of patience. When the release finally "
    "goes out, the first ten minutes are spent watching latency percentiles, error rates "
    "and queue depths, and only then does anyone reach for coffee."
)

_CODE = '''
def plan_budget(input_tokens: int, max_model_len: int, reserve: int = 3000) -> int:
    """Return the output tokens that still fit beside the prompt."""
    available = max_model_len - input_tokens - 128
    if available < 256:
        raise ValueError(f"input too large: {input_tokens} tokens")
    return min(available, reserve)


class Cache:
    def __init__(self, capacity: int) -> None:
        self._items: dict[str, bytes] = {}
        self.capacity = capacity

    def put(self, key: str, value: bytes) -> None:
        if len(self._items) >= self.capacity:
            oldest = next(iter(self._items))
            del self._items[oldest]
        self._items[key] = value
'''

_CHINESE = (  # Chinese punctuation is the point of this text
    "在部署新版本之前，团队会仔细检查每一项数据库迁移是否都有回滚方案，并确认监控面板上的"  # noqa: RUF001
    "延迟、错误率和队列深度都处于正常范围。上线后的前十分钟，值班工程师会密切关注各项指标，"  # noqa: RUF001
    "只有在一切稳定之后才会放松下来。这种谨慎的做法虽然缓慢，但比起一次线上事故所造成的损失，"  # noqa: RUF001
    "多花一个小时的耐心是完全值得的。模型的上下文窗口为一万二千二百八十八个词元，输出预留三千个。"  # noqa: RUF001
)

_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_incident",
            "description": "Fetch an incident record by its ID, with its timeline and owners.",
            "parameters": {
                "type": "object",
                "properties": {
                    "incident_id": {"type": "string", "description": "e.g. INC-20231"},
                    "include_timeline": {"type": "boolean"},
                },
                "required": ["incident_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "restart_service",
            "description": "Restart a service on a host; returns the new process ID.",
            "parameters": {
                "type": "object",
                "properties": {
                    "host": {"type": "string"},
                    "service": {"type": "string", "enum": ["api", "worker", "scheduler"]},
                    "drain_seconds": {"type": "integer", "minimum": 0},
                },
                "required": ["host", "service"],
            },
        },
    },
]


@dataclass(frozen=True)
class CorpusCase:
    """One conversation of the corpus.

    Attributes:
        name: A unique, readable name (``category-size``).
        category: One of :data:`CATEGORIES`.
        messages: The conversation.
        tools: OpenAI tool definitions sent with it, if any.
    """

    name: str
    category: str
    messages: list[BaseMessage]
    tools: list[dict[str, Any]] | None = field(default=None)

    @property
    def chars(self) -> int:
        """Characters of message text (what character heuristics see)."""
        return sum(len(str(m.content)) for m in self.messages)


def _repeat(text: str, times: int) -> str:
    return "\n\n".join(text for _ in range(times))


def _json_records(rng: random.Random, count: int) -> str:
    records = [
        {
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "trace_id": f"{rng.getrandbits(64):016x}",
            "path": (
                f"/var/lib/app/shards/{rng.randint(0, 999):03d}/{rng.getrandbits(32):08x}.parquet"
            ),
            "user": f"usr_{rng.getrandbits(40):010x}",
            "bytes": rng.randint(1, 10**9),
            "ok": rng.random() > 0.1,
        }
        for _ in range(count)
    ]
    return json.dumps(records, indent=1)


def _multi_turn(rng: random.Random, turns: int) -> list[BaseMessage]:
    messages: list[BaseMessage] = [SystemMessage("You are a careful site-reliability assistant.")]
    for turn in range(turns):
        incident = f"INC-{rng.randint(10000, 99999)}"
        messages.append(
            HumanMessage(f"Turn {turn}: what happened in {incident}? {_PROSE[: 120 + 40 * turn]}")
        )
        messages.append(
            AIMessage(
                f"{incident} was a latency regression on host web-{rng.randint(1, 64):02d}; "
                f"p99 went from {rng.randint(80, 200)} ms to {rng.randint(900, 3000)} ms. "
                + _PROSE[:200]
            )
        )
    messages.append(HumanMessage("Summarise the incidents above in three bullets."))
    return messages


def _tool_conversation(rng: random.Random, rounds: int) -> list[BaseMessage]:
    messages: list[BaseMessage] = [
        SystemMessage("You operate production tooling. Call tools when you need facts."),
        HumanMessage("Investigate the open incidents and restart what is stuck."),
    ]
    for index in range(rounds):
        incident = f"INC-{rng.randint(10000, 99999)}"
        call_id = f"call_{rng.getrandbits(48):012x}"
        messages.append(
            AIMessage(
                "",
                tool_calls=[
                    {
                        "name": "get_incident",
                        "args": {"incident_id": incident, "include_timeline": True},
                        "id": call_id,
                        "type": "tool_call",
                    }
                ],
            )
        )
        result = {
            "incident_id": incident,
            "status": "open",
            "host": f"worker-{rng.randint(1, 40):02d}.prod.internal",
            "timeline": [
                {"at": f"2024-05-{index + 1:02d}T0{h}:1{h}:00Z", "event": f"alert {h}"}
                for h in range(4)
            ],
            "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
        }
        messages.append(ToolMessage(json.dumps(result), tool_call_id=call_id))
    messages.append(HumanMessage("Now restart the worker that owns the oldest incident."))
    return messages


def build_corpus(*, quick: bool = False, seed: int = 7) -> list[CorpusCase]:
    """Build the corpus.

    Args:
        quick: One case per category (smoke run) instead of three sizes each.
        seed: Seed of the generated IDs.

    Returns:
        The cases, grouped by category.
    """
    rng = random.Random(seed)
    sizes = (1,) if quick else (1, 4, 12)
    cases: list[CorpusCase] = []
    for size in sizes:
        cases.append(CorpusCase(f"prose-x{size}", "prose", [HumanMessage(_repeat(_PROSE, size))]))
        cases.append(
            CorpusCase(
                f"code-x{size}",
                "code",
                [SystemMessage("Review this code."), HumanMessage(_repeat(_CODE, size))],
            )
        )
        chinese: list[BaseMessage] = [HumanMessage(_repeat(_CHINESE, size))]
        cases.append(CorpusCase(f"chinese-x{size}", "chinese", chinese))
        cases.append(
            CorpusCase(
                f"json_ids-x{size}",
                "json_ids",
                [HumanMessage("Which records failed?\n" + _json_records(rng, 3 * size))],
            )
        )
        cases.append(CorpusCase(f"multi_turn-x{size}", "multi_turn", _multi_turn(rng, 2 * size)))
        cases.append(
            CorpusCase(f"tools-x{size}", "tools", _tool_conversation(rng, size), tools=_TOOLS)
        )
    return cases


def filler_conversation(target_chars: int, *, nonce: str = "", turns: int = 6) -> list[BaseMessage]:
    """A multi-turn conversation of about ``target_chars`` characters of mixed prose and code.

    Used where a conversation of a given size is needed (overflow sweep, overhead); the exact
    token count is measured, never assumed.

    Args:
        target_chars: Approximate characters of message text.
        nonce: Text put first in the system message (makes the prompt unique, so vLLM's
            prefix cache does not serve it).
        turns: Human/assistant turn pairs before the final question.

    Returns:
        System message, ``turns`` human/AI pairs, and a final human question.
    """
    source = _PROSE + "\n" + _CODE
    per_message = max(target_chars // (2 * turns + 1), 1)
    messages: list[BaseMessage] = [SystemMessage(f"{nonce} You are a helpful assistant.".strip())]

    def chunk(offset: int) -> str:
        text = (source * (per_message // len(source) + 2))[offset % len(source) :]
        return text[:per_message]

    for turn in range(turns):
        messages.append(HumanMessage(chunk(turn * 97)))
        messages.append(AIMessage(chunk(turn * 97 + 31)))
    messages.append(HumanMessage(chunk(7) + "\nWhat is the main point?"))
    return messages


# --------------------------------------------------------------------------------------------
# Stage outputs for the compression benchmark
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageOutput:
    """A realistic pipeline stage result to compress.

    Attributes:
        name: A unique, readable name.
        stage: The stage that produced it (for the compression prompt).
        request: The user's request it answers.
        text: The result: narrative around IDs, UUIDs, paths, ``key=value`` settings, CLI
            flags, numbers with units and tool names.
    """

    name: str
    stage: str
    request: str
    text: str


_NARRATIVE = (
    "The on-call engineer walked through the timeline with the service owners, and the team "
    "agreed that the first symptom was easy to miss: dashboards looked healthy for several "
    "minutes while the queue quietly backed up behind a single slow consumer. Nobody changed "
    "anything by hand during that window, which made the sequence of events straightforward to "
    "reconstruct from the logs afterwards. "
)


def _incident_ticket(rng: random.Random) -> str:
    incident = f"INC-{rng.randint(10000, 99999)}"
    request_id = uuid.UUID(int=rng.getrandbits(128))
    trace = f"{rng.getrandbits(64):016x}"
    hosts = [f"worker-{rng.randint(1, 40):02d}.prod.internal" for _ in range(3)]
    lines = [
        f"Incident {incident} (severity SEV-2), opened 2024-05-14T03:12:09Z by the paging "
        f"system after alert rule latency_p99_high fired for service checkout-api.",
        "",
        "Summary: " + _NARRATIVE,
        "",
        "Impact:",
        f"- p99 latency rose from {rng.randint(80, 160)} ms to {rng.randint(2100, 3900)} ms "
        f"for 41 minutes; error rate peaked at {rng.randint(3, 9)}.{rng.randint(0, 9)}%.",
        f"- About {rng.randint(1200, 4800)} checkout attempts failed; request {request_id} "
        f"(trace {trace}) is the first failed one in the logs.",
        f"- Hosts affected: {', '.join(hosts)}.",
        "",
        "Timeline:",
    ]
    for minute in range(6):
        lines.append(
            f"- 03:{12 + 5 * minute:02d} {_PROSE.split('. ')[minute % 4]}. Queue depth "
            f"{rng.randint(100, 9000)} messages on queue orders.v2."
        )
    lines += [
        "",
        "Root cause: " + _NARRATIVE + "A configuration push set "
        "pool_size=8 (was 64) in /etc/checkout/db.yaml through the deploy tool "
        f"deployctl, change {rng.getrandbits(28):07x}, which starved the connection pool.",
        "",
        "Remediation: the on-call ran `deployctl rollback --service checkout-api "
        f"--to-release r{rng.randint(1000, 9999)} --drain-timeout 30s`, then restarted the "
        f"consumers with `svcadm restart orders-consumer --force`. Latency recovered within "
        f"{rng.randint(3, 9)} minutes.",
        "",
        "Follow-ups: add a guard so pool_size below 32 fails validation; alert on queue depth "
        "above 5000 for more than 2 minutes; add a runbook entry. " + _NARRATIVE,
    ]
    return "\n".join(lines)


def _config_diff(rng: random.Random) -> str:
    change = f"CHG-{rng.randint(100000, 999999)}"
    lines = [
        f"Change {change}: tune the inference gateway for the 12K-token profile. " + _NARRATIVE,
        "",
        "--- a/deploy/gateway/values.yaml",
        "+++ b/deploy/gateway/values.yaml",
        "@@ -12,18 +12,22 @@ server:",
        "-  max_model_len: 8192",
        "+  max_model_len: 12288",
        "-  gpu_memory_utilization: 0.85",
        "+  gpu_memory_utilization: 0.92",
        "   tensor_parallel_size: 2",
        "-  max_num_seqs: 32",
        "+  max_num_seqs: 16",
        "+  enable_prefix_caching: true",
        "   swap_space: 4GiB",
        "--- a/deploy/gateway/env/prod.env",
        "+++ b/deploy/gateway/env/prod.env",
        "-LLM_OUTPUT_RESERVE=2000",
        "+LLM_OUTPUT_RESERVE=3000",
        "+LLM_SAFETY_MARGIN=128",
        f"+VLLM_API_BASE=http://10.20.{rng.randint(0, 255)}.{rng.randint(1, 254)}:8000/v1",
        "",
        "Rationale: " + _NARRATIVE,
        "The gateway answers long agent conversations; with the old window about 7% of them "
        "overflowed. With 12,288 tokens per sequence and 16 sequences, the KV cache needs "
        f"{rng.randint(18, 26)} GiB per GPU, which fits beside the 15 GiB of weights at "
        "gpu_memory_utilization=0.92.",
        "",
        "Rollout: run `helm upgrade gateway deploy/gateway -f deploy/gateway/values.yaml "
        "--atomic --timeout 10m` in staging, watch /metrics for 30 minutes, then repeat in "
        f"prod behind feature flag gateway_12k (owner team-inference, ticket {change}).",
        "",
        "Risks: " + _PROSE,
        "",
        "Test evidence: " + _NARRATIVE + "The load test (tool: k6, script "
        "tests/load/chat_12k.js) ran 400 virtual users for 20 minutes; p95 time to first "
        f"token {rng.randint(300, 900)} ms, throughput {rng.randint(900, 1600)} tokens/s.",
    ]
    return "\n".join(lines)


def _execution_plan(rng: random.Random) -> str:
    run_id = uuid.UUID(int=rng.getrandbits(128))
    lines = [
        f"Plan for run {run_id}: migrate the billing reports to the new warehouse. " + _NARRATIVE,
        "",
    ]
    steps = (
        ("snapshot", "pg_dump", "--format=custom --jobs 4", "/backups/billing/2024-05-14.dump"),
        ("copy", "rclone", "--transfers 8 --checksum", "s3://bi-archive/billing/2024-05"),
        ("load", "bq", "--location=EU --replace", "/srv/etl/billing/schema.json"),
        ("verify", "dbt", "--select tag:billing --fail-fast", "/srv/etl/billing/models"),
    )
    for index, (step, tool, flags, path) in enumerate(steps, start=1):
        lines += [
            f"Step {index} ({step}): use the {tool} tool with {flags} on {path}; expected "
            f"duration {rng.randint(5, 45)} min, batch_size={rng.choice([500, 1000, 5000])}, "
            f"retries={rng.randint(1, 4)}. " + _PROSE.split(". ")[index % 4],
            "",
        ]
    lines += [
        "Dependencies: step 2 waits for the snapshot checksum; step 4 needs the job "
        f"JOB-{rng.randint(1000, 9999)} to finish. " + _NARRATIVE,
        "",
        "Rollback: restore from /backups/billing/2024-05-14.dump with pg_restore --clean, "
        "and point the dashboards back to the old dataset billing_v1.",
        "",
        "Open questions: " + _NARRATIVE + _PROSE,
    ]
    return "\n".join(lines)


def _tool_run_report(rng: random.Random) -> str:
    records = [
        {
            "tool": tool,
            "call_id": f"call_{rng.getrandbits(48):012x}",
            "host": f"db-{rng.randint(1, 9)}.eu-west.internal",
            "status": status,
            "elapsed_ms": rng.randint(40, 9000),
        }
        for tool, status in (
            ("get_incident", "ok"),
            ("query_metrics", "ok"),
            ("restart_service", "timeout"),
            ("restart_service", "ok"),
        )
    ]
    return "\n".join(
        [
            "Execution report. " + _NARRATIVE,
            "",
            "Tool calls, in order:",
            json.dumps(records, indent=1),
            "",
            "What happened: " + _NARRATIVE + _PROSE,
            "",
            "The first restart timed out after 30s because the service was still draining; "
            "the second, with drain_seconds=120, succeeded. Metrics after the restart: "
            f"cpu_usage={rng.randint(20, 60)}%, memory 3.2 GiB of 8 GiB, queue depth "
            f"{rng.randint(0, 40)}. Logs were saved to /var/log/ops/run-{rng.getrandbits(32):08x}"
            ".log. " + _NARRATIVE,
        ]
    )


def _with_notes(text: str) -> str:
    """Add the discussion a real stage result carries around its facts."""
    return f"{text}\n\nNotes from the review: {_NARRATIVE}{_PROSE} {_NARRATIVE}"


def build_stage_outputs(*, seed: int = 11) -> list[StageOutput]:
    """Four realistic stage results (about 1,000-1,500 tokens each) for compression.

    Args:
        seed: Seed of the generated IDs.

    Returns:
        An incident ticket, a configuration diff, an execution plan and a tool-run report.
    """
    rng = random.Random(seed)
    return [
        StageOutput(
            "incident_ticket",
            "classify",
            "Why did checkout fail last night, and what was done about it?",
            _with_notes(_incident_ticket(rng)),
        ),
        StageOutput(
            "config_diff",
            "select",
            "Review the gateway change before it ships.",
            _with_notes(_config_diff(rng)),
        ),
        StageOutput(
            "execution_plan",
            "plan",
            "Plan the billing reports migration.",
            _with_notes(_execution_plan(rng)),
        ),
        StageOutput(
            "tool_run_report",
            "execute",
            "Restart what is stuck and report.",
            _with_notes(_with_notes(_tool_run_report(rng))),
        ),
    ]
