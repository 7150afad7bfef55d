"""Held-out set 3: twelve realistic tool outputs for the tool-output fact-retention benchmark.

Each entry is what one realistic tool returned for one call an agent made while serving one user
request: a Buildkite build log with a failed production deploy, a Spring Boot startup log with
one root-cause exception among warnings and older errors, a ``kubectl get events -A`` listing, an
``aws ec2 describe-instances`` JSON, a GitHub pull-request list with checks, a ``psql`` session
(``EXPLAIN ANALYZE``, ``\\d``, ``pg_stat_statements``), a Loki ``logcli`` logfmt query, a
``systemctl status`` + ``journalctl`` + ``systemctl cat`` session, ``helm history`` +
``helm get values``, a CSV export of support tickets, an OpenTelemetry trace as a text table and
a ``docker inspect`` JSON. Every output is 2,000-5,000 tokens (Qwen tokenizer) and carries many
plausible distractors: records similar to the answer that are not the answer. The answer sits
early in some outputs, mid-way in others, near the end in others.

The outputs are built deterministically: each from its own ``random.Random(f"heldout3-{name}")``
and hand-written records. The must-keep facts in ``heldout3/facts.json`` were written by hand,
by reading each output against its request, by an author who had not seen the summarizer or the
other data sets. It measured the third round of ranking changes blind (see
``docs/compaction.md``, "Measured"); one fix after that round came from one of its outputs.

Run ``python -m benchmarks.data.make_heldout3_tool_outputs`` to write
``heldout3/tool_outputs.json`` and check that every fact's first spelling occurs verbatim in its
output.
"""

# The outputs reproduce real tool output verbatim (log lines, JSON, table rows, CSV rows), whose
# lines are wider than the 100-character limit; wrapping them would change the data.
# ruff: noqa: E501

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "HELDOUT3_FACTS_PATH",
    "HELDOUT3_PATH",
    "build_heldout3_outputs",
    "check_facts",
    "main",
]

_DATA_DIR = Path(__file__).resolve().parent / "heldout3"
HELDOUT3_PATH = _DATA_DIR / "tool_outputs.json"
"""The JSON list of the twelve tool outputs (name, tool_call, request, output)."""
HELDOUT3_FACTS_PATH = _DATA_DIR / "facts.json"
"""The hand-written must-keep facts: output name -> list of facts, each a list of spellings."""


class _Clock:
    """A wall clock that only moves forward, by random steps."""

    def __init__(self, start: datetime, rng: random.Random) -> None:
        self.now = start
        self._rng = rng

    def tick(self, low: float, high: float) -> datetime:
        """Advance by a random number of seconds in ``[low, high]`` and return the new time."""
        self.now += timedelta(seconds=self._rng.uniform(low, high))
        return self.now


def _ms(t: datetime) -> str:
    """Format ``t`` as ISO 8601 UTC with milliseconds."""
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


def _hex(rng: random.Random, n: int) -> str:
    """Return ``n`` random lowercase hex digits."""
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _suffix(rng: random.Random, n: int = 5) -> str:
    """Return a Kubernetes-style random name suffix of ``n`` characters."""
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


# --------------------------------------------------------------------------------------------
# 1. Buildkite build log: the production deploy step failed.
# --------------------------------------------------------------------------------------------

_BK_SHA = "a3f9c21e8b0d4f7a9c6e1b2d3f4a5c6b7d8e9f01"


def _buildkite_deploy(rng: random.Random) -> str:
    clock = _Clock(datetime(2024, 11, 18, 9, 2, 11, tzinfo=timezone.utc), rng)
    out: list[str] = []

    def line(text: str, low: float = 0.02, high: float = 0.7) -> None:
        out.append(f"[{clock.tick(low, high):%H:%M:%S}] {text}")

    open_job: list[tuple[int, str, datetime]] = []

    def close_job() -> None:
        if open_job:
            at, head, started = open_job.pop()
            secs = int((clock.now - started).total_seconds())
            out[at] = f"{head} in {secs // 60}m{secs % 60:02d}s"

    def job(index: int, label: str, key: str, agent: str, state: str) -> None:
        close_job()
        out.append("")
        out.append("")
        open_job.append(
            (
                len(out) - 1,
                f"--- Job {index}/8: {label} (key: {key}) · agent {agent} · {state}",
                clock.now,
            )
        )
        if index == 1:
            line("~~~ Preparing working directory")
            line(f"$ cd /var/lib/buildkite-agent/builds/{agent}/acme/payments-api")
            line("$ git clean -ffxdq")
            line(f"$ git fetch -v --prune -- origin {_BK_SHA}", 0.5, 2.5)
            line(f" * branch            {_BK_SHA} -> FETCH_HEAD")
            line(f"$ git checkout -f {_BK_SHA[:12]}")
            line("HEAD is now at a3f9c21 Route webhook retries through outbox (#2290)")
        line("~~~ Running commands")

    job(1, ":python: Lint", "lint", "ci-agent-linux-07", "passed")
    line("$ make lint")
    line("ruff check src tests", 1, 3)
    line("All checks passed!", 2, 6)
    line("mypy src")
    line("Success: no issues found in 184 source files", 10, 25)

    job(2, ":pytest: Unit tests", "unit-tests", "ci-agent-linux-03", "passed")
    line("$ make test-unit")
    line("pytest -n 8 --durations=5 tests/unit")
    line("============================= test session starts ==============================")
    line("platform linux -- Python 3.12.6, pytest-8.3.3, pluggy-1.5.0")
    line("plugins: xdist-3.6.1, asyncio-0.24.0, cov-5.0.0, rerunfailures-14.0")
    line("8 workers [612 items]", 2, 5)
    modules = [
        "test_refunds",
        "test_ledger",
        "test_currency",
        "test_webhooks",
        "test_outbox",
        "test_invoices",
        "test_idempotency",
        "test_payouts",
    ]
    verbs = ["rounding", "retry", "partial", "duplicate", "expired", "signature", "batch", "zero"]
    pct = 0
    for _ in range(10):
        pct = min(100, pct + rng.randint(6, 12))
        mod = rng.choice(modules)
        name = (
            f"test_{rng.choice(verbs)}_{rng.choice(['amount', 'event', 'key', 'window', 'state'])}"
        )
        line(f"[gw{rng.randint(0, 7)}] [{pct:3d}%] PASSED tests/unit/{mod}.py::{name}", 6, 10)
    line("====================== 609 passed, 3 skipped in 94.37s (0:01:34) ======================")

    job(3, ":pytest: Integration tests", "integration-tests", "ci-agent-linux-05", "passed")
    line("$ docker compose -f ci/compose.yaml up -d postgres redis stripe-mock")
    for svc in ["postgres", "redis", "stripe-mock"]:
        line(f" Container ci-{svc}-1  Started", 1, 3)
    line("$ make test-integration")
    line("pytest -n 4 --reruns 2 --reruns-delay 5 tests/integration")
    line("4 workers [211 items]", 2, 4)
    line(
        "[gw2] RERUN tests/integration/test_webhooks.py::test_webhook_retry_backoff",
        20,
        40,
    )
    line(
        "E   AssertionError: expected 3 delivery attempts within 30s, got 2 (last_attempt_at=None)"
    )
    line("[gw2] PASSED tests/integration/test_webhooks.py::test_webhook_retry_backoff", 5, 9)
    line("[gw0] PASSED tests/integration/test_outbox.py::test_outbox_drains_after_restart", 70, 100)
    line(
        "=========== 209 passed, 2 skipped, 1 rerun, 6 warnings in 161.08s (0:02:41) ===========",
        25,
        35,
    )

    job(4, ":docker: Build & push image", "build-image", "ci-agent-docker-02", "passed")
    line(
        "$ docker buildx build --platform linux/amd64 --push -t registry.acme.io/payments-api:4817-a3f9c21 -t registry.acme.io/payments-api:main ."
    )
    steps = [
        "[internal] load build definition from Dockerfile",
        "[internal] load metadata for docker.io/library/python:3.12-slim",
        "[builder 1/6] FROM docker.io/library/python:3.12-slim",
        "[builder 2/6] RUN apt-get update && apt-get install -y --no-install-recommends build-essential libpq-dev",
        "[builder 3/6] COPY pyproject.toml uv.lock ./",
        "[builder 4/6] RUN uv sync --frozen --no-dev",
        "[builder 5/6] COPY src ./src",
        "[builder 6/6] RUN uv build --wheel",
        "[runtime 2/3] COPY --from=builder /app/dist/*.whl /tmp/",
        "[runtime 3/3] RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl",
    ]
    for i, step in enumerate(steps, start=1):
        cached = " CACHED" if i in (3, 5) else ""
        line(f"#{i} {step}{cached}", 0.3, 9)
        if not cached and i > 3:
            line(f"#{i} DONE {rng.uniform(0.4, 38):.1f}s", 0.1, 0.3)
    line("#11 exporting to image")
    line("#11 exporting layers 3.9s done", 3, 5)
    line("#11 pushing layers 6.2s done", 5, 8)
    line(
        f"#11 pushing manifest for registry.acme.io/payments-api:4817-a3f9c21@sha256:{_hex(rng, 64)} done"
    )
    line("#11 DONE 14.8s")

    job(5, ":kubernetes: Deploy staging", "deploy-staging", "ci-agent-deploy-01", "passed")
    line("$ ./scripts/deploy.sh staging 4817-a3f9c21")
    line(
        "+ helm upgrade --install payments-api ./deploy/chart --namespace payments-staging --values deploy/values/staging.yaml --set image.tag=4817-a3f9c21 --wait --timeout 5m0s"
    )
    line('Release "payments-api" has been upgraded. Happy Helming!', 40, 90)
    line("NAME: payments-api")
    line(f"LAST DEPLOYED: {clock.now:%a %b %d %H:%M:%S %Y}")
    line("NAMESPACE: payments-staging")
    line("STATUS: deployed")
    line("REVISION: 318")

    job(6, ":test_tube: Smoke tests (staging)", "smoke-staging", "ci-agent-linux-07", "passed")
    line("$ ./scripts/smoke.sh https://payments.staging.acme.io")
    for path in [
        "/healthz",
        "/readyz",
        "/v1/charges?limit=1",
        "/v1/refunds?limit=1",
        "/v1/webhooks/test",
    ]:
        line(f"GET {path} -> 200 ({rng.randint(22, 140)} ms)", 0.5, 2)
    line("WARN p95 latency 412 ms above soft threshold 400 ms (not failing the build)")
    line("smoke: 5/5 checks passed")

    close_job()
    out.append("")
    out.append("--- Block: :shipit: Release payments-api to production? · unblocked by mira.chen")
    clock.tick(120, 300)

    job(
        7,
        ":rocket: Deploy production",
        "deploy-production",
        "ci-agent-deploy-01",
        "failed (exit status 1)",
    )
    line("$ ./scripts/deploy.sh production 4817-a3f9c21")
    line(
        "+ helm upgrade --install payments-api ./deploy/chart --namespace payments-prod --values deploy/values/production.yaml --set image.tag=4817-a3f9c21 --wait --timeout 5m0s --debug"
    )
    line("upgrade.go:142: [debug] preparing upgrade for payments-api", 1, 2)
    line("upgrade.go:150: [debug] performing update for payments-api")
    line("upgrade.go:322: [debug] creating upgraded release for payments-api")
    line("client.go:393: [debug] checking 7 resources for changes")
    line('client.go:684: [debug] Patch Deployment "payments-api" in namespace payments-prod')
    line('client.go:684: [debug] Patch ConfigMap "payments-api-config" in namespace payments-prod')
    line("wait.go:48: [debug] beginning wait for 7 resources with timeout of 5m0s")
    for _ in range(6):
        line(
            "ready.go:303: [debug] Deployment is not ready: payments-prod/payments-api. 3 out of 4 expected pods are ready",
            46,
            52,
        )
    line(
        'upgrade.go:486: [debug] warning: Upgrade "payments-api" failed: context deadline exceeded',
        2,
        3,
    )
    line("Error: UPGRADE FAILED: context deadline exceeded")
    line("helm.go:84: [debug] context deadline exceeded")
    line("deploy.sh: helm upgrade failed, collecting diagnostics")
    line("+ kubectl -n payments-prod get pods -l app.kubernetes.io/name=payments-api")
    line("NAME                            READY   STATUS             RESTARTS      AGE")
    for sfx in ["4hzkp", "9wq2m", "rk7tn", "v6xjd"]:
        line(f"payments-api-5b8f9d7c6-{sfx}    1/1     Running            0             2d3h", 0, 0)
    line("payments-api-7d9c6b5f4-x2lkq    0/1     CrashLoopBackOff   5 (41s ago)   5m4s", 0, 0)
    line("+ kubectl -n payments-prod logs payments-api-7d9c6b5f4-x2lkq --previous --tail=8")
    crash = f"{clock.now - timedelta(seconds=41):%Y-%m-%dT%H:%M:%SZ}"
    line(
        f'{{"level":"info","ts":"{crash}","msg":"starting payments-api","version":"4817-a3f9c21"}}'
    )
    line(
        f'{{"level":"info","ts":"{crash}","msg":"loading config","env":"production","source":"/etc/payments/config.yaml"}}'
    )
    line(
        f'{{"level":"warn","ts":"{crash}","msg":"OTEL_EXPORTER_OTLP_ENDPOINT not set, tracing disabled"}}'
    )
    line(
        f'{{"level":"fatal","ts":"{crash}","msg":"config validation failed","error":"missing required environment variable STRIPE_WEBHOOK_SECRET"}}'
    )
    line("+ helm rollback payments-api 211 -n payments-prod --wait --timeout 5m0s")
    line("Rollback was a success! Happy Helming!", 15, 30)
    line("deploy.sh: production deploy of 4817-a3f9c21 failed; release rolled back to revision 211")
    line("🚨 Error: The command exited with status 1")
    line("user command error: exit status 1")

    job(8, ":slack: Notify", "notify", "ci-agent-linux-03", "passed")
    line("$ ./scripts/notify.sh")
    line("posted to #payments-deploys: build #4817 failed (1 failed job, 6 passed)", 1, 3)
    close_job()

    header = [
        'Build #4817 · acme/payments-api · branch main · commit a3f9c21 "Route webhook retries through outbox (#2290)"',
        f"Triggered by mira.chen (GitHub push) · state: failed · started 2024-11-18T09:02:11Z · finished {clock.now:%Y-%m-%dT%H:%M:%SZ}",
    ]
    return "\n".join(header + out) + "\n"


