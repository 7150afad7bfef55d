"""Second held-out set of long tool outputs, for measuring fact retention only.

Twelve outputs, each what one realistic tool returned for one call an agent made while
answering one user request: a GitHub Actions job log, an NDJSON application log, a Prometheus
``/metrics`` page, a ``terraform plan``, a feature-flag REST API listing, ``df``/``du``/``docker
system df`` output, an nginx access log, ``kubectl get -o yaml`` manifests, a pytest run with
long tracebacks, an ``npm audit`` report, a Slack incident-channel export and a billing invoice
JSON. Each is 2,000-5,000 Qwen tokens, full of plausible distractors (other services, other
IDs, other dates, healthy lines), with the answer sometimes in the middle and sometimes near
the end. Every output is built deterministically from ``random.Random(f"heldout2-{name}")``.

The must-keep facts (``heldout2/facts.json``) were written by hand, by reading each output
against its request and noting what a reader needs to answer it (IDs, numbers with their key,
names, paths, parameters, error codes). Their author had not seen the summarizer. This set
measured the second round of ranking changes blind; the third round was tuned on it (see
``docs/compaction.md``, "Measured").

Run ``python -m benchmarks.data.make_heldout2_tool_outputs`` to write
``heldout2/tool_outputs.json`` and check that every fact occurs verbatim in its output.
"""

# The outputs are verbatim tool text (log lines, plan lines, advisories) kept on one line each.
# ruff: noqa: E501

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

__all__ = [
    "HELDOUT2_FACTS_PATH",
    "HELDOUT2_PATH",
    "ToolOutput",
    "build_heldout2_outputs",
    "check_facts",
    "main",
]

_DIR = Path(__file__).resolve().parent / "heldout2"
HELDOUT2_PATH = _DIR / "tool_outputs.json"
"""Where :func:`main` writes the outputs."""
HELDOUT2_FACTS_PATH = _DIR / "facts.json"
"""The hand-written must-keep facts for the outputs."""


class ToolOutput(TypedDict):
    """One tool call, the request it served, and what the tool returned."""

    name: str
    tool_call: dict[str, Any]
    request: str
    output: str


# ---------------------------------------------------------------------------------------------
# 1. GitHub Actions job log
# ---------------------------------------------------------------------------------------------

_CI_PACKAGES = [
    ("annotated_types", "0.7.0", "13 kB"),
    ("anyio", "4.6.2.post1", "90 kB"),
    ("attrs", "24.2.0", "63 kB"),
    ("certifi", "2024.8.30", "167 kB"),
    ("coverage", "7.6.4", "235 kB"),
    ("execnet", "2.1.1", "40 kB"),
    ("freezegun", "1.5.1", "17 kB"),
    ("h11", "0.14.0", "58 kB"),
    ("httpcore", "1.0.6", "78 kB"),
    ("httpx", "0.27.2", "76 kB"),
    ("hypothesis", "6.118.8", "470 kB"),
    ("idna", "3.10", "70 kB"),
    ("iniconfig", "2.0.0", "5.9 kB"),
    ("packaging", "24.2", "65 kB"),
    ("pluggy", "1.5.0", "20 kB"),
    ("psycopg", "3.2.3", "197 kB"),
    ("pydantic", "2.9.2", "434 kB"),
    ("pydantic_core", "2.23.4", "2.1 MB"),
    ("pytest", "8.3.3", "342 kB"),
    ("pytest_cov", "5.0.0", "21 kB"),
    ("pytest_rerunfailures", "14.0", "12 kB"),
    ("pytest_xdist", "3.6.1", "46 kB"),
    ("python_dateutil", "2.9.0.post0", "229 kB"),
    ("sniffio", "1.3.1", "10 kB"),
    ("sqlalchemy", "2.0.36", "3.2 MB"),
    ("typing_extensions", "4.12.2", "37 kB"),
]

_CI_TESTS = {
    "tests/test_accounts.py": [
        "test_create_account",
        "test_create_account_duplicate_iban",
        "test_close_account_with_balance_rejected",
        "test_account_currency_immutable",
        "test_list_accounts_pagination",
        "test_freeze_account",
        "test_unfreeze_account_requires_reason",
    ],
    "tests/test_ledger.py": [
        "test_post_entry_balanced",
        "test_post_entry_unbalanced_rejected",
        "test_reverse_entry",
        "test_entry_idempotency_key",
        "test_entries_ordered_by_effective_date",
        "test_posting_to_frozen_account_rejected",
        "test_trial_balance_zero",
        "test_period_close_locks_entries",
    ],
    "tests/test_fx.py": [
        "test_fx_rate_lookup_cached",
        "test_fx_rate_missing_raises",
        "test_fx_cross_rate_via_usd",
        "test_fx_rate_staleness_warning",
        "test_fx_convert_zero",
    ],
    "tests/test_reconcile.py": [
        "test_reconcile_empty_batch",
        "test_reconcile_single_currency",
        "test_reconcile_multi_currency",
        "test_fx_rounding_half_even",
        "test_reconcile_reports_orphans",
        "test_reconcile_idempotent",
    ],
    "tests/test_webhooks.py": [
        "test_webhook_signature_valid",
        "test_webhook_signature_invalid",
        "test_webhook_retry_backoff",
        "test_webhook_dead_letter_after_max_attempts",
        "test_webhook_payload_schema",
    ],
    "tests/test_statements.py": [
        "test_statement_pdf_render",
        "test_statement_csv_export",
        "test_statement_opening_balance",
        "test_statement_closing_balance",
        "test_statement_timezone_boundaries",
        "test_statement_locale_de",
        "test_statement_locale_fr",
    ],
    "tests/test_api.py": [
        "test_health",
        "test_auth_required",
        "test_get_account",
        "test_get_account_not_found",
        "test_post_transfer",
        "test_post_transfer_insufficient_funds",
        "test_post_transfer_same_account_rejected",
        "test_rate_limit_headers",
        "test_openapi_schema_valid",
    ],
}


def _ci_log(rng: random.Random) -> str:
    lines: list[str] = []

    def emit(text: str) -> None:
        lines.append(text)

    emit("Current runner version: '2.320.0'")
    emit("##[group]Operating System")
    emit("Ubuntu")
    emit("22.04.5")
    emit("LTS")
    emit("##[endgroup]")
    emit("##[group]Runner Image")
    emit("Image: ubuntu-22.04")
    emit("Version: 20241110.1.0")
    emit("##[endgroup]")
    emit("##[group]GITHUB_TOKEN Permissions")
    emit("Contents: read")
    emit("Metadata: read")
    emit("PullRequests: write")
    emit("##[endgroup]")
    emit("Secret source: Actions")
    emit("Prepare workflow directory")
    emit("Prepare all required actions")
    emit("Getting action download info")
    emit(
        "Download action repository 'actions/checkout@v4' (SHA:11bd71901bbe5b1630ceea73d27597364c9af683)"
    )
    emit(
        "Download action repository 'actions/setup-python@v5' (SHA:0b93645e9fea7318ecaed2b359559ac225c90a2b)"
    )
    emit(
        "Download action repository 'actions/upload-artifact@v4' (SHA:b4b15b8c7c6ac21ea08fcf65892d2ee8f75cf882)"
    )
    emit("Complete job name: test (3.12)")
    emit("##[group]Run actions/checkout@v4")
    emit("with:")
    emit("  repository: northwind/ledger-service")
    emit("  fetch-depth: 1")
    emit("##[endgroup]")
    emit("Syncing repository: northwind/ledger-service")
    emit("[command]/usr/bin/git version")
    emit("git version 2.47.0")
    emit("Fetching the repository")
    emit(
        "[command]/usr/bin/git -c protocol.version=2 fetch --no-tags --prune --no-recurse-submodules"
        " --depth=1 origin +7c1e4a9b2f03d8e5a61b9c0d4e7f2a3b5c6d8e9f:refs/remotes/pull/2291/merge"
    )
    emit("Checking out the ref")
    emit("[command]/usr/bin/git log -1 --format=%H")
    emit("7c1e4a9b2f03d8e5a61b9c0d4e7f2a3b5c6d8e9f")
    emit("##[group]Run actions/setup-python@v5")
    emit("with:")
    emit("  python-version: 3.12")
    emit("  cache: pip")
    emit("##[endgroup]")
    emit("Installed versions")
    emit("Successfully set up CPython (3.12.7)")
    emit("Cache hit for: setup-python-Linux-x64-22.04-Ubuntu-python-3.12.7-pip-4f1e0c2a9d")
    emit("##[group]Run pip install -r requirements/dev.txt")
    emit("pip install -r requirements/dev.txt")
    emit("shell: /usr/bin/bash -e {0}")
    emit("##[endgroup]")
    for pkg, version, size in _CI_PACKAGES:
        emit(f"Collecting {pkg.replace('_', '-')}=={version} (from -r requirements/dev.txt)")
        emit(f"  Using cached {pkg}-{version}-py3-none-any.whl.metadata ({size})")
    installed = " ".join(f"{p.replace('_', '-')}-{v}" for p, v, _ in _CI_PACKAGES)
    emit(f"Successfully installed {installed}")
    emit("##[group]Run pytest -n 4 -v --reruns 2 --junitxml=reports/junit.xml")
    emit("pytest -n 4 -v --reruns 2 --junitxml=reports/junit.xml")
    emit("shell: /usr/bin/bash -e {0}")
    emit("env:")
    emit("  DATABASE_URL: postgresql://ledger:***@localhost:5432/ledger_test")
    emit("  LEDGER_FX_PROVIDER: fixture")
    emit("##[endgroup]")
    emit("============================= test session starts ==============================")
    emit(
        "platform linux -- Python 3.12.7, pytest-8.3.3, pluggy-1.5.0 -- /opt/hostedtoolcache/Python/3.12.7/x64/bin/python"
    )
    emit("cachedir: .pytest_cache")
    emit("hypothesis profile 'ci' -> deadline=None, max_examples=200")
    emit("rootdir: /home/runner/work/ledger-service/ledger-service")
    emit("configfile: pyproject.toml")
    emit("plugins: hypothesis-6.118.8, cov-5.0.0, xdist-3.6.1, rerunfailures-14.0")
    emit("created: 4/4 workers")
    emit("4 workers [66 items]")
    emit("")
    items = [(module, test) for module, tests in _CI_TESTS.items() for test in tests]
    extra = [("tests/test_ledger.py", f"test_property_balanced_postings[{i}]") for i in range(20)]
    items = items + extra
    rng.shuffle(items)
    skipped = {"test_statement_locale_fr", "test_statement_pdf_render", "test_statement_locale_de"}
    for done, (module, test) in enumerate(items, start=1):
        worker = f"gw{rng.randrange(4)}"
        pct = f"[{round(100 * done / len(items)):3d}%]"
        if test == "test_fx_rounding_half_even":
            emit(f"[{worker}] {pct} FAILED {module}::{test}")
        elif test == "test_webhook_retry_backoff":
            emit(f"[{worker}] {pct} RERUN {module}::{test}")
            emit(f"[{worker}] {pct} PASSED {module}::{test}")
        elif test in skipped or test.endswith("[19]"):
            emit(f"[{worker}] {pct} SKIPPED {module}::{test}")
        else:
            emit(f"[{worker}] {pct} PASSED {module}::{test}")
    failure = """
=================================== FAILURES ===================================
__________________________ test_fx_rounding_half_even __________________________
[gw2] linux -- Python 3.12.7 /opt/hostedtoolcache/Python/3.12.7/x64/bin/python

ledger_factory = <function ledger_factory.<locals>.make at 0x7f3c2a1e9b20>

    def test_fx_rounding_half_even(ledger_factory):
        ledger = ledger_factory(currency="EUR")
        batch = ledger.post_batch(
            [("acct_100", "1043.265", "USD")],
            fx_rate="1.0000",
        )
>       ledger.reconcile(batch)

tests/test_reconcile.py:57:
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _
ledger/core.py:318: in reconcile
    totals = self._fx.convert_batch(batch.entries, self.currency)
ledger/fx.py:142: in convert_batch
    self._check_totals(converted, expected=batch.expected_total)
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _

self = <ledger.fx.FxConverter object at 0x7f3c2a20d590>
converted = [Entry(account='acct_100', amount=Decimal('1043.27'), currency='EUR')]
expected = Decimal('1043.26')

    def _check_totals(self, converted, expected):
        total = sum(e.amount for e in converted)
        if total != expected:
>           raise ReconciliationError(
                f"FX total {total} != expected {expected} (rounding={self.rounding})"
            )
E           ledger.errors.ReconciliationError: FX total 1043.27 != expected 1043.26 (rounding=ROUND_HALF_UP)

ledger/fx.py:171: ReconciliationError
=============================== warnings summary ===============================
tests/test_statements.py::test_statement_csv_export
  /home/runner/work/ledger-service/ledger-service/ledger/statements.py:44: DeprecationWarning: datetime.datetime.utcnow() is deprecated and scheduled for removal in a future version. Use timezone-aware objects to represent datetimes in UTC: datetime.datetime.now(datetime.UTC).
    generated_at = datetime.utcnow()

tests/test_api.py::test_rate_limit_headers
  /home/runner/work/ledger-service/ledger-service/.venv/lib/python3.12/site-packages/httpx/_client.py:680: DeprecationWarning: The 'app' shortcut is now deprecated. Use the explicit style 'transport=WSGITransport(app=...)' instead.
    warnings.warn(message, DeprecationWarning)

-- Docs: https://docs.pytest.org/en/stable/how-to/capture-warnings.html
- generated xml file: /home/runner/work/ledger-service/ledger-service/reports/junit.xml -
=========================== short test summary info ============================
FAILED tests/test_reconcile.py::test_fx_rounding_half_even - ledger.errors.ReconciliationError: FX total 1043.27 != expected 1043.26 (rounding=ROUND_HALF_UP)
======= 1 failed, 61 passed, 4 skipped, 1 rerun, 2 warnings in 41.87s ========="""
    for line in failure.strip("\n").split("\n"):
        emit(line)
    emit("##[error]Process completed with exit code 1.")
    emit("##[group]Run actions/upload-artifact@v4")
    emit("with:")
    emit("  name: junit-3.12")
    emit("  path: reports/junit.xml")
    emit("  if-no-files-found: warn")
    emit("##[endgroup]")
    emit("With the provided path, there will be 1 file uploaded")
    emit("Artifact junit-3.12.zip successfully finalized. Artifact ID 2187364512")
    emit("Post job cleanup.")
    emit("[command]/usr/bin/git version")
    emit("Cleaning up orphan processes")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 2. NDJSON application log
