"""The pipeline checkpoints to a real PostgreSQL server (throwaway cluster) and resumes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_vllm_budget.persistence import postgres_persistence
from langchain_vllm_budget.pipeline.graph import STAGES
from langchain_vllm_budget.serving.local_server import find_free_port
from langchain_vllm_budget.stages import raw_output_namespace
from tests.integration_tests._pipeline_helpers import REQUEST, fast_context, pipeline
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