# --------------------------------------------------------------------------------------------
# 2. Spring Boot application log: the startup failed; one root cause among warnings.
# --------------------------------------------------------------------------------------------

_SPRING_TAIL = [
    "org.springframework.beans.factory.support.AbstractAutowireCapableBeanFactory.doCreateBean(AbstractAutowireCapableBeanFactory.java:600)",
    "org.springframework.beans.factory.support.AbstractAutowireCapableBeanFactory.createBean(AbstractAutowireCapableBeanFactory.java:522)",
    "org.springframework.beans.factory.support.AbstractBeanFactory.lambda$doGetBean$0(AbstractBeanFactory.java:337)",
    "org.springframework.beans.factory.support.DefaultSingletonBeanRegistry.getSingleton(DefaultSingletonBeanRegistry.java:234)",
    "org.springframework.beans.factory.support.AbstractBeanFactory.doGetBean(AbstractBeanFactory.java:335)",
    "org.springframework.beans.factory.support.AbstractBeanFactory.getBean(AbstractBeanFactory.java:200)",
    "org.springframework.beans.factory.support.AbstractBeanFactory.doGetBean(AbstractBeanFactory.java:313)",
    "org.springframework.beans.factory.support.AbstractBeanFactory.getBean(AbstractBeanFactory.java:200)",
    "org.springframework.context.support.AbstractApplicationContext.getBean(AbstractApplicationContext.java:1234)",
    "org.springframework.context.support.AbstractApplicationContext.finishBeanFactoryInitialization(AbstractApplicationContext.java:975)",
    "org.springframework.context.support.AbstractApplicationContext.refresh(AbstractApplicationContext.java:627)",
    "org.springframework.boot.web.servlet.context.ServletWebServerApplicationContext.refresh(ServletWebServerApplicationContext.java:146)",
    "org.springframework.boot.SpringApplication.refresh(SpringApplication.java:754)",
    "org.springframework.boot.SpringApplication.refreshContext(SpringApplication.java:456)",
    "org.springframework.boot.SpringApplication.run(SpringApplication.java:335)",
    "org.springframework.boot.SpringApplication.run(SpringApplication.java:1363)",
    "org.springframework.boot.SpringApplication.run(SpringApplication.java:1352)",
    "com.acme.orders.OrdersServiceApplication.main(OrdersServiceApplication.java:21)",
]

_SPRING_WEB_FRAMES = [
    "org.hibernate.engine.jdbc.batch.internal.BatchImpl.checkRowCounts(BatchImpl.java:294)",
    "org.hibernate.persister.entity.mutation.UpdateCoordinatorStandard.doStaticUpdate(UpdateCoordinatorStandard.java:771)",
    "org.hibernate.event.internal.AbstractFlushingEventListener.performExecutions(AbstractFlushingEventListener.java:359)",
    "org.hibernate.internal.SessionImpl.doFlush(SessionImpl.java:1412)",
    "org.hibernate.internal.SessionImpl.managedFlush(SessionImpl.java:485)",
    "org.springframework.orm.jpa.JpaTransactionManager.doCommit(JpaTransactionManager.java:562)",
    "org.springframework.transaction.support.AbstractPlatformTransactionManager.processCommit(AbstractPlatformTransactionManager.java:795)",
    "org.springframework.transaction.interceptor.TransactionAspectSupport.invokeWithinTransaction(TransactionAspectSupport.java:392)",
    "com.acme.orders.service.OrderService$$SpringCGLIB$$0.cancel(<generated>)",
    "com.acme.orders.web.OrderController.cancel(OrderController.java:118)",
    "org.springframework.web.servlet.DispatcherServlet.doDispatch(DispatcherServlet.java:1089)",
    "org.apache.tomcat.util.threads.ThreadPoolExecutor$Worker.run(ThreadPoolExecutor.java:659)",
    "java.base/java.lang.Thread.run(Thread.java:1583)",
]


def _spring_boot_root_cause(rng: random.Random) -> str:
    out: list[str] = []

    def log(t: datetime, level: str, thread: str, logger: str, msg: str) -> None:
        out.append(
            f"{_ms(t)} {level:>5} 1 --- [orders-service] [{thread[-15:]:>15}] {logger:<40} : {msg}"
        )

    def trace(frames: list[str]) -> None:
        out.extend(f"\tat {frame}" for frame in frames)

    # The previous instance: request handling, an old unrelated error, then a graceful shutdown.
    clock = _Clock(datetime(2024, 11, 19, 7, 29, 3, 118000, tzinfo=timezone.utc), rng)
    tenants = ["eu-1482", "eu-0931", "eu-2207", "eu-0415", "eu-1776"]
    for i in range(11):
        t = clock.tick(5, 60)
        thread = f"nio-8080-exec-{rng.randint(1, 10)}"
        oid = rng.randint(81_700_000, 81_799_999)
        kind = rng.random()
        if kind < 0.5:
            log(
                t,
                "INFO",
                thread,
                "c.a.orders.web.OrderController",
                f"POST /api/orders tenant={rng.choice(tenants)} items={rng.randint(1, 6)} -> 201 in {rng.randint(38, 190)}ms",
            )
        elif kind < 0.8:
            log(
                t,
                "INFO",
                "ntainer#0-0-C-1",
                "c.a.o.fulfillment.FulfillmentListener",
                f"Order {oid} handed to fulfillment (warehouse={rng.choice(['AMS-2', 'FRA-1', 'DUB-3'])})",
            )
        else:
            log(
                t,
                "WARN",
                thread,
                "c.a.orders.pricing.PriceClient",
                f"Price lookup for sku=SKU-{rng.randint(10000, 99999)} took {rng.randint(800, 1900)}ms (threshold 750ms)",
            )
        if i == 7:
            t = clock.tick(1, 4)
            log(
                t,
                "ERROR",
                thread,
                "o.a.c.c.C.[.[.[/].[dispatcherServlet]",
                "Servlet.service() for servlet [dispatcherServlet] in context with path [] threw exception [Request processing failed: org.springframework.orm.ObjectOptimisticLockingFailureException: Row was updated or deleted by another transaction (or unsaved-value mapping was incorrect) : [com.acme.orders.domain.Order#81723340]] with root cause",
            )
            out.append(
                "org.hibernate.StaleObjectStateException: Row was updated or deleted by another transaction (or unsaved-value mapping was incorrect) : [com.acme.orders.domain.Order#81723340]"
            )
            trace(_SPRING_WEB_FRAMES)
    t = datetime(2024, 11, 19, 7, 40, 12, 604000, tzinfo=timezone.utc)
    log(
        t,
        "INFO",
        "ionShutdownHook",
        "o.s.b.w.e.tomcat.GracefulShutdown",
        "Commencing graceful shutdown. Waiting for active requests to complete",
    )
    log(
        t + timedelta(milliseconds=1207),
        "INFO",
        "tomcat-shutdown",
        "o.s.b.w.e.tomcat.GracefulShutdown",
        "Graceful shutdown complete",
    )
    log(
        t + timedelta(milliseconds=1342),
        "INFO",
        "ionShutdownHook",
        "j.LocalContainerEntityManagerFactoryBean",
        "Closing JPA EntityManagerFactory for persistence unit 'default'",
    )
    log(
        t + timedelta(milliseconds=1355),
        "INFO",
        "ionShutdownHook",
        "com.zaxxer.hikari.HikariDataSource",
        "HikariPool-1 - Shutdown initiated...",
    )
    log(
        t + timedelta(milliseconds=1371),
        "INFO",
        "ionShutdownHook",
        "com.zaxxer.hikari.HikariDataSource",
        "HikariPool-1 - Shutdown completed.",
    )

    # The new instance (release 5.12.0) starting up.
    out.extend(
        [
            "",
            "  .   ____          _            __ _ _",
            " /\\\\ / ___'_ __ _ _(_)_ __  __ _ \\ \\ \\ \\",
            "( ( )\\___ | '_ | '_| | '_ \\/ _` | \\ \\ \\ \\",
            " \\\\/  ___)| |_)| | | | | || (_| |  ) ) ) )",
            "  '  |____| .__|_| |_|_| |_\\__, | / / / /",
            " =========|_|==============|___/=/_/_/_/",
            "",
            " :: Spring Boot ::                (v3.3.4)",
            "",
        ]
    )
    clock = _Clock(datetime(2024, 11, 19, 7, 41, 2, 318000, tzinfo=timezone.utc), rng)

    def at() -> datetime:
        return clock.tick(0.002, 0.4)

    log(
        at(),
        "INFO",
        "main",
        "c.a.orders.OrdersServiceApplication",
        "Starting OrdersServiceApplication v5.12.0 using Java 21.0.4 with PID 1 (/app/orders-service.jar started by app in /app)",
    )
    log(
        at(),
        "INFO",
        "main",
        "c.a.orders.OrdersServiceApplication",
        'The following 2 profiles are active: "prod", "eu-west"',
    )
    log(
        at(),
        "WARN",
        "main",
        "o.s.c.c.c.ConfigServerConfigDataLoader",
        "Could not locate PropertySource ([ConfigServerConfigDataResource@5b7a7f33 uris = array<String>['http://config.internal:8888'], optional = true, profiles = 'prod,eu-west']): I/O error on GET request for \"http://config.internal:8888/orders-service/prod,eu-west\": Connection refused",
    )
    log(
        at(),
        "WARN",
        "main",
        "o.s.b.c.p.m.PropertiesMigrationListener",
        "\nThe use of configuration keys that have been renamed was found in the environment:\n\nProperty source 'Config resource 'class path resource [application-prod.yml]' via location 'optional:classpath:/'':\n\tKey: spring.redis.host\n\t\tLine: 14\n\t\tReplacement: spring.data.redis.host\n\tKey: spring.redis.port\n\t\tLine: 15\n\t\tReplacement: spring.data.redis.port\n\nEach configuration key has been temporarily mapped to its replacement for your convenience. To silence this warning, please update your configuration to use the new keys.\n",
    )
    log(
        at(),
        "INFO",
        "main",
        ".s.d.r.c.RepositoryConfigurationDelegate",
        "Bootstrapping Spring Data JPA repositories in DEFAULT mode.",
    )
    log(
        at(),
        "INFO",
        "main",
        ".s.d.r.c.RepositoryConfigurationDelegate",
        "Finished Spring Data repository scanning in 187 ms. Found 14 JPA repository interfaces.",
    )
    log(
        at(),
        "INFO",
        "main",
        ".s.d.r.c.RepositoryConfigurationDelegate",
        "Multiple Spring Data modules found, entering strict repository configuration mode",
    )
    log(
        at(),
        "INFO",
        "main",
        "o.s.b.w.embedded.tomcat.TomcatWebServer",
        "Tomcat initialized with port 8080 (http)",
    )
    log(at(), "INFO", "main", "o.apache.catalina.core.StandardService", "Starting service [Tomcat]")
    log(
        at(),
        "INFO",
        "main",
        "o.apache.catalina.core.StandardEngine",
        "Starting Servlet engine: [Apache Tomcat/10.1.30]",
    )
    log(
        at(),
        "INFO",
        "main",
        "o.a.c.c.C.[Tomcat].[localhost].[/]",
        "Initializing Spring embedded WebApplicationContext",
    )
    log(
        at(),
        "INFO",
        "main",
        "w.s.c.ServletWebServerApplicationContext",
        "Root WebApplicationContext: initialization completed in 2214 ms",
    )
    log(
        at(),
        "WARN",
        "main",
        "c.a.orders.cache.PriceCacheWarmer",
        "Price cache warm-up skipped: Redis unavailable, will retry lazily on first request",
    )
    out.append(
        "org.springframework.data.redis.RedisConnectionFailureException: Unable to connect to Redis"
    )
    trace(
        [
            "org.springframework.data.redis.connection.lettuce.LettuceConnectionFactory$ExceptionTranslatingConnectionProvider.translateException(LettuceConnectionFactory.java:1805)",
            "org.springframework.data.redis.connection.lettuce.LettuceConnectionFactory$ExceptionTranslatingConnectionProvider.getConnection(LettuceConnectionFactory.java:1736)",
            "org.springframework.data.redis.core.RedisTemplate.execute(RedisTemplate.java:411)",
            "com.acme.orders.cache.PriceCacheWarmer.warmUp(PriceCacheWarmer.java:52)",
        ]
    )
    out.append(
        "Caused by: io.lettuce.core.RedisConnectionException: Unable to connect to redis-orders.cache.internal/<unresolved>:6379"
    )
    trace(["io.lettuce.core.RedisConnectionException.create(RedisConnectionException.java:78)"])
    out.append(
        "Caused by: io.netty.channel.ConnectTimeoutException: connection timed out after 2000 ms: redis-orders.cache.internal/10.40.3.18:6379"
    )
    trace(
        [
            "io.netty.channel.epoll.AbstractEpollChannel$AbstractEpollUnsafe$2.run(AbstractEpollChannel.java:615)"
        ]
    )
    out.append("\t... 4 common frames omitted")
    log(at(), "INFO", "main", "com.zaxxer.hikari.HikariDataSource", "HikariPool-1 - Starting...")
    log(
        at(),
        "INFO",
        "main",
        "com.zaxxer.hikari.pool.HikariPool",
        "HikariPool-1 - Added connection org.postgresql.jdbc.PgConnection@3f4e1a7b",
    )
    log(
        at(),
        "INFO",
        "main",
        "com.zaxxer.hikari.HikariDataSource",
        "HikariPool-1 - Start completed.",
    )
    log(
        at(),
        "INFO",
        "main",
        "org.flywaydb.core.FlywayExecutor",
        "Database: jdbc:postgresql://orders-db.internal:5432/orders (PostgreSQL 15.6)",
    )
    log(
        at(),
        "WARN",
        "main",
        "o.f.c.internal.database.base.Database",
        "Flyway upgrade recommended: PostgreSQL 15.6 is newer than this version of Flyway and support has not been tested. The latest supported version of PostgreSQL is 15.",
    )
    log(
        at(),
        "INFO",
        "main",
        "o.f.c.i.s.JdbcTableSchemaHistory",
        'Schema history table "orders"."flyway_schema_history" exists, current version: 41',
    )
    fail = at()
    bean = "Error creating bean with name 'flywayInitializer' defined in class path resource [org/springframework/boot/autoconfigure/flyway/FlywayAutoConfiguration$FlywayConfiguration.class]: Validate failed: Migrations have failed validation"
    detail = [
        "Migration checksum mismatch for migration version 41",
        "-> Applied to database : 1804470815",
        "-> Resolved locally    : -1526340377",
        "Either revert the changes to the migration, or run repair to update the schema history.",
        "Need more flexibility with validation rules? Learn more: https://rd.gt/3AbJUZE",
    ]
    log(
        fail,
        "WARN",
        "main",
        "w.s.c.ServletWebServerApplicationContext",
        f"Exception encountered during context initialization - cancelling refresh attempt: org.springframework.beans.factory.BeanCreationException: {bean}",
    )
    out.extend(detail)
    log(
        at(),
        "INFO",
        "main",
        "com.zaxxer.hikari.HikariDataSource",
        "HikariPool-1 - Shutdown initiated...",
    )
    log(
        at(),
        "INFO",
        "main",
        "com.zaxxer.hikari.HikariDataSource",
        "HikariPool-1 - Shutdown completed.",
    )
    log(at(), "INFO", "main", "o.apache.catalina.core.StandardService", "Stopping service [Tomcat]")
    log(
        at(),
        "INFO",
        "main",
        ".s.b.a.l.ConditionEvaluationReportLogger",
        "\n\nError starting ApplicationContext. To display the condition evaluation report re-run your application with 'debug' enabled.",
    )
    log(at(), "ERROR", "main", "o.s.boot.SpringApplication", "Application run failed")
    out.append(f"org.springframework.beans.factory.BeanCreationException: {bean}")
    out.extend(detail)
    trace(
        [
            "org.springframework.beans.factory.support.AbstractAutowireCapableBeanFactory.initializeBean(AbstractAutowireCapableBeanFactory.java:1806)",
            *_SPRING_TAIL,
        ]
    )
    out.append(
        "Caused by: org.flywaydb.core.api.exception.FlywayValidateException: Validate failed: Migrations have failed validation"
    )
    out.extend(detail)
    trace(
        [
            "org.flywaydb.core.Flyway.lambda$migrate$0(Flyway.java:130)",
            "org.flywaydb.core.FlywayExecutor.execute(FlywayExecutor.java:205)",
            "org.flywaydb.core.Flyway.migrate(Flyway.java:124)",
            "org.springframework.boot.autoconfigure.flyway.FlywayMigrationInitializer.afterPropertiesSet(FlywayMigrationInitializer.java:66)",
            "org.springframework.beans.factory.support.AbstractAutowireCapableBeanFactory.invokeInitMethods(AbstractAutowireCapableBeanFactory.java:1853)",
            "org.springframework.beans.factory.support.AbstractAutowireCapableBeanFactory.initializeBean(AbstractAutowireCapableBeanFactory.java:1802)",
        ]
    )
    out.append(f"\t... {len(_SPRING_TAIL)} common frames omitted")
    out.append("")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# 3. kubectl get events -A: why checkout pods are stuck.
