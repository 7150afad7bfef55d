"""The pipeline checkpoints to a real PostgreSQL server (throwaway cluster) and resumes,
in-process and as the app's runner killed mid-run and started again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_vllm_budget import settings
from langchain_vllm_budget.persistence import postgres_persistence
from langchain_vllm_budget.pipeline.graph import STAGES
from langchain_vllm_budget.serving.local_server import find_free_port
from langchain_vllm_budget.stages import raw_output_namespace
from tests.integration_tests._pipeline_helpers import FAST, REQUEST, fast_context, pipeline
from tests.integration_tests.conftest import ServedModel

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail(
            "PostgreSQL server binaries are missing: run `bash scripts/postgres.sh install` "
            "(Debian package postgresql)."
        )
    return found[-1].parent


def _as_postgres_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port, stopped afterwards."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="vllm-budget-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = find_free_port()
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_checkpointer_persists_and_resumes(
    postgres_dsn: str, smollm2: ServedModel
) -> None:
    ctx = fast_context(smollm2)
    config = {"configurable": {"thread_id": "pg-thread"}}
    with postgres_persistence(postgres_dsn) as (saver, store):
        app = pipeline(saver, store)
        for update in app.stream(
            {"request": REQUEST}, config, context=ctx, stream_mode="updates", durability="sync"
        ):
            if "select" in update:
                break
    # a new connection (as a new process would have) sees the checkpoint and resumes it
    with postgres_persistence(postgres_dsn) as (saver, store):
        app = pipeline(saver, store)
        state = app.get_state(config)
        assert state.next == ("plan",)
        assert set(state.values["summaries"]) == {"classify", "select"}
        resumed = [
            stage
            for update in app.stream(None, config, context=ctx, stream_mode="updates")
            for stage in update
        ]
        assert resumed == ["plan", "execute"]
        final = app.get_state(config).values
        assert list(final["ledger"]) == list(STAGES)
        namespace = raw_output_namespace("pg-thread", final["run_id"])
        stored = [store.get(namespace, s) for s in STAGES]
        assert all(item is not None and item.value["content"] for item in stored)
        history = list(app.get_state_history(config))
        assert len(history) >= 5


def _run_cli(args: list[str], *, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "langchain_vllm_budget.cli", "run", *args],
        cwd=REPO,  # where langgraph.json names the app's graph
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_the_app_killed_mid_run_resumes_its_thread_from_postgres(
    postgres_dsn: str, smollm2: ServedModel
) -> None:
    """The app's runner (`vllm-budget run`, as the docker app runs it) on PostgreSQL: SIGKILL
    after the first stage, a new process resumes the thread, every raw output is read back."""
    thread = "pg-killed"
    env = {
        **os.environ,
        settings.CHECKPOINTER_DSN.env: postgres_dsn,  # as compose gives it to the app
        "COLUMNS": "200",
    }
    options = [
        "--base-url",
        smollm2.base_url,
        "--model",
        smollm2.model,
        "--tokenizer",
        str(smollm2.model_path),
        "--thread-id",
        thread,
        *(arg for key, value in FAST.items() for arg in ("--set", f"{key}={value}")),
    ]
    first = _run_cli([REQUEST, *options], env=env)
    assert first.stdout is not None
    printed = []
    try:
        for line in first.stdout:
            printed.append(line)
            if "✓ classify" in line:
                os.killpg(first.pid, signal.SIGKILL)  # no clean-up, no flush: a crash
                break
    finally:
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "".join(printed)

    with postgres_persistence(postgres_dsn) as (saver, store):
        app = pipeline(saver, store)
        config = {"configurable": {"thread_id": thread}}
        before = app.get_state(config)
        done = list(before.values["ledger"])
        assert done
        assert done == list(STAGES[: len(done)])
        assert len(done) < len(STAGES)
        assert before.next == (STAGES[len(done)],)
        run_id = before.values["run_id"]
        namespace = raw_output_namespace(thread, run_id)
        kept = {stage: store.get(namespace, stage) for stage in done}
        assert all(item is not None for item in kept.values())

    # A new process (the container started again) resumes the thread: no request given.
    second = _run_cli(options, env=env)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert f"resuming run {run_id} after: {', '.join(done)}" in output
    for stage in STAGES[len(done) :]:
        assert f"✓ {stage}" in output
    for stage in done:
        assert f"✓ {stage}" not in output  # finished stages are not run again

    with postgres_persistence(postgres_dsn) as (saver, store):
        app = pipeline(saver, store)
        final = app.get_state({"configurable": {"thread_id": thread}})
        assert final.next == ()
        assert final.values["run_id"] == run_id
        assert list(final.values["ledger"]) == list(STAGES)
        for stage in STAGES:
            item = store.get(namespace, stage)
            assert item is not None, stage
            assert item.value["content"].strip()
            assert item.value["tokens"] == final.values["ledger"][stage]["raw_tokens"]
            assert final.values["ledger"][stage]["raw_output"] == [*namespace, stage]
        for stage, item in kept.items():
            again = store.get(namespace, stage)
            assert again is not None
            assert item is not None
            assert (again.value, again.updated_at) == (item.value, item.updated_at)
            assert final.values["ledger"][stage] == before.values["ledger"][stage]