# ---------------------------------------------------------------------------------------------


def _order_id(rng: random.Random) -> str:
    alphabet = "ABCDEFGHJKMNPQRSTVWXYZ0123456789"
    return "ord_7H" + "".join(rng.choice(alphabet) for _ in range(6))


def _ndjson_log(rng: random.Random) -> str:
    answers = {
        8: ("ord_7H3KD92Q", "gateway_timeout", 504, 30004, "paygate-eu-2"),
        19: ("ord_7H3MX41B", "bad_gateway", 502, 118, "paygate-eu-2"),
        28: ("ord_7H3PZ07C", "gateway_timeout", 504, 30011, "paygate-eu-2"),
    }
    records: list[dict[str, Any]] = []
    minute, second = 0, 0.0
    for i in range(32):
        second += rng.uniform(60, 150)
        while second >= 60:
            second -= 60
            minute += 1
        ts = f"2024-11-20T13:{minute:02d}:{second:06.3f}Z"
        trace = "".join(rng.choice("0123456789abcdef") for _ in range(16))
        base: dict[str, Any] = {"ts": ts, "service": "checkout-api"}
        pod = f"checkout-api-7d9f8c{rng.choice('bcdfg')}-{rng.choice(['x2kq9', 'mp4zt', 'r7wvn'])}"
        if i in answers:
            order, code, status, latency, gateway = answers[i]
            records.append(
                {
                    **base,
                    "level": "error",
                    "pod": pod,
                    "msg": "payment authorization failed",
                    "order_id": order,
                    "trace_id": trace,
                    "gateway": gateway,
                    "error_code": code,
                    "http_status": status,
                    "upstream_latency_ms": latency,
                    "attempts": 3,
                    "customer_tier": rng.choice(["standard", "plus"]),
                }
            )
            records.append(
                {
                    **base,
                    "level": "warn",
                    "pod": pod,
                    "msg": "order moved to FAILED",
                    "order_id": order,
                    "trace_id": trace,
                    "reason": "payment_authorization_failed",
                }
            )
            continue
        order = _order_id(rng)
        kind = rng.random()
        if kind < 0.55:
            records.append(
                {
                    **base,
                    "level": "info",
                    "pod": pod,
                    "msg": "order placed",
                    "order_id": order,
                    "trace_id": trace,
                    "amount_eur": round(rng.uniform(9, 480), 2),
                    "items": rng.randint(1, 6),
                    "gateway": rng.choice(["paygate-eu-1", "paygate-eu-2", "paygate-eu-1"]),
                    "latency_ms": rng.randint(180, 900),
                }
            )
        elif kind < 0.70:
            records.append(
                {
                    **base,
                    "level": "warn",
                    "pod": pod,
                    "msg": "payment declined",
                    "order_id": order,
                    "trace_id": trace,
                    "gateway": rng.choice(["paygate-eu-1", "paygate-eu-2"]),
                    "error_code": rng.choice(
                        ["card_declined", "insufficient_funds", "do_not_honor"]
                    ),
                    "http_status": 402,
                    "upstream_latency_ms": rng.randint(240, 700),
                }
            )
        elif kind < 0.80:
            records.append(
                {
                    **base,
                    "level": "error",
                    "pod": pod,
                    "msg": "inventory reservation failed",
                    "order_id": order,
                    "trace_id": trace,
                    "sku": f"SKU-{rng.randint(10000, 99999)}",
                    "error_code": "OUT_OF_STOCK",
                    "warehouse": rng.choice(["ams-1", "fra-2"]),
                }
            )
        elif kind < 0.90:
            records.append(
                {
                    **base,
                    "level": "info",
                    "pod": pod,
                    "msg": "cart recalculated",
                    "cart_id": f"cart_{rng.randint(100000, 999999)}",
                    "trace_id": trace,
                    "promo_code": rng.choice([None, "BLACKFRIDAY24", "WELCOME10"]),
                    "latency_ms": rng.randint(12, 80),
                }
            )
        else:
            records.append(
                {
                    **base,
                    "level": "warn",
                    "pod": pod,
                    "msg": "slow upstream call",
                    "trace_id": trace,
                    "upstream": rng.choice(["tax-service", "shipping-quotes", "fraud-score"]),
                    "latency_ms": rng.randint(1200, 2900),
                    "threshold_ms": 1000,
                }
            )
    return "\n".join(json.dumps(r, separators=(",", ":")) for r in records)


# ---------------------------------------------------------------------------------------------
# 3. Prometheus /metrics from a Kafka exporter
# ---------------------------------------------------------------------------------------------

_KAFKA_TOPICS = {
    "orders.created.v1": 6,
    "billing.invoices.v2": 8,
    "payments.events.v3": 6,
    "search.reindex.v1": 4,
}
_KAFKA_GROUPS = {
    "order-projector": ["orders.created.v1"],
    "invoice-renderer": ["billing.invoices.v2"],
    "payments-ledger-sync": ["payments.events.v3"],
    "search-indexer": ["search.reindex.v1", "orders.created.v1"],
    "audit-archiver": ["payments.events.v3", "billing.invoices.v2"],
}