# --------------------------------------------------------------------------------------------


_Event = tuple[str, str, str, str, int, int]
"""type, reason, object, message, last seen (seconds ago), first seen (seconds ago; 0: seen once)."""


def _age(seconds: int) -> str:
    """Format an event age the way kubectl does (``45s``, ``3m12s``, ``17m``, ``2h5m``)."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 600:
        return f"{seconds // 60}m{seconds % 60}s" if seconds % 60 else f"{seconds // 60}m"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60}m"


def _kubectl_events(rng: random.Random) -> str:
    nodes = [
        f"ip-10-42-{rng.randint(1, 60)}-{rng.randint(2, 250)}.eu-west-1.compute.internal"
        for _ in range(12)
    ]

    def ev(
        etype: str, reason: str, obj: str, msg: str, last: int | None = None, first: int = 0
    ) -> _Event:
        return (etype, reason, obj, msg, rng.randint(30, 3000) if last is None else last, first)

    def repeated(etype: str, reason: str, obj: str, msg: str) -> _Event:
        last = rng.randint(20, 900)
        return (etype, reason, obj, msg, last, last + rng.randint(600, 3000))

    def rollout(ns: str, deploy: str, image: str, container: str) -> list[_Event]:
        rs = f"{deploy}-{_hex(rng, 10)}"
        pod = f"{rs}-{_suffix(rng)}"
        base = rng.randint(300, 3000)
        pull = rng.uniform(0.8, 9)
        return [
            ev(
                "Normal",
                "ScalingReplicaSet",
                f"deployment/{deploy}",
                f"Scaled up replica set {rs} to 1",
                base,
            ),
            ev("Normal", "SuccessfulCreate", f"replicaset/{rs}", f"Created pod: {pod}", base),
            ev(
                "Normal",
                "Scheduled",
                f"pod/{pod}",
                f"Successfully assigned {ns}/{pod} to {rng.choice(nodes)}",
                base,
            ),
            ev(
                "Normal",
                "Pulled",
                f"pod/{pod}",
                f'Successfully pulled image "{image}" in {pull:.3f}s. Image size: {rng.randint(20_000_000, 400_000_000)} bytes.',
                base - round(pull) - 1,
            ),
            ev(
                "Normal",
                "Created",
                f"pod/{pod}",
                f"Created container {container}",
                base - round(pull) - 1,
            ),
            ev(
                "Normal",
                "Started",
                f"pod/{pod}",
                f"Started container {container}",
                base - round(pull) - 2,
            ),
        ]

    gpu_msg = "0/12 nodes are available: 3 Insufficient memory, 9 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/12 nodes are available: 3 No preemption victims found for incoming pod, 9 Preemption is not helpful for scheduling."
    api_pod = f"checkout-api-7b5d8c6f9-{_suffix(rng)}"
    per_ns: dict[str, list[_Event]] = {
        "analytics": [
            *rollout(
                "analytics", "superset-web", "registry.acme.io/superset:4.0.2-acme3", "superset"
            ),
            ev(
                "Normal",
                "SawCompletedJob",
                "cronjob/nightly-rollups",
                "Saw completed job: nightly-rollups-28866540, condition: Complete",
                2412,
            ),
            ev("Normal", "Completed", "job/nightly-rollups-28866540", "Job completed", 2413),
        ],
        "argocd": [
            ev(
                "Normal",
                "ResourceUpdated",
                "application/checkout",
                "Updated sync status: OutOfSync -> Synced",
                671,
            ),
            ev(
                "Normal",
                "OperationCompleted",
                "application/checkout",
                "Sync operation to 7e41b0c succeeded",
                671,
            ),
            ev(
                "Normal",
                "ResourceUpdated",
                "application/checkout",
                "Updated health status: Healthy -> Progressing",
                668,
            ),
            ev(
                "Normal",
                "OperationStarted",
                "application/search",
                "Initiated automated sync to '2d9f3aa'",
            ),
        ],
        "auth": [
            *rollout("auth", "keycloak", "quay.io/keycloak/keycloak:25.0.6", "keycloak"),
            repeated(
                "Warning",
                "Unhealthy",
                "pod/keycloak-0",
                'Startup probe failed: Get "http://10.42.7.41:9000/health/started": dial tcp 10.42.7.41:9000: connect: connection refused',
            ),
        ],
        "billing": [
            repeated(
                "Warning",
                "BackOff",
                f"pod/invoice-renderer-6c8f9d4b7-{_suffix(rng)}",
                "Back-off restarting failed container renderer in pod invoice-renderer_billing",
            ),
            ev(
                "Normal",
                "Pulled",
                f"pod/invoice-renderer-6c8f9d4b7-{_suffix(rng)}",
                'Container image "registry.acme.io/invoice-renderer:2.4.0" already present on machine',
            ),
            ev(
                "Normal",
                "SuccessfulRescale",
                "horizontalpodautoscaler/billing-api",
                "New size: 5; reason: cpu resource utilization (percentage of request) above target",
            ),
        ],
        "cert-manager": [
            ev(
                "Normal",
                "Issuing",
                "certificate/checkout-tls",
                "The certificate has been successfully issued",
            ),
            ev(
                "Normal",
                "Reused",
                "certificate/checkout-tls",
                'Reusing private key stored in existing Secret resource "checkout-tls"',
            ),
            ev(
                "Normal",
                "cert-manager.io",
                "certificaterequest/checkout-tls-1",
                "Certificate request has been approved by cert-manager.io",
            ),
        ],
        "checkout": [
            ev(
                "Normal",
                "ScalingReplicaSet",
                "deployment/checkout-worker",
                "Scaled up replica set checkout-worker-6f8d7c9b44 to 2",
                655,
            ),
            ev(
                "Normal",
                "ScalingReplicaSet",
                "deployment/checkout-worker",
                "Scaled down replica set checkout-worker-58b6d7f5c to 1 from 2",
                655,
            ),
            ev(
                "Normal",
                "SuccessfulCreate",
                "replicaset/checkout-worker-6f8d7c9b44",
                "Created pod: checkout-worker-6f8d7c9b44-jx9tp",
                655,
            ),
            ev(
                "Normal",
                "SuccessfulCreate",
                "replicaset/checkout-worker-6f8d7c9b44",
                "Created pod: checkout-worker-6f8d7c9b44-qm2rz",
                655,
            ),
            ev(
                "Warning",
                "FailedScheduling",
                "pod/checkout-worker-6f8d7c9b44-jx9tp",
                gpu_msg,
                48,
                655,
            ),
            ev(
                "Warning",
                "FailedScheduling",
                "pod/checkout-worker-6f8d7c9b44-qm2rz",
                gpu_msg,
                51,
                654,
            ),
            ev(
                "Normal",
                "NotTriggerScaleUp",
                "pod/checkout-worker-6f8d7c9b44-jx9tp",
                "pod didn't trigger scale-up: 2 max node group size reached, 1 node(s) had untolerated taint {dedicated: gpu}",
                112,
                640,
            ),
            ev(
                "Warning",
                "FailedMount",
                "pod/checkout-redis-0",
                'MountVolume.SetUp failed for volume "redis-config" : configmap "checkout-redis-config" not found',
                95,
                642,
            ),
            ev(
                "Normal",
                "Scheduled",
                "pod/checkout-redis-0",
                f"Successfully assigned checkout/checkout-redis-0 to {nodes[3]}",
                648,
            ),
            ev(
                "Normal",
                "Pulled",
                f"pod/{api_pod}",
                'Container image "registry.acme.io/checkout-api:1.42.0" already present on machine',
                2240,
            ),
            ev("Normal", "Started", f"pod/{api_pod}", "Started container api", 2239),
            ev(
                "Warning",
                "Unhealthy",
                f"pod/{api_pod}",
                'Readiness probe failed: Get "http://10.42.9.23:8080/ready": context deadline exceeded (Client.Timeout exceeded while awaiting headers)',
                1930,
                2210,
            ),
        ],
        "data": [
            repeated(
                "Warning",
                "FailedScheduling",
                f"pod/spark-exec-{_hex(rng, 8)}-exec-3",
                "0/12 nodes are available: 12 Insufficient nvidia.com/gpu. preemption: 0/12 nodes are available: 12 No preemption victims found for incoming pod.",
            ),
            *rollout("data", "kafka-connect", "registry.acme.io/kafka-connect:7.6.1", "connect"),
        ],
        "ingress-nginx": [
            ev(
                "Normal",
                "RELOAD",
                f"pod/ingress-nginx-controller-5d88495d4-{_suffix(rng)}",
                "NGINX reload triggered due to a change in configuration",
                660,
            ),
            ev("Normal", "Sync", "ingress/checkout", "Scheduled for sync", 661),
        ],
        "kube-system": [
            ev(
                "Normal",
                "LeaderElection",
                "lease/cluster-autoscaler",
                f"cluster-autoscaler-7f8b9c5d6-{_suffix(rng)} became leader",
            ),
            repeated(
                "Warning", "NodeNotReady", f"pod/aws-node-{_suffix(rng)}", "Node is not ready"
            ),
            ev(
                "Normal",
                "Killing",
                f"pod/coredns-5d78c9869d-{_suffix(rng)}",
                "Stopping container coredns",
            ),
            *rollout(
                "kube-system",
                "metrics-server",
                "registry.k8s.io/metrics-server/metrics-server:v0.7.2",
                "metrics-server",
            ),
        ],
        "monitoring": [
            repeated(
                "Warning",
                "FailedMount",
                "pod/alertmanager-main-1",
                'MountVolume.SetUp failed for volume "config-volume" : secret "alertmanager-main-generated" not found',
            ),
            ev("Normal", "Killing", "pod/prometheus-k8s-0", "Stopping container prometheus"),
            repeated(
                "Warning",
                "BackOff",
                f"pod/kube-state-metrics-6b9d8c7f5-{_suffix(rng)}",
                "Back-off restarting failed container kube-state-metrics",
            ),
        ],
        "payments": [
            *rollout(
                "payments",
                "payments-api",
                "registry.acme.io/payments-api:4816-9b2c0de",
                "payments-api",
            ),
            ev(
                "Normal",
                "SuccessfulDelete",
                "replicaset/payments-api-5b8f9d7c6",
                f"Deleted pod: payments-api-5b8f9d7c6-{_suffix(rng)}",
            ),
        ],
        "search": [
            repeated(
                "Warning",
                "Unhealthy",
                f"pod/search-api-84f6d9b7c5-{_suffix(rng)}",
                "Liveness probe failed: HTTP probe failed with statuscode: 503",
            ),
            ev(
                "Normal",
                "Killing",
                f"pod/search-api-84f6d9b7c5-{_suffix(rng)}",
                "Container search-api failed liveness probe, will be restarted",
            ),
            repeated(
                "Warning",
                "FailedScheduling",
                f"pod/opensearch-data-{rng.randint(3, 5)}",
                "0/12 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/12 nodes are available: 12 Preemption is not helpful for scheduling.",
            ),
        ],
    }
    rows: list[tuple[str, str, str, str, str, str]] = []
    for ns in sorted(per_ns):
        for etype, reason, obj, msg, last, first in sorted(per_ns[ns], key=lambda e: e[2]):
            seen = _age(last)
            if first:
                seen = (
                    f"{seen} (x{max(2, (first - last) // rng.randint(15, 90))} over {_age(first)})"
                )
            rows.append((ns, seen, etype, reason, obj, msg))
    header = ("NAMESPACE", "LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = []
    for row in [header, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(5)]
        lines.append("   ".join(cells) + "   " + row[5])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# 4. aws ec2 describe-instances: which data-platform instances still run on m5.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ec2:
    """The hand-picked identity of one EC2 instance; the rest is generated."""

    instance_id: str
    instance_type: str
    state: str
    private_ip: str
    name: str
    team: str
    launched: str


_EC2_INSTANCES = [
    _Ec2(
        "i-0c5e2a9b71f3d4e08",
        "m5.large",
        "running",
        "10.20.3.18",
        "web-frontend-3",
        "web",
        "2024-06-11T08:21:40+00:00",
    ),
    _Ec2(
        "i-0a7f3c91d2e4b5867",
        "m5.2xlarge",
        "running",
        "10.20.14.37",
        "dp-airflow-scheduler-1",
        "data-platform",
        "2023-03-02T14:05:11+00:00",
    ),
    _Ec2(
        "i-05d8e1f4a3b2c9706",
        "m6i.2xlarge",
        "running",
        "10.20.15.91",
        "dp-trino-coordinator",
        "data-platform",
        "2024-08-19T10:44:02+00:00",
    ),
    _Ec2(
        "i-0e3b9d7a12c48f5e1",
        "m5.4xlarge",
        "running",
        "10.20.40.12",
        "ml-feature-store-1",
        "ml-infra",
        "2023-11-27T16:30:55+00:00",
    ),
    _Ec2(
        "i-09b4f6c2e8a1d3057",
        "m5.xlarge",
        "stopped",
        "10.20.16.203",
        "dp-spark-history",
        "data-platform",
        "2022-12-05T09:12:37+00:00",
    ),
    _Ec2(
        "i-0f12a8c4d6e9b3a75",
        "m5.4xlarge",
        "running",
        "10.20.22.114",
        "dp-kafka-connect-2",
        "data-platform",
        "2023-05-16T11:58:20+00:00",
    ),
    _Ec2(
        "i-07c3e9a5b1d2f4680",
        "m5.2xlarge",
        "running",
        "10.20.18.66",
        "legacy-etl-1",
        "data-platform-legacy",
        "2021-09-30T07:40:13+00:00",
    ),
    _Ec2(
        "i-0b6d2f8e4a3c1957d",
        "m6i.xlarge",
        "running",
        "10.20.23.150",
        "dp-kafka-connect-3",
        "data-platform",
        "2024-09-04T13:17:48+00:00",
    ),
    _Ec2(
        "i-03a9c7e5f1b2d8e46",
        "m5.2xlarge",
        "running",
        "10.20.41.77",
        "ml-training-scheduler",
        "ml-infra",
        "2023-07-21T12:03:09+00:00",
    ),
    _Ec2(
        "i-0d4e8b2a6c9f1e3b7",
        "m5.xlarge",
        "running",
        "10.20.31.209",
        "dp-dbt-runner",
        "data-platform",
        "2023-01-18T15:26:44+00:00",
    ),
]


def _aws_describe_instances(rng: random.Random) -> str:
    vpc = "vpc-0" + _hex(rng, 16)
    reservations: list[dict[str, Any]] = []
    for inst in _EC2_INSTANCES:
        octets = inst.private_ip.split(".")
        subnet = f"subnet-0{_hex(rng, 16)}"
        az = f"us-east-1{rng.choice('abc')}"
        dns = f"ip-{'-'.join(octets)}.ec2.internal"
        running = inst.state == "running"
        instance: dict[str, Any] = {
            "ImageId": f"ami-0{_hex(rng, 16)}",
            "InstanceId": inst.instance_id,
            "InstanceType": inst.instance_type,
            "LaunchTime": inst.launched,
            "Placement": {"AvailabilityZone": az, "Tenancy": "default"},
            "PrivateDnsName": dns,
            "PrivateIpAddress": inst.private_ip,
            "State": {"Code": 16 if running else 80, "Name": inst.state},
            "StateTransitionReason": "" if running else "User initiated (2024-10-02 16:11:09 GMT)",
            "SubnetId": subnet,
            "VpcId": vpc,
            "Architecture": "x86_64",
            "EbsOptimized": True,
            "IamInstanceProfile": {
                "Arn": f"arn:aws:iam::412907355118:instance-profile/{inst.team}-ec2"
            },
            "SecurityGroups": [
                {"GroupId": f"sg-0{_hex(rng, 16)}", "GroupName": f"{inst.team}-default"},
            ],
            "Tags": [
                {"Key": "Name", "Value": inst.name},
                {"Key": "team", "Value": inst.team},
                {"Key": "env", "Value": "prod"},
                {"Key": "cost-center", "Value": rng.choice(["cc-1140", "cc-2210", "cc-3305"])},
            ],
            "PlatformDetails": "Linux/UNIX",
        }
        reservations.append(instance)
    return json.dumps(reservations, indent=4) + "\n"


# --------------------------------------------------------------------------------------------
# 5. GitHub pull requests with labels, reviewers and check results.
# --------------------------------------------------------------------------------------------

_USER_IDS = {
    "dkowalski": 4418203,
    "dkowalsky": 7720391,
    "ajimenez": 3391876,
    "lhartmann": 5120944,
    "tnguyen": 6603127,
    "rpatel": 2287415,
    "mchen": 8815502,
    "dependabot[bot]": 49699333,
}

_LABELS = {
    "security": ("d73a4a", "Security fix or hardening"),
    "dependencies": ("0366d6", "Pull requests that update a dependency file"),
    "backend": ("5319e7", ""),
    "auth": ("fbca04", "Login, SSO, sessions"),
    "ui": ("c5def5", ""),
    "tests": ("bfd4f2", ""),
    "enhancement": ("a2eeef", "New feature or request"),
    "refactor": ("ededed", ""),
    "ci": ("1d76db", ""),
    "docs": ("0075ca", "Improvements or additions to documentation"),
    "breaking-change": ("b60205", ""),
}


@dataclass(frozen=True)
class _Pull:
    """One hand-written pull request of the listing."""

    number: int
    title: str
    author: str
    labels: tuple[str, ...]
    reviewers: tuple[str, ...]
    checks: str
    body: str
    draft: bool = False
    failing: tuple[tuple[str, str], ...] = ()


_PULLS = [
    _Pull(
        1523,
        "Add dark mode toggle to settings page",
        "mchen",
        ("enhancement", "ui"),
        ("lhartmann",),
        "success",
        "Adds a theme switch persisted in user preferences. Screenshots in the thread.",
    ),
    _Pull(
        1521,
        "Fix flaky date picker test",
        "tnguyen",
        ("tests",),
        ("dkowalski",),
        "success",
        "The test depended on the local timezone; pin TZ=UTC in the test setup.",
    ),
    _Pull(
        1519,
        "Enforce SameSite=Strict on session cookie",
        "ajimenez",
        ("security", "backend"),
        ("dkowalski", "lhartmann"),
        "pending",
        "Session cookie was SameSite=Lax. Strict breaks the marketing-site deep links, so those now go through /continue.",
    ),
    _Pull(
        1516,
        "Bump @tanstack/react-query from 5.51.1 to 5.59.0",
        "dependabot[bot]",
        ("dependencies",),
        ("dkowalski",),
        "success",
        "Bumps @tanstack/react-query from 5.51.1 to 5.59.0.",
    ),
    _Pull(
        1514,
        "Rate-limit password reset endpoint",
        "rpatel",
        ("security",),
        ("tnguyen",),
        "success",
        "5 requests per 15 minutes per account and per IP, enforced in the API gateway.",
    ),
    _Pull(
        1511,
        "Migrate feature flags to OpenFeature SDK",
        "lhartmann",
        ("refactor",),
        ("ajimenez",),
        "failure",
        "Replaces the home-grown flag client.",
        failing=(("unit (node 20)", "4 tests failed: flags/*.test.ts"),),
    ),
    _Pull(
        1507,
        "Upgrade jsonwebtoken to 9.0.2 (CVE-2022-23529)",
        "rpatel",
        ("security", "dependencies"),
        ("dkowalski",),
        "failure",
        "jsonwebtoken 8.5.1 is affected by CVE-2022-23529. 9.x drops support for unsigned tokens by default; the SSO callback needed an explicit algorithms list.",
        failing=(
            (
                "e2e (chromium)",
                "2 tests failed: login.spec.ts > redirects after SSO; login.spec.ts > keeps return_to",
            ),
        ),
    ),
    _Pull(
        1503,
        "Escape user-provided filenames in CSV export",
        "mchen",
        ("security",),
        ("dkowalsky",),
        "success",
        "Prevents formula injection (=, +, -, @ prefixes) in exported filenames.",
    ),
    _Pull(
        1499,
        "Add CSP report-uri endpoint",
        "ajimenez",
        ("security",),
        (),
        "success",
        "Collects CSP violation reports before we switch the policy from report-only to enforce.",
        draft=True,
    ),
    _Pull(
        1495,
        "Refactor billing page layout",
        "lhartmann",
        ("ui",),
        ("dkowalski", "mchen"),
        "success",
        "Splits BillingPage into smaller components; no visual change intended.",
    ),
    _Pull(
        1482,
        "Sanitize redirect_uri in OAuth callback",
        "rpatel",
        ("security", "auth"),
        ("dkowalski",),
        "success",
        "The callback accepted any redirect_uri with our domain as a prefix (acme.io.evil.com). Now compared against the registered list exactly.",
    ),
    _Pull(
        1469,
        "Remove legacy v1 reports API",
        "ajimenez",
        ("breaking-change",),
        ("dkowalski",),
        "failure",
        "v1 has had no traffic for 90 days.",
        failing=(("contract-tests", "consumer reports-exporter still calls GET /api/v1/reports"),),
    ),
]


def _github_pull_list(rng: random.Random) -> str:
    created = datetime(2024, 11, 19, 15, 4, 0, tzinfo=timezone.utc)
    pulls: list[dict[str, Any]] = []
    for pull in _PULLS:
        created -= timedelta(hours=rng.uniform(5, 40))
        updated = created + timedelta(hours=rng.uniform(1, 30))
        total = rng.randint(8, 12)
        failed = len(pull.failing)
        pending = rng.randint(1, 3) if pull.checks == "pending" else 0
        checks: dict[str, Any] = {
            "state": pull.checks,
            "total_count": total,
            "successful": total - failed - pending,
            "failed": failed,
            "pending": pending,
        }
        if pull.failing:
            checks["failing_checks"] = [
                {"name": n, "conclusion": "failure", "summary": s} for n, s in pull.failing
            ]
        if pending:
            checks["pending_checks"] = [
                {"name": n, "status": "in_progress"}
                for n in ["e2e (chromium)", "e2e (webkit)", "lighthouse"][:pending]
            ]
        branch = (
            pull.title.lower().replace(" ", "-").replace("(", "").replace(")", "")[:40].strip("-")
        )
        pulls.append(
            {
                "html_url": f"https://github.com/acme/web-console/pull/{pull.number}",
                "number": pull.number,
                "state": "open",
                "title": pull.title,
                "user": {
                    "login": pull.author,
                    "id": _USER_IDS[pull.author],
                    "type": "Bot" if pull.author.endswith("[bot]") else "User",
                },
                "body": pull.body,
                "labels": [{"name": name, "color": _LABELS[name][0]} for name in pull.labels],
                "created_at": f"{created:%Y-%m-%dT%H:%M:%SZ}",
                "updated_at": f"{updated:%Y-%m-%dT%H:%M:%SZ}",
                "draft": pull.draft,
                "requested_reviewers": [
                    {"login": r, "id": _USER_IDS[r], "type": "User"} for r in pull.reviewers
                ],
                "requested_teams": [],
                "head": {"ref": branch, "sha": _hex(rng, 12)},
                "base": {"ref": "main"},
                "author_association": "NONE" if pull.author.endswith("[bot]") else "MEMBER",
                "checks": checks,
            }
        )
    return json.dumps(pulls, indent=2) + "\n"


# --------------------------------------------------------------------------------------------
# 6. psql: EXPLAIN ANALYZE, \d and pg_stat_statements.
# --------------------------------------------------------------------------------------------

_PSQL_PLAN = """\
billing=> EXPLAIN (ANALYZE, BUFFERS)
billing-> SELECT i.id, i.number, i.issued_at, c.name, sum(il.amount_cents) AS total_cents
billing->   FROM invoices i
billing->   JOIN customers c ON c.id = i.customer_id
billing->   JOIN invoice_lines il ON il.invoice_id = i.id
billing->  WHERE i.tenant_id = 4821 AND il.tenant_id = 4821 AND i.status = 'open'
billing->  GROUP BY i.id, c.name
billing->  ORDER BY i.issued_at DESC
billing->  LIMIT 50;
                                                                                      QUERY PLAN
