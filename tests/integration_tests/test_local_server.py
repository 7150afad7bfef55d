"""The embedded vLLM server is real: models, tokenize, chat with usage, clean failures."""

from __future__ import annotations

import socket

import httpx
import pytest

from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.serving.local_server import (
    LocalServerError,
    LocalServerSpec,
    LocalVLLMServer,
)

from .conftest import ServedModel


def test_models_endpoint_reports_configured_window(
    smollm2: ServedModel, tiny_qwen: ServedModel
) -> None:
    for served in (smollm2, tiny_qwen):
        data = httpx.get(f"{served.base_url}/models", timeout=30).json()["data"]
        assert data[0]["id"] == served.model
        assert data[0]["max_model_len"] == served.max_model_len


def test_tokenize_counts_chat_prompt(smollm2: ServedModel) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    body = {"model": smollm2.model, "messages": messages}
    result = httpx.post(f"{smollm2.server_root}/tokenize", json=body, timeout=60).json()
    assert result["count"] == len(result["tokens"]) > 5
    assert result["max_model_len"] == smollm2.max_model_len


def test_chat_completion_returns_usage_matching_tokenize(smollm2: ServedModel) -> None:
    messages = [{"role": "user", "content": "Name one colour."}]
    counted = httpx.post(
        f"{smollm2.server_root}/tokenize",
        json={"model": smollm2.model, "messages": messages},
        timeout=60,
    ).json()["count"]
    reply = httpx.post(
        f"{smollm2.base_url}/chat/completions",
        json={"model": smollm2.model, "messages": messages, "max_tokens": 8, "temperature": 0},
        timeout=300,
    ).json()
    assert reply["usage"]["prompt_tokens"] == counted
    assert 0 < reply["usage"]["completion_tokens"] <= 8
    assert reply["choices"][0]["message"]["content"]


def test_port_in_use_is_reported_before_starting() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = LocalServerSpec(model=str(ensure_local_model("tiny-qwen")))
        with pytest.raises(LocalServerError, match=f"port {port} .* already in use"):
            LocalVLLMServer(spec, port=port).start()


def test_missing_model_fails_with_cause_and_log_tail(tmp_path) -> None:
    spec = LocalServerSpec(model=str(tmp_path / "no-such-model"), served_model_name="missing")
    server = LocalVLLMServer(spec, log_path=tmp_path / "server.log", startup_timeout=300)
    with pytest.raises(LocalServerError) as info:
        server.start()
    error = info.value
    assert "exited" in error.cause
    assert error.log_tail, "the log's tail is part of the error"
    assert error.log_path == tmp_path / "server.log"
    assert server.pid is None, "the failed server's process group was stopped"
