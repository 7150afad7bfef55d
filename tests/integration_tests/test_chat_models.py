"""LangChain's standard integration suite for ChatVLLM, against a real vLLM (SmolLM2-135M)."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_vllm_budget import ChatVLLM

pytestmark = pytest.mark.integration


class TestChatVLLMStandard(ChatModelIntegrationTests):
    _served = None

    @pytest.fixture(autouse=True, scope="class")
    def _use_smollm2(self, smollm2) -> None:
        type(self)._served = smollm2

    @property
    def chat_model_class(self) -> type[ChatVLLM]:
        return ChatVLLM

    @property
    def chat_model_params(self) -> dict:
        served = type(self)._served
        assert served is not None
        return {"model": served.model, "base_url": served.base_url, "max_tokens": 60}

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # SmolLM2-135M is too small to follow tool and JSON schemas: observed on vLLM 0.32 (CPU,
    # hermes tool parser) it writes tool-call arguments that are lists or bare strings and
    # JSON objects with other keys. The requests themselves are accepted by the server.
    _TINY = (
        "SmolLM2-135M does not follow tool/JSON schemas (arguments come back as lists or "
        "strings, objects with other keys)"
    )

    @pytest.mark.xfail(reason=_TINY)
    def test_tool_calling(self, model) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=_TINY)
    async def test_tool_calling_async(self, model) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=_TINY)
    def test_bind_runnables_as_tools(self, model) -> None:
        super().test_bind_runnables_as_tools(model)

    @pytest.mark.xfail(reason=_TINY)
    def test_tool_choice(self, model) -> None:
        super().test_tool_choice(model)

    @pytest.mark.xfail(reason=_TINY)
    def test_tool_calling_with_no_arguments(self, model) -> None:
        super().test_tool_calling_with_no_arguments(model)

    @pytest.mark.xfail(reason=_TINY)
    def test_structured_output(self, model, schema_type) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_TINY)
    async def test_structured_output_async(self, model, schema_type) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_TINY)
    def test_structured_output_pydantic_2_v1(self, model) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=_TINY)
    def test_structured_output_optional_param(self, model) -> None:
        super().test_structured_output_optional_param(model)

    @pytest.mark.xfail(reason=_TINY)
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason=_TINY)
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=_TINY)
    def test_unicode_tool_call_integration(self, model) -> None:
        super().test_unicode_tool_call_integration(model)
