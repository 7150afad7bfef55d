"""A vLLM server started with --api-key refuses requests without the key; the package sends it.

A real server (tiny-qwen) started with ``--api-key``, directly and behind a real
``vllm-router`` (as the docker ``<layout>-replicas`` profiles run it): a request without the key
is refused, ``ChatVLLM`` with the key discovers the window (``/v1/models``), counts on the
server (``/tokenize``) and answers, and the app's served-model discovery sends the key too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from langchain_vllm_budget import ChatVLLM
from langchain_vllm_budget.chat_models._discovery import served_model_names
from langchain_vllm_budget.errors import VLLMError
from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import (
    LocalServerSpec,
    LocalVLLMServer,
    find_free_port,
    stop_process_group,
)

pytestmark = pytest.mark.integration

KEY = "sk-test-deploy-7f3a9c"
MODEL = "keyed"
WINDOW = 4096


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    """tiny-qwen started with --api-key; its /v1 URL."""
    spec = LocalServerSpec(
        model=str(ensure_local_model("tiny-qwen")),
        served_model_name=MODEL,
        max_model_len=WINDOW,
        extra_args=("--api-key", KEY),
    )
    log = cache_dir() / "logs" / "test-api-key.log"
    with LocalVLLMServer(spec, log_path=log) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def router(keyed_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """vllm-router (consistent_hash) in front of the keyed server, as compose runs it; /v1 URL."""
    binary = shutil.which("vllm-router") or shutil.which(
        "vllm-router", path=str(Path(sys.executable).parent)
    )
    assert binary is not None, "vllm-router is missing (PyPI package vllm-router)"
    port = find_free_port()
    worker = keyed_server.removesuffix("/v1")
    log = tmp_path_factory.mktemp("router") / "router.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--policy",
                "consistent_hash",
                "--api-key",
                KEY,
                "--worker-urls",
                worker,
                "--prometheus-port",
                str(find_free_port()),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run_dir = os.environ.get("VLLM_BUDGET_RUN_DIR")
    if run_dir:  # scripts/with-run-dir.sh stops it if this run is killed
        Path(run_dir, f"router-{process.pid}.pid").write_text(str(process.pid))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm-router exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm-router did not answer /health in 120 s:\n{log.read_text()}")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        stop_process_group(process.pid)


@pytest.fixture(params=["direct", "router"])
def base_url(request: pytest.FixtureRequest) -> str:
    name = "keyed_server" if request.param == "direct" else "router"
    return str(request.getfixturevalue(name))


def test_a_request_without_the_key_is_refused(base_url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer sk-wrong-0000"}):
        models = httpx.get(f"{base_url}/models", headers=headers, timeout=30)
        assert models.status_code == 401, models.text
        chat = httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=60)
        assert chat.status_code == 401, chat.text
    allowed = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert allowed.status_code == 200
    assert [m["id"] for m in allowed.json()["data"]] == [MODEL]


def test_chat_vllm_with_the_key_discovers_counts_and_answers(base_url: str) -> None:
    model = ChatVLLM(
        model=MODEL,
        base_url=base_url,
        api_key=SecretStr(KEY),
        token_counter="server",  # /tokenize, with the key
        max_retries=0,
        timeout=120.0,
    )
    counted = model.get_num_tokens_from_messages([HumanMessage("Name one colour.")])
    assert counted > 0
    reply = model.invoke("Name one colour.", max_tokens=4)
    budget = reply.response_metadata["budget"]
    assert budget["max_model_len"] == WINDOW  # discovered from /v1/models with the key
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == budget["input_tokens"] == counted


def test_chat_vllm_takes_the_key_from_the_environment(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the docker app does: VLLM_API_KEY in its environment, nothing in the code."""
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    model = ChatVLLM(model=MODEL, base_url=base_url, token_counter="server", max_retries=0)
    reply = model.invoke("Hi", max_tokens=2)
    assert reply.response_metadata["budget"]["max_model_len"] == WINDOW
    assert served_model_names(base_url) == (MODEL,)
    monkeypatch.delenv("VLLM_API_KEY")
    with pytest.raises(openai.AuthenticationError):
        served_model_names(base_url)


def test_chat_vllm_without_the_key_is_refused(
    base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    model = ChatVLLM(model=MODEL, base_url=base_url, max_retries=0, token_counter="server")
    with pytest.raises((VLLMError, openai.AuthenticationError)) as refused:
        model.invoke("Hi", max_tokens=2)
    assert "401" in str(refused.value) or "auth" in str(refused.value).lower()