---------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
 Limit  (cost=398112.47..398112.60 rows=50 width=72) (actual time=2101.884..2101.902 rows=50 loops=1)
   Buffers: shared hit=41873 read=268114
   ->  Sort  (cost=398112.47..398139.12 rows=10660 width=72) (actual time=2101.882..2101.894 rows=50 loops=1)
         Sort Key: i.issued_at DESC
         Sort Method: top-N heapsort  Memory: 35kB
         Buffers: shared hit=41873 read=268114
         ->  HashAggregate  (cost=397598.21..397758.11 rows=10660 width=72) (actual time=2094.530..2099.117 rows=11382 loops=1)
               Group Key: i.id, c.name
               Batches: 1  Memory Usage: 3097kB
               Buffers: shared hit=41873 read=268114
               ->  Hash Join  (cost=1922.64..397278.41 rows=42640 width=48) (actual time=31.907..2071.446 rows=45127 loops=1)
                     Hash Cond: (il.invoice_id = i.id)
                     Buffers: shared hit=41873 read=268114
                     ->  Gather  (cost=1000.00..395108.66 rows=51402 width=16) (actual time=1.318..2018.552 rows=61894 loops=1)
                           Workers Planned: 2
                           Workers Launched: 2
                           Buffers: shared hit=36411 read=268114
                           ->  Parallel Seq Scan on invoice_lines il  (cost=0.00..388968.46 rows=21418 width=16) (actual time=0.412..1788.604 rows=20631 loops=3)
                                 Filter: (tenant_id = 4821)
                                 Rows Removed by Filter: 3034067
                                 Buffers: shared hit=36411 read=268114
                     ->  Hash  (cost=789.40..789.40 rows=10660 width=40) (actual time=30.271..30.275 rows=11382 loops=1)
                           Buckets: 16384  Batches: 1  Memory Usage: 892kB
                           Buffers: shared hit=5462
                           ->  Nested Loop  (cost=0.85..789.40 rows=10660 width=40) (actual time=0.061..27.338 rows=11382 loops=1)
                                 Buffers: shared hit=5462
                                 ->  Index Scan using invoices_tenant_status_issued_idx on invoices i  (cost=0.43..412.18 rows=10660 width=24) (actual time=0.038..9.127 rows=11382 loops=1)
                                       Index Cond: ((tenant_id = 4821) AND ((status)::text = 'open'::text))
                                       Buffers: shared hit=1903
                                 ->  Memoize  (cost=0.42..0.51 rows=1 width=24) (actual time=0.001..0.001 rows=1 loops=11382)
                                       Cache Key: i.customer_id
                                       Cache Mode: logical
                                       Hits: 10977  Misses: 405  Evictions: 0  Overflows: 0  Memory Usage: 52kB
                                       Buffers: shared hit=3559
                                       ->  Index Scan using customers_pkey on customers c  (cost=0.41..0.50 rows=1 width=24) (actual time=0.012..0.012 rows=1 loops=405)
                                             Index Cond: (id = i.customer_id)
                                             Buffers: shared hit=3559
 Planning:
   Buffers: shared hit=412
 Planning Time: 1.947 ms
 JIT:
   Functions: 31
   Options: Inlining false, Optimization false, Expressions true, Deforming true
   Timing: Generation 2.114 ms, Inlining 0.000 ms, Optimization 1.208 ms, Emission 18.447 ms, Total 21.769 ms
 Execution Time: 2107.455 ms
