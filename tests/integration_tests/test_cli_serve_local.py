"""`vllm-budget serve-local start|status|stop` manages a real background vLLM server.

The server is started with a named setup (``--setup tools``) and one more ``vllm serve`` flag
passed through after ``--``; both are checked on the running server's behaviour.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from langchain_vllm_budget.serving.local_server import ServerState
from langchain_vllm_budget.serving.router import ReplicaSetState

pytestmark = pytest.mark.integration

NAME = "cli-test-qwen"

# Compact JSON is the only JSON this schema allows under the tools setup.
UNIT_SCHEMA = {
    "type": "object",
    "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["unit"],
    "additionalProperties": False,
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langchain_vllm_budget.cli", "serve-local", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _chat(state: ServerState | ReplicaSetState, **body: object) -> httpx.Response:
    messages = [{"role": "user", "content": "Which unit?"}]
    return httpx.post(
        f"{state.base_url}/chat/completions",
        json={"model": NAME, "messages": messages, "max_tokens": 16, "temperature": 0, **body},
        timeout=300,
    )


def _start_args(*extra: str) -> tuple[str, ...]:
    return ("start", "--model", "tiny-qwen", "--name", NAME, "--max-model-len", "1024", *extra)


def test_start_with_setup_and_passthrough_status_stop() -> None:
    started = _cli(*_start_args("--setup", "tools", "--", "--max-logprobs", "2"))
    try:
        assert started.returncode == 0, started.stderr
        state = ServerState.load(NAME)
        assert state is not None
        assert state.base_url in started.stdout
        assert (state.setup, state.extra_args) == ("tools", ("--max-logprobs", "2"))
        models = httpx.get(f"{state.base_url}/models", timeout=30).json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [(NAME, 1024)]

        # The passed-through flag reached vLLM: 2 top logprobs are allowed, 3 are not.
        assert _chat(state, logprobs=True, top_logprobs=2).status_code == 200
        refused = _chat(state, logprobs=True, top_logprobs=3)
        assert refused.status_code == 400
        assert "max allowed: 2" in refused.text

        # The tools setup reached vLLM: JSON without free whitespace, even from random weights.
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "u", "schema": UNIT_SCHEMA},
        }
        content = _chat(state, response_format=response_format).json()["choices"][0]["message"]
        assert content["content"] in ('{"unit":"celsius"}', '{"unit":"fahrenheit"}')

        again = _cli(*_start_args("--setup", "tools", "--", "--max-logprobs", "2"))
        assert again.returncode == 0
        assert "already running" in again.stdout

        # The same name with another setup is refused, with the way out.
        other = _cli(*_start_args("--setup", "plain"))
        assert other.returncode == 1
        assert "stop it first" in other.stderr

        status = _cli("status", "--model", NAME)
        assert status.returncode == 0
        assert "running" in status.stdout
        assert "setup tools" in status.stdout
    finally:
        stopped = _cli("stop", "--model", NAME)
    assert stopped.returncode == 0
    assert "stopped pid" in stopped.stdout
    assert ServerState.load(NAME) is None
    assert _cli("status", "--model", NAME).returncode == 1
    assert _cli("stop", "--model", NAME).stdout.startswith("no server recorded")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_replicas_behind_a_router_start_and_stop_by_their_own_pids() -> None:
    started = _cli(*_start_args("--setup", "plain", "--replicas", "2"))
    try:
        assert started.returncode == 0, started.stderr
        state = ReplicaSetState.load(NAME)
        assert state is not None
        assert state.base_url in started.stdout
        assert state.policy == "consistent_hash"
        assert len({r.port for r in state.replicas}) == 2
        # Window discovery, /tokenize and completions pass through the router.
        models = httpx.get(f"{state.base_url}/models", timeout=30).json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [(NAME, 1024)]
        root = state.base_url.removesuffix("/v1")
        tokens = httpx.post(f"{root}/tokenize", json={"model": NAME, "prompt": "hi"}, timeout=30)
        assert tokens.json()["count"] >= 1
        assert _chat(state).status_code == 200
        status = _cli("status", "--model", NAME)
        assert status.returncode == 0
        assert "replicas" in status.stdout
    finally:
        stopped = _cli("stop", "--model", NAME)
    pids = [state.router_pid, *(r.pid for r in state.replicas)]
    assert stopped.stdout.count("stopped pid") == 3
    assert not any(_running(pid) for pid in pids)
    assert ReplicaSetState.load(NAME) is None
