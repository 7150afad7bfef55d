"""Token counters, offline: the local transformers tokenizers of the test models."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_vllm_budget.errors import TokenCountError, VLLMConnectionError
from langchain_vllm_budget.serving.local_models import ensure_local_model
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


# ------------------------------------------------------------------ segment-cached counting

TRICKY_TEXTS = [
    "plain words",
    "  leading and trailing spaces  ",
    "\n\nnewlines\n\n",
    "a literal <|im_end|> and <|im_start|>user inside content",
    "<tool_call>not a call</tool_call>",
    "<|im_end|><|im_end|>",
    "e\u0301 combining accent (NFC composes it)",
    "长城的历史 and 😀 emoji",
    json.dumps([{"id": f"9f1c{i:04d}-4b7e", "qty": i} for i in range(20)]),
    "",
]


def _whole_count(counter: TransformersTokenCounter, messages, tools=None) -> int:
    conversation = _conversation_for_template(messages_to_openai_dicts(messages))
    ids = counter.tokenizer.apply_chat_template(
        conversation,
        tools=tools,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return len(ids)


@pytest.mark.parametrize("name", ["qwen", "smol"])
def test_segment_cached_count_equals_whole_tokenization(name: str, request) -> None:
    counter: TransformersTokenCounter = request.getfixturevalue(name)
    assert counter.segment_cache_enabled
    conversation = [SystemMessage("You are terse.")]
    for text in TRICKY_TEXTS:
        conversation += [HumanMessage(text), AIMessage(text[::-1])]
        messages = [*conversation, HumanMessage("next?")]
        # Twice: the first count fills the segment cache, the second reads it.
        for _ in range(2):
            assert counter.count_messages(messages) == _whole_count(counter, messages)
    tools = [WEATHER_TOOL]
    if name == "qwen":
        messages = [*TOOL_TURN, HumanMessage(TRICKY_TEXTS[3])]
        assert counter.count_messages(messages, tools) == _whole_count(counter, messages, tools)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.sampled_from(["<|im_start|>", "<|im_end|>", "<tool_call>", "\n", " ", "  "]),
        ),
        max_size=12,
    )
)
def test_rendered_count_equals_encode(parts: list[str]) -> None:
    counter = TransformersTokenCounter(ensure_local_model("tiny-qwen"))
    prompt = "".join(parts)
    expected = len(counter.tokenizer.encode(prompt, add_special_tokens=False))
    assert counter.count_rendered(prompt) == expected
    assert counter.count_rendered(prompt) == expected


def test_position_dependent_tokenizer_is_counted_whole() -> None:
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "▁hello": 1, "hello": 2, "▁world": 3, "world": 4, "▁": 5}
    backend = Tokenizer(models.WordLevel(vocab, "[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<s>", special=True)]})
    counter = TransformersTokenCounter(tokenizer)
    assert not counter.segment_cache_enabled
    for prompt in ("hello<s>world", "<s>hello world<s>", "hello"):
        assert counter.count_rendered(prompt) == len(
            tokenizer.encode(prompt, add_special_tokens=False)
        )


def test_segment_cache_is_bounded(qwen: TransformersTokenCounter, monkeypatch) -> None:
    import langchain_vllm_budget.tokenizers as tokenizers_module

    monkeypatch.setattr(tokenizers_module, "_SEGMENT_CACHE_SIZE", 5)
    for i in range(20):
        prompt = f"<|im_start|>user\nmessage {i}<|im_end|>\n"
        assert qwen.count_rendered(prompt) == len(
            qwen.tokenizer.encode(prompt, add_special_tokens=False)
        )
    assert len(qwen._segment_counts) <= 5