(45 rows)

billing=> \\d invoice_lines
                                        Table "public.invoice_lines"
    Column     |           Type           | Collation | Nullable |                  Default
---------------+--------------------------+-----------+----------+-------------------------------------------
 id            | bigint                   |           | not null | nextval('invoice_lines_id_seq'::regclass)
 invoice_id    | bigint                   |           | not null |
 tenant_id     | integer                  |           | not null |
 product_id    | bigint                   |           |          |
 description   | text                     |           | not null |
 quantity      | numeric(12,3)            |           | not null | 1
 amount_cents  | bigint                   |           | not null |
 currency      | character(3)             |           | not null | 'EUR'::bpchar
 created_at    | timestamp with time zone |           | not null | now()
Indexes:
    "invoice_lines_pkey" PRIMARY KEY, btree (id)
    "invoice_lines_invoice_id_idx" btree (invoice_id)
    "invoice_lines_product_id_idx" btree (product_id)
    "invoice_lines_created_at_brin" brin (created_at)
Foreign-key constraints:
    "invoice_lines_invoice_id_fkey" FOREIGN KEY (invoice_id) REFERENCES invoices(id) ON DELETE CASCADE
    "invoice_lines_product_id_fkey" FOREIGN KEY (product_id) REFERENCES products(id)

billing=> SELECT queryid, calls, round(total_exec_time::numeric, 2) AS total_ms, round(mean_exec_time::numeric, 2) AS mean_ms, rows, left(query, 72) AS query
billing->   FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'billing')
billing->  ORDER BY total_exec_time DESC LIMIT 20;
"""

_PSQL_TOP = [
    (
        "-3194227713905501296",
        48_211_904,
        9_841_337.52,
        "UPDATE sessions SET last_seen_at = $1 WHERE id = $2",
    ),
    (
        "7620913348812040511",
        4118,
        8_171_285.64,
        "SELECT i.id, i.number, i.issued_at, c.name, sum(il.amount_cents) AS tota",
    ),
    (
        "-8841502237716390042",
        1_920_377,
        2_904_118.07,
        "SELECT * FROM invoices WHERE tenant_id = $1 AND id = $2",
    ),
]

_PSQL_FILLER = [
    "INSERT INTO invoice_lines (invoice_id, tenant_id, product_id, descripti",
    "SELECT c.* FROM customers c WHERE c.tenant_id = $1 AND c.external_id =",
    "UPDATE invoices SET status = $1, updated_at = now() WHERE id = $2",
    "SELECT count(*) FROM invoice_lines WHERE invoice_id = $1",
    "INSERT INTO audit_events (tenant_id, actor_id, kind, payload) VALUES (",
    "SELECT p.id, p.name, p.unit_price_cents FROM products p WHERE p.id = A",
    "WITH due AS (SELECT id FROM invoices WHERE status = $1 AND due_at < now",
    "SELECT t.* FROM tax_rates t WHERE t.country = $1 AND t.valid_from <= $",
    "DELETE FROM sessions WHERE last_seen_at < now() - $1::interval",
    "SELECT id, payload FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT",
    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1)",
    "SELECT i.* FROM invoices i WHERE i.customer_id = $1 ORDER BY issued_at",
    "INSERT INTO payments (invoice_id, amount_cents, provider, provider_ref)",
    "SELECT sum(amount_cents) FROM payments WHERE invoice_id = $1",
    "COPY invoice_lines_archive FROM STDIN WITH (FORMAT binary)",
    "SELECT pg_try_advisory_lock($1)",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY tenant_revenue_daily",
]


def _psql_explain(rng: random.Random) -> str:
    rows: list[tuple[str, int, float, str]] = list(_PSQL_TOP)
    total = 1_400_000.0
    for query in rng.sample(_PSQL_FILLER, 17):
        total *= rng.uniform(0.62, 0.93)
        heavy = query.startswith(("COPY", "REFRESH", "WITH"))
        mean = rng.uniform(180, 2600) if heavy else rng.uniform(0.02, 3.5)
        calls = max(1, round(total / mean))
        query_id = rng.randint(-(2**63), 2**63 - 1)
        rows.append((str(query_id), calls, round(total, 2), query))
    table = [
        "       queryid        |  calls   |  total_ms  | mean_ms  |   rows    | query",
        "----------------------+----------+------------+----------+-----------+--------------------------------------------------------------------------",
    ]
    for qid, calls, total_ms, query in rows:
        mean = total_ms / calls
        nrows = calls * (50 if query.startswith("SELECT i.id") else rng.choice([1, 1, 1, 3]))
        table.append(
            f" {qid:>20} | {calls:>8} | {total_ms:>10.2f} | {mean:>8.2f} | {nrows:>9} | {query}"
        )
    table.append(f"({len(rows)} rows)")
    return _PSQL_PLAN + "\n".join(table) + "\n"


# --------------------------------------------------------------------------------------------
# 7. Loki logcli query, logfmt lines: the 502s on uploads.
# --------------------------------------------------------------------------------------------


def _loki_logfmt(rng: random.Random) -> str:
    pods = [f"media-gateway-7c9d5f6b8-{_suffix(rng)}" for _ in range(4)]
    events: list[tuple[datetime, str, str]] = []
    start = datetime(2024, 11, 19, 14, 0, 0, tzinfo=timezone.utc)
    outage = datetime(2024, 11, 19, 14, 21, 7, 412000, tzinfo=timezone.utc)

    def add(t: datetime, body: str, pod: str = "") -> None:
        events.append((t, pod or rng.choice(pods), body))

    def rand_time(lo: datetime, hi: datetime) -> datetime:
        span = (hi - lo).total_seconds()
        return lo + timedelta(seconds=rng.uniform(0, span), microseconds=0)

    end = start + timedelta(minutes=45)
    for _ in range(6):
        t = rand_time(start, end)
        add(
            t,
            f'level=error caller=thumbs/cache.go:77 msg="cache fetch failed" route=/v2/thumbnails err="redis: connection pool timeout" pool_size=64 wait_ms={rng.randint(500, 1000)}',
        )
    for _ in range(4):
        t = rand_time(start, end)
        add(
            t,
            f'level=warn caller=httpx/ratelimit.go:52 msg="rate limited" route=/v1/avatars method=GET status=429 client_id=app-{rng.randint(1000, 9999)} limit=300/min',
        )
    for _ in range(4):
        t = rand_time(start, end)
        add(
            t,
            f'level=error caller=auth/jwt.go:141 msg="token verification failed" route=/v2/uploads method=POST status=401 err="jwt: token is expired" user_id=u-{rng.randint(10000, 99999)}',
        )
    for _ in range(3):
        t = rand_time(start, end)
        add(
            t,
            f'level=warn caller=httpx/server.go:203 msg="slow request" route=/v2/albums method=GET status=200 duration_ms={rng.randint(1500, 4200)}',
        )
    for _ in range(2):
        t = rand_time(start, end)
        add(
            t,
            'level=warn caller=s3store/get.go:64 msg="s3 get retry" route=/v2/thumbnails bucket=acme-media-thumbs-eu attempt=2 err="StatusCode: 503, SlowDown"',
        )
    # The outage: slow puts first, then timeouts and 502s on the upload route.
    slow_start = datetime(2024, 11, 19, 14, 19, 48, 90000, tzinfo=timezone.utc)
    for _ in range(3):
        t = rand_time(slow_start, outage)
        add(
            t,
            f'level=warn caller=s3store/put.go:131 msg="s3 put slow" route=/v2/uploads bucket=acme-media-prod-eu duration_ms={rng.randint(2300, 2950)} size_bytes={rng.randint(200_000, 9_000_000)}',
        )
    t = outage
    while t < end:
        key = f"u/{rng.randint(1000, 9999)}/{_hex(rng, 12)}.jpg"
        trace = _hex(rng, 16)
        pod = rng.choice(pods)
        add(
            t,
            f'level=error caller=s3store/put.go:118 msg="upstream put failed" route=/v2/uploads bucket=acme-media-prod-eu key={key} attempt=3 timeout_ms=3000 err="operation error S3: PutObject, https response error StatusCode: 0, RequestID: , canceled, context deadline exceeded" trace_id={trace}',
            pod,
        )
        add(
            t + timedelta(milliseconds=rng.randint(2, 9)),
            f'level=error caller=httpx/proxy.go:87 msg="request failed" route=/v2/uploads method=POST status=502 duration_ms={rng.randint(9050, 9400)} trace_id={trace}',
            pod,
        )
        t += timedelta(seconds=rng.uniform(100, 230))
    add(
        datetime(2024, 11, 19, 14, 27, 40, 5000, tzinfo=timezone.utc),
        'level=error caller=s3store/breaker.go:44 msg="circuit breaker open" breaker=s3-put bucket=acme-media-prod-eu failures=3 threshold=3 window=10m',
    )
    add(
        datetime(2024, 11, 19, 14, 28, 10, 11000, tzinfo=timezone.utc),
        'level=warn caller=s3store/breaker.go:58 msg="circuit breaker half-open, probing" breaker=s3-put bucket=acme-media-prod-eu',
    )
    events.sort(key=lambda e: e[0])
    lines = []
    for t, pod, body in events:
        lines.append(f"ts={_ms(t)} pod={pod} {body}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# 8. systemctl status + journalctl + systemctl cat for a crashed service.
# --------------------------------------------------------------------------------------------

_UNIT_FILE = """\
$ systemctl cat ingest-worker
# /etc/systemd/system/ingest-worker.service
[Unit]
Description=Ingest worker (Kafka -> Parquet spooler)
Documentation=https://wiki.acme.internal/data/ingest-worker
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=notify
User=ingest
Group=ingest
EnvironmentFile=-/etc/default/ingest-worker
ExecStartPre=/usr/bin/install -d -o ingest -g ingest -m 0750 /run/ingest
ExecStart=/opt/ingest/bin/ingest-worker --config /etc/ingest/worker.toml
Restart=on-failure
RestartSec=10s
TimeoutStopSec=90
LimitNOFILE=65536
MemoryMax=6G
ProtectSystem=strict
ReadWritePaths=/var/spool/ingest /var/lib/ingest /run/ingest
NoNewPrivileges=true

[Install]
WantedBy=multi-user.target

# /etc/systemd/system/ingest-worker.service.d/override.conf
[Service]
User=ingest-svc
Environment=RUST_LOG=info,ingest_worker=debug

