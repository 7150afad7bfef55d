"""Interrupted runs resume from the last finished stage (SQLite checkpointer, real vLLM)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from langchain_vllm_budget.errors import VLLMConnectionError, VLLMServerError, VLLMTimeoutError
from langchain_vllm_budget.persistence import sqlite_persistence
from langchain_vllm_budget.pipeline.graph import STAGES
from langchain_vllm_budget.serving.local_models import cache_dir
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.stages import raw_output_namespace
from tests.integration_tests._pipeline_helpers import REQUEST, fast_context, pipeline
from tests.integration_tests.conftest import ServedModel

pytestmark = pytest.mark.integration


def _stage_updates(stream: object) -> list[str]:
    return [stage for update in stream for stage in update if stage in STAGES]  # type: ignore[attr-defined]


def _snapshot(db: Path, thread: str) -> tuple[dict, dict]:
    with sqlite_persistence(db) as (saver, store):
        app = pipeline(saver, store)
        values = app.get_state({"configurable": {"thread_id": thread}}).values
        namespace = raw_output_namespace(thread, values["run_id"])
        items = {
            s: (item.value, item.updated_at)
            for s in STAGES
            if (item := store.get(namespace, s)) is not None
        }
    return values, items


def test_interrupted_run_resumes_without_redoing_finished_stages(
    smollm2: ServedModel, tmp_path: Path
) -> None:
    db = tmp_path / "pipeline.sqlite"
    ctx = fast_context(smollm2)
    config = {"configurable": {"thread_id": "interrupted"}}
    seen: list[str] = []
    # first "process": stopped by the user right after the select stage
    with sqlite_persistence(db) as (saver, store):
        app = pipeline(saver, store)
        for update in app.stream(
            {"request": REQUEST}, config, context=ctx, stream_mode="updates", durability="sync"
        ):
            seen.extend(s for s in update if s in STAGES)
            if "select" in update:
                break
    assert seen == ["classify", "select"]
    before, items_before = _snapshot(db, "interrupted")
    assert list(before["summaries"]) == ["classify", "select"]
    assert set(items_before) == {"classify", "select"}

    # second "process": resumes from the checkpoint
    with sqlite_persistence(db) as (saver, store):
        app = pipeline(saver, store)
        assert app.get_state(config).next == ("plan",)
        resumed = _stage_updates(
            app.stream(None, config, context=ctx, stream_mode="updates", durability="sync")
        )
    assert resumed == ["plan", "execute"]
    after, items_after = _snapshot(db, "interrupted")
    assert list(after["summaries"]) == list(STAGES)
    for stage in ("classify", "select"):
        assert after["summaries"][stage] == before["summaries"][stage]
        assert after["ledger"][stage] == before["ledger"][stage]
        assert items_after[stage] == items_before[stage]  # same raw output, not rewritten


def test_run_resumes_after_the_server_is_killed_mid_pipeline(
    smollm2: ServedModel, tmp_path: Path
) -> None:
    db = tmp_path / "pipeline.sqlite"
    spec = LocalServerSpec(
        model=str(smollm2.model_path),
        served_model_name=smollm2.model,
        max_model_len=smollm2.max_model_len,
    )
    server = LocalVLLMServer(spec, log_path=cache_dir() / "logs" / "test-resume-killed.log")
    config = {"configurable": {"thread_id": "killed"}}
    seen: list[str] = []
    with server:
        ctx = fast_context(smollm2, base_url=server.base_url)
        with sqlite_persistence(db) as (saver, store):
            app = pipeline(saver, store)
            # the stage call fails with this package's typed error, whichever way it breaks
            with pytest.raises(  # noqa: PT012 - the error comes from inside the stream
                (VLLMConnectionError, VLLMServerError, VLLMTimeoutError)
            ) as failure:
                for update in app.stream(
                    {"request": REQUEST},
                    config,
                    context=ctx,
                    stream_mode="updates",
                    durability="sync",
                ):
                    seen.extend(s for s in update if s in STAGES)
                    if "select" in update:
                        # kill the server while the plan stage is being prepared or sent
                        threading.Thread(target=server.stop, daemon=True).start()
    assert seen == ["classify", "select"]
    assert server.base_url in str(failure.value)
    before, items_before = _snapshot(db, "killed")
    assert set(before["summaries"]) == {"classify", "select"}

    # the server is back (the long-running one, same model): resume the same thread
    resumed_ctx = fast_context(smollm2)
    with sqlite_persistence(db) as (saver, store):
        app = pipeline(saver, store)
        assert app.get_state(config).next == ("plan",)
        resumed = _stage_updates(
            app.stream(None, config, context=resumed_ctx, stream_mode="updates")
        )
    assert resumed == ["plan", "execute"]
    after, items_after = _snapshot(db, "killed")
    assert list(after["ledger"]) == list(STAGES)
    assert after["run_id"] == before["run_id"]  # resumed, not restarted
    for stage in ("classify", "select"):
        assert after["ledger"][stage] == before["ledger"][stage]
        assert items_after[stage] == items_before[stage]
