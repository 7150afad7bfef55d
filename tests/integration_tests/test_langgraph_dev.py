"""`langgraph dev` serves the pipeline from langgraph.json; driven with langgraph-sdk.

langgraph.json puts the server behind the app's key (langchain_vllm_budget/serving/auth.py):
the server here is started with one, and a request without it is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_sync_client

from langchain_vllm_budget import settings
from langchain_vllm_budget.pipeline.graph import STAGES
from langchain_vllm_budget.serving.local_server import find_free_port, stop_process_group
from tests.integration_tests._pipeline_helpers import FAST, REQUEST
from tests.integration_tests.conftest import ServedModel

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
APP_KEY = "test-app-key-5d0c"


@pytest.fixture(scope="module")
def langgraph_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = find_free_port()
    log = tmp_path_factory.mktemp("langgraph-dev") / "server.log"
    env = {
        **os.environ,
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        settings.APP_API_KEY.env: APP_KEY,
    }
    cli = Path(sys.executable).with_name("langgraph")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(cli),
                "dev",
                "--no-browser",
                "--no-reload",
                "--port",
                str(port),
                "--config",
                str(REPO / "langgraph.json"),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"langgraph dev exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/ok", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"langgraph dev did not answer /ok in 180 s:\n{log.read_text()}")
            time.sleep(1)
        yield url
    finally:
        stop_process_group(process.pid)


def test_the_server_refuses_requests_without_the_app_key(langgraph_dev: str) -> None:
    body = {"graph_id": "pipeline", "limit": 1}
    for headers in ({}, {"x-api-key": "wrong"}, {"Authorization": "Bearer wrong"}):
        refused = httpx.post(f"{langgraph_dev}/assistants/search", json=body, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
    for headers in ({"x-api-key": APP_KEY}, {"Authorization": f"Bearer {APP_KEY}"}):
        allowed = httpx.post(f"{langgraph_dev}/assistants/search", json=body, headers=headers)
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()[0]["graph_id"] == "pipeline"


def test_langgraph_dev_round_trip(langgraph_dev: str, smollm2: ServedModel) -> None:
    client = get_sync_client(url=langgraph_dev, api_key=APP_KEY)
    assistants = client.assistants.search(graph_id="pipeline")
    assert assistants, "langgraph.json must register the 'pipeline' graph"
    thread = client.threads.create()
    context = {"base_url": smollm2.base_url, "model": smollm2.model, **FAST}
    result = client.runs.wait(
        thread["thread_id"], "pipeline", input={"request": REQUEST}, context=context
    )
    assert isinstance(result, dict)
    assert list(result["summaries"]) == list(STAGES)

    state = client.threads.get_state(thread["thread_id"])
    values = state["values"]
    assert state["next"] == []
    assert values["request"] == REQUEST
    assert list(values["ledger"]) == list(STAGES)
    for stage in STAGES:
        entry = values["ledger"][stage]
        assert entry["summary_tokens"] <= FAST["summary_max_tokens"]
        assert entry["input_tokens"] > 0
        assert entry["budget"]["max_tokens"] == entry["max_tokens"]
        assert entry["budget"]["max_model_len"] == smollm2.max_model_len
    assert list(values["rolling_summaries"]) == list(STAGES)

    # raw outputs are in the server's store, keyed by (thread, run, stage)
    namespace = ["stage_outputs", thread["thread_id"], values["run_id"]]
    items = client.store.search_items(namespace)["items"]
    assert sorted(item["key"] for item in items) == sorted(STAGES)
    for item in items:
        assert item["value"]["tokens"] == values["ledger"][item["key"]]["raw_tokens"]
        assert values["ledger"][item["key"]]["raw_output"] == [*namespace, item["key"]]

    # a second request on the same thread is a new run: nothing of the first is carried over
    second = client.runs.wait(
        thread["thread_id"],
        "pipeline",
        input={"request": "Restart db-replica-03."},
        context=context,
    )
    assert second["run_id"] != values["run_id"]
    assert all(e["run_id"] == second["run_id"] for e in second["ledger"].values())
    runs = {
        tuple(item["namespace"])[2]
        for item in client.store.search_items(["stage_outputs", thread["thread_id"]], limit=50)[
            "items"
        ]
    }
    assert runs == {values["run_id"], second["run_id"]}
