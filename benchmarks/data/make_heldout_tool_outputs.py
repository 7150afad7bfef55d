"""Build ``heldout/tool_outputs.json``: the held-out set of the query-aware retention benchmark.

``python -m benchmarks.data.make_heldout_tool_outputs`` rewrites the outputs (seeded, so the
same every time). Twelve tool outputs of 2,000-5,000 tokens, each what one tool returned for
one call an agent made to answer one user request: a build log, a git diff, a TOML config, a
Helm values file, a markdown table, a CSV export, a ticket search, a trace, a SQL result, a
``kubectl describe node``, a journal and an alert listing. The must-keep facts in
``heldout/facts.json`` were written by hand by reading each output against its request, and
this set was written before the ranking was tuned on the other set
(``tool_outputs.json``). It measured that first round of tuning blind; the second and third
rounds were tuned on it (see ``docs/compaction.md``, "Measured").
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["HELDOUT_PATH", "build_heldout_outputs"]

HELDOUT_PATH = Path(__file__).resolve().parent / "heldout" / "tool_outputs.json"


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _build_log(rng: random.Random) -> str:
    modules = ("billing", "invoices", "ledger", "tax", "exports", "notify", "auth", "reports")
    out = [
        "2026-11-28T02:00:04.112Z ##[group]Run actions/checkout@v4",
        "2026-11-28T02:00:05.870Z HEAD is now at 9c41e7ab Merge pull request #2291 from "
        "fin/rounding-mode",
        "2026-11-28T02:00:05.902Z ##[endgroup]",
        "2026-11-28T02:00:06.013Z ##[group]Run actions/setup-python@v5",
        "2026-11-28T02:00:09.447Z Successfully set up CPython (3.12.7)",
        "2026-11-28T02:00:09.451Z ##[endgroup]",
        "2026-11-28T02:00:09.520Z ##[group]Run pip install -r requirements/ci.txt",
    ]
    packages = (
        "attrs",
        "certifi",
        "charset-normalizer",
        "decimal-utils",
        "freezegun",
        "idna",
        "iniconfig",
        "packaging",
        "pluggy",
        "psycopg",
        "pydantic",
        "pydantic-core",
        "pytest",
        "pytest-xdist",
        "python-dateutil",
        "requests",
        "six",
        "sqlalchemy",
        "typing-extensions",
        "urllib3",
    )
    for name in packages:
        version = f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
        out.append(
            f"2026-11-28T02:00:{rng.randint(10, 40):02d}.{rng.randint(100, 999)}Z "
            f"Collecting {name}=={version}"
        )
        out.append(
            f"2026-11-28T02:00:{rng.randint(10, 40):02d}.{rng.randint(100, 999)}Z   Downloading "
            f"{name.replace('-', '_')}-{version}-py3-none-any.whl ({rng.randint(20, 900)} kB)"
        )
    out.append(
        "2026-11-28T02:00:44.301Z Successfully installed "
        + " ".join(f"{p}-{rng.randint(1, 9)}.{rng.randint(0, 20)}" for p in packages[:10])
    )
    out.append("2026-11-28T02:00:44.560Z ##[endgroup]")
    out.append("2026-11-28T02:00:44.601Z ##[group]Run pytest -n 4 --maxfail=50 tests/")
    out.append(
        "2026-11-28T02:00:46.020Z ============================= test session starts "
        "=============================="
    )
    out.append("2026-11-28T02:00:46.021Z platform linux -- Python 3.12.7, pytest-8.3.3")
    out.append("2026-11-28T02:00:46.300Z created: 4/4 workers")
    out.append("2026-11-28T02:00:47.910Z 4 workers [1184 items]")
    failing_at = 23
    for i in range(38):
        if i == failing_at:
            out.append(
                "2026-11-28T02:01:31.204Z [gw2] FAILED tests/test_invoice_export.py::"
                "test_export_rounding[EUR-half_even]"
            )
            continue
        module = rng.choice(modules)
        test = rng.choice(("create", "update", "list", "delete", "totals", "schema", "retry"))
        out.append(
            f"2026-11-28T02:01:{i % 60:02d}.{rng.randint(100, 999)}Z [gw{rng.randint(0, 3)}] "
            f"PASSED tests/test_{module}.py::test_{test}_{rng.randint(1, 40)}"
        )
    out += [
        "2026-11-28T02:02:14.880Z =================================== FAILURES "
        "===================================",
        "2026-11-28T02:02:14.881Z _________________ test_export_rounding[EUR-half_even] "
        "_________________",
        "2026-11-28T02:02:14.882Z [gw2] linux -- Python 3.12.7 /opt/hostedtoolcache/Python/"
        "3.12.7/x64/bin/python",
        "2026-11-28T02:02:14.883Z     def test_export_rounding(currency, mode):",
        "2026-11-28T02:02:14.883Z         invoice = make_invoice(lines=LINES, currency=currency)",
        "2026-11-28T02:02:14.884Z         row = export_row(invoice, rounding=mode)",
        "2026-11-28T02:02:14.884Z >       assert row.total == Decimal('1049.95')",
        "2026-11-28T02:02:14.885Z E       AssertionError: assert Decimal('1049.94') == "
        "Decimal('1049.95')",
        "2026-11-28T02:02:14.886Z tests/test_invoice_export.py:88: AssertionError",
        "2026-11-28T02:02:14.886Z ----------------------------- Captured log call "
        "-----------------------------",
        "2026-11-28T02:02:14.887Z WARNING  billing.export:export.py:212 rounding mode "
        "ROUND_HALF_EVEN applied per line, not per invoice",
    ]
    for _ in range(6):
        out.append(
            f"2026-11-28T02:02:{rng.randint(15, 40):02d}.{rng.randint(100, 999)}Z "
            f"  /home/runner/work/fin/fin/.venv/lib/python3.12/site-packages/"
            f"{rng.choice(('sqlalchemy', 'pydantic', 'psycopg'))}/"
            f"{rng.choice(('orm', 'engine', 'types', 'pool'))}.py:{rng.randint(10, 900)}: "
            f"DeprecationWarning: {rng.choice(('utcnow() is deprecated', 'pool_pre_ping'))}"
        )
    out += [
        "2026-11-28T02:02:41.010Z =========================== short test summary info "
        "============================",
        "2026-11-28T02:02:41.011Z FAILED tests/test_invoice_export.py::"
        "test_export_rounding[EUR-half_even] - AssertionError: assert Decimal('1049.94') == "
        "Decimal('1049.95')",
        "2026-11-28T02:02:41.012Z ============ 1 failed, 1171 passed, 12 skipped, 38 warnings "
        "in 113.82s (0:01:53) ============",
        "2026-11-28T02:02:41.330Z ##[error]Process completed with exit code 1.",
        "2026-11-28T02:02:41.400Z ##[group]Run actions/upload-artifact@v4",
        "2026-11-28T02:02:42.990Z Artifact junit-report.xml uploaded (412 KB)",
        "2026-11-28T02:02:43.002Z ##[endgroup]",
        "2026-11-28T02:02:43.100Z Cleaning up orphan processes",
    ]
    return "\n".join(out)


def _diff(rng: random.Random) -> str:
    parts = []
    noise_files = [
        "indexer/tokenize/analyzers.py",
        "indexer/api/handlers.py",
        "indexer/metrics.py",
        "docs/operations.md",
        "tests/test_handlers.py",
    ]

    def noise_hunk(path: str) -> str:
        start = rng.randint(20, 600)
        body = []
        for _ in range(rng.randint(5, 8)):
            name = rng.choice(("request", "doc", "field", "shard", "token", "payload"))
            verb = rng.choice(("parse", "emit", "count", "normalize", "check", "log"))
            body.append(f"     {name} = {verb}_{name}({name}, ctx)")
        body.append(f"-    logger.debug('{rng.choice(('old', 'legacy'))} path %s', {name})")
        body.append(f"+    logger.debug('path %s took %.1f ms', {name}, elapsed_ms)")
        return f"@@ -{start},{len(body) - 1} +{start},{len(body) - 1} @@\n" + "\n".join(body)

    for path in noise_files[:3]:
        parts.append(f"diff --git a/{path} b/{path}\nindex {_hex(rng, 7)}..{_hex(rng, 7)} 100644")
        parts.append(f"--- a/{path}\n+++ b/{path}")
        parts.extend(noise_hunk(path) for _ in range(4))
    parts.append(
        "diff --git a/indexer/config/batching.yaml b/indexer/config/batching.yaml\n"
        "index 3e1f0a2..b77c9d4 100644\n"
        "--- a/indexer/config/batching.yaml\n"
        "+++ b/indexer/config/batching.yaml\n"
        "@@ -4,12 +4,13 @@ bulk:\n"
        "   endpoint: http://es-bulk.search.svc:9200/_bulk\n"
        "-  batch_size: 500\n"
        "+  batch_size: 2000\n"
        "-  flush_interval_ms: 1000\n"
        "+  flush_interval_ms: 250\n"
        "   max_concurrent_requests: 4\n"
        "   retry:\n"
        "     max_attempts: 5\n"
        "     backoff: exponential\n"
        " queue:\n"
        "-  max_pending_docs: 50000\n"
        "+  max_pending_docs: 200000\n"
        "   spill_to_disk: false"
    )
    parts.append(
        "diff --git a/deploy/indexer/deployment.yaml b/deploy/indexer/deployment.yaml\n"
        "index 0a9d5e1..4c2b8f7 100644\n"
        "--- a/deploy/indexer/deployment.yaml\n"
        "+++ b/deploy/indexer/deployment.yaml\n"
        "@@ -31,9 +31,9 @@ spec:\n"
        "           image: registry.internal/search/indexer:4.8.0\n"
        "           env:\n"
        "             - name: JAVA_TOOL_OPTIONS\n"
        '-              value: "-Xmx3g"\n'
        '+              value: "-Xmx6g"\n'
        "           resources:\n"
        "             limits:\n"
        "-              memory: 4Gi\n"
        "+              memory: 8Gi\n"
        "               cpu: '2'"
    )
    for path in noise_files[3:]:
        parts.append(f"diff --git a/{path} b/{path}\nindex {_hex(rng, 7)}..{_hex(rng, 7)} 100644")
        parts.append(f"--- a/{path}\n+++ b/{path}")
        parts.extend(noise_hunk(path) for _ in range(5))
    parts.append(
        "diff --git a/CHANGELOG.md b/CHANGELOG.md\n--- a/CHANGELOG.md\n+++ b/CHANGELOG.md\n"
        "@@ -1,4 +1,9 @@\n # Changelog\n+## 4.8.0\n+- Larger bulk batches for re-index jobs.\n"
        "+- Faster flushes.\n+- Debug logs report elapsed time.\n+\n ## 4.7.2"
    )
    return "\n".join(parts)


def _toml(rng: random.Random) -> str:
    out = [
        "# gateway.toml - edge gateway, prod-eu",
        "[server]",
        'listen = "0.0.0.0:8443"',
        "worker_threads = 8",
        'tls_cert = "/etc/gateway/tls/edge.crt"',
        'tls_key = "/etc/gateway/tls/edge.key"',
        "",
        "[defaults]",
        "connect_timeout_ms = 500",
        "read_timeout_ms = 5000",
        "rate_limit_rps = 200",
        "rate_limit_burst = 400",
        "",
    ]
    routes = [
        ("/v1/catalog", "catalog"),
        ("/v1/search", "search"),
        ("/v2/cart", "cart"),
        ("/v2/payments", "payments"),
        ("/v1/users", "users"),
        ("/v2/shipping", "shipping"),
        ("/v1/reviews", "reviews"),
        ("/v2/promotions", "promotions"),
        ("/v1/inventory", "inventory"),
        ("/v2/recommendations", "recs"),
        ("/v1/media", "media"),
        ("/v2/loyalty", "loyalty"),
        ("/v1/addresses", "addresses"),
        ("/v2/returns", "returns"),
        ("/v1/wishlist", "wishlist"),
        ("/v2/invoices", "invoices"),
        ("/v1/stores", "stores"),
        ("/v2/subscriptions", "subscriptions"),
        ("/v1/gift-cards", "giftcards"),
        ("/v2/notifications", "notifications"),
    ]
    for i, (prefix, service) in enumerate(routes):
        if i == 6:
            out += [
                "[[routes]]",
                'prefix = "/v2/orders"',
                'upstream = "orders-v2.prod.svc.cluster.local:9090"',
                'methods = ["GET", "POST", "PATCH"]',
                "connect_timeout_ms = 300",
                "read_timeout_ms = 12000",
                "rate_limit_rps = 75",
                "rate_limit_burst = 150",
                'rate_limit_key = "api_key"',
                "retries = 1",
                "retry_on = [502, 503]",
                "circuit_breaker = { failure_ratio = 0.4, window_s = 30, cooldown_s = 60 }",
                "",
            ]
        out += [
            "[[routes]]",
            f'prefix = "{prefix}"',
            f'upstream = "{service}.prod.svc.cluster.local:{rng.choice((8080, 9090, 7000))}"',
            f'methods = ["GET"{", " + chr(34) + "POST" + chr(34) if rng.random() < 0.5 else ""}]',
            f"connect_timeout_ms = {rng.choice((250, 500, 800))}",
            f"read_timeout_ms = {rng.choice((2000, 3000, 5000, 8000))}",
            f"rate_limit_rps = {rng.choice((100, 200, 300, 500))}",
            f"rate_limit_burst = {rng.choice((200, 400, 600, 1000))}",
            f"retries = {rng.randint(0, 3)}",
            f"cache_ttl_s = {rng.choice((0, 30, 60, 300))}",
            "",
        ]
    out += ["[observability]", 'otlp_endpoint = "http://otel-collector.obs:4317"']
    out += ["sample_ratio = 0.05", 'log_format = "json"', ""]
    for name in ("acl", "headers", "cors", "geo"):
        out.append(f"[plugins.{name}]")
        for k in range(rng.randint(4, 7)):
            out.append(
                f"{name}_option_{k} = {rng.choice(('true', 'false', str(rng.randint(1, 99))))}"
            )
        out.append(f'allow = ["{rng.choice(("10.0.0.0/8", "172.16.0.0/12"))}", "192.168.0.0/16"]')
        out.append("")
    return "\n".join(out)


def _helm_values(rng: random.Random) -> str:
    out = [
        "# charts/ledger/values-prod.yaml",
        "replicaCount: 3",
        "image:",
        "  repository: registry.internal/fin/ledger",
        "  tag: 7.3.1",
        "  pullPolicy: IfNotPresent",
        "serviceAccount:",
        "  create: true",
        "  name: ledger",
        "podAnnotations:",
        '  prometheus.io/scrape: "true"',
        '  prometheus.io/port: "9102"',
        "service:",
        "  type: ClusterIP",
        "  port: 8080",
    ]
    # unrelated sidecars and feature flags
    for name in ("fluent-bit", "envoy", "vault-agent"):
        out += [
            f"{name.replace('-', '')}:",
            "  enabled: true",
            f"  image: registry.internal/platform/{name}:{rng.randint(1, 3)}.{rng.randint(0, 20)}",
            "  resources:",
            "    requests:",
            f"      cpu: {rng.choice(('50m', '100m'))}",
            f"      memory: {rng.choice(('64Mi', '128Mi'))}",
            "    limits:",
            f"      cpu: {rng.choice(('200m', '250m'))}",
            f"      memory: {rng.choice(('128Mi', '256Mi'))}",
        ]
    out += [
        "resources:",
        "  requests:",
        "    cpu: 1500m",
        "    memory: 3Gi",
        "  limits:",
        "    cpu: 3000m",
        "    memory: 6Gi",
        "autoscaling:",
        "  enabled: true",
        "  minReplicas: 3",
        "  maxReplicas: 12",
        "  targetCPUUtilizationPercentage: 65",
    ]
    out.append("featureFlags:")
    for k in range(110):
        verb = rng.choice(("enable", "use", "allow"))
        area = rng.choice(("Fx", "Batch", "Audit", "Async", "Legacy", "V2"))
        thing = rng.choice(("Export", "Posting", "Rates", "Journal", "Sync"))
        flag = f"{verb}{area}{thing}{k}"
        out.append(f"  {flag}: {rng.choice(('true', 'false'))}")
    out += [
        "database:",
        "  host: ledger-db.prod.internal",
        "  port: 5432",
        "  name: ledger",
        "  sslmode: verify-full",
        "  pool:",
        "    maxOpen: 40",
        "    maxIdle: 10",
        "    connMaxLifetime: 30m",
        "  statementTimeout: 15s",
    ]
    out.append("cronJobs:")
    for name in (
        "reconcile",
        "archive",
        "fx-refresh",
        "statements",
        "cleanup",
        "snapshots",
        "interest-accrual",
        "fee-sweep",
        "gl-export",
        "audit-trail",
    ):
        out += [
            f"  - name: {name}",
            f'    schedule: "{rng.randint(0, 59)} {rng.randint(0, 23)} * * *"',
            "    resources:",
            "      limits:",
            f"        cpu: {rng.choice(('500m', '1000m'))}",
            f"        memory: {rng.choice(('512Mi', '1Gi', '2Gi'))}",
            f"    activeDeadlineSeconds: {rng.choice((600, 1800, 3600))}",
        ]
    out += ["nodeSelector:", "  pool: general-b", "tolerations: []", "affinity: {}"]
    return "\n".join(out)


def _oncall_table(rng: random.Random) -> str:
    people = (
        "Ana Souza",
        "Ben Okafor",
        "Chen Wei",
        "Dara Novak",
        "Eli Haddad",
        "Farah Khan",
        "Gus Lindqvist",
        "Hana Ito",
        "Ivan Petrov",
        "Jade Mensah",
    )
    teams = ("api", "payments", "storage", "network", "data")
    out = [
        "# On-call rotation Q1 2027",
        "",
        "Hand-offs are Mondays 10:00 UTC. Swap shifts in #oncall-swaps at least 48 h ahead;",
        "the escalation policy for each team is in PagerDuty.",
        "",
        "| week | dates | team | primary | secondary | pager policy |",
        "|---|---|---|---|---|---|",
    ]
    for week in range(1, 14):
        for team in teams:
            if week == 7 and team == "storage":
                out.append(
                    "| 7 | 2027-02-15 - 2027-02-21 | storage | Hana Ito | Ivan Petrov | "
                    "PD-STOR-EU |"
                )
                continue
            primary, secondary = rng.sample(people, 2)
            out.append(
                f"| {week} | 2027-{1 + (week * 7) // 31:02d}-{1 + (week * 7) % 28:02d} - ... | "
                f"{team} | {primary} | {secondary} | "
                f"PD-{team[:4].upper()}-{rng.choice(('EU', 'US'))} |"
            )
    out += [
        "",
        "## Paging",
        "",
        "Page through PagerDuty only; the storage team's policy PD-STOR-EU escalates to the",
        "secondary after 15 min and to the storage manager after 30 min.",
        "Phone bridge for SEV1: +44 20 3051 7719, PIN 884213.",
        "",
        "## Notes",
        "",
        "Week 9 overlaps the datacenter move; network has two secondaries that week.",
    ]
    return "\n".join(out)


def _cost_csv(rng: random.Random) -> str:
    out = ["account_id,account_name,service,oct_usd,nov_usd,delta_usd,delta_pct"]
    special = {
        5: ("acct-7731", "ml-training", "EC2", 18200.00, 41950.40),
        17: ("acct-2208", "data-lake", "S3", 9100.00, 15410.75),
        33: ("acct-4410", "search-prod", "OpenSearch", 12050.00, 17335.10),
    }
    services = ("EC2", "RDS", "S3", "Lambda", "CloudFront", "EKS", "DynamoDB")
    for i in range(120):
        if i in special:
            acct, name, service, oct_usd, nov_usd = special[i]
        else:
            acct = f"acct-{rng.randint(1000, 9999)}"
            team = rng.choice(("web", "ops", "qa", "batch", "edge", "crm"))
            name = f"{team}-{rng.choice(('prod', 'stage', 'dev'))}"
            service = rng.choice(services)
            oct_usd = round(rng.uniform(200, 9000), 2)
            nov_usd = round(oct_usd * rng.uniform(0.85, 1.25), 2)
        delta = nov_usd - oct_usd
        out.append(
            f"{acct},{name},{service},{oct_usd:.2f},{nov_usd:.2f},{delta:.2f},"
            f"{100 * delta / oct_usd:.1f}"
        )
    return "\n".join(out)


def _tickets(rng: random.Random) -> str:
    tickets: list[dict[str, Any]] = []
    summaries = (
        "Password reset email delayed",
        "MFA enrolment page shows blank QR code",
        "Audit log export missing October",
        "SCIM sync duplicates groups",
        "Session cookie not cleared on logout",
        "Login page slow on Safari",
        "API token rotation docs outdated",
    )
    for _ in range(22):
        key = f"IDP-{rng.randint(1000, 1999)}"
        tickets.append(
            {
                "key": key,
                "summary": rng.choice(summaries),
                "status": rng.choice(("Open", "In Progress", "Open")),
                "priority": rng.choice(("P3", "P4", "P3")),
                "region": rng.choice(("US", "APAC", "EU", "US")),
                "assignee": rng.choice(("m.garcia", "t.nguyen", "r.olsen", "unassigned")),
                "created": f"2026-11-{rng.randint(1, 28):02d}",
                "labels": rng.sample(["sso", "ui", "docs", "scim", "email", "perf"], 2),
            }
        )
    tickets[4] = {
        "key": "IDP-2417",
        "summary": "SSO login times out after 30 s for EU tenants (SAML)",
        "status": "Open",
        "priority": "P1",
        "region": "EU",
        "assignee": "k.brandt",
        "created": "2026-11-29",
        "labels": ["sso", "timeout", "saml"],
        "description": "Users on eu-west-1 get HTTP 504 from /saml/acs after 30000 ms; "
        "idp-eu-2 shows saml_assertion_wait=30s.",
    }
    tickets[13] = {
        "key": "IDP-2431",
        "summary": "OIDC login timeout for EU customers since 2026-11-30 deploy",
        "status": "In Progress",
        "priority": "P2",
        "region": "EU",
        "assignee": "s.moreau",
        "created": "2026-11-30",
        "labels": ["sso", "oidc", "timeout"],
        "linked": ["IDP-2417"],
    }
    return json.dumps({"total": len(tickets), "issues": tickets}, indent=2)


def _trace(rng: random.Random) -> str:
    spans = []
    services = ("cart-api", "pricing", "inventory", "session", "promo", "user-profile")
    t = 0
    for i in range(30):
        service = rng.choice(services)
        duration = rng.randint(1, 45)
        if i == 17:
            spans.append(
                {
                    "span_id": "7d3e21fa09c4b6e1",
                    "parent": "0000000000000001",
                    "service": "payments-adapter",
                    "name": "POST /authorize (psp: adyen-eu)",
                    "start_ms": t,
                    "duration_ms": 5412,
                    "status": "OK",
                    "attributes": {
                        "http.status_code": 200,
                        "retry.count": 2,
                        "net.peer.name": "checkout-live.adyen.example",
                    },
                }
            )
            t += 5412
            continue
        spans.append(
            {
                "span_id": _hex(rng, 16),
                "parent": "0000000000000001",
                "service": service,
                "name": f"{rng.choice(('GET', 'POST'))} /{service}/"
                f"{rng.choice(('get', 'list', 'check', 'apply'))}",
                "start_ms": t,
                "duration_ms": duration,
                "status": "OK",
                "attributes": {"http.status_code": 200, "db.rows": rng.randint(0, 50)},
            }
        )
        t += duration
    root = {
        "trace_id": "a91c44d2e07b4f3a9c1e55b0d8f2a617",
        "root": {
            "span_id": "0000000000000001",
            "service": "api-gateway",
            "name": "POST /api/cart/checkout",
            "duration_ms": 6021,
        },
        "spans": spans,
    }
    return json.dumps(root, indent=1)


def _sql(rng: random.Random) -> str:
    header = (
        " order_id   | customer_id | status           | amount_eur | payment_ref        | "
        "updated_at          | hours_in_status"
    )
    out = [header, "-" * len(header)]
    stuck = {
        9: ("ORD-558201", "cus_4KQ2", 1289.00, "pi_3Nw8xK2eZvKYlo2C", 71),
        26: ("ORD-558377", "cus_9TR7", 86.40, "pi_3Nw9aL5fYtRmpq1D", 55),
        48: ("ORD-559012", "cus_1BX5", 452.15, "pi_3NwC0pZ2qWerty7E", 49),
    }
    for i in range(64):
        if i in stuck:
            order, customer, amount, ref, hours = stuck[i]
            status = "awaiting_capture"
        else:
            order = f"ORD-{rng.randint(550000, 560000)}"
            first = rng.choice("0123456789ABCDEFGHKQRTXZ")
            customer = f"cus_{first}{rng.choice('ABKQRTXZ')}{rng.randint(10, 99)}"
            amount = round(rng.uniform(5, 900), 2)
            ref = f"pi_3Nw{_hex(rng, 13)}"
            status = rng.choice(("captured", "captured", "refunded", "awaiting_capture"))
            hours = rng.randint(0, 47) if status == "awaiting_capture" else rng.randint(0, 400)
        out.append(
            f" {order} | {customer:<11} | {status:<16} | {amount:>10.2f} | {ref:<18} | "
            f"2026-12-{rng.randint(1, 3):02d} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00 | "
            f"{hours:>15}"
        )
    out.append("(64 rows)")
    return "\n".join(out)


def _describe_node(rng: random.Random) -> str:
    out = [
        "Name:               gke-prod-pool-b-7f2c-kx9w",
        "Roles:              <none>",
        "Labels:             beta.kubernetes.io/arch=amd64",
        "                    cloud.google.com/gke-nodepool=pool-b",
        "                    node.kubernetes.io/instance-type=n2-standard-16",
        "                    topology.kubernetes.io/zone=europe-west4-b",
        "Annotations:        node.alpha.kubernetes.io/ttl: 0",
        "CreationTimestamp:  Mon, 16 Nov 2026 08:12:40 +0000",
        "Taints:             node.kubernetes.io/disk-pressure:NoSchedule",
        "Unschedulable:      false",
        "Conditions:",
        "  Type             Status  LastHeartbeatTime                 Reason                  "
        "     Message",
        "  ----             ------  -----------------                 ------                  "
        "     -------",
        "  MemoryPressure   False   Thu, 03 Dec 2026 09:41:02 +0000   KubeletHasSufficientMemory"
        "   kubelet has sufficient memory available",
        "  DiskPressure     True    Thu, 03 Dec 2026 09:41:02 +0000   KubeletHasDiskPressure  "
        "     kubelet has disk pressure",
        "  PIDPressure      False   Thu, 03 Dec 2026 09:41:02 +0000   KubeletHasSufficientPID "
        "     kubelet has sufficient PID available",
        "  Ready            True    Thu, 03 Dec 2026 09:41:02 +0000   KubeletReady            "
        "     kubelet is posting ready status",
        "Capacity:",
        "  cpu:                16",
        "  ephemeral-storage:  98831908Ki",
        "  memory:             65851340Ki",
        "  pods:               110",
        "Allocatable:",
        "  cpu:                15890m",
        "  ephemeral-storage:  47060071478",
        "  memory:             61255628Ki",
        "  pods:               110",
        "Non-terminated Pods:          (41 in total)",
        "  Namespace    Name                                   CPU Requests  CPU Limits  "
        "Memory Requests  Memory Limits  Age",
    ]
    namespaces = ("web", "batch", "data", "monitoring", "kube-system", "ml")
    for _ in range(41):
        ns = rng.choice(namespaces)
        role = rng.choice(("api", "worker", "exporter", "sync", "proxy", "agent"))
        name = f"{role}-{_hex(rng, 5)}-{_hex(rng, 5)}"
        cpu = rng.choice(("100m", "250m", "500m", "1"))
        mem = rng.choice(("128Mi", "256Mi", "512Mi", "1Gi"))
        out.append(
            f"  {ns:<12} {name:<38} {cpu} ({rng.randint(0, 6)}%)  {cpu} ({rng.randint(0, 6)}%)  "
            f"{mem} ({rng.randint(0, 2)}%)  {mem} ({rng.randint(0, 2)}%)  {rng.randint(1, 17)}d"
        )
    out += [
        "Allocated resources:",
        "  Resource           Requests       Limits",
        "  cpu                11250m (70%)   18 (113%)",
        "  memory             29Gi (49%)     41Gi (70%)",
        "  ephemeral-storage  0 (0%)         0 (0%)",
        "Events:",
        "  Type     Reason                 Age                  From     Message",
    ]
    for _ in range(6):
        out.append(
            f"  Normal   NodeHasSufficientPID   {rng.randint(10, 50)}m (x{rng.randint(2, 9)} over "
            f"17d)  kubelet  Node status is now: NodeHasSufficientPID"
        )
    out += [
        "  Warning  EvictionThresholdMet   12m (x31 over 3h)    kubelet  Attempting to reclaim "
        "ephemeral-storage",
        "  Warning  FreeDiskSpaceFailed    9m                   kubelet  Failed to garbage "
        "collect required amount of images. Attempted to free 21474836480 bytes, but only found "
        "3221225472 bytes eligible to free.",
        "  Normal   NodeHasDiskPressure    12m                  kubelet  Node "
        "gke-prod-pool-b-7f2c-kx9w status is now: NodeHasDiskPressure",
    ]
    return "\n".join(out)


def _journal(rng: random.Random) -> str:
    out = []
    for i in range(70):
        minute = 10 + i // 3
        if i == 44:
            out += [
                f"Dec 03 07:{minute:02d}:51 db-replica-3 kernel: Out of memory: Killed process "
                "48213 (postgres) total-vm:35894412kB, anon-rss:30117520kB, file-rss:0kB, "
                "shmem-rss:412kB, UID:112 pgtables:61244kB oom_score_adj:0",
                f"Dec 03 07:{minute:02d}:51 db-replica-3 postgres[1187]: [3-1] LOG:  server "
                "process (PID 48213) was terminated by signal 9: Killed",
                f"Dec 03 07:{minute:02d}:51 db-replica-3 postgres[1187]: [3-2] DETAIL:  Failed "
                "process was running: SELECT * FROM events_archive ORDER BY created_at",
                f"Dec 03 07:{minute:02d}:52 db-replica-3 postgres[1187]: [4-1] LOG:  "
                "terminating any other active server processes",
                f"Dec 03 07:{minute:02d}:53 db-replica-3 postgres[1187]: [5-1] LOG:  all server "
                "processes terminated; reinitializing",
                f"Dec 03 07:{minute:02d}:58 db-replica-3 postgres[48391]: [1-1] LOG:  database "
                "system was interrupted; last known up at 2026-12-03 07:20:11 UTC",
                f"Dec 03 07:{minute:02d}:59 db-replica-3 postgres[48391]: [2-1] LOG:  "
                "work_mem=512MB, shared_buffers=8GB, max_connections=400",
            ]
            continue
        pid = rng.randint(40000, 48000)
        kind = rng.random()
        if kind < 0.5:
            msg = (
                f"postgres[{pid}]: [{rng.randint(1, 9)}-1] LOG:  checkpoint complete: wrote "
                f"{rng.randint(100, 9000)} buffers ({rng.uniform(0.1, 9):.1f}%); "
                f"write={rng.uniform(1, 30):.3f} s, sync={rng.uniform(0, 1):.3f} s"
            )
        elif kind < 0.8:
            msg = (
                f"postgres[{pid}]: [{rng.randint(1, 9)}-1] LOG:  duration: "
                f"{rng.uniform(1, 900):.3f} ms  statement: SELECT id FROM "
                f"{rng.choice(('users', 'sessions', 'orders'))} WHERE id = $1"
            )
        else:
            msg = (
                f"systemd[1]: Started session-{rng.randint(100, 999)}.scope - Session "
                f"{rng.randint(100, 999)} of User postgres."
            )
        out.append(f"Dec 03 07:{minute:02d}:{rng.randint(0, 59):02d} db-replica-3 {msg}")
    out.append(
        "Dec 03 07:36:20 db-replica-3 systemd[1]: postgresql@15-main.service: "
        "Consumed 3h 12min 4.210s CPU time."
    )
    return "\n".join(out)


def _alerts(rng: random.Random) -> str:
    alerts = []
    names = (
        "HighRequestLatency",
        "PodCrashLooping",
        "CertificateExpiringSoon",
        "QueueBacklogGrowing",
        "NodeNotReady",
        "ErrorBudgetBurn",
    )
    for _ in range(26):
        name = rng.choice(names)
        alerts.append(
            {
                "fingerprint": _hex(rng, 16),
                "alertname": name,
                "severity": "critical",
                "state": rng.choice(("resolved", "resolved", "firing")),
                "labels": {
                    "cluster": rng.choice(("prod-us-1", "prod-eu-1", "stage-1")),
                    "namespace": rng.choice(("web", "data", "batch")),
                    "service": rng.choice(("cart", "search", "auth", "media")),
                },
                "startsAt": f"2026-12-0{rng.randint(2, 3)}T{rng.randint(0, 23):02d}:"
                f"{rng.randint(0, 59):02d}:00Z",
                "value": round(rng.uniform(0.5, 50), 2),
            }
        )
    alerts[8] = {
        "fingerprint": "c3f19a0b7e42d615",
        "alertname": "KafkaConsumerLagHigh",
        "severity": "critical",
        "state": "firing",
        "labels": {
            "cluster": "prod-eu-1",
            "namespace": "data",
            "service": "events-consumer",
            "consumer_group": "billing-events-v3",
            "topic": "billing.events",
        },
        "startsAt": "2026-12-03T05:17:00Z",
        "value": 1843220,
        "annotations": {
            "summary": "Consumer lag above 500000 messages for 15m",
            "runbook": "https://runbooks.internal/kafka/consumer-lag",
        },
    }
    return json.dumps({"status": "success", "data": {"alerts": alerts}}, indent=2)


# (name, tool, args, request, generator): the request the agent was answering when it called.
_OUTPUTS: tuple[tuple[str, str, dict[str, Any], str, Callable[[random.Random], str]], ...] = (
    (
        "nightly_build",
        "get_ci_logs",
        {"repo": "fin/fin", "run_id": 5120447, "job": "build-and-test"},
        "Why did last night's build of main fail? I need the failing test and the assertion.",
        _build_log,
    ),
    (
        "indexer_diff",
        "git_diff",
        {"repo": "search-indexer", "base": "release/4.7", "head": "release/4.8"},
        "What changed in the indexer's bulk batching and memory limits between 4.7 and 4.8?",
        _diff,
    ),
    (
        "gateway_toml",
        "read_file",
        {"path": "deploy/gateway/gateway.toml"},
        "What rate limit and timeouts does the gateway apply to the /v2/orders route?",
        _toml,
    ),
    (
        "ledger_values",
        "read_file",
        {"path": "charts/ledger/values-prod.yaml"},
        "What CPU/memory limits and autoscaling does the ledger run with in prod, and its DB "
        "pool size?",
        _helm_values,
    ),
    (
        "oncall_wiki",
        "fetch_wiki_page",
        {"space": "SRE", "title": "On-call rotation Q1 2027"},
        "Who is primary and secondary on-call for storage in week 7, and how do I page them?",
        _oncall_table,
    ),
    (
        "cloud_costs",
        "export_report",
        {"report": "cloud_costs", "month": "2026-11", "format": "csv"},
        "Which accounts' cloud costs grew the most from October to November, and by how much?",
        _cost_csv,
    ),
    (
        "sso_tickets",
        "search_tickets",
        {"project": "IDP", "query": "login timeout", "status": "open"},
        "Are there open tickets about SSO login timeouts for EU users? Give me IDs, priority "
        "and who owns them.",
        _tickets,
    ),
    (
        "checkout_trace",
        "get_trace",
        {"trace_id": "a91c44d2e07b4f3a9c1e55b0d8f2a617"},
        "Why did this checkout request take 6 seconds? Which span was slow?",
        _trace,
    ),
    (
        "stuck_orders",
        "run_sql",
        {
            "query": "SELECT order_id, customer_id, status, amount_eur, payment_ref, updated_at, "
            "hours_in_status FROM orders_status_v WHERE updated_at > now() - interval '3 days'"
        },
        "Which orders have been stuck awaiting capture for more than 48 hours? List them with "
        "amounts and payment refs.",
        _sql,
    ),
    (
        "node_describe",
        "kubectl_describe",
        {"kind": "node", "name": "gke-prod-pool-b-7f2c-kx9w"},
        "Pods stay Pending on gke-prod-pool-b-7f2c-kx9w. Why won't they schedule there?",
        _describe_node,
    ),
    (
        "replica_journal",
        "run_command",
        {"host": "db-replica-3", "command": "journalctl -u postgresql@15-main --since -30min"},
        "Why did postgres restart on db-replica-3 this morning?",
        _journal,
    ),
    (
        "critical_alerts",
        "list_alerts",
        {"severity": "critical", "state": "firing", "since": "24h"},
        "Is anything critical firing for the billing pipeline right now?",
        _alerts,
    ),
)


def build_heldout_outputs() -> list[dict[str, Any]]:
    """The held-out tool outputs with their calls and requests, the same every time."""
    return [
        {
            "name": name,
            "tool_call": {"name": tool, "args": args},
            "request": request,
            "output": make(random.Random(f"heldout-{name}")),
        }
        for name, tool, args, request, make in _OUTPUTS
    ]


def main() -> None:
    """Write ``heldout/tool_outputs.json``."""
    HELDOUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    HELDOUT_PATH.write_text(json.dumps(build_heldout_outputs(), indent=1) + "\n")
    print(f"wrote {HELDOUT_PATH}")


if __name__ == "__main__":
    main()
