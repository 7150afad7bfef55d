"""Token counters, offline: the local transformers tokenizers of the test models."""

from __future__ import annotations

import json
import socket

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_vllm_budget.errors import TokenCountError, VLLMConnectionError
from langchain_vllm_budget.local_models import ensure_local_model
from langchain_vllm_budget.tokenizers import (
    ApproximateTokenCounter,
    ServerTokenCounter,
    TokenCounter,
    TransformersTokenCounter,
    _conversation_for_template,
    messages_to_openai_dicts,
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

TOOL_TURN = [
    HumanMessage("Weather in Paris?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
    ToolMessage('{"temp_c": 21}', tool_call_id="c1"),
]


@pytest.fixture(scope="module")
def qwen() -> TransformersTokenCounter:
    return TransformersTokenCounter(ensure_local_model("tiny-qwen"))


@pytest.fixture(scope="module")
def smol() -> TransformersTokenCounter:
    return TransformersTokenCounter(ensure_local_model("smollm2-135m-instruct"))


def test_counters_satisfy_the_protocol(qwen: TransformersTokenCounter) -> None:
    server = ServerTokenCounter("http://127.0.0.1:9/v1", "m")
    for counter in (qwen, server, ApproximateTokenCounter()):
        assert isinstance(counter, TokenCounter)
    assert (qwen.name, qwen.exact) == ("transformers", True)
    assert (server.name, server.exact) == ("server", True)
    assert ApproximateTokenCounter().exact is False


def test_qwen_count_equals_the_rendered_template(qwen: TransformersTokenCounter) -> None:
    rendered = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    messages = [SystemMessage("Be brief."), HumanMessage("Hello")]
    assert qwen.count_messages(messages) == qwen.count_text(rendered)


def test_smollm2_count_equals_the_rendered_template(smol: TransformersTokenCounter) -> None:
    rendered = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert smol.count_messages([HumanMessage("Hi")]) == smol.count_text(rendered)


def test_count_text_adds_no_special_tokens(qwen: TransformersTokenCounter) -> None:
    assert qwen.count_text("") == 0
    assert qwen.count_text("hello") == 1


def test_tools_and_tool_turns_are_counted(qwen: TransformersTokenCounter) -> None:
    plain = qwen.count_messages(TOOL_TURN[:1])
    with_tools = qwen.count_messages(TOOL_TURN[:1], tools=[WEATHER_TOOL])
    assert with_tools - plain > qwen.count_text(json.dumps(WEATHER_TOOL)) // 2
    full = qwen.count_messages(TOOL_TURN, tools=[WEATHER_TOOL])
    assert full > with_tools + qwen.count_text('{"temp_c": 21}')


def test_tool_call_arguments_reach_the_template_as_objects() -> None:
    conversation = _conversation_for_template(messages_to_openai_dicts(TOOL_TURN))
    call = conversation[1]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert conversation[1]["content"] == ""
    assert conversation[2] == {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "c1"}


def test_list_content_is_flattened_like_vllm() -> None:
    message = HumanMessage([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    assert _conversation_for_template(messages_to_openai_dicts([message]))[0]["content"] == "a\nb"


def test_chinese_and_json_counts_differ_from_chars_over_four(
    qwen: TransformersTokenCounter,
) -> None:
    chinese = "你好，世界。今天的天气非常好，我们去公园散步吧。" * 20  # noqa: RUF001
    ids = json.dumps([{"id": f"a8f3{i:04d}-77c2-4e1b", "v": i} for i in range(40)])
    approx = ApproximateTokenCounter()
    for text in (chinese, ids):
        exact = qwen.count_text(text)
        assert abs(approx.count_text(text) - exact) / exact > 0.3


def test_approximate_counter() -> None:
    counter = ApproximateTokenCounter()
    assert counter.count_text("a" * 9) == 3
    assert counter.count_messages([HumanMessage("a" * 8)]) == 2 + 4
    assert counter.count_messages([HumanMessage("x")], tools=[WEATHER_TOOL]) > 10
    with pytest.raises(ValueError, match="chars_per_token"):
        ApproximateTokenCounter(chars_per_token=0)


async def test_async_counts_match(qwen: TransformersTokenCounter) -> None:
    assert await qwen.acount_messages(TOOL_TURN, [WEATHER_TOOL]) == qwen.count_messages(
        TOOL_TURN, [WEATHER_TOOL]
    )
    approx = ApproximateTokenCounter()
    assert await approx.acount_messages(TOOL_TURN) == approx.count_messages(TOOL_TURN)


def test_tokenizer_is_loaded_once() -> None:
    path = ensure_local_model("tiny-qwen")
    assert TransformersTokenCounter(path).tokenizer is TransformersTokenCounter(path).tokenizer


def test_missing_tokenizer_is_a_typed_error(tmp_path) -> None:
    with pytest.raises(TokenCountError, match="Cannot load a tokenizer"):
        TransformersTokenCounter(tmp_path / "nothing-here")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_counter_unreachable_is_a_typed_error() -> None:
    counter = ServerTokenCounter(f"http://127.0.0.1:{_closed_port()}/v1", "m", timeout=5)
    assert not counter.server_root.endswith("/v1")
    with pytest.raises(VLLMConnectionError, match="Cannot connect"):
        counter.count_messages([HumanMessage("hi")])
