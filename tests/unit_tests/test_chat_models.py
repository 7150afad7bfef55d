"""ChatVLLM offline: LangChain's standard unit suite, configuration and serialisation."""

from __future__ import annotations

import os
import socket
from unittest import mock

import pytest
from langchain_core.exceptions import ModelConnectionError
from langchain_core.load import dumpd, load
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_vllm_budget import (
    ApproximateTokenCounter,
    ChatVLLM,
    TokenBudget,
    VLLMConnectionError,
)
from langchain_vllm_budget.chat_models import DEFAULT_API_BASE


class TestChatVLLMStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatVLLM]:
        return ChatVLLM

    @property
    def chat_model_params(self) -> dict:
        return {"model": "tiny-qwen", "base_url": "http://127.0.0.1:8000/v1"}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return (
            {"VLLM_API_KEY": "key-from-env", "VLLM_API_BASE": "http://vllm.internal:8000/v1"},
            {"model": "tiny-qwen"},
            {"openai_api_key": "key-from-env", "openai_api_base": "http://vllm.internal:8000/v1"},
        )

    @property
    def has_tool_choice(self) -> bool:
        return True

    @pytest.mark.xfail(
        reason="langchain-core's load(allowed_objects='all') admits only the classes in its "
        "own mapping, so no package outside langchain can pass this test as written; "
        "test_serdes_with_explicit_allowlist runs the same checks with ChatVLLM allowed.",
        strict=True,
    )
    def test_serdes(self, model, snapshot) -> None:
        super().test_serdes(model, snapshot)

    def test_serdes_with_explicit_allowlist(self, model, snapshot) -> None:
        env_params, _, _ = self.init_from_env_params
        with mock.patch.dict(os.environ, env_params):
            ser = dumpd(model)
            assert ser == snapshot(name="serialized")
            restored = load(
                ser,
                valid_namespaces=["langchain_vllm_budget"],
                allowed_objects=[ChatVLLM, TokenBudget],
                secrets_from_env=True,
            )
            assert model.dict() == restored.dict()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VLLM_API_BASE", "VLLM_API_KEY", "LLM_MAX_MODEL_LEN", "LLM_OUTPUT_RESERVE"):
        monkeypatch.delenv(var, raising=False)
    model = ChatVLLM(model="m")
    assert model.openai_api_base == DEFAULT_API_BASE
    assert model.openai_api_key is None
    assert model.stream_usage is True
    assert model.on_overflow == "raise"
    assert model.token_counter == "auto"
    assert model.budget == TokenBudget()
    assert model._llm_type == "vllm-chat"
    assert model._get_ls_params()["ls_provider"] == "vllm"


def test_api_key_is_secret() -> None:
    model = ChatVLLM(model="m", api_key="s3cret")
    assert "s3cret" not in repr(model)
    assert "s3cret" not in str(dumpd(model))


def test_budget_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_OUTPUT_RESERVE", "1500")
    monkeypatch.setenv("LLM_SAFETY_MARGIN", "64")
    model = ChatVLLM(model="m")
    assert (model.budget.output_reserve, model.budget.safety_margin) == (1500, 64)


def test_invalid_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="on_overflow"):
        ChatVLLM(model="m", on_overflow="truncate")


def test_counter_instance_accepted() -> None:
    counter = ApproximateTokenCounter()
    model = ChatVLLM(model="m", token_counter=counter)
    assert model.resolved_token_counter is counter
    assert model.get_num_tokens("abcdefgh") == 2


def test_serialisation_round_trip_keeps_budget_settings() -> None:
    model = ChatVLLM(
        model="m",
        base_url="http://h:1/v1",
        budget=TokenBudget(max_model_len=4096, output_reserve=1000),
        on_overflow="trim",
    )
    restored = load(
        dumpd(model),
        valid_namespaces=["langchain_vllm_budget"],
        allowed_objects=[ChatVLLM, TokenBudget],
        secrets_map={"VLLM_API_KEY": "k"},
    )
    assert isinstance(restored, ChatVLLM)
    assert restored.budget == model.budget
    assert restored.on_overflow == "trim"


def test_unreachable_server_is_a_typed_error() -> None:
    model = ChatVLLM(model="m", base_url=f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0)
    with pytest.raises(VLLMConnectionError) as info:
        model.invoke("hi")
    assert isinstance(info.value, ModelConnectionError)
    assert str(model.openai_api_base) in str(info.value)