def _prometheus_metrics(rng: random.Random) -> str:
    out: list[str] = []
    out.append(
        "# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles."
    )
    out.append("# TYPE go_gc_duration_seconds summary")
    for q in ("0", "0.25", "0.5", "0.75", "1"):
        out.append(f'go_gc_duration_seconds{{quantile="{q}"}} {rng.uniform(1e-5, 4e-4):.6e}')
    out.append(f"go_gc_duration_seconds_sum {rng.uniform(2, 9):.6f}")
    out.append(f"go_gc_duration_seconds_count {rng.randint(20000, 40000)}")
    out.append("# HELP go_goroutines Number of goroutines that currently exist.")
    out.append("# TYPE go_goroutines gauge")
    out.append(f"go_goroutines {rng.randint(40, 90)}")
    out.append("# HELP kafka_brokers Number of Brokers in the Kafka Cluster.")
    out.append("# TYPE kafka_brokers gauge")
    out.append("kafka_brokers 3")
    out.append("# HELP kafka_broker_info Information about the Kafka Broker.")
    out.append("# TYPE kafka_broker_info gauge")
    for b in range(3):
        out.append(
            f'kafka_broker_info{{address="kafka-{b}.kafka-headless.data.svc:9092",id="{b}"}} 1'
        )
    out.append("# HELP kafka_topic_partitions Number of partitions for this Topic")
    out.append("# TYPE kafka_topic_partitions gauge")
    for topic, parts in _KAFKA_TOPICS.items():
        out.append(f'kafka_topic_partitions{{topic="{topic}"}} {parts}')
    offsets: dict[tuple[str, int], int] = {}
    out.append(
        "# HELP kafka_topic_partition_current_offset Current Offset of a Broker at Topic/Partition"
    )
    out.append("# TYPE kafka_topic_partition_current_offset gauge")
    for topic, parts in _KAFKA_TOPICS.items():
        for p in range(parts):
            offsets[(topic, p)] = rng.randint(2_000_000, 9_000_000)
            out.append(
                f'kafka_topic_partition_current_offset{{partition="{p}",topic="{topic}"}} '
                f"{offsets[(topic, p)]}"
            )
    out.append(
        "# HELP kafka_topic_partition_in_sync_replica Number of In-Sync Replicas for this Topic/Partition"
    )
    out.append("# TYPE kafka_topic_partition_in_sync_replica gauge")
    for topic, parts in _KAFKA_TOPICS.items():
        for p in range(parts):
            isr = 2 if (topic == "payments.events.v3" and p == 4) else 3
            out.append(
                f'kafka_topic_partition_in_sync_replica{{partition="{p}",topic="{topic}"}} {isr}'
            )
    lags: dict[tuple[str, str, int], int] = {}
    for group, topics in _KAFKA_GROUPS.items():
        for topic in topics:
            for p in range(_KAFKA_TOPICS[topic]):
                if group == "invoice-renderer":
                    lag = 184213 if p == 7 else rng.randint(80, 1500)
                elif group == "search-indexer" and topic == "search.reindex.v1":
                    lag = rng.randint(2500, 4200)
                else:
                    lag = rng.randint(0, 260)
                lags[(group, topic, p)] = lag
    # make the invoice-renderer sum a fixed, checkable number
    others = sum(v for (g, _, p), v in lags.items() if g == "invoice-renderer" and p != 7)
    lags[("invoice-renderer", "billing.invoices.v2", 0)] += 191877 - 184213 - others
    out.append(
        "# HELP kafka_consumergroup_lag Current Approximate Lag of a ConsumerGroup at Topic/Partition"
    )
    out.append("# TYPE kafka_consumergroup_lag gauge")
    for (group, topic, p), lag in lags.items():
        out.append(
            f'kafka_consumergroup_lag{{consumergroup="{group}",partition="{p}",topic="{topic}"}} {lag}'
        )
    out.append(
        "# HELP kafka_consumergroup_lag_sum Current Approximate Lag of a ConsumerGroup at Topic for all partitions"
    )
    out.append("# TYPE kafka_consumergroup_lag_sum gauge")
    for group, topics in _KAFKA_GROUPS.items():
        for topic in topics:
            total = sum(v for (g, t, _), v in lags.items() if g == group and t == topic)
            out.append(
                f'kafka_consumergroup_lag_sum{{consumergroup="{group}",topic="{topic}"}} {total}'
            )
    out.append("# HELP kafka_consumergroup_members Amount of members in a consumer group")
    out.append("# TYPE kafka_consumergroup_members gauge")
    members = {
        "order-projector": 6,
        "invoice-renderer": 0,
        "payments-ledger-sync": 3,
        "search-indexer": 2,
        "audit-archiver": 1,
    }
    for group, n in members.items():
        out.append(f'kafka_consumergroup_members{{consumergroup="{group}"}} {n}')
    out.append("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.")
    out.append("# TYPE process_cpu_seconds_total counter")
    out.append(f"process_cpu_seconds_total {rng.uniform(3000, 9000):.2f}")
    out.append("# HELP process_resident_memory_bytes Resident memory size in bytes.")
    out.append("# TYPE process_resident_memory_bytes gauge")
    out.append(f"process_resident_memory_bytes {rng.randint(40_000_000, 90_000_000)}")
    out.append(
        "# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP status code."
    )
    out.append("# TYPE promhttp_metric_handler_requests_total counter")
    out.append(
        f'promhttp_metric_handler_requests_total{{code="200"}} {rng.randint(100000, 200000)}'
    )
    out.append('promhttp_metric_handler_requests_total{code="500"} 0')
    out.append('promhttp_metric_handler_requests_total{code="503"} 0')
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# 4. terraform plan
# ---------------------------------------------------------------------------------------------

_TF_REFRESH = [
    "data.aws_caller_identity.current",
    "data.aws_region.current",
    "data.aws_availability_zones.available",
    "module.vpc.aws_vpc.this[0]",
    "module.vpc.aws_internet_gateway.this[0]",
    "module.vpc.aws_subnet.private[0]",
    "module.vpc.aws_subnet.private[1]",
    "module.vpc.aws_subnet.private[2]",
    "module.vpc.aws_subnet.public[0]",
    "module.vpc.aws_subnet.public[1]",
    "module.vpc.aws_nat_gateway.this[0]",
    "module.vpc.aws_route_table.private[0]",
    "aws_security_group.orders_db",
    "aws_security_group.sessions_cache",
    "aws_security_group.alb",
    "aws_db_subnet_group.orders",
    "aws_db_parameter_group.orders_pg15",
    "aws_db_instance.orders_primary",
    "aws_db_instance.orders_replica",
    "aws_elasticache_subnet_group.sessions",
    "aws_elasticache_replication_group.sessions",
    "aws_s3_bucket.assets",
    "aws_s3_bucket.legacy_exports",
    "aws_s3_bucket.audit_logs",
    "aws_iam_role.orders_api",
    "aws_iam_role_policy.orders_api_s3",
    "aws_lb.public",
    "aws_lb_target_group.orders_api",
    "aws_lb_listener.https",
    "aws_cloudwatch_log_group.orders_api",
    "aws_ecs_service.orders_api",
    "aws_ecs_task_definition.orders_api",
]


def _tf_id(rng: random.Random, prefix: str) -> str:
    return prefix + "".join(rng.choice("0123456789abcdef") for _ in range(17))