$ ls -ld /var/spool/ingest /var/spool/ingest/segments
drwxr-x--- 4 ingest ingest 4096 Nov 18 22:10 /var/spool/ingest
drwxr-x--- 2 ingest ingest 20480 Nov 19 03:11 /var/spool/ingest/segments
"""


def _systemd_crash(rng: random.Random) -> str:
    out: list[str] = []
    clock = _Clock(datetime(2024, 11, 18, 23, 31, 5, tzinfo=timezone.utc), rng)

    def jline(pid: int | str, msg: str, low: float = 0.001, high: float = 0.05) -> None:
        t = clock.tick(low, high)
        proc = "systemd[1]" if pid == "systemd" else f"ingest-worker[{pid}]"
        if pid == "sudo":
            proc = "sudo[47811]"
        prefix = f"{t:%b %d %H:%M:%S} ingest-03 {proc}: "
        out.append(prefix + msg)

    # Normal operation of the old process during the night.
    old = 31877
    for _ in range(8):
        kind = rng.random()
        part = rng.randint(0, 11)
        if kind < 0.55:
            jline(
                old,
                f"INFO  ingest_worker::spool: flushed segment events-{part}/{rng.randint(100000, 999999)}.parquet rows={rng.randint(20000, 90000)} bytes={rng.randint(4, 60)}MiB",
                60,
                500,
            )
        elif kind < 0.85:
            jline(
                old,
                f"WARN  ingest_worker::consumer: consumer lag {rng.randint(5000, 40000)} on partition events-{part} above threshold 5000",
                60,
                500,
            )
        else:
            jline(
                old,
                "ERROR ingest_worker::consumer: failed to commit offsets: Broker: Group rebalance in progress (will retry)",
                60,
                500,
            )
    jline(old, "INFO  ingest_worker::consumer: partitions assigned: events-0..events-11", 1, 3)
    for _ in range(4):
        part = rng.randint(0, 11)
        jline(
            old,
            f"INFO  ingest_worker::spool: flushed segment events-{part}/{rng.randint(100000, 999999)}.parquet rows={rng.randint(20000, 90000)} bytes={rng.randint(4, 60)}MiB",
            60,
            900,
        )
    clock.now = datetime(2024, 11, 19, 3, 12, 30, tzinfo=timezone.utc)
    jline(
        "sudo", "  deploy : PWD=/home/deploy ; USER=root ; COMMAND=/usr/bin/systemctl daemon-reload"
    )
    jline(
        "systemd",
        "Stopping ingest-worker.service - Ingest worker (Kafka -> Parquet spooler)...",
        1,
        2,
    )
    jline(old, "INFO  ingest_worker: received SIGTERM, draining")
    jline(old, "INFO  ingest_worker::spool: flushed 3 open segments before shutdown", 0.5, 2)
    jline("systemd", "ingest-worker.service: Deactivated successfully.")
    jline("systemd", "Stopped ingest-worker.service - Ingest worker (Kafka -> Parquet spooler).")
    jline("systemd", "ingest-worker.service: Consumed 6h 12min 41.803s CPU time.")
    pid = 47920
    last_pid, cpu = pid, ""
    for attempt in range(1, 6):
        jline(
            "systemd",
            "Starting ingest-worker.service - Ingest worker (Kafka -> Parquet spooler)...",
            0.1,
            0.3,
        )
        jline(pid, "INFO  ingest_worker: starting ingest-worker v2.8.0 (git 6c1e0ab)", 0.05, 0.1)
        jline(pid, "INFO  ingest_worker::config: loaded config from /etc/ingest/worker.toml")
        jline(
            pid,
            "WARN  ingest_worker::config: `kafka.batch_size` is deprecated, use `kafka.max_poll_records`",
        )
        jline(
            pid,
            "DEBUG ingest_worker::spool: opening spool dir=/var/spool/ingest/segments uid=997 (ingest-svc) gid=997",
            0.2,
            0.6,
        )
        jline(
            pid,
            "ERROR ingest_worker: failed to open spool directory /var/spool/ingest/segments: Permission denied (os error 13)",
        )
        jline(pid, "ERROR ingest_worker: fatal: configuration error, exiting with EX_CONFIG (78)")
        jline(
            "systemd", "ingest-worker.service: Main process exited, code=exited, status=78/CONFIG"
        )
        jline("systemd", "ingest-worker.service: Failed with result 'exit-code'.")
        jline(
            "systemd",
            "Failed to start ingest-worker.service - Ingest worker (Kafka -> Parquet spooler).",
        )
        cpu = f"{rng.uniform(1.05, 1.3):.3f}s"
        jline("systemd", f"ingest-worker.service: Consumed {cpu} CPU time.")
        jline(
            "systemd",
            f"ingest-worker.service: Scheduled restart job, restart counter is at {attempt}.",
            10,
            10.2,
        )
        jline(
            "systemd", "Stopped ingest-worker.service - Ingest worker (Kafka -> Parquet spooler)."
        )
        last_pid = pid
        pid += rng.randint(40, 120)
    jline("systemd", "ingest-worker.service: Start request repeated too quickly.")
    jline("systemd", "ingest-worker.service: Failed with result 'exit-code'.")
    jline(
        "systemd",
        "Failed to start ingest-worker.service - Ingest worker (Kafka -> Parquet spooler).",
    )
    status = [
        "$ systemctl status ingest-worker --no-pager",
        "\u00d7 ingest-worker.service - Ingest worker (Kafka -> Parquet spooler)",
        "     Loaded: loaded (/etc/systemd/system/ingest-worker.service; enabled; preset: enabled)",
        "    Drop-In: /etc/systemd/system/ingest-worker.service.d",
        "             └─override.conf",
        f"     Active: failed (Result: exit-code) since {clock.now:%a %Y-%m-%d %H:%M:%S} UTC; 5h 41min ago",
        "   Duration: 1.204s",
        "       Docs: https://wiki.acme.internal/data/ingest-worker",
        f"    Process: {last_pid - 2} ExecStartPre=/usr/bin/install -d -o ingest -g ingest -m 0750 /run/ingest (code=exited, status=0/SUCCESS)",
        f"    Process: {last_pid} ExecStart=/opt/ingest/bin/ingest-worker --config /etc/ingest/worker.toml (code=exited, status=78/CONFIG)",
        f"   Main PID: {last_pid} (code=exited, status=78/CONFIG)",
        f"        CPU: {cpu}",
        "",
        "$ journalctl -u ingest-worker -n 200 --no-pager",
    ]
    return "\n".join([*status, *out, ""]) + "\n" + _UNIT_FILE


# --------------------------------------------------------------------------------------------
# 9. helm history + helm get values --all.
# --------------------------------------------------------------------------------------------

_HELM_VALUES = """\
$ helm get values search-api -n prod --all
COMPUTED VALUES:
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - podAffinityTerm:
        labelSelector:
          matchLabels:
            app.kubernetes.io/name: search-api
        topologyKey: topology.kubernetes.io/zone
      weight: 100
autoscaling:
  enabled: false
  maxReplicas: 12
  minReplicas: 4
  targetCPUUtilizationPercentage: 70
config:
  cache:
    enabled: true
    maxEntries: 200000
    ttl: 5m
  index:
    aliases:
    - products
    - products-suggest
    name: products-v7
    refreshInterval: 1s
  logLevel: info
  query:
    defaultPageSize: 24
    maxPageSize: 100
    rescoreWindow: 400
    timeout: 2500ms
  synonyms:
    path: /etc/search/synonyms.txt
    reloadInterval: 10m
env:
- name: JAVA_TOOL_OPTIONS
  value: -XX:MaxRAMPercentage=75 -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
- name: OPENSEARCH_URL
  value: https://opensearch.search.svc:9200
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: http://otel-collector.observability:4317
- name: SEARCH_FEATURE_VECTOR_RERANK
  value: "true"
fullnameOverride: ""
image:
  pullPolicy: IfNotPresent
  repository: registry.acme.io/search-api
  tag: 2.32.0
imagePullSecrets:
- name: acme-registry
ingress:
  annotations:
    nginx.ingress.kubernetes.io/proxy-body-size: 1m
    nginx.ingress.kubernetes.io/proxy-read-timeout: "10"
  className: nginx
  enabled: true
  hosts:
  - host: search.acme.io
    paths:
    - path: /api
      pathType: Prefix
  tls:
  - hosts:
    - search.acme.io
    secretName: search-acme-io-tls
livenessProbe:
  failureThreshold: 3
  httpGet:
    path: /health/live
    port: http
  periodSeconds: 10
nameOverride: ""
nodeSelector:
  workload: general
opensearch:
  enabled: false
  replicas: 3
  resources:
    limits:
      memory: 8Gi
podAnnotations:
  prometheus.io/port: "9090"
  prometheus.io/scrape: "true"
podDisruptionBudget:
  enabled: true
  minAvailable: 3
queryLogShipper:
  enabled: true
  image: registry.acme.io/fluent-bit:3.1.9
  resources:
    limits:
      cpu: 100m
      memory: 256Mi
    requests:
      cpu: 20m
      memory: 64Mi
readinessProbe:
  failureThreshold: 2
  httpGet:
    path: /health/ready
    port: http
  initialDelaySeconds: 20
  periodSeconds: 5
replicaCount: 6
resources:
  limits:
    cpu: "2"
    memory: 3Gi
  requests:
    cpu: 500m
    memory: 2Gi
service:
  port: 80
  targetPort: 8080
  type: ClusterIP
serviceAccount:
  annotations:
    eks.amazonaws.com/role-arn: arn:aws:iam::412907355118:role/search-api-prod
  create: true
serviceMonitor:
  enabled: true
  interval: 30s
