"""Build ``tool_outputs.json``: the tool outputs of the query-aware retention benchmark.

``python -m benchmarks.data.make_tool_outputs`` rewrites the outputs (seeded, so the same
every time). Each output is what a tool returned for one call of an agent answering one user
request: a few hand-written lines that answer the request, among many generated lines that
do not (other services, other hours, other files), 2,000-5,000 tokens in all. The must-keep
facts in ``tool_output_facts.json`` were written by hand, by reading each output against its
request; they are kept out of this script on purpose.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["OUTPUTS_PATH", "build_tool_outputs"]

OUTPUTS_PATH = Path(__file__).resolve().parent / "tool_outputs.json"

_SERVICES = ("payments", "inventory", "search-api", "auth", "notifications", "billing", "cart")
_WORDS = (
    "request served",
    "cache refreshed",
    "heartbeat ok",
    "config reloaded",
    "batch flushed",
    "connection reused",
    "token renewed",
    "health check passed",
)


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _logs(rng: random.Random) -> str:
    lines = []
    signal = {
        37: "2026-11-30T14:02:11Z checkout-worker-3 ERROR job ck-88412 failed: "
        "PoolTimeoutError: could not get a connection from pool_size=20 within "
        "pool_timeout=30s (db-primary-2:5432)",
        52: "2026-11-30T14:02:40Z checkout-worker-1 ERROR job ck-88419 failed: "
        "PoolTimeoutError: could not get a connection from pool_size=20 within "
        "pool_timeout=30s (db-primary-2:5432)",
        60: "2026-11-30T14:03:02Z checkout-worker-3 WARN active connections 20/20, "
        "waiting 143 requests",
        71: "2026-11-30T14:03:15Z checkout-api INFO deploy checkout:2.14.1 finished "
        "(previous 2.13.4); DB_POOL_SIZE unchanged",
        80: "2026-11-30T14:04:55Z checkout-worker-2 ERROR job ck-88431 failed: "
        "PoolTimeoutError after 30s; retry 3/3 exhausted",
    }
    for i in range(84):
        if i in signal:
            lines.append(signal[i])
            continue
        service = rng.choice(_SERVICES)
        level = rng.choice(("INFO", "INFO", "INFO", "DEBUG", "WARN"))
        lines.append(
            f"2026-11-30T14:{i // 60:02d}:{i % 60:02d}Z {service}-{rng.randint(1, 6)} {level} "
            f"{rng.choice(_WORDS)} req={_hex(rng, 8)} latency={rng.randint(3, 400)}ms "
            f"node=ip-10-0-{rng.randint(1, 9)}-{rng.randint(10, 250)}"
        )
    return "\n".join(lines)


def _diff(rng: random.Random) -> str:
    parts = []
    files = [f"config/{name}.yaml" for name in ("logging", "features", "regions", "limits")]
    files += [f"src/payments/{name}.py" for name in ("ledger", "export", "fx", "audit")]
    for path in files:
        parts.append(f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}")
        for k in range(6):
            line = rng.randint(10, 400)
            parts.append(f"@@ -{line},6 +{line},7 @@")
            for _ in range(4):
                key = f"{rng.choice(('log', 'feature', 'region', 'limit'))}_{_hex(rng, 4)}"
                parts.append(f" {key}: {rng.randint(1, 99)}")
            parts.append(f'-  label_{k}: "{rng.choice(_WORDS)}"')
            parts.append(f'+  label_{k}: "{rng.choice(_WORDS)} (v2)"')
        if path == "config/limits.yaml":
            parts.append(
                "diff --git a/config/http_client.yaml b/config/http_client.yaml\n"
                "--- a/config/http_client.yaml\n+++ b/config/http_client.yaml\n"
                "@@ -12,9 +12,10 @@ upstream:\n   psp_gateway:\n"
                "-    timeout_ms: 2000\n+    timeout_ms: 800\n"
                "-    retry_max: 3\n+    retry_max: 5\n"
                "     retry_backoff: exponential\n"
                "+    retry_on_status: [502, 503, 504]\n"
                "     circuit_breaker: true"
            )
    return "\n".join(parts)


def _config(rng: random.Random) -> str:
    blocks = []
    names = ["llama-8b", "mistral-7b", "gemma-9b", "phi-3", "qwen-14b", "embed-small"]
    for name in names:
        block = [
            f"  - name: {name}",
            f"    model: org-{_hex(rng, 4)}/{name}-instruct",
            f"    max_model_len: {rng.choice((4096, 8192, 16384))}",
            f"    gpu_memory_utilization: {rng.choice((0.8, 0.85, 0.9))}",
            f"    tensor_parallel_size: {rng.choice((1, 2))}",
            f"    max_num_seqs: {rng.choice((64, 128, 256))}",
            f"    port: {rng.randint(8001, 8099)}",
            "    env:",
        ]
        block += [f'      VAR_{_hex(rng, 4).upper()}: "{rng.randint(0, 999)}"' for _ in range(8)]
        block += [f"    # {rng.choice(_WORDS)} on {rng.choice(_SERVICES)}" for _ in range(4)]
        blocks.append("\n".join(block))
    blocks.insert(
        3,
        "  - name: qwen-72b\n    model: Qwen/Qwen2.5-72B-Instruct-AWQ\n"
        "    max_model_len: 32768\n    gpu_memory_utilization: 0.92\n"
        "    tensor_parallel_size: 4\n    max_num_seqs: 48\n    port: 8042\n"
        "    enable_prefix_caching: true\n    env:\n      VLLM_ATTENTION_BACKEND: FLASHINFER",
    )
    head = "# /etc/vllm/serve.yaml (generated 2026-11-28)\nserver:\n  host: 0.0.0.0\ndeployments:"
    return head + "\n" + "\n".join(blocks * 2)


def _metrics_table(rng: random.Random) -> str:
    rows = [
        "| hour (UTC) | service | p50 ms | p99 ms | error rate | rps |",
        "|---|---|---|---|---|---|",
    ]
    for hour in range(24):
        for service in ("search-api", *_SERVICES[:4]):
            p99 = rng.randint(180, 420)
            if service == "search-api" and hour == 14:
                p99 = 1840
            error = (
                "2.3%" if (service == "search-api" and hour == 14) else f"0.{rng.randint(1, 9)}%"
            )
            rows.append(
                f"| {hour:02d}:00 | {service} | {rng.randint(20, 90)} | {p99} | {error} | "
                f"{rng.randint(100, 900)} |"
            )
    return "\n".join(rows)


def _ticket(rng: random.Random) -> str:
    people = ("@asantos", "@bkowalski", "@cnguyen", "@dokafor", "@eriksen")
    lines = [
        "INC-5512 · Refunds stuck in PENDING for EU customers",
        "Severity: SEV-2 · Status: resolved · Owner: @mlindqvist",
        "Opened 2026-11-27T08:14Z · Resolved 2026-11-27T16:40Z",
        "",
        "Timeline:",
    ]
    for k in range(40):
        lines.append(
            f"- 2026-11-27T{8 + k // 6:02d}:{(k * 7) % 60:02d}Z {rng.choice(people)}: "
            f"{rng.choice(_WORDS)} on {rng.choice(_SERVICES)}; checked dashboard "
            f"dash-{_hex(rng, 6)}, nothing unusual in region eu-{rng.randint(1, 4)}."
        )
        if k == 22:
            lines.append(
                "- 2026-11-27T12:05Z @mlindqvist: root cause found: the refund worker reads "
                "REFUND_QUEUE_URL from the old secret refund-secrets-v3, which points at the "
                "drained queue sqs-refunds-eu-old."
            )
        if k == 31:
            lines.append(
                "- 2026-11-27T15:10Z @mlindqvist: fix merged in PR #4471 (commit 9f3c2e1a): "
                "refund-secrets-v4 mounted, 1,284 stuck refunds replayed."
            )
    lines.append("")
    lines.append("Comments:")
    for _ in range(12):
        lines.append(
            f"{rng.choice(people)}: {rng.choice(_WORDS)}; see runbook rb-{_hex(rng, 5)} and "
            f"dashboard dash-{_hex(rng, 6)}."
        )
    return "\n".join(lines)


def _pod(rng: random.Random) -> str:
    lines = [
        "Name:         ingest-worker-6d5f8-x2k9p",
        "Namespace:    data",
        "Node:         gke-data-pool-2-a81c/10.4.7.19",
        "Labels:       app=ingest-worker pod-template-hash=6d5f8",
        "Containers:",
        "  ingest:",
        "    Image:          registry.example.com/data/ingest-worker:3.8.0",
        "    State:          Waiting (CrashLoopBackOff)",
        "    Last State:     Terminated",
        "      Reason:       OOMKilled",
        "      Exit Code:    137",
        "    Restart Count:  14",
        "    Limits:",
        "      memory:  2Gi",
        "      cpu:     1",
        "    Requests:",
        "      memory:  1Gi",
        "    Environment:",
        "      BATCH_SIZE:  5000",
    ]
    lines += [f"      OPT_{_hex(rng, 4).upper()}:  {rng.randint(1, 500)}" for _ in range(20)]
    lines.append("Volumes:")
    lines += [
        f"  vol-{_hex(rng, 4)}: ConfigMap cm-{_hex(rng, 6)} (optional: false)" for _ in range(10)
    ]
    lines.append("Events:")
    lines.append("  Type     Reason     Age   From     Message")
    for _ in range(60):
        lines.append(
            f"  Normal   {rng.choice(('Pulled', 'Scheduled', 'Created', 'Started'))}   "
            f"{rng.randint(1, 59)}m   kubelet  {rng.choice(_WORDS)} for pod "
            f"sidecar-{_hex(rng, 5)} on node gke-data-pool-{rng.randint(1, 5)}-{_hex(rng, 4)}"
        )
    lines.insert(
        len(lines) - 20,
        "  Warning  BackOff    2m    kubelet  Back-off restarting failed container ingest "
        "(memory usage 2.1Gi at BATCH_SIZE=5000)",
    )
    return "\n".join(lines)


def _ci(rng: random.Random) -> str:
    lines = [
        "CI run 88123 · branch refund-idempotency · commit 4be1d07 · failed after 11m 42s",
        "",
    ]
    for k in range(140):
        module = rng.choice(("test_ledger", "test_export", "test_fx", "test_audit", "test_cart"))
        lines.append(f"tests/{module}.py::test_case_{_hex(rng, 5)} PASSED [{k * 100 // 150:3d}%]")
        if k == 97:
            lines.append("tests/test_api.py::test_refund_idempotent FAILED [ 65%]")
    lines += [
        "",
        "=================================== FAILURES ===================================",
        "___________________________ test_refund_idempotent ___________________________",
        "    def test_refund_idempotent(client):",
        "        first = client.post('/v1/refunds', json=REFUND, headers=KEY)",
        "        second = client.post('/v1/refunds', json=REFUND, headers=KEY)",
        ">       assert second.status_code == 200",
        "E       AssertionError: assert 409 == 200",
        "E        +  where 409 = <Response [409]>.status_code",
        "tests/test_api.py:212: AssertionError",
        "=============== 1 failed, 140 passed, 3 skipped in 702.41s ===============",
    ]
    return "\n".join(lines)


def _sql(rng: random.Random) -> str:
    rows = ["customer_id      | country | failed_payments | last_failure         | psp"]
    rows.append("-" * 80)
    heavy = {13: ("cus_K7Q2M9", 7), 41: ("cus_P3X8T1", 5), 77: ("cus_Z9B4R6", 4)}
    for k in range(110):
        if k in heavy:
            cid, count = heavy[k]
        else:
            cid, count = f"cus_{_hex(rng, 6).upper()}", rng.randint(0, 3)
        rows.append(
            f"{cid:<16} | {rng.choice(('DE', 'FR', 'NL', 'SE', 'PL'))}      | {count:<15} | "
            f"2026-11-{rng.randint(23, 29)} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} | "
            f"{rng.choice(('adyen', 'stripe', 'mollie'))}"
        )
    rows.append("(110 rows)")
    return "\n".join(rows)


def _deployments(rng: random.Random) -> str:
    items: list[dict[str, Any]] = []
    old = {9: ("ledger-sync", "1.18.3", "eu-west-1"), 33: ("fx-rates", "1.19.0", "us-east-2")}
    for k in range(45):
        if k in old:
            name, version, region = old[k]
        else:
            name = f"{rng.choice(_SERVICES)}-{_hex(rng, 3)}"
            version = f"1.{rng.randint(20, 27)}.{rng.randint(0, 9)}"
            region = rng.choice(("eu-west-1", "eu-central-1", "us-east-2", "ap-south-1"))
        items.append(
            {
                "name": name,
                "image": f"registry.example.com/prod/{name}:{version}",
                "region": region,
                "replicas": rng.randint(2, 12),
                "updated": f"2026-11-{rng.randint(1, 29):02d}",
            }
        )
    return json.dumps({"env": "prod", "deployments": items}, indent=2)


def _scan(rng: random.Random) -> str:
    lines = ["Dependency scan of billing (poetry.lock, 212 packages)", ""]
    lines.append("package            installed  latest   advisories")
    for _ in range(95):
        name = f"{rng.choice(('py', 'lib', 'fast', 'async', 'data'))}{_hex(rng, 3)}"
        lines.append(
            f"{name:<18} {rng.randint(0, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 9):<6} "
            f"{rng.randint(1, 5)}.{rng.randint(0, 20)}.{rng.randint(0, 9):<6} none"
        )
    lines.insert(
        40,
        "urllib3            1.26.5     2.2.3    CVE-2026-31337 (critical) fixed in 1.26.19",
    )
    lines.insert(
        71,
        "pyjwt              2.3.0      2.9.0    CVE-2026-40112 (critical) fixed in 2.4.0",
    )
    lines.insert(
        55, "jinja2             3.1.2      3.1.4    CVE-2026-22001 (medium) fixed in 3.1.3"
    )
    return "\n".join(lines)


def _trace(rng: random.Random) -> str:
    lines = ["trace 4f0a9c2e7b1d4e6f · POST /v1/checkout · 4,812 ms total", ""]
    for k in range(130):
        lines.append(
            f"{'  ' * rng.randint(1, 4)}span {_hex(rng, 8)} {rng.choice(_SERVICES)}."
            f"{rng.choice(('get', 'put', 'query', 'publish'))} {rng.randint(1, 60)} ms"
        )
        if k == 58:
            lines.append(
                "    span 7c1e55aa fraud-check.score 3,960 ms (model fraud-v7, "
                "timeout_ms=4000, cache=miss)"
            )
    return "\n".join(lines)


# (name, builder, tool call, user request)
_CASES: tuple[tuple[str, Callable[[random.Random], str], dict[str, Any], str], ...] = (
    (
        "checkout_logs",
        _logs,
        {"name": "search_logs", "args": {"service": "checkout", "level": "ERROR", "since": "1h"}},
        "Why do the checkout jobs fail since the deploy?",
    ),
    (
        "payments_diff",
        _diff,
        {"name": "git_diff", "args": {"repo": "payments", "base": "v3.2.0", "head": "v3.3.0"}},
        "What changed in the PSP gateway's timeout and retry settings in v3.3.0?",
    ),
    (
        "serve_config",
        _config,
        {"name": "read_file", "args": {"path": "/etc/vllm/serve.yaml"}},
        "What max model length, GPU memory utilization and tensor parallel size does the "
        "qwen-72b deployment use?",
    ),
    (
        "latency_table",
        _metrics_table,
        {"name": "query_metrics", "args": {"service": "search-api", "window": "24h"}},
        "When did search-api's p99 latency peak today, how high, and what was its error rate?",
    ),
    (
        "refund_ticket",
        _ticket,
        {"name": "get_ticket", "args": {"ticket_id": "INC-5512"}},
        "Summarize INC-5512: owner, root cause and the fix.",
    ),
    (
        "ingest_pod",
        _pod,
        {
            "name": "kubectl_describe",
            "args": {"kind": "pod", "name": "ingest-worker-6d5f8-x2k9p", "namespace": "data"},
        },
        "Why does the ingest worker pod keep restarting?",
    ),
    (
        "ci_run",
        _ci,
        {"name": "get_ci_run", "args": {"run_id": 88123}},
        "Which test failed in CI run 88123 and why?",
    ),
    (
        "failed_payments",
        _sql,
        {
            "name": "run_sql",
            "args": {"query": "SELECT customer_id, country, failed_payments FROM weekly_failures"},
        },
        "Which customers had more than 3 failed payments this week?",
    ),
    (
        "prod_deployments",
        _deployments,
        {"name": "list_deployments", "args": {"env": "prod"}},
        "Which prod deployments still run an image older than 1.20, and in which region?",
    ),
    (
        "billing_scan",
        _scan,
        {"name": "scan_dependencies", "args": {"project": "billing"}},
        "Which billing dependencies have critical vulnerabilities, and which version fixes each?",
    ),
    (
        "checkout_trace",
        _trace,
        {"name": "get_trace", "args": {"trace_id": "4f0a9c2e7b1d4e6f"}},
        "Which span makes this checkout request slow?",
    ),
)


def build_tool_outputs() -> list[dict[str, Any]]:
    """The outputs, each with its tool call and the user's request (seed 20)."""
    rng = random.Random(20)
    return [
        {"name": name, "tool_call": call, "request": request, "output": build(rng)}
        for name, build, call, request in _CASES
    ]


if __name__ == "__main__":
    OUTPUTS_PATH.write_text(json.dumps(build_tool_outputs(), indent=1) + "\n")
    print(f"wrote {OUTPUTS_PATH}")
