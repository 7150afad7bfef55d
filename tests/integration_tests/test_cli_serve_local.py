"""`vllm-budget serve-local start|status|stop` manages a real background vLLM server."""

from __future__ import annotations

import subprocess
import sys

import httpx

from langchain_vllm_budget.serving.local_server import ServerState

NAME = "cli-test-qwen"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langchain_vllm_budget.cli", "serve-local", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_start_status_stop_round_trip() -> None:
    started = _cli("start", "--model", "tiny-qwen", "--name", NAME, "--max-model-len", "1024")
    try:
        assert started.returncode == 0, started.stderr
        state = ServerState.load(NAME)
        assert state is not None
        assert state.base_url in started.stdout
        models = httpx.get(f"{state.base_url}/models", timeout=30).json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [(NAME, 1024)]

        again = _cli("start", "--model", "tiny-qwen", "--name", NAME)
        assert again.returncode == 0
        assert "already running" in again.stdout

        status = _cli("status", "--model", NAME)
        assert status.returncode == 0
        assert "running" in status.stdout
    finally:
        stopped = _cli("stop", "--model", NAME)
    assert stopped.returncode == 0
    assert "stopped pid" in stopped.stdout
    assert ServerState.load(NAME) is None
    assert _cli("status", "--model", NAME).returncode == 1
    assert _cli("stop", "--model", NAME).stdout.startswith("no server recorded")