tolerations: []
"""


def _helm_history_values(rng: random.Random) -> str:
    versions = {
        28: ("3.11.0", "2.28.1"), 29: ("3.11.0", "2.28.1"), 30: ("3.11.0", "2.28.2"),
        31: ("3.11.1", "2.28.2"), 32: ("3.11.1", "2.28.3"), 33: ("3.12.0", "2.29.0"),
        34: ("3.12.0", "2.29.0"), 35: ("3.12.1", "2.29.1"), 36: ("3.12.1", "2.29.2"),
        37: ("3.12.2", "2.29.2"), 38: ("3.12.2", "2.29.3"), 39: ("3.13.0", "2.30.0"),
        40: ("3.12.2", "2.29.3"), 41: ("3.13.1", "2.30.1"), 42: ("3.13.1", "2.30.2"),
        43: ("3.14.0", "2.30.3"), 44: ("3.14.1", "2.30.4"), 45: ("3.14.2", "2.31.0"),
        46: ("3.15.0", "2.32.0"), 47: ("3.15.0", "2.32.0"),
    }  # fmt: skip
    revisions: list[tuple[int, str, str, str, str]] = []
    for rev, (chart_version, version) in versions.items():
        status, desc = "superseded", "Upgrade complete"
        if rev == 39:
            status, desc = (
                "failed",
                'Upgrade "search-api" failed: pre-upgrade hooks failed: 1 error occurred:\n\t* job search-api-reindex failed: BackoffLimitExceeded',
            )
        if rev == 40:
            desc = "Rollback to 38"
        if rev == 46:
            status, desc = "failed", 'Upgrade "search-api" failed: context deadline exceeded'
        if rev == 47:
            status = "deployed"
        revisions.append((rev, f"search-api-{chart_version}", version, status, desc))
    out = ["$ helm history search-api -n prod --max 20 -o yaml"]
    t = datetime(2024, 9, 2, 9, 0, 0, tzinfo=timezone.utc)
    for rev, chart, version, status, desc in revisions:
        t += timedelta(days=rng.uniform(1.5, 4.0), seconds=rng.randint(0, 3600))
        if rev == 46:
            t = datetime(2024, 11, 19, 9, 31, 4, tzinfo=timezone.utc)
        if rev == 47:
            t = datetime(2024, 11, 19, 10, 2, 51, tzinfo=timezone.utc)
        out.append(f"- app_version: {version}")
        out.append(f"  chart: {chart}")
        out.append(f"  description: {json.dumps(desc) if ':' in desc else desc}")
        out.append(f"  revision: {rev}")
        out.append(f"  status: {status}")
        out.append(
            f'  updated: "{t:%Y-%m-%dT%H:%M:%S}.{rng.randint(100000, 999999)}{rng.randint(100, 999)}Z"'
        )
    out.append("")
    return "\n".join(out) + "\n" + _HELM_VALUES


# --------------------------------------------------------------------------------------------
# 10. CSV export of support tickets.
# --------------------------------------------------------------------------------------------

_TICKET_ANSWERS = {
    "TCK-20688": (
        "2024-10-11T11:42:09Z",
        "open",
        "P2",
        "enterprise",
        "Brightwater Health",
        "Audit log export missing October entries",
        "s.okafor",
    ),
    "TCK-20931": (
        "2024-10-24T09:14:51Z",
        "open",
        "P1",
        "enterprise",
        "Northwind Logistics",
        "SSO login loop after IdP certificate rotation",
        "j.lindqvist",
    ),
    "TCK-21077": (
        "2024-11-01T16:03:27Z",
        "open",
        "P2",
        "enterprise",
        "Helios Energy",
        "Webhook deliveries delayed by 20+ minutes",
        "s.okafor",
    ),
    "TCK-21142": (
        "2024-11-04T07:55:40Z",
        "open",
        "P1",
        "enterprise",
        "Kestrel Freight",
        "API returns 500 on bulk shipment create",
        "m.ferreira",
    ),
}

_TICKET_NEAR_MISSES = {
    "TCK-20744": (
        "2024-10-14T13:20:02Z",
        "solved",
        "P1",
        "enterprise",
        "Northwind Logistics",
        "SCIM provisioning stopped creating users",
        "j.lindqvist",
    ),
    "TCK-20815": (
        "2024-10-18T10:11:45Z",
        "open",
        "P3",
        "enterprise",
        "Helios Energy",
        "Dashboard widget shows wrong timezone",
        "a.mbeki",
    ),
    "TCK-20990": (
        "2024-10-27T08:47:13Z",
        "open",
        "P1",
        "business",
        "Tidewater Analytics",
        "Cannot rotate API keys from settings page",
        "m.ferreira",
    ),
    "TCK-21050": (
        "2024-10-30T19:02:38Z",
        "closed",
        "P2",
        "enterprise",
        "Brightwater Health",
        "Invoice PDF missing VAT number",
        "s.okafor",
    ),
    "TCK-21203": (
        "2024-11-08T12:30:09Z",
        "open",
        "P1",
        "enterprise",
        "Kestrel Freight",
        "Rate limit errors on shipment tracking API",
        "m.ferreira",
    ),
    "TCK-21266": (
        "2024-11-11T09:18:54Z",
        "open",
        "P2",
        "enterprise",
        "Orion Retail Group",
        "Bulk import stuck at 99%",
        "j.lindqvist",
    ),
}

_TICKET_ACCOUNTS = [
    ("Northwind Logistics", "enterprise"),
    ("Helios Energy", "enterprise"),
    ("Brightwater Health", "enterprise"),
    ("Kestrel Freight", "enterprise"),
    ("Orion Retail Group", "enterprise"),
    ("Vantage Insurance", "enterprise"),
    ("Tidewater Analytics", "business"),
    ("Copperleaf Studios", "business"),
    ("Greenfield Schools", "business"),
    ("Pinecrest Dental", "pro"),
    ("Lumen Bakery Co", "pro"),
    ("Atlas Moving", "pro"),
    ("Quarry Labs", "business"),
    ("Redwood Legal", "pro"),
]

_TICKET_SUBJECTS = [
    "Password reset email not arriving",
    "Question about invoice line items",
    "Export to XLSX times out",
    "Add a second admin to the account",
    "Webhook signature verification fails",
    "Mobile app crashes on login (Android 14)",
    "Request for SOC 2 report",
    "Duplicate charges on last invoice",
    "Cannot upload files larger than 100 MB",
    "Search results missing recent records",
    "How to configure SAML for Azure AD",
    "API pagination returns duplicate items",
    "Scheduled report sent to wrong recipients",
    "Custom domain SSL certificate expired",
    "Usage dashboard shows zero for yesterday",
    "Need to change billing currency",
    "Slow page loads in EU region",
    "User deactivated but still receives emails",
]


def _csv_tickets(rng: random.Random) -> str:
    rows: dict[str, tuple[str, ...]] = {}
    cutoff = datetime(2024, 11, 6, tzinfo=timezone.utc)
    base = datetime(2024, 10, 1, tzinfo=timezone.utc)
    for number in range(20_520, 21_420, 19):
        number += rng.randint(0, 9)
        tid = f"TCK-{number}"
        while True:
            # Ticket numbers grow with time: about 18.5 tickets a day since 2024-10-01.
            day = (number - 20_500) / 18.5 + rng.uniform(-0.3, 0.3)
            created = base + timedelta(days=day)
            created = created.replace(microsecond=0)
            account, tier = rng.choice(_TICKET_ACCOUNTS)
            status = rng.choice(
                ["open", "open", "pending", "solved", "solved", "closed", "on_hold"]
            )
            priority = rng.choice(["P1", "P2", "P2", "P3", "P3", "P3", "P4"])
            matches = (
                tier == "enterprise"
                and priority in ("P1", "P2")
                and created < cutoff
                and status in ("open", "pending", "on_hold")
            )
            if not matches:
                break
        assignee = rng.choice(
            ["s.okafor", "j.lindqvist", "m.ferreira", "a.mbeki", "t.nakamura", ""]
        )
        rows[tid] = (
            f"{created:%Y-%m-%dT%H:%M:%SZ}",
            status,
            priority,
            tier,
            account,
            rng.choice(_TICKET_SUBJECTS),
            assignee,
        )
    rows.update(_TICKET_NEAR_MISSES)
    rows.update(_TICKET_ANSWERS)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "ticket_id",
            "created_at",
            "updated_at",
            "status",
            "priority",
            "tier",
            "account",
            "subject",
            "assignee",
            "channel",
            "first_response_minutes",
        ]
    )
    for tid in sorted(rows):
        created_s, status, priority, tier, account, subject, assignee = rows[tid]
        created = datetime.strptime(created_s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        updated = min(
            created + timedelta(hours=rng.uniform(1, 400)),
            datetime(2024, 11, 20, 8, 0, tzinfo=timezone.utc),
        )
        channel = rng.choice(["email", "web", "web", "chat", "phone"])
        first_response = rng.randint(3, 600)
        writer.writerow(
            [
                tid,
                created_s,
                f"{updated:%Y-%m-%dT%H:%M:%SZ}",
                status,
                priority,
                tier,
                account,
                subject,
                assignee,
                channel,
                first_response,
            ]
        )
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# 11. OpenTelemetry trace as a text table.
# --------------------------------------------------------------------------------------------


def _otel_spans(rng: random.Random) -> str:
    spans: list[tuple[str, str, str, str, float, float, str, str]] = []

    def span(
        parent: str,
        service: str,
        name: str,
        start: float,
        dur: float,
        status: str = "OK",
        attrs: str = "",
        span_id: str = "",
    ) -> str:
        sid = span_id or _hex(rng, 16)
        spans.append((sid, parent, service, name, start, dur, status, attrs))
        return sid

    root = span(
        "-",
        "frontend",
        "POST /checkout",
        0.0,
        4812.6,
        attrs="http.method=POST http.route=/checkout http.status_code=200 user_agent.original=Mozilla/5.0",
    )
    span(root, "frontend", "auth.verify_session", 1.2, 6.8, attrs="session.store=redis")
    co = span(
        root,
        "checkout-service",
        "POST /api/v1/checkout",
        9.4,
        4796.3,
        attrs="http.method=POST http.status_code=200 checkout.items=4 tenant=eu-1482",
    )
    cart = span(co, "checkout-service", "cart.load", 11.0, 44.9)
    cs = span(
        cart,
        "cart-service",
        "GET /carts/{id}",
        12.1,
        41.5,
        attrs="http.method=GET http.status_code=200",
    )
    t = 13.0
    cart_id = rng.randint(100000, 999999)
    for i in range(4):
        dur = rng.uniform(0.3, 1.4)
        span(
            cs,
            "cart-service",
            "redis HGETALL",
            t,
            dur,
            attrs=f'db.system=redis db.statement="HGETALL cart:{cart_id}:item:{i}" net.peer.name=redis-cart',
        )
        t += dur + rng.uniform(0.5, 4)
    span(
        cs,
        "cart-service",
        "pg.query SELECT carts",
        t,
        9.6,
        attrs='db.system=postgresql db.name=carts db.statement="SELECT id, updated_at FROM carts WHERE id = $1" net.peer.name=carts-db',
    )
    inv_read = span(co, "checkout-service", "inventory.check", 57.1, 18.9)
    ir = span(
        inv_read,
        "inventory-service",
        "GET /stock",
        58.0,
        17.2,
        attrs="http.method=GET http.status_code=200",
    )
    span(
        ir,
        "inventory-service",
        "pg.query SELECT inventory_items",
        59.3,
        3.1,
        attrs='db.system=postgresql db.name=inventory db.statement="SELECT sku, on_hand FROM inventory_items WHERE sku = ANY($1)" net.peer.name=inventory-db-replica rows=4',
    )
    pr = span(
        co,
        "pricing-service",
        "POST /quote",
        77.0,
        212.7,
        attrs="http.method=POST http.status_code=200",
    )
    t = 79.0
    for _ in range(9):
        dur = rng.uniform(0.2, 1.1)
        span(
            pr,
            "pricing-service",
            "redis GET",
            t,
            dur,
            attrs=f'db.system=redis db.statement="GET price:SKU-{rng.randint(10000, 99999)}" net.peer.name=redis-pricing',
        )
        t += dur + rng.uniform(0.2, 2.5)
    span(
        pr,
        "pricing-service",
        "pg.query SELECT promotions",
        t,
        94.8,
        attrs='db.system=postgresql db.name=pricing db.statement="SELECT * FROM promotions WHERE tenant_id = $1 AND active AND now() BETWEEN starts_at AND ends_at" net.peer.name=pricing-db rows=212',
    )
    tax = span(pr, "pricing-service", "tax.calculate", t + 96.0, 88.1)
    span(
        tax,
        "tax-service",
        "POST /v2/tax/calculate",
        t + 97.2,
        85.9,
        attrs="http.method=POST http.status_code=200 tax.country=DE tax.lines=4",
    )
    span(
        co,
        "checkout-service",
        "flags.evaluate",
        290.6,
        0.9,
        attrs="feature_flag.key=checkout.split_payments feature_flag.variant=off",
    )
    res = span(co, "checkout-service", "inventory.reserve", 292.0, 3958.6)
    ri = span(
        res,
        "inventory-service",
        "POST /reserve",
        293.1,
        3955.8,
        attrs="http.method=POST http.status_code=200 reservation.items=4",
    )
    rsv = span(
        ri,
        "inventory-service",
        "reserve_items",
        294.4,
        3951.0,
        attrs="code.function=ReservationService.reserve",
    )
    span(
        rsv,
        "inventory-service",
        "pg.query BEGIN",
        295.0,
        0.4,
        attrs="db.system=postgresql db.name=inventory net.peer.name=inventory-db-primary",
    )
    span(
        rsv,
        "inventory-service",
        "pg.query SELECT inventory_items",
        296.1,
        3912.4,
        span_id="a91c7e2f03d4b658",
        attrs='db.system=postgresql db.name=inventory db.statement="SELECT sku, on_hand, reserved FROM inventory_items WHERE sku = ANY($1) FOR UPDATE" net.peer.name=inventory-db-primary db.pg.lock_wait_ms=3871 rows=4',
    )
    span(
        rsv,
        "inventory-service",
        "pg.query UPDATE inventory_items",
        4209.2,
        12.3,
        attrs='db.system=postgresql db.name=inventory db.statement="UPDATE inventory_items SET reserved = reserved + $1 WHERE sku = $2" net.peer.name=inventory-db-primary rows=4',
    )
    span(
        rsv,
        "inventory-service",
        "pg.query INSERT reservations",
        4222.0,
        8.4,
        attrs="db.system=postgresql db.name=inventory net.peer.name=inventory-db-primary rows=1",
    )
    span(
        rsv,
        "inventory-service",
        "pg.query COMMIT",
        4231.0,
        6.2,
        attrs="db.system=postgresql db.name=inventory net.peer.name=inventory-db-primary",
    )
    span(
        rsv,
        "inventory-service",
        "kafka.produce inventory.reserved",
        4238.1,
        3.9,
        attrs="messaging.system=kafka messaging.destination.name=inventory.reserved",
    )
    pay = span(co, "checkout-service", "payment.charge", 4252.3, 540.2, attrs="payment.attempts=2")
    p1 = span(
        pay,
        "payment-service",
        "POST /v1/charges",
        4253.0,
        212.4,
        status="ERROR",
        attrs="http.method=POST http.status_code=503 error.type=UpstreamUnavailable retry.attempt=1",
    )
    span(
        p1,
        "payment-service",
        "stripe POST /v1/payment_intents",
        4255.1,
        208.7,
        status="ERROR",
        attrs="http.status_code=503 peer.service=stripe",
    )
    p2 = span(
        pay,
        "payment-service",
        "POST /v1/charges",
        4471.5,
        318.5,
        attrs="http.method=POST http.status_code=201 retry.attempt=2",
    )
    span(
        p2,
        "payment-service",
        "stripe POST /v1/payment_intents",
        4473.0,
        301.2,
        attrs="http.status_code=200 peer.service=stripe",
    )
    span(
        p2,
        "payment-service",
        "pg.query INSERT charges",
        4776.0,
        9.1,
        attrs="db.system=postgresql db.name=payments net.peer.name=payments-db rows=1",
    )
    span(
        co,
        "checkout-service",
        "pg.query INSERT orders",
        4793.4,
        7.7,
        attrs='db.system=postgresql db.name=orders db.statement="INSERT INTO orders (...) VALUES (...)" net.peer.name=orders-db rows=1',
    )
    span(
        co,
        "checkout-service",
        "kafka.produce order.created",
        4801.6,
        2.8,
        attrs="messaging.system=kafka messaging.destination.name=order.created",
    )
    span(
        co,
        "checkout-service",
        "email.enqueue",
        4804.7,
        1.4,
        attrs="messaging.system=sqs messaging.destination.name=transactional-email",
    )
    spans.sort(key=lambda s: s[4])
    head = f"{'SPAN_ID':<16}  {'PARENT_ID':<16}  {'SERVICE':<17}  {'NAME':<34}  {'START_MS':>8}  {'DUR_MS':>8}  {'STATUS':<6}  ATTRIBUTES"
    lines = [
        "trace 4bf92f3577b34da6a3ce929d0e0e4736 · root frontend POST /checkout · 4812.6 ms · started 2024-11-19T16:02:44.218Z",
        f"{len(spans)} spans · {len({sp[2] for sp in spans})} services · {sum(sp[6] == 'ERROR' for sp in spans)} spans with status ERROR",
        "",
        head,
    ]
    for sid, parent, service, name, start, dur, status, attrs in spans:
        lines.append(
            f"{sid:<16}  {parent:<16}  {service:<17}  {name:<34}  {start:>8.1f}  {dur:>8.1f}  {status:<6}  {attrs}".rstrip()
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# 12. docker inspect of a container that keeps restarting.
# --------------------------------------------------------------------------------------------


def _docker_inspect(rng: random.Random) -> str:
    cid = _hex(rng, 64)
    image = "sha256:" + _hex(rng, 64)
    layer = _hex(rng, 64)
    lower = ":".join(f"/var/lib/docker/overlay2/{_hex(rng, 64)}/diff" for _ in range(6))
    health_log = []
    t = datetime(2024, 11, 19, 11, 47, 3, tzinfo=timezone.utc)
    refused = "curl: (7) Failed to connect to localhost port 8080 after 0 ms: Couldn't connect to server\n"
    for code, text in [
        (0, '{"status":"UP"}'),
        (22, "curl: (22) The requested URL returned error: 503\n"),
        (7, refused),
        (7, refused),
        (7, refused),
    ]:
        t += timedelta(seconds=30, microseconds=rng.randint(0, 200_000))
        end = t + timedelta(microseconds=rng.randint(20_000, 90_000))
        health_log.append(
            {
                "Start": f"{t:%Y-%m-%dT%H:%M:%S.%f}{rng.randint(100, 999)}Z",
                "End": f"{end:%Y-%m-%dT%H:%M:%S.%f}{rng.randint(100, 999)}Z",
                "ExitCode": code,
                "Output": text,
            }
        )
    container: dict[str, Any] = {
        "Id": cid,
        "Created": "2024-11-18T21:04:55.118472913Z",
        "Path": "/opt/java/openjdk/bin/java",
        "Args": ["-jar", "/app/ledger-sync.jar", "--spring.profiles.active=prod"],
        "State": {
            "Status": "restarting",
            "Running": True,
            "Paused": False,
            "Restarting": True,
            "OOMKilled": True,
            "Dead": False,
            "Pid": 0,
            "ExitCode": 137,
            "Error": "",
            "StartedAt": "2024-11-19T11:49:12.508201377Z",
            "FinishedAt": "2024-11-19T11:50:41.993017462Z",
            "Health": {"Status": "unhealthy", "FailingStreak": 3, "Log": health_log},
        },
        "Image": image,
        "ResolvConfPath": f"/var/lib/docker/containers/{cid}/resolv.conf",
        "HostnamePath": f"/var/lib/docker/containers/{cid}/hostname",
        "HostsPath": f"/var/lib/docker/containers/{cid}/hosts",
        "LogPath": f"/var/lib/docker/containers/{cid}/{cid}-json.log",
        "Name": "/ledger-sync",
        "RestartCount": 23,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "docker-default",
        "ExecIDs": None,
        "HostConfig": {
            "Binds": [
                "/srv/ledger-sync/config:/app/config:ro",
                "/srv/ledger-sync/state:/app/state:rw",
            ],
            "ContainerIDFile": "",
            "LogConfig": {"Type": "json-file", "Config": {"max-file": "5", "max-size": "50m"}},
            "NetworkMode": "ledger_default",
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}]},
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            "AutoRemove": False,
            "VolumeDriver": "",
            "VolumesFrom": None,
            "CapAdd": None,
            "CapDrop": None,
            "CgroupnsMode": "private",
            "Dns": [],
            "DnsOptions": [],
            "DnsSearch": [],
            "ExtraHosts": ["host.docker.internal:host-gateway"],
            "GroupAdd": None,
            "IpcMode": "private",
            "OomScoreAdj": 0,
            "PidMode": "",
            "Privileged": False,
            "PublishAllPorts": False,
            "ReadonlyRootfs": False,
            "SecurityOpt": None,
            "UTSMode": "",
            "UsernsMode": "",
            "ShmSize": 67108864,
            "Runtime": "runc",
            "Isolation": "",
            "CpuShares": 0,
            "Memory": 536870912,
            "NanoCpus": 1000000000,
            "CgroupParent": "",
            "BlkioWeight": 0,
            "CpuPeriod": 0,
            "CpuQuota": 0,
            "CpusetCpus": "",
            "MemoryReservation": 268435456,
            "MemorySwap": 1073741824,
            "MemorySwappiness": None,
            "OomKillDisable": False,
            "PidsLimit": None,
            "Ulimits": [{"Name": "nofile", "Hard": 65536, "Soft": 65536}],
            "MaskedPaths": [
                "/proc/asound",
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/devices/virtual/powercap",
            ],
            "ReadonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
        "GraphDriver": {
            "Data": {
                "LowerDir": f"/var/lib/docker/overlay2/{layer}-init/diff:{lower}",
                "MergedDir": f"/var/lib/docker/overlay2/{layer}/merged",
                "UpperDir": f"/var/lib/docker/overlay2/{layer}/diff",
                "WorkDir": f"/var/lib/docker/overlay2/{layer}/work",
            },
            "Name": "overlay2",
        },
        "Mounts": [
            {
                "Type": "bind",
                "Source": "/srv/ledger-sync/config",
                "Destination": "/app/config",
                "Mode": "ro",
                "RW": False,
                "Propagation": "rprivate",
            },
            {
                "Type": "bind",
                "Source": "/srv/ledger-sync/state",
                "Destination": "/app/state",
                "Mode": "rw",
                "RW": True,
                "Propagation": "rprivate",
            },
        ],
        "Config": {
            "Hostname": cid[:12],
            "Domainname": "",
            "User": "10001:10001",
            "AttachStdin": False,
            "AttachStdout": True,
            "AttachStderr": True,
            "ExposedPorts": {"8080/tcp": {}, "9404/tcp": {}},
            "Tty": False,
            "OpenStdin": False,
            "StdinOnce": False,
            "Env": [
                "LEDGER_DB_URL=jdbc:postgresql://ledger-db:5432/ledger",
                "LEDGER_DB_USER=ledger_sync",
                "KAFKA_BOOTSTRAP_SERVERS=kafka-1:9092,kafka-2:9092,kafka-3:9092",
                "SYNC_BATCH_SIZE=5000",
                "SYNC_INTERVAL=PT30S",
                "JAVA_OPTS=-Xms512m -Xmx768m -XX:+UseG1GC -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath=/app/state/dumps",
                "OTEL_SERVICE_NAME=ledger-sync",
                "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4317",
                "TZ=UTC",
                "PATH=/opt/java/openjdk/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "JAVA_HOME=/opt/java/openjdk",
                "LANG=en_US.UTF-8",
                "JAVA_VERSION=jdk-21.0.5+11",
            ],
            "Cmd": ["--spring.profiles.active=prod"],
            "Healthcheck": {
                "Test": ["CMD-SHELL", "curl -fsS http://localhost:8080/healthz || exit 1"],
                "Interval": 30000000000,
                "Timeout": 5000000000,
                "StartPeriod": 60000000000,
                "Retries": 3,
            },
            "Image": "ghcr.io/acme/ledger-sync:1.9.4",
            "Volumes": None,
            "WorkingDir": "/app",
            "Entrypoint": ["/opt/java/openjdk/bin/java", "-jar", "/app/ledger-sync.jar"],
            "OnBuild": None,
            "Labels": {
                "com.docker.compose.config-hash": _hex(rng, 64),
                "com.docker.compose.container-number": "1",
                "com.docker.compose.depends_on": "ledger-db:service_healthy:false,kafka-1:service_started:false",
                "com.docker.compose.image": image,
                "com.docker.compose.oneoff": "False",
                "com.docker.compose.project": "ledger",
                "com.docker.compose.project.config_files": "/srv/ledger/compose.yaml",
                "com.docker.compose.project.working_dir": "/srv/ledger",
                "com.docker.compose.service": "ledger-sync",
                "com.docker.compose.version": "2.29.7",
                "org.opencontainers.image.created": "2024-11-14T17:22:08Z",
                "org.opencontainers.image.revision": _hex(rng, 40),
                "org.opencontainers.image.source": "https://github.com/acme/ledger-sync",
                "org.opencontainers.image.version": "1.9.4",
            },
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "",
            "SandboxKey": "",
            "Ports": {},
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": "",
            "Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": "",
            "IPPrefixLen": 0,
            "IPv6Gateway": "",
            "MacAddress": "",
            "Networks": {
                "ledger_default": {
                    "IPAMConfig": None,
                    "Links": None,
                    "Aliases": ["ledger-sync", "ledger-sync-1"],
                    "MacAddress": "",
                    "NetworkID": _hex(rng, 64),
                    "EndpointID": "",
                    "Gateway": "",
                    "IPAddress": "",
                    "IPPrefixLen": 0,
                    "IPv6Gateway": "",
                    "GlobalIPv6Address": "",
                    "GlobalIPv6PrefixLen": 0,
                    "DriverOpts": None,
                    "DNSNames": None,
                }
            },
        },
    }
    return json.dumps([container], indent=4) + "\n"


# --------------------------------------------------------------------------------------------
# The set.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """One output of the set: its name, the call that produced it, the request, the builder."""

    name: str
    tool_call: dict[str, Any]
    request: str
    build: Callable[[random.Random], str]


_SPECS = [
    _Spec(
        "buildkite_deploy_failure",
        {
            "name": "buildkite_get_build_log",
            "args": {"organization": "acme", "pipeline": "payments-api", "build_number": 4817},
        },
        "The payments-api pipeline went red on build 4817 this morning, right when we were shipping to prod. Which step failed, what was the actual error, and which image tag was it trying to roll out? Did it roll back?",
        _buildkite_deploy,
    ),
    _Spec(
        "spring_boot_startup_failure",
        {
            "name": "read_file",
            "args": {"path": "/var/log/orders-service/application.log", "tail_lines": 300},
        },
        "orders-service won't come back up after this morning's release. Can you dig through the log and tell me the real root cause of the startup failure? There's a lot of noise in there.",
        _spring_boot_root_cause,
    ),
    _Spec(
        "kubectl_events_checkout",
        {"name": "kubectl", "args": {"command": "get events -A", "context": "prod-eu-west-1"}},
        "Some pods in the checkout namespace have been stuck since the last deploy. Which ones are stuck, and why? Check the cluster events.",
        _kubectl_events,
    ),
    _Spec(
        "aws_ec2_m5_inventory",
        {
            "name": "aws_cli",
            "args": {
                "service": "ec2",
                "operation": "describe-instances",
                "region": "us-east-1",
                "filters": [{"Name": "tag:env", "Values": ["prod"]}],
                "query": "Reservations[].Instances[]",
            },
        },
        "We're moving data-platform off the m5 family. Which EC2 instances tagged team=data-platform in us-east-1 are still running on m5 types? I need the instance IDs and private IPs.",
        _aws_describe_instances,
    ),
    _Spec(
        "github_security_prs",
        {
            "name": "github_list_pull_requests",
            "args": {
                "owner": "acme",
                "repo": "web-console",
                "state": "open",
                "per_page": 50,
                "include_checks": True,
            },
        },
        "Which open PRs in acme/web-console are labelled security and still waiting on a review from me (dkowalski)? And is CI green on them?",
        _github_pull_list,
    ),
    _Spec(
        "psql_invoices_slow_query",
        {
            "name": "postgres_query",
            "args": {
                "database": "billing",
                "sql": "EXPLAIN (ANALYZE, BUFFERS) SELECT i.id, i.number, i.issued_at, c.name, sum(il.amount_cents) AS total_cents FROM invoices i JOIN customers c ON c.id = i.customer_id JOIN invoice_lines il ON il.invoice_id = i.id WHERE i.tenant_id = 4821 AND il.tenant_id = 4821 AND i.status = 'open' GROUP BY i.id, c.name ORDER BY i.issued_at DESC LIMIT 50; \\d invoice_lines; SELECT queryid, calls, total_exec_time, mean_exec_time, rows, query FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 20;",
            },
        },
        "The open-invoices page (/api/invoices) got really slow for tenant 4821. What's the expensive part of this plan, are we missing an index, and which statement is at the top of pg_stat_statements by total time?",
        _psql_explain,
    ),
    _Spec(
        "loki_upload_502s",
        {
            "name": "loki_query",
            "args": {
                "query": '{app="media-gateway", env="prod"} | logfmt | level=~"warn|error"',
                "start": "2024-11-19T14:00:00Z",
                "end": "2024-11-19T14:45:00Z",
                "limit": 500,
                "direction": "forward",
            },
        },
        "Users are getting 502s when uploading images, started around 14:20 UTC. What's failing on the upload path, and when did the first error show up?",
        _loki_logfmt,
    ),
    _Spec(
        "systemd_ingest_worker_crash",
        {
            "name": "ssh_exec",
            "args": {
                "host": "ingest-03",
                "command": "systemctl status ingest-worker --no-pager; journalctl -u ingest-worker -n 200 --no-pager; systemctl cat ingest-worker; ls -ld /var/spool/ingest /var/spool/ingest/segments",
            },
        },
        "ingest-worker on ingest-03 died overnight and won't stay up. What exit status is it failing with, why is it crashing, and what restart settings does the unit have?",
        _systemd_crash,
    ),
    _Spec(
        "helm_search_api_rollback",
        {
            "name": "shell",
            "args": {
                "command": "helm history search-api -n prod --max 20 -o yaml && helm get values search-api -n prod --all"
            },
        },
        "search-api in prod has been broken since the latest upgrade. Which revision is the current one, what's the last revision before it that actually deployed fine (so I can roll back), and what replicaCount, image tag and memory limit is the current release running with?",
        _helm_history_values,
    ),
    _Spec(
        "csv_stale_enterprise_tickets",
        {
            "name": "export_tickets",
            "args": {
                "format": "csv",
                "updated_since": "2024-10-01",
                "columns": [
                    "ticket_id",
                    "created_at",
                    "updated_at",
                    "status",
                    "priority",
                    "tier",
                    "account",
                    "subject",
                    "assignee",
                    "channel",
                    "first_response_minutes",
                ],
            },
        },
        "From this export, give me the enterprise-tier tickets that are still open, P1 or P2, and were opened more than two weeks ago (so created before Nov 6). I need the ticket IDs and the accounts.",
        _csv_tickets,
    ),
    _Spec(
        "otel_checkout_trace",
        {
            "name": "tempo_get_trace",
            "args": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "format": "table"},
        },
        "Trace 4bf92f3577b34da6a3ce929d0e0e4736 for POST /checkout took 4.8 seconds. Which span is the bottleneck: what service, what is it doing, and how long did it take?",
        _otel_spans,
    ),
    _Spec(
        "docker_inspect_restarting",
        {"name": "docker_inspect", "args": {"container": "ledger-sync", "host": "ledger-01"}},
        "The ledger-sync container keeps restarting. From the inspect output: what's the exit code, how many restarts so far, was it OOM-killed, what's its memory limit, and what health check does it run?",
        _docker_inspect,
    ),
]


def build_heldout3_outputs() -> list[dict[str, Any]]:
    """Build the twelve tool outputs of held-out set 3, deterministically.

    Returns:
        One object per output: ``name``, ``tool_call`` (``name`` and ``args``), ``request`` and
        ``output``.
    """
    entries: list[dict[str, Any]] = []
    for spec in _SPECS:
        rng = random.Random(f"heldout3-{spec.name}")
        entries.append(
            {
                "name": spec.name,
                "tool_call": spec.tool_call,
                "request": spec.request,
                "output": spec.build(rng),
            }
        )
    return entries


def check_facts(
    outputs: list[dict[str, Any]] | None = None, facts_path: Path = HELDOUT3_FACTS_PATH
) -> None:
    """Assert that the facts file matches the outputs.

    Every output has facts, every fact has at least one spelling, and every fact's first spelling
    occurs verbatim in its output.

    Args:
        outputs: The outputs to check; built with :func:`build_heldout3_outputs` when omitted.
        facts_path: The hand-written facts file.

    Raises:
        AssertionError: When a fact's first spelling is missing from its output, or the facts
            and the outputs do not name the same set of outputs.
    """
    if outputs is None:
        outputs = build_heldout3_outputs()
    facts: dict[str, Any] = json.loads(facts_path.read_text(encoding="utf-8"))
    by_name = {entry["name"]: entry["output"] for entry in outputs}
    named = {key for key in facts if not key.startswith("_")}
    assert named == set(by_name), f"facts and outputs differ: {sorted(named ^ set(by_name))}"
    for name, output in by_name.items():
        assert facts[name], f"{name}: no facts"
        for fact in facts[name]:
            assert fact, f"{name}: empty fact"
            assert all(isinstance(x, str) and x for x in fact), f"{name}: bad fact {fact!r}"
            assert fact[0] in output, f"{name}: {fact[0]!r} does not occur in the output"


def main() -> None:
    """Write ``heldout3/tool_outputs.json`` and check the hand-written facts against it."""
    outputs = build_heldout3_outputs()
    HELDOUT3_PATH.parent.mkdir(parents=True, exist_ok=True)
    HELDOUT3_PATH.write_text(json.dumps(outputs, indent=1) + "\n", encoding="utf-8")
    check_facts(outputs)
    total = sum(
        len(v)
        for k, v in json.loads(HELDOUT3_FACTS_PATH.read_text(encoding="utf-8")).items()
        if not k.startswith("_")
    )
    print(f"wrote {len(outputs)} outputs to {HELDOUT3_PATH}; {total} facts check out")


if __name__ == "__main__":
    main()