def _terraform_plan(rng: random.Random) -> str:
    out: list[str] = []
    for addr in _TF_REFRESH:
        kind = addr.split(".")[-2] if addr.startswith("module.") else addr.split(".")[0]
        ident = {
            "aws_vpc": _tf_id(rng, "vpc-"),
            "aws_subnet": _tf_id(rng, "subnet-"),
            "aws_security_group": _tf_id(rng, "sg-"),
            "aws_nat_gateway": _tf_id(rng, "nat-"),
            "aws_route_table": _tf_id(rng, "rtb-"),
            "aws_internet_gateway": _tf_id(rng, "igw-"),
        }.get(kind, addr.split(".")[-1].replace("_", "-"))
        if addr.startswith("data."):
            out.append(f"{addr}: Reading...")
            out.append(f"{addr}: Read complete after 0s [id={ident}]")
        else:
            out.append(f"{addr}: Refreshing state... [id={ident}]")
    out.append("")
    out.append(
        "Terraform used the selected providers to generate the following execution plan. "
        "Resource actions are indicated with the following symbols:"
    )
    out.append("  ~ update in-place")
    out.append("  - destroy")
    out.append("-/+ destroy and then create replacement")
    out.append("")
    out.append("Terraform will perform the following actions:")
    out.append("")

    def tags_update(addr: str, rtype: str, name: str) -> None:
        out.append(f"  # {addr} will be updated in-place")
        out.append(f'  ~ resource "{rtype}" "{name}" {{')
        out.append(f'        id   = "{name.replace("_", "-")}"')
        out.append("      ~ tags     = {")
        out.append('          ~ "CostCenter" = "cc-1100" -> "cc-2300"')
        out.append('          + "Owner"      = "team-orders"')
        out.append("            # (3 unchanged elements hidden)")
        out.append("        }")
        out.append("      ~ tags_all = {")
        out.append('          ~ "CostCenter" = "cc-1100" -> "cc-2300"')
        out.append('          + "Owner"      = "team-orders"')
        out.append("            # (5 unchanged elements hidden)")
        out.append("        }")
        out.append(f"        # ({rng.randint(6, 24)} unchanged attributes hidden)")
        out.append("    }")
        out.append("")

    tags_update("aws_cloudwatch_log_group.orders_api", "aws_cloudwatch_log_group", "orders_api")
    out.append("  # aws_db_instance.orders_primary must be replaced")
    out.append('-/+ resource "aws_db_instance" "orders_primary" {')
    out.append(
        '      ~ address                               = "orders-primary.c9x2k4l1m0qz.eu-west-1.rds.amazonaws.com" -> (known after apply)'
    )
    out.append(
        '      ~ arn                                   = "arn:aws:rds:eu-west-1:481220933017:db:orders-primary" -> (known after apply)'
    )
    out.append("        allocated_storage                     = 500")
    out.append(
        '      ~ availability_zone                     = "eu-west-1a" -> (known after apply)'
    )
    out.append("        backup_retention_period               = 14")
    out.append('        db_subnet_group_name                  = "orders"')
    out.append("      ~ deletion_protection                   = true -> false")
    out.append(
        '      ~ endpoint                              = "orders-primary.c9x2k4l1m0qz.eu-west-1.rds.amazonaws.com:5432" -> (known after apply)'
    )
    out.append('        engine                                = "postgres"')
    out.append('      ~ engine_version                        = "14.12" -> "15.7"')
    out.append(
        '      ~ id                                    = "db-QF3T7ZK2LMN5XW4R8YV6HJ0CDA" -> (known after apply)'
    )
    out.append(
        '      ~ identifier                            = "orders-primary" -> "orders-primary-v2" # forces replacement'
    )
    out.append('        instance_class                        = "db.r6g.2xlarge"')
    out.append("        multi_az                              = true")
    out.append('      ~ parameter_group_name                  = "orders-pg14" -> "orders-pg15"')
    out.append(
        '      ~ resource_id                           = "db-QF3T7ZK2LMN5XW4R8YV6HJ0CDA" -> (known after apply)'
    )
    out.append("      ~ skip_final_snapshot                   = false -> true")
    out.append('        storage_type                          = "gp3"')
    out.append("        tags                                  = {")
    out.append('            "Environment" = "prod"')
    out.append('            "Service"     = "orders"')
    out.append("        }")
    out.append('        username                              = "orders_admin"')
    out.append("        # (38 unchanged attributes hidden)")
    out.append("    }")
    out.append("")
    out.append("  # aws_db_instance.orders_replica will be updated in-place")
    out.append('  ~ resource "aws_db_instance" "orders_replica" {')
    out.append('        id                                    = "db-8MZP1QW2ER3TY4UI5OP6AS7DF"')
    out.append('        identifier                            = "orders-replica-1"')
    out.append(
        '      ~ replicate_source_db                   = "orders-primary" -> "orders-primary-v2"'
    )
    out.append('      ~ engine_version                        = "14.12" -> "15.7"')
    out.append("        # (41 unchanged attributes hidden)")
    out.append("    }")
    out.append("")
    out.append("  # aws_db_parameter_group.orders_pg15 will be updated in-place")
    out.append('  ~ resource "aws_db_parameter_group" "orders_pg15" {')
    out.append('        id          = "orders-pg15"')
    out.append('        name        = "orders-pg15"')
    out.append("        # (5 unchanged attributes hidden)")
    out.append("")
    out.append("      + parameter {")
    out.append('          + apply_method = "pending-reboot"')
    out.append('          + name         = "max_connections"')
    out.append('          + value        = "800"')
    out.append("        }")
    out.append("      - parameter {")
    out.append('          - apply_method = "pending-reboot" -> null')
    out.append('          - name         = "max_connections" -> null')
    out.append('          - value        = "600" -> null')
    out.append("        }")
    out.append("    }")
    out.append("")
    for addr in ("aws_ecs_service.orders_api", "aws_iam_role.orders_api", "aws_lb.public"):
        rtype, name = addr.split(".")
        tags_update(addr, rtype, name)
    out.append("  # aws_elasticache_replication_group.sessions must be replaced")
    out.append('-/+ resource "aws_elasticache_replication_group" "sessions" {')
    out.append(
        '      ~ arn                            = "arn:aws:elasticache:eu-west-1:481220933017:replicationgroup:sessions" -> (known after apply)'
    )
    out.append("      ~ at_rest_encryption_enabled     = false -> true # forces replacement")
    out.append("        automatic_failover_enabled     = true")
    out.append(
        '      ~ configuration_endpoint_address = "sessions.h1k9pe.clustercfg.euw1.cache.amazonaws.com" -> (known after apply)'
    )
    out.append('        engine                         = "redis"')
    out.append('        engine_version                 = "7.1"')
    out.append('      ~ id                             = "sessions" -> (known after apply)')
    out.append('        node_type                      = "cache.r6g.large"')
    out.append("        num_cache_clusters             = 3")
    out.append('        replication_group_id           = "sessions"')
    out.append('        subnet_group_name              = "sessions"')
    out.append("        transit_encryption_enabled     = true")
    out.append("        # (19 unchanged attributes hidden)")
    out.append("    }")
    out.append("")
    for addr in (
        "aws_s3_bucket.assets",
        "aws_s3_bucket.audit_logs",
        "aws_security_group.orders_db",
        "aws_security_group.sessions_cache",
    ):
        rtype, name = addr.split(".")
        tags_update(addr, rtype, name)
    out.append("  # aws_s3_bucket.legacy_exports will be destroyed")
    out.append("  # (because aws_s3_bucket.legacy_exports is not in configuration)")
    out.append('  - resource "aws_s3_bucket" "legacy_exports" {')
    out.append(
        '      - arn                         = "arn:aws:s3:::northwind-prod-legacy-exports" -> null'
    )
    out.append('      - bucket                      = "northwind-prod-legacy-exports" -> null')
    out.append("      - force_destroy               = true -> null")
    out.append('      - id                          = "northwind-prod-legacy-exports" -> null')
    out.append('      - region                      = "eu-west-1" -> null')
    out.append("      - tags                        = {")
    out.append('          - "Environment" = "prod"')
    out.append('          - "Retention"   = "7y"')
    out.append("        } -> null")
    out.append("        # (9 unchanged attributes hidden)")
    out.append("    }")
    out.append("")
    out.append("Plan: 2 to add, 9 to change, 3 to destroy.")
    out.append("")
    out.append("Changes to Outputs:")
    out.append(
        '  ~ orders_db_endpoint = "orders-primary.c9x2k4l1m0qz.eu-west-1.rds.amazonaws.com:5432" -> (known after apply)'
    )
    out.append(
        '  ~ sessions_endpoint  = "sessions.h1k9pe.clustercfg.euw1.cache.amazonaws.com" -> (known after apply)'
    )
    out.append("")
    out.append("─" * 77)
    out.append("")
    out.append(
        "Note: You didn't use the -out option to save this plan, so Terraform can't guarantee "
        'to take exactly these actions if you run "terraform apply" now.'
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# 5. Feature-flag REST API listing
# ---------------------------------------------------------------------------------------------

_FLAGS: list[tuple[str, str, dict[str, tuple[bool, int]], bool]] = [
    # key, description, {tenant: (enabled, rollout)}, archived
    (
        "dark-mode",
        "Dark theme for storefront",
        {"us": (True, 100), "eu": (False, 0), "apac": (True, 100)},
        False,
    ),
    (
        "new-checkout-flow",
        "Single-page checkout",
        {"us": (True, 100), "eu": (True, 35), "apac": (False, 0)},
        False,
    ),
    (
        "klarna-payments",
        "Klarna pay-later at checkout",
        {"us": (False, 0), "eu": (True, 100), "apac": (False, 0)},
        False,
    ),
    (
        "gift-wrapping",
        "Gift-wrap option on cart",
        {"us": (True, 50), "eu": (False, 20), "apac": (False, 0)},
        False,
    ),
    (
        "search-v3-ranking",
        "Learning-to-rank search results",
        {"us": (True, 60), "eu": (True, 15), "apac": (True, 5)},
        False,
    ),
    (
        "loyalty-points-v2",
        "Points accrual engine v2",
        {"us": (True, 25), "eu": (False, 0), "apac": (False, 0)},
        False,
    ),
    (
        "address-autocomplete",
        "Address autocomplete in checkout",
        {"us": (True, 100), "eu": (True, 60), "apac": (True, 100)},
        False,
    ),
    (
        "holiday-banner-2023",
        "Holiday banner (last year)",
        {"us": (False, 0), "eu": (False, 100), "apac": (False, 0)},
        True,
    ),
    (
        "one-click-reorder",
        "Reorder from order history",
        {"us": (True, 10), "eu": (False, 0), "apac": (False, 0)},
        False,
    ),
    (
        "pdp-video",
        "Product videos on detail page",
        {"us": (False, 0), "eu": (False, 40), "apac": (True, 30)},
        False,
    ),
    (
        "bnpl-afterpay",
        "Afterpay pay-later",
        {"us": (True, 100), "eu": (False, 0), "apac": (True, 100)},
        False,
    ),
]


def _flags_api(rng: random.Random) -> str:
    items: list[dict[str, Any]] = []
    for key, description, tenants, archived in _FLAGS:
        rules = []
        for tenant, (enabled, rollout) in tenants.items():
            rules.append(
                {
                    "id": f"rule_{rng.randint(10000, 99999)}",
                    "tenant": tenant,
                    "enabled": enabled,
                    "rollout_percentage": rollout,
                    "bucket_by": rng.choice(["user_id", "session_id"]),
                    "segments": rng.sample(["beta-testers", "employees", "vip", "new-users"], 1),
                }
            )
        staging_rollout = rng.choice([100, 50])
        items.append(
            {
                "key": key,
                "id": f"flg_{rng.randint(100000, 999999)}",
                "description": description,
                "kind": "boolean",
                "archived": archived,
                "tags": rng.sample(["checkout", "growth", "search", "payments", "ui"], 2),
                "environments": {
                    "production": {
                        "on": any(enabled for enabled, _ in tenants.values()),
                        "rules": rules,
                        "last_modified": f"2024-11-{rng.randint(1, 19):02d}T{rng.randint(0, 23):02d}:"
                        f"{rng.randint(0, 59):02d}:00Z",
                        "modified_by": rng.choice(["m.keller", "a.osei", "j.tanaka", "r.silva"]),
                    },
                    "staging": {
                        "on": True,
                        "rules": [
                            {"tenant": "*", "enabled": True, "rollout_percentage": staging_rollout}
                        ],
                    },
                },
            }
        )
    body = {
        "project": "storefront",
        "environment_filter": "production",
        "total": len(items),
        "page": 1,
        "page_size": 50,
        "items": items,
    }
    return json.dumps(body, indent=2)


# ---------------------------------------------------------------------------------------------
# 6. df / du / docker system df on a build agent
# ---------------------------------------------------------------------------------------------


def _disk_usage(rng: random.Random) -> str:
    out = [
        "Filesystem      Size  Used Avail Use% Mounted on",
        "tmpfs            13G  2.1M   13G   1% /run",
        "/dev/nvme0n1p1  492G  492G     0 100% /",
        "tmpfs            63G     0   63G   0% /dev/shm",
        "tmpfs           5.0M     0  5.0M   0% /run/lock",
        "/dev/nvme0n1p15 105M  6.1M   99M   6% /boot/efi",
        "/dev/nvme1n1    1.8T  311G  1.4T  19% /mnt/artifacts",
        "tmpfs            13G  4.0K   13G   1% /run/user/1001",
        "",
    ]
    du: list[tuple[float, str]] = [
        (451, "/var"),
        (446, "/var/lib"),
        (412, "/var/lib/docker"),
        (297, "/var/lib/docker/overlay2"),
        (96, "/var/lib/docker/volumes"),
        (61, "/var/lib/docker/volumes/gradle-cache-ci"),
        (31, "/home"),
        (29, "/home/ci"),
        (22, "/var/lib/docker/volumes/buildkit-state"),
        (19, "/var/lib/docker/containers"),
        (18, "/var/lib/docker/containers/4c1f9e0b7a2d"),
        (17, "/var/lib/containerd"),
        (14, "/home/ci/.gradle"),
        (11, "/var/lib/docker/volumes/npm-cache-ci"),
        (9.8, "/opt"),
        (8.7, "/home/ci/actions-runner"),
        (7.9, "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"),
        (6.1, "/var/log"),
        (5.3, "/opt/hostedtoolcache"),
        (3.9, "/var/log/journal"),
        (3.1, "/home/ci/.cache"),
        (2.4, "/opt/android-sdk"),
        (1.6, "/var/cache"),
        (1.2, "/var/log/syslog.1"),
    ]
    for _ in range(44):
        du.append(
            (
                round(rng.uniform(0.1, 1.1), 1),
                f"/var/lib/docker/overlay2/{_tf_id(rng, '')}{rng.randint(100, 999)}",
            )
        )
    for _ in range(12):
        du.append(
            (
                round(rng.uniform(0.1, 0.9), 1),
                f"/home/ci/actions-runner/_work/_tool/{rng.choice(['node', 'go', 'jdk', 'python'])}/{rng.randint(10, 22)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}",
            )
        )
    du.sort(key=lambda kv: -kv[0])
    for size, path in du:
        if size >= 10:
            label = f"{size:.0f}G"
        elif size >= 1:
            label = f"{size:.1f}G"
        else:
            label = f"{int(size * 1024)}M"
        out.append(f"{label}\t{path}")
    out.append("")
    out.append("TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE")
    out.append("Images          214       9         204.7GB   188.3GB (92%)")
    out.append("Containers      37        4         18.9GB    18.2GB (96%)")
    out.append("Local Volumes   23        6         96.1GB    12.4GB (12%)")
    out.append("Build Cache     1423      0         71.4GB    71.4GB")
    out.append("")
    out.append("$ journalctl --disk-usage")
    out.append("Archived and active journals take up 3.9G in the file system.")
    out.append("")
    out.append("$ systemctl list-timers | grep -i prune")
    out.append("0 timers listed.")
    out.append("")
    out.append(
        "$ docker ps -a --filter status=exited --format '{{.ID}} {{.Image}} {{.Status}}' | head -30"
    )
    images = [
        "ci/android-builder",
        "ci/web-e2e",
        "ci/go-builder",
        "ci/jdk17-builder",
        "ci/python-tox",
    ]
    for _ in range(30):
        out.append(
            f"{_tf_id(rng, '')[:12]} registry.internal/{rng.choice(images)}:{rng.randint(800, 1900)} "
            f"Exited ({rng.choice([0, 0, 0, 1, 137])}) {rng.randint(2, 40)} days ago"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# 7. nginx access log
# ---------------------------------------------------------------------------------------------

_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "okhttp/4.12.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
]


def _nginx_log(rng: random.Random) -> str:
    users = [
        f"{rng.randint(2, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        for _ in range(9)
    ]
    paths = [
        ("GET", "/api/v1/products?page=2", 200),
        ("GET", "/api/v1/cart", 200),
        ("POST", "/api/v1/cart/items", 201),
        ("GET", "/static/js/app.3f9c1b.js", 200),
        ("GET", "/api/v1/me", 200),
        ("POST", "/api/v1/auth/refresh", 200),
        ("GET", "/health", 200),
    ]
    lines: list[str] = []
    sec = 7 * 60
    for i in range(31):
        sec += rng.randint(1, 9)
        stamp = f"21/Nov/2024:03:{sec // 60:02d}:{sec % 60:02d} +0000"
        roll = rng.random()
        if 6 <= i <= 28 and roll < 0.45:
            ip = "185.220.101.47" if rng.random() < 0.75 else "185.220.101.52"
            lines.append(
                f'{ip} - - [{stamp}] "POST /api/v1/auth/login HTTP/1.1" 401 61 "-" '
                f'"python-requests/2.31.0" rt={rng.uniform(0.04, 0.12):.3f} uct="0.001" '
                f'urt="{rng.uniform(0.03, 0.11):.3f}" upstream=10.0.3.{rng.choice([14, 15])}:8080'
            )
        elif roll < 0.52:
            ip = "45.146.165.37"
            probe = rng.choice(
                ["/wp-login.php", "/.env", "/xmlrpc.php", "/phpmyadmin/index.php", "/.git/config"]
            )
            lines.append(
                f'{ip} - - [{stamp}] "GET {probe} HTTP/1.1" 404 153 "-" '
                f'"Mozilla/5.0 zgrab/0.x" rt=0.000 uct="-" urt="-" upstream=-'
            )
        elif roll < 0.60:
            ip = rng.choice(users)
            status = rng.choice([200, 200, 401])
            lines.append(
                f'{ip} - - [{stamp}] "POST /api/v1/auth/login HTTP/2.0" {status} {412 if status == 200 else 61} '
                f'"https://shop.northwind.example/login" "{rng.choice(_UAS)}" rt={rng.uniform(0.08, 0.3):.3f} '
                f'uct="0.001" urt="{rng.uniform(0.07, 0.29):.3f}" upstream=10.0.3.{rng.choice([14, 15])}:8080'
            )
        elif roll < 0.66:
            ip = "66.249.66." + str(rng.choice([1, 12, 33]))
            lines.append(
                f'{ip} - - [{stamp}] "GET /products/{rng.randint(1000, 9999)} HTTP/1.1" 200 {rng.randint(18000, 52000)} "-" '
                f'"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)" '
                f'rt={rng.uniform(0.05, 0.2):.3f} uct="0.001" urt="{rng.uniform(0.04, 0.19):.3f}" upstream=10.0.3.21:8080'
            )
        else:
            ip = rng.choice(users)
            method, path, status = rng.choice(paths)
            lines.append(
                f'{ip} - - [{stamp}] "{method} {path} HTTP/2.0" {status} {rng.randint(120, 9000)} '
                f'"https://shop.northwind.example/" "{rng.choice(_UAS)}" rt={rng.uniform(0.002, 0.2):.3f} '
                f'uct="0.001" urt="{rng.uniform(0.001, 0.19):.3f}" upstream=10.0.3.{rng.choice([14, 15, 21])}:8080'
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 8. kubectl get deploy,hpa -o yaml
# ---------------------------------------------------------------------------------------------


def _deployment(
    rng: random.Random,
    name: str,
    image: str,
    replicas: int,
    ready: int,
    requests: tuple[str, str],
    limits: tuple[str, str],
    env: list[tuple[str, str]],
    port: int | None,
) -> str:
    uid = "-".join(_tf_id(rng, "")[:n] for n in (8, 4, 4, 4, 12))
    envs = "\n".join(f'          - name: {k}\n            value: "{v}"' for k, v in env)
    ports = (
        f"""          ports:
          - containerPort: {port}
            name: http
            protocol: TCP
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: 10
            failureThreshold: 3
          livenessProbe:
            httpGet:
              path: /livez
              port: http
            initialDelaySeconds: 20
            periodSeconds: 20
"""
        if port
        else ""
    )
    return f"""- apiVersion: apps/v1
  kind: Deployment
  metadata:
    annotations:
      deployment.kubernetes.io/revision: "{rng.randint(20, 140)}"
      argocd.argoproj.io/tracking-id: payments:apps/Deployment:payments/{name}
    creationTimestamp: "2024-0{rng.randint(1, 9)}-{rng.randint(10, 28)}T{rng.randint(10, 23)}:{rng.randint(10, 59)}:07Z"
    generation: {rng.randint(30, 200)}
    labels:
      app.kubernetes.io/name: {name}
      app.kubernetes.io/part-of: payments
    name: {name}
    namespace: payments
    uid: {uid}
  spec:
    progressDeadlineSeconds: 600
    replicas: {replicas}
    revisionHistoryLimit: 5
    selector:
      matchLabels:
        app.kubernetes.io/name: {name}
    strategy:
      rollingUpdate:
        maxSurge: 25%
        maxUnavailable: 0
      type: RollingUpdate
    template:
      metadata:
        labels:
          app.kubernetes.io/name: {name}
      spec:
        serviceAccountName: {name}
        containers:
        - name: {name.split("-", 1)[1]}
          image: {image}
          imagePullPolicy: IfNotPresent
          env:
{envs}
{ports}          resources:
            requests:
              cpu: {requests[0]}
              memory: {requests[1]}
            limits:
              cpu: {limits[0]}
              memory: {limits[1]}
        - name: otel-collector
          image: otel/opentelemetry-collector-contrib:0.112.0
          args: ["--config=/etc/otel/config.yaml"]
          resources:
            requests:
              cpu: 50m
              memory: 128Mi
            limits:
              cpu: 200m
              memory: 256Mi
        terminationGracePeriodSeconds: 60
  status:
    availableReplicas: {ready}
    observedGeneration: {rng.randint(30, 200)}
    readyReplicas: {ready}
    replicas: {replicas}
    updatedReplicas: {replicas}"""


def _k8s_yaml(rng: random.Random) -> str:
    common = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317"), ("LOG_LEVEL", "info")]
    deps = [
        _deployment(
            rng,
            "payments-api",
            "registry.internal/payments/api:2024.11.2",
            8,
            8,
            ("500m", "768Mi"),
            ("2", "1Gi"),
            [*common, ("DB_POOL_MAX", "40"), ("PSP_TIMEOUT_MS", "8000")],
            8080,
        ),
        _deployment(
            rng,
            "payments-worker",
            "registry.internal/payments/worker:2024.11.3-rc2",
            6,
            5,
            ("1", "1Gi"),
            ("2", "1536Mi"),
            [
                *common,
                ("QUEUE", "payments.settlements"),
                ("WORKER_CONCURRENCY", "12"),
                ("DB_POOL_MAX", "20"),
            ],
            None,
        ),
        _deployment(
            rng,
            "payments-reconciler",
            "registry.internal/payments/reconciler:2024.10.7",
            2,
            2,
            ("250m", "512Mi"),
            ("1", "2Gi"),
            [*common, ("RECONCILE_CRON", "*/15 * * * *"), ("DB_POOL_MAX", "5")],
            None,
        ),
        _deployment(
            rng,
            "payments-webhooks",
            "registry.internal/payments/webhooks:2024.11.2",
            3,
            3,
            ("200m", "256Mi"),
            ("1", "512Mi"),
            [*common, ("SIGNING_KEY_REF", "vault:payments/webhooks#hmac")],
            8081,
        ),
    ]
    hpas = []
    for name, lo, hi, cpu, current in (
        ("payments-api", 6, 20, 65, 8),
        ("payments-worker", 4, 12, 70, 6),
        ("payments-webhooks", 3, 6, 75, 3),
    ):
        hpas.append(
            f"""- apiVersion: autoscaling/v2
  kind: HorizontalPodAutoscaler
  metadata:
    name: {name}
    namespace: payments
  spec:
    maxReplicas: {hi}
    metrics:
    - resource:
        name: cpu
        target:
          averageUtilization: {cpu}
          type: Utilization
      type: Resource
    minReplicas: {lo}
    scaleTargetRef:
      apiVersion: apps/v1
      kind: Deployment
      name: {name}
  status:
    currentReplicas: {current}
    desiredReplicas: {current}
    currentMetrics:
    - resource:
        current:
          averageUtilization: {rng.randint(30, 80)}
        name: cpu
      type: Resource"""
        )
    body = "\n".join([*deps[:1], *hpas[:1], deps[2], deps[1], *hpas[1:], deps[3]])
    return f'apiVersion: v1\nitems:\n{body}\nkind: List\nmetadata:\n  resourceVersion: ""'


# ---------------------------------------------------------------------------------------------
# 9. pytest with long tracebacks
# ---------------------------------------------------------------------------------------------


def _pytest_output(rng: random.Random) -> str:
    tests = [
        "test_full_refund_marks_order_refunded",
        "test_full_refund_emits_event",
        "test_partial_refund_updates_balance",
        "test_partial_refund_keeps_order_open",
        "test_refund_exceeding_capture_rejected",
        "test_refund_idempotency_key_reused",
        "test_refund_currency_mismatch_rejected",
        "test_refund_fee_policy_merchant_absorbs",
        "test_refund_fee_policy_customer_pays",
        "test_refund_fee_rounding",
        "test_refund_webhook_retries",
        "test_refund_audit_log_entry",
    ]
    lines = [
        "============================= test session starts ==============================",
        "platform linux -- Python 3.12.6, pytest-8.3.3, pluggy-1.5.0",
        "django: version: 5.1.3, settings: shop.settings.test (from ini)",
        "rootdir: /srv/app",
        "configfile: pytest.ini",
        "plugins: django-4.9.0, mock-3.14.0, freezegun-0.4.2, anyio-4.6.2.post1",
        "collected 214 items / 151 deselected / 63 selected",
        "",
    ]
    files = {
        "tests/billing/test_refunds.py": tests,
        "tests/billing/test_refund_api.py": [
            *(f"test_refund_api_case_{i}" for i in range(12)),
            "test_refund_webhook_signature",
            *(f"test_refund_api_case_{i}" for i in range(12, 19)),
        ],
        "tests/billing/test_refund_reports.py": [f"test_refund_report_{i}" for i in range(31)],
    }
    for path, names in files.items():
        marks = "".join(
            "F"
            if n in ("test_partial_refund_updates_balance", "test_refund_webhook_signature")
            else "."
            for n in names
        )
        lines.append(f"{path} {marks}")
    lines.append("")
    lines.append("=================================== FAILURES ===================================")
    lines.append("_____________________ test_partial_refund_updates_balance ______________________")
    lines.append("")
    lines.append("merchant_account = <Account acct_3121 balance_cents=10000 currency='EUR'>")
    lines.append(
        "captured_payment = <Payment pay_9QhT21 amount_cents=10000 fee_cents=50 status='captured'>"
    )
    lines.append("refund_service = <billing.refunds.RefundService object at 0x7f91c2a3b8e0>")
    lines.append("")
    lines.append("    @pytest.mark.django_db")
    lines.append(
        "    def test_partial_refund_updates_balance(merchant_account, captured_payment, refund_service):"
    )
    lines.append(
        '        """A 25.00 EUR partial refund lowers the merchant balance by exactly 25.00 EUR."""'
    )
    lines.append(
        '        refund_service.refund(captured_payment, amount_cents=2500, reason="customer_request")'
    )
    lines.append("        merchant_account.refresh_from_db()")
    lines.append(">       assert merchant_account.balance_cents == 7500")
    lines.append("E       AssertionError: assert 7450 == 7500")
    lines.append(
        "E        +  where 7450 = <Account acct_3121 balance_cents=7450 currency='EUR'>.balance_cents"
    )
    lines.append("")
    lines.append("tests/billing/test_refunds.py:142: AssertionError")
    lines.append("----------------------------- Captured log call ------------------------------")
    lines.append(
        "INFO     billing.refunds:refunds.py:61 refund requested payment=pay_9QhT21 amount_cents=2500 policy=platform_absorbs"
    )
    lines.append("DEBUG    billing.refunds:refunds.py:84 debit account=acct_3121 amount_cents=2500")
    lines.append(
        "DEBUG    billing.refunds:refunds.py:88 debit account=acct_3121 fee_cents=50 (refund fee)"
    )
    lines.append(
        "INFO     billing.refunds:refunds.py:97 refund created refund=re_44Lm0p status=pending"
    )
    lines.append("")
    lines.append("_________________________ test_refund_webhook_signature ________________________")
    lines.append("")
    lines.append("client = <django.test.client.Client object at 0x7f91c29f1d10>")
    lines.append("refund_event = {'id': 'evt_1PqR7s', 'type': 'refund.updated', 'data': {...}}")
    lines.append("")
    lines.append("    def test_refund_webhook_signature(client, refund_event):")
    lines.append("        body = json.dumps(refund_event).encode()")
    lines.append(">       signature = sign_payload(body)")
    lines.append("")
    lines.append("tests/billing/test_refund_api.py:211: ")
    lines.append("_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ ")
    lines.append("tests/billing/helpers.py:19: in sign_payload")
    lines.append('    secret = os.environ["PSP_WEBHOOK_SECRET"]')
    lines.append("_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ ")
    lines.append("")
    lines.append(
        "self = environ({'PATH': '/usr/local/bin:/usr/bin', 'DJANGO_SETTINGS_MODULE': 'shop.settings.test', ...})"
    )
    lines.append("key = 'PSP_WEBHOOK_SECRET'")
    lines.append("")
    lines.append("    def __getitem__(self, key):")
    lines.append("        try:")
    lines.append("            value = self._data[self.encodekey(key)]")
    lines.append("        except KeyError:")
    lines.append("            # raise KeyError with the original key value")
    lines.append(">           raise KeyError(key) from None")
    lines.append("E           KeyError: 'PSP_WEBHOOK_SECRET'")
    lines.append("")
    lines.append("/usr/local/lib/python3.12/os.py:714: KeyError")
    lines.append("=============================== warnings summary ===============================")
    for _ in range(6):
        mod = rng.choice(["billing/models.py", "billing/serializers.py", "shop/money.py"])
        lines.append(
            f"tests/billing/test_refund_reports.py::test_refund_report_{rng.randint(0, 30)}"
        )
        lines.append(
            f"  /srv/app/{mod}:{rng.randint(20, 300)}: RemovedInDjango60Warning: "
            "The default scheme will be changed from 'http' to 'https' in Django 6.0. "
            "Pass the forms.URLField.assume_scheme argument to silence this warning."
        )
        lines.append("")
    lines.append("-- Docs: https://docs.pytest.org/en/stable/how-to/capture-warnings.html")
    lines.append("")
    lines.append("---------- coverage: platform linux, python 3.12.6-final-0 -----------")
    lines.append("Name                              Stmts   Miss  Cover   Missing")
    lines.append("---------------------------------------------------------------")
    mods = [
        "billing/__init__.py",
        "billing/admin.py",
        "billing/apps.py",
        "billing/events.py",
        "billing/fees.py",
        "billing/ledger.py",
        "billing/models.py",
        "billing/refunds.py",
        "billing/reports.py",
        "billing/serializers.py",
        "billing/signals.py",
        "billing/tasks.py",
        "billing/urls.py",
        "billing/views.py",
        "billing/webhooks.py",
        "shop/money.py",
    ]
    tot_s = tot_m = 0
    for m in mods:
        s = rng.randint(10, 260)
        miss = rng.randint(0, s // 4)
        tot_s += s
        tot_m += miss
        missing = ", ".join(
            f"{a}-{a + rng.randint(1, 6)}"
            for a in sorted(rng.sample(range(10, s + 10), min(3, miss)))
        )
        lines.append(f"{m:<34}{s:>5}{miss:>7}{round(100 * (s - miss) / s):>6}%   {missing}")
    lines.append("---------------------------------------------------------------")
    lines.append(f"{'TOTAL':<34}{tot_s:>5}{tot_m:>7}{round(100 * (tot_s - tot_m) / tot_s):>6}%")
    lines.append("")
    lines.append("=========================== short test summary info ============================")
    lines.append(
        "FAILED tests/billing/test_refunds.py::test_partial_refund_updates_balance - AssertionError: assert 7450 == 7500"
    )
    lines.append(
        "FAILED tests/billing/test_refund_api.py::test_refund_webhook_signature - KeyError: 'PSP_WEBHOOK_SECRET'"
    )
    lines.append("========== 2 failed, 61 passed, 151 deselected, 6 warnings in 38.12s ===========")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# 10. npm audit
# ---------------------------------------------------------------------------------------------

_NPM_ADVISORIES: list[tuple[str, str, str, str, str, str]] = [
    # package, range, severity, title, ghsa, fix
    (
        "@babel/helpers",
        "<7.26.10",
        "moderate",
        "Babel has inefficient RegExp complexity in generated code with .replace when transpiling named capturing groups",
        "GHSA-968p-4wvh-cqc8",
        "auto",
    ),
    (
        "axios",
        "1.0.0 - 1.7.3",
        "high",
        "Server-Side Request Forgery in axios",
        "GHSA-8hc4-vh64-cxmj",
        "auto",
    ),
    (
        "body-parser",
        "<1.20.3",
        "high",
        "body-parser vulnerable to denial of service when url encoding is enabled",
        "GHSA-qwcr-r2fm-qrc7",
        "auto",
    ),
    (
        "braces",
        "<3.0.3",
        "high",
        "Uncontrolled resource consumption in braces",
        "GHSA-grv7-fg5c-xmjg",
        "auto",
    ),
    (
        "cookie",
        "<0.7.0",
        "low",
        "cookie accepts cookie name, path, and domain with out of bounds characters",
        "GHSA-pxg6-pf52-xh8x",
        "auto",
    ),
    (
        "cross-spawn",
        "7.0.0 - 7.0.4",
        "high",
        "Regular Expression Denial of Service (ReDoS) in cross-spawn",
        "GHSA-3xgq-45jj-v275",
        "auto",
    ),
    (
        "express",
        "<=4.21.0",
        "moderate",
        "express vulnerable to XSS via response.redirect()",
        "GHSA-qw6h-vgh9-j6wx",
        "auto",
    ),
    (
        "form-data",
        "4.0.0 - 4.0.3",
        "critical",
        "form-data uses unsafe random function in form-data for choosing boundary",
        "GHSA-fjxv-7rqg-78g4",
        "form-data@4.0.4",
    ),
    (
        "http-proxy-middleware",
        "<2.0.7",
        "high",
        "Denial of service in http-proxy-middleware",
        "GHSA-c7qv-q95q-8v27",
        "auto",
    ),
    (
        "jsonpath-plus",
        "<10.3.0",
        "critical",
        "JSONPath Plus allows Remote Code Execution",
        "GHSA-hw8r-x6gr-5gjp",
        "jsonpath-plus@10.3.0",
    ),
    (
        "micromatch",
        "<4.0.8",
        "moderate",
        "Regular Expression Denial of Service (ReDoS) in micromatch",
        "GHSA-952p-6rrq-rcjv",
        "auto",
    ),
    (
        "nanoid",
        "<3.3.8",
        "moderate",
        "Predictable results in nanoid generation when given non-integer values",
        "GHSA-mwcw-c2x4-8c55",
        "auto",
    ),
    (
        "path-to-regexp",
        "<0.1.12",
        "high",
        "path-to-regexp contains a ReDoS",
        "GHSA-rhx6-c78j-4q9w",
        "auto",
    ),
    (
        "postcss",
        "<8.4.31",
        "moderate",
        "PostCSS line return parsing error",
        "GHSA-7fh5-64p2-3v2j",
        "auto",
    ),
    (
        "send",
        "<0.19.0",
        "low",
        "send vulnerable to template injection that can lead to XSS",
        "GHSA-m6fv-jmcg-4jfg",
        "auto",
    ),
    (
        "serve-static",
        "<1.16.0",
        "low",
        "serve-static vulnerable to template injection that can lead to XSS",
        "GHSA-cm22-4g7w-348p",
        "auto",
    ),
    (
        "tar",
        "<6.2.1",
        "moderate",
        "Denial of service while parsing a tar file due to lack of folders count validation",
        "GHSA-f5x3-32g6-xq36",
        "auto",
    ),
    (
        "undici",
        "<5.28.5",
        "moderate",
        "Use of Insufficiently Random Values in undici",
        "GHSA-c76h-2ccp-4975",
        "auto",
    ),
    (
        "ws",
        "8.0.0 - 8.17.0",
        "high",
        "ws affected by a DoS when handling a request with many HTTP headers",
        "GHSA-3h5v-q93c-6h6q",
        "auto",
    ),
    (
        "xml-crypto",
        "<6.0.1",
        "critical",
        "xml-crypto Vulnerable to XML Signature Verification Bypass via Multiple SignedInfo References",
        "GHSA-9p8x-f768-wp2g",
        "xml-crypto@6.0.1",
    ),
    ("yaml", "2.0.0 - 2.2.1", "high", "Uncaught Exception in yaml", "GHSA-f9xv-q969-pqx4", "auto"),
    (
        "semver",
        "7.0.0 - 7.5.1",
        "moderate",
        "semver vulnerable to Regular Expression Denial of Service",
        "GHSA-c2qf-rxjj-qqgw",
        "auto",
    ),
    (
        "tough-cookie",
        "<4.1.3",
        "moderate",
        "tough-cookie Prototype Pollution vulnerability",
        "GHSA-72xf-g2v4-qvf3",
        "auto",
    ),
    (
        "word-wrap",
        "<1.2.4",
        "moderate",
        "word-wrap vulnerable to Regular Expression Denial of Service",
        "GHSA-j8xg-fqg3-53r7",
        "auto",
    ),
    (
        "ip",
        "*",
        "high",
        "ip SSRF improper categorization in isPublic",
        "GHSA-2p57-rm9w-gvfp",
        "none",
    ),
    (
        "follow-redirects",
        "<=1.15.5",
        "moderate",
        "follow-redirects' Proxy-Authorization header kept across hosts",
        "GHSA-cxjh-pqwp-8mfp",
        "auto",
    ),
    (
        "ejs",
        "<3.1.10",
        "moderate",
        "ejs lacks certain pollution protection",
        "GHSA-ghr5-ch3p-vcr6",
        "auto",
    ),
]

_NPM_DEPENDENTS = {
    "jsonpath-plus": [
        "node_modules/jsonpath-plus",
        "  @kubernetes/client-node  0.18.0 - 0.22.3",
        "  Depends on vulnerable versions of jsonpath-plus",
        "  node_modules/@kubernetes/client-node",
    ],
    "xml-crypto": [
        "node_modules/xml-crypto",
        "  @node-saml/node-saml  <=5.0.0",
        "  Depends on vulnerable versions of xml-crypto",
        "  node_modules/@node-saml/node-saml",
        "  passport-saml  *",
        "  Depends on vulnerable versions of @node-saml/node-saml",
        "  node_modules/passport-saml",
    ],
}


def _npm_audit(rng: random.Random) -> str:
    out = ["# npm audit report", ""]
    for package, versions, severity, title, ghsa, fix in _NPM_ADVISORIES:
        out.append(f"{package}  {versions}")
        out.append(f"Severity: {severity}")
        out.append(f"{title} - https://github.com/advisories/{ghsa}")
        if fix == "auto":
            out.append("fix available via `npm audit fix`")
        elif fix == "none":
            out.append("No fix available")
        else:
            out.append("fix available via `npm audit fix --force`")
            out.append(f"Will install {fix}, which is a breaking change")
        out.extend(_NPM_DEPENDENTS.get(package, [f"node_modules/{package}"]))
        if rng.random() < 0.3 and package not in _NPM_DEPENDENTS:
            out.append(
                f"node_modules/{rng.choice(['express', 'http-proxy', '@sentry/node'])}/node_modules/{package}"
            )
        out.append("")
    counts = {"low": 0, "moderate": 0, "high": 0, "critical": 0}
    for adv in _NPM_ADVISORIES:
        counts[adv[2]] += 1
    counts["critical"] += 3  # the dependents listed above inherit the critical severity
    out.append(
        f"{sum(counts.values())} vulnerabilities ({counts['low']} low, {counts['moderate']} moderate, "
        f"{counts['high']} high, {counts['critical']} critical)"
    )
    out.append("")
    out.append("To address issues that do not require attention, run:")
    out.append("  npm audit fix")
    out.append("")
    out.append("To address all issues possible (including breaking changes), run:")
    out.append("  npm audit fix --force")
    out.append("")
    out.append("Some issues need review, and may require choosing")
    out.append("a different dependency.")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# 11. Slack incident channel export
# ---------------------------------------------------------------------------------------------

_SLACK = [
    (
        "01:58",
        "pagerbot",
        "Triggered: *[P2] checkout-api error rate > 2% (5m)* · service: checkout-api · <https://pd.example/incidents/Q1ZK0W|PD-Q1ZK0W>",
    ),
    (
        "02:01",
        "dana.okafor",
        "ack, looking. error rate went from 0.3% to 2.4% around 01:55 then back down. flapping?",
    ),
    ("02:03", "pagerbot", "Resolved: *[P2] checkout-api error rate > 2% (5m)*"),
    (
        "02:07",
        "pagerbot",
        "Triggered: *[P1] checkout-api error rate > 10% (5m)* · service: checkout-api · <https://pd.example/incidents/Q1ZK3M|PD-Q1ZK3M>",
    ),
    (
        "02:07",
        "incident-bot",
        ':rotating_light: Incident *INC-4471* declared: "Checkout failing for EU customers" · Severity: SEV-1 · Commander: @dana.okafor · Impact started: 02:07 UTC',
    ),
    (
        "02:09",
        "dana.okafor",
        "Taking IC. @marco.bianchi can you pull up the checkout-api dashboards? @li.wei you're on comms",
    ),
    (
        "02:10",
        "li.wei",
        'On it. Posting initial statuspage update: "We are investigating elevated errors at checkout."',
    ),
    (
        "02:12",
        "marco.bianchi",
        "5xx at ~34% on checkout-api, p99 latency 28s. Redis latency looks a bit elevated too (p99 4ms -> 9ms)",
    ),
    (
        "02:13",
        "dana.okafor",
        "could it be the redis failover from yesterday? INC-4459 was sessions cache",
    ),
    (
        "02:15",
        "marco.bianchi",
        "redis CPU is 22%, no evictions, no failover events since 2024-11-20 14:31. don't think it's redis",
    ),
    (
        "02:16",
        "sara.nguyen",
        "CDN is clean fwiw, edge 5xx is all passthrough from origin. cache hit ratio normal at 91%",
    ),
    (
        "02:18",
        "marco.bianchi",
        "seeing a lot of these in checkout-api logs: `sqlalchemy.exc.TimeoutError: QueuePool limit of size 10 overflow 0 reached, connection timed out, timeout 30.00`",
    ),
    ("02:19", "dana.okafor", "pool size 10?? it's been 50 forever. did something change?"),
    (
        "02:21",
        "tom.eriksen",
        "checking deploys. checkout-api v3.19.0 rolled out at 01:52 UTC (ArgoCD sync by ci-bot). v3.18.2 was the previous version",
    ),
    (
        "02:23",
        "tom.eriksen",
        'diff between v3.18.2 and v3.19.0 has 14 PRs. one of them is #8812 "Move DB settings to shared config chart"',
    ),
    (
        "02:24",
        "marco.bianchi",
        "orders-db connections are at 180/800, db itself looks fine. it's the app-side pool that's starving",
    ),
    (
        "02:26",
        "tom.eriksen",
        "yep, #8812 moved the env var to the shared chart but the chart default is `DB_POOL_MAX=10` and our values override uses the old key `DATABASE_POOL_SIZE` which nothing reads anymore",
    ),
    (
        "02:27",
        "dana.okafor",
        "ok. options: (a) roll back to v3.18.2 (b) hotfix values. rollback is faster and known-good. any objections?",
    ),
    (
        "02:28",
        "priya.raman",
        "payments side: we see ~2,900 failed authorizations since 02:07, no double charges so far. fine with rollback",
    ),
    (
        "02:29",
        "dana.okafor",
        "Decision: rolling back checkout-api to v3.18.2. @tom.eriksen please drive",
    ),
    (
        "02:31",
        "li.wei",
        'statuspage updated: "Identified - a configuration change is causing checkout failures in EU. Rolling back."',
    ),
    (
        "02:34",
        "tom.eriksen",
        "argocd rollback started. note the canary analysis will hold for 5m before full promotion, I'm skipping it given SEV-1",
    ),
    (
        "02:41",
        "tom.eriksen",
        "hmm rollback stuck: `ImagePullBackOff` on 2 pods in eu-west-1c, registry mirror there is slow. retrying",
    ),
    (
        "02:52",
        "sara.nguyen",
        "registry mirror in euw1c had a full disk, cleaned up, pulls are going through now",
    ),
    ("03:05", "tom.eriksen", "12/20 pods on v3.18.2. error rate dropping, 11%"),
    ("03:18", "marco.bianchi", "17/20 pods on v3.18.2, error rate 4%"),
    (
        "03:29",
        "priya.raman",
        "we're going to need to retry the failed authorizations once it's stable. drafting the list, 2,913 orders",
    ),
    (
        "03:41",
        "tom.eriksen",
        "all 20/20 pods on v3.18.2, pool back at size 50. error rate 0.2%, p99 latency 640ms",
    ),
    (
        "03:41",
        "incident-bot",
        "INC-4471 status changed to *Mitigated* by @dana.okafor at 03:41 UTC",
    ),
    (
        "03:45",
        "li.wei",
        'statuspage: "Monitoring - A fix has been implemented and we are monitoring the results."',
    ),
    (
        "03:58",
        "dana.okafor",
        "follow-ups I have so far: 1) fix chart default / values key (owner @tom.eriksen) 2) alert on app-side pool saturation (owner @marco.bianchi) 3) retry 2,913 failed authorizations (owner @priya.raman) 4) registry mirror disk alert (owner @sara.nguyen)",
    ),
    (
        "04:10",
        "priya.raman",
        "retry job submitted: job_id=retry-auth-20241121-0410, 2,913 orders, running at 20/s",
    ),
    (
        "04:20",
        "incident-bot",
        "INC-4471 status changed to *Resolved* by @dana.okafor at 04:20 UTC · duration 2h13m",
    ),
    (
        "04:22",
        "li.wei",
        'statuspage: "Resolved - This incident has been resolved." Postmortem scheduled for Mon 2024-11-25 15:00 CET',
    ),
    (
        "04:31",
        "priya.raman",
        "retry job done: 2,871 succeeded, 42 declined by issuer (normal decline rate). customers with declines get the usual email",
    ),
]


def _slack_export(rng: random.Random) -> str:
    users = {
        "pagerbot": "U01PAGER",
        "incident-bot": "U02INCBT",
        "dana.okafor": "U03DOKAF",
        "marco.bianchi": "U04MBIAN",
        "li.wei": "U05LWEI0",
        "sara.nguyen": "U06SNGUY",
        "tom.eriksen": "U07TERIK",
        "priya.raman": "U08PRAMA",
    }
    messages = []
    for hhmm, user, text in _SLACK:
        hour, minute = (int(x) for x in hhmm.split(":"))
        epoch = 1732150800 + (hour - 1) * 3600 + minute * 60 + rng.randint(0, 59)
        message: dict[str, Any] = {
            "type": "message",
            "user": users[user],
            "user_name": user,
            "ts": f"{epoch}.{rng.randint(100000, 999999)}",
            "time_utc": f"2024-11-21 {hhmm} UTC",
            "text": text,
        }
        if rng.random() < 0.3:
            message["reactions"] = [
                {"name": rng.choice(["eyes", "+1", "white_check_mark"]), "count": rng.randint(1, 4)}
            ]
        messages.append(message)
    body = {
        "channel": {
            "id": "C07INC4471",
            "name": "inc-2024-1121-checkout",
            "topic": "SEV-1 checkout failures EU | IC: dana.okafor",
        },
        "range": {"oldest": "2024-11-21T01:00:00Z", "latest": "2024-11-21T06:00:00Z"},
        "message_count": len(messages),
        "messages": messages,
    }
    return json.dumps(body, indent=1, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# 12. Billing invoice JSON
# ---------------------------------------------------------------------------------------------

_BILL_LINES: list[tuple[str, str, str, str, str, str]] = [
    # service, usage_type, unit, quantity, amount, previous
    ("AmazonEC2", "EUW1-BoxUsage:m6i.2xlarge", "Hrs", "8928", "3427.49", "3317.76"),
    ("AmazonEC2", "EUW1-BoxUsage:c6g.xlarge", "Hrs", "5208", "708.29", "685.44"),
    ("AmazonEC2", "EUW1-EBS:VolumeUsage.gp3", "GB-Mo", "38400", "3379.20", "3302.40"),
    ("AmazonEC2", "EUW1-EBS:SnapshotUsage", "GB-Mo", "21750", "1087.50", "1012.35"),
    ("AmazonEC2", "EUW1-NatGateway-Hours", "Hrs", "2232", "107.14", "103.68"),
    ("AmazonEC2", "EUW1-NatGateway-Bytes", "GB", "188950", "9540.85", "1204.33"),
    ("AmazonEC2", "EUW1-DataTransfer-Regional-Bytes", "GB", "412300", "4123.00", "711.80"),
    ("AmazonEC2", "EUW1-DataTransfer-Out-Bytes", "GB", "31200", "2532.00", "2418.60"),
    ("AmazonRDS", "EUW1-Multi-AZUsage:db.r6g.2xlarge", "Hrs", "744", "2202.24", "2131.20"),
    ("AmazonRDS", "EUW1-RDS:Multi-AZ-GP3-Storage", "GB-Mo", "1000", "276.00", "276.00"),
    ("AmazonRDS", "EUW1-InstanceUsage:db.r6g.large", "Hrs", "744", "203.86", "197.28"),
    ("AmazonElastiCache", "EUW1-NodeUsage:cache.r6g.large", "Hrs", "2232", "546.84", "529.20"),
    ("AmazonS3", "EUW1-TimedStorage-ByteHrs", "GB-Mo", "94210", "2166.83", "2101.19"),
    ("AmazonS3", "EUW1-Requests-Tier1", "Requests", "41200000", "206.00", "198.55"),
    ("AmazonS3", "EUW1-Requests-Tier2", "Requests", "388000000", "155.20", "149.87"),
    ("AmazonCloudWatch", "EUW1-DataProcessing-Bytes", "GB", "7811", "4139.83", "1287.65"),
    ("AmazonCloudWatch", "EUW1-TimedStorage-ByteHrs", "GB-Mo", "5120", "153.60", "141.30"),
    ("AmazonCloudWatch", "EUW1-CW:MetricMonitorUsage", "Metrics", "6100", "1830.00", "1794.00"),
    ("AWSELB", "EUW1-LCUUsage", "LCU-Hrs", "19480", "157.79", "151.02"),
    ("AWSELB", "EUW1-LoadBalancerUsage", "Hrs", "2232", "56.02", "54.22"),
    ("AmazonECR", "EUW1-TimedStorage-ByteHrs", "GB-Mo", "1840", "184.00", "181.10"),
    ("AWSLambda", "EUW1-Lambda-GB-Second", "GB-Seconds", "9400000", "156.67", "149.20"),
    ("AWSLambda", "EUW1-Request", "Requests", "48000000", "9.60", "9.12"),
    ("AmazonRoute53", "HostedZone", "HostedZone", "14", "7.00", "7.00"),
    ("AmazonRoute53", "DNS-Queries", "Queries", "910000000", "364.00", "352.40"),
    ("AWSKMS", "EUW1-KMS-Requests", "Requests", "61000000", "183.00", "176.70"),
    ("AmazonGuardDuty", "EUW1-PaidEventsAnalyzed", "Events", "190000000", "190.00", "184.10"),
    ("AWSSupportBusiness", "Dollar", "USD", "1", "3279.77", "2246.99"),
]


def _billing_invoice(rng: random.Random) -> str:
    items: list[dict[str, Any]] = []
    for service, usage_type, unit, quantity, amount, previous in _BILL_LINES:
        delta = (int(amount.replace(".", "")) - int(previous.replace(".", ""))) / 100
        items.append(
            {
                "line_item_id": f"li-{rng.randint(10**9, 10**10 - 1)}",
                "service": service,
                "usage_type": usage_type,
                "region": "Global"
                if service in ("AmazonRoute53", "AWSSupportBusiness")
                else "eu-west-1",
                "usage_quantity": quantity,
                "unit": unit,
                "amount": {"value": amount, "currency": "USD"},
                "previous_period_amount": {"value": previous, "currency": "USD"},
                "change": f"{delta:+.2f}",
                "cost_allocation_tags": {
                    "team": rng.choice(["platform", "orders", "data", "payments"])
                },
            }
        )
    total = sum(int(a.replace(".", "")) for *_, a, _ in _BILL_LINES)
    previous_total = sum(int(p.replace(".", "")) for *_, p in _BILL_LINES)
    body = {
        "invoice_id": "INV-2024-10-4471220988",
        "account_id": "4471-2209-8813",
        "billing_period": {"start": "2024-10-01", "end": "2024-10-31"},
        "compare_period": {"start": "2024-09-01", "end": "2024-09-30"},
        "status": "ISSUED",
        "currency": "USD",
        "total": {"value": f"{total // 100}.{total % 100:02d}", "currency": "USD"},
        "previous_period_total": {
            "value": f"{previous_total // 100}.{previous_total % 100:02d}",
            "currency": "USD",
        },
        "credits": [
            {
                "id": "cr-88127",
                "description": "EDP discount 3%",
                "value": "0.00",
                "note": "applied at payer level",
            }
        ],
        "group_by": ["service", "usage_type"],
        "line_items": items,
    }
    return json.dumps(body, indent=2)


# ---------------------------------------------------------------------------------------------
# The set
# ---------------------------------------------------------------------------------------------

_SPECS: list[tuple[str, dict[str, Any], str, Callable[[random.Random], str]]] = [
    (
        "gha_failed_test_job",
        {
            "name": "github_actions_job_log",
            "args": {
                "repo": "northwind/ledger-service",
                "run_id": 11842907364,
                "job": "test (3.12)",
                "strip_timestamps": True,
            },
        },
        "CI went red on my PR #2291 in ledger-service. Which test failed and why?",
        _ci_log,
    ),
    (
        "checkout_ndjson_gateway_failures",
        {
            "name": "logs_query",
            "args": {
                "service": "checkout-api",
                "env": "prod",
                "since": "2024-11-20T13:00:00Z",
                "until": "2024-11-20T14:00:00Z",
                "limit": 500,
            },
        },
        "Which checkout orders failed in the last hour because the payment gateway errored or "
        "timed out (not normal card declines), and what did the gateway return?",
        _ndjson_log,
    ),
    (
        "kafka_exporter_metrics",
        {
            "name": "http_get",
            "args": {"url": "http://kafka-exporter.monitoring.svc:9308/metrics"},
        },
        "Which Kafka consumer group is falling furthest behind right now, on which topic and "
        "partition, and how big is the lag?",
        _prometheus_metrics,
    ),
    (
        "terraform_plan_prod",
        {
            "name": "run_shell",
            "args": {
                "command": "terraform plan -no-color -var-file=env/prod.tfvars",
                "cwd": "infra/prod",
            },
        },
        "Before I apply this: will the prod terraform plan destroy or replace anything? Which "
        "resources, and why?",
        _terraform_plan,
    ),
    (
        "feature_flags_eu",
        {
            "name": "flags_api_list",
            "args": {
                "project": "storefront",
                "environment": "production",
                "include_rules": True,
                "page_size": 50,
            },
        },
        "Which feature flags are enabled for the EU tenant in production and at what rollout percentage?",
        _flags_api,
    ),
    (
        "build_agent_disk_full",
        {
            "name": "ssh_exec",
            "args": {
                "host": "build-agent-4",
                "command": "df -h; echo; sudo du -xh --max-depth=5 / 2>/dev/null | sort -rh | head -80; "
                "echo; docker system df; ...",
            },
        },
        "Why is the disk on build-agent-4 full? What's eating the space and what can we reclaim?",
        _disk_usage,
    ),
    (
        "nginx_login_bruteforce",
        {
            "name": "read_log",
            "args": {"host": "edge-lb-2", "path": "/var/log/nginx/access.log", "tail": 31},
        },
        "Someone seems to be brute-forcing our login. Which IPs are hammering the login endpoint "
        "with 401s, and what user agent are they using?",
        _nginx_log,
    ),
    (
        "k8s_payments_worker",
        {
            "name": "kubectl",
            "args": {"command": "get deploy,hpa -n payments -o yaml"},
        },
        "What memory limit, replica count and image tag is payments-worker running with in the "
        "payments namespace, and how far can it autoscale?",
        _k8s_yaml,
    ),
    (
        "pytest_partial_refund",
        {
            "name": "run_shell",
            "args": {
                "command": "pytest tests/billing -k refund --tb=long --cov=billing",
                "cwd": "/srv/app",
            },
        },
        "Why is test_partial_refund_updates_balance failing?",
        _pytest_output,
    ),
    (
        "npm_audit_critical",
        {
            "name": "run_shell",
            "args": {"command": "npm audit --omit=dev", "cwd": "web/storefront"},
        },
        "Which of our production npm dependencies have critical vulnerabilities, and which versions fix them?",
        _npm_audit,
    ),
    (
        "slack_incident_checkout",
        {
            "name": "slack_export_channel",
            "args": {
                "channel": "#inc-2024-1121-checkout",
                "oldest": "2024-11-21T01:00:00Z",
                "latest": "2024-11-21T06:00:00Z",
            },
        },
        "What was the root cause of last night's checkout outage, when did it start and when was it mitigated?",
        _slack_export,
    ),
    (
        "billing_october_jump",
        {
            "name": "billing_get_invoice",
            "args": {
                "account_id": "4471-2209-8813",
                "invoice_month": "2024-10",
                "compare_to": "2024-09",
                "group_by": ["service", "usage_type"],
            },
        },
        "Why did our cloud bill jump in October compared to September? Which line items drove the increase?",
        _billing_invoice,
    ),
]


def build_heldout2_outputs() -> list[ToolOutput]:
    """Build the twelve held-out tool outputs, deterministically.

    Returns:
        One :class:`ToolOutput` per case, in a fixed order.
    """
    outputs: list[ToolOutput] = []
    for name, tool_call, request, builder in _SPECS:
        rng = random.Random(f"heldout2-{name}")
        outputs.append(
            ToolOutput(name=name, tool_call=tool_call, request=request, output=builder(rng))
        )
    return outputs


def _normalise(text: str) -> str:
    return " ".join(text.split())


def check_facts(outputs: list[ToolOutput], facts_path: Path = HELDOUT2_FACTS_PATH) -> int:
    """Check that every hand-written fact occurs verbatim in its output.

    A fact is a list of accepted spellings; its first spelling must occur in the output
    (whitespace-normalised, case-sensitive).

    Args:
        outputs: The built outputs.
        facts_path: The facts file.

    Returns:
        The number of facts checked.

    Raises:
        ValueError: A fact is missing from its output, or the facts and outputs disagree.
    """
    facts: dict[str, Any] = json.loads(facts_path.read_text())
    by_name = {o["name"]: _normalise(o["output"]) for o in outputs}
    named = {key for key in facts if not key.startswith("_")}
    if named != set(by_name):
        raise ValueError(f"facts and outputs name different cases: {sorted(named ^ set(by_name))}")
    problems: list[str] = []
    count = 0
    for name, text in by_name.items():
        for fact in facts[name]:
            count += 1
            if not fact or not isinstance(fact, list):
                problems.append(f"{name}: malformed fact {fact!r}")
            elif _normalise(fact[0]) not in text:
                problems.append(f"{name}: {fact[0]!r} not in the output")
    if problems:
        raise ValueError("; ".join(problems))
    return count


def main() -> None:
    """Write ``heldout2/tool_outputs.json`` and check the facts against it."""
    outputs = build_heldout2_outputs()
    HELDOUT2_PATH.parent.mkdir(parents=True, exist_ok=True)
    HELDOUT2_PATH.write_text(json.dumps(outputs, indent=1) + "\n")
    count = check_facts(outputs)
    print(f"wrote {len(outputs)} outputs to {HELDOUT2_PATH}; {count} facts occur verbatim")


if __name__ == "__main__":
    main()
