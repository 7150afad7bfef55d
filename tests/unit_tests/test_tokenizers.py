"""Token counters, offline: the local transformers tokenizers of the test models."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_vllm_budget.errors import (
    TokenCountError,
    VLLMConnectionError,
    VLLMInvalidRequestError,
)
from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.tokenizers import (
    ApproximateTokenCounter,
    PromptOptions,
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


# ------------------------------------------------------- request fields that shape the prompt

DOCS_TEMPLATE = (
    "{% for d in documents or [] %}<doc>{{ d.title }}: {{ d.text }}</doc>{% endfor %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_every_prompt_option_reaches_the_template(qwen: TransformersTokenCounter) -> None:
    messages = [HumanMessage("Hello there")]
    custom = PromptOptions(chat_template=DOCS_TEMPLATE)
    assert qwen.render(messages, options=custom) == "user: Hello there\nassistant:"
    documents = [{"title": "Peru", "text": "Lima is the capital."}]
    with_docs = PromptOptions(chat_template=DOCS_TEMPLATE, documents=documents)
    assert qwen.render(messages, options=with_docs).startswith(
        "<doc>Peru: Lima is the capital.</doc>"
    )
    no_prompt = PromptOptions(chat_template=DOCS_TEMPLATE, add_generation_prompt=False)
    assert qwen.render(messages, options=no_prompt) == "user: Hello there\n"
    counts = [qwen.count_messages(messages, options=o) for o in (custom, with_docs, no_prompt)]
    assert counts == [
        qwen.count_text(qwen.render(messages, options=o)) for o in (custom, with_docs, no_prompt)
    ]


def test_continue_final_message_leaves_the_last_turn_open(qwen: TransformersTokenCounter) -> None:
    messages = [HumanMessage("Write a haiku."), AIMessage("Autumn moon")]
    open_turn = PromptOptions(add_generation_prompt=False, continue_final_message=True)
    rendered = qwen.render(messages, options=open_turn)
    assert rendered.endswith("Autumn moon")
    assert qwen.count_messages(messages, options=open_turn) < qwen.count_messages(messages)


def test_enable_thinking_and_reasoning_effort_shape_the_qwen3_prompt(
    qwen: TransformersTokenCounter,
) -> None:
    messages = [HumanMessage("Capital of Peru?")]
    plain = qwen.count_messages(messages)
    empty_think = qwen.count_text("<think>\n\n</think>\n\n")
    off = PromptOptions(chat_template_kwargs={"enable_thinking": False})
    assert qwen.count_messages(messages, options=off) == plain + empty_think
    assert qwen.count_messages(messages, options=PromptOptions(reasoning_effort="none")) == (
        plain + empty_think
    )
    # The template's own variable wins over the one reasoning_effort implies.
    both = PromptOptions(chat_template_kwargs={"enable_thinking": True}, reasoning_effort="none")
    assert qwen.count_messages(messages, options=both) == plain


def test_thinking_of_earlier_turns_reaches_the_template(qwen: TransformersTokenCounter) -> None:
    """Qwen3's template renders the thinking of turns after the last user message only."""
    thought = AIMessage("", additional_kwargs={"reasoning_content": "Let me look it up."})
    call = thought.model_copy(
        update={"tool_calls": [{"name": "get_weather", "args": {"city": "Oslo"}, "id": "c1"}]}
    )
    turns = [HumanMessage("Weather in Oslo?"), call, ToolMessage("-3 C", tool_call_id="c1")]
    without = [turns[0], call.model_copy(update={"additional_kwargs": {}}), turns[2]]
    assert "Let me look it up." in qwen.render(turns, [WEATHER_TOOL])
    assert qwen.count_messages(turns, [WEATHER_TOOL]) > qwen.count_messages(without, [WEATHER_TOOL])
    # Once a new user turn follows, the template drops that thinking.
    later = [*turns, AIMessage("Cold."), HumanMessage("And Lima?")]
    assert "Let me look it up." not in qwen.render(later, [WEATHER_TOOL])


def test_prompt_options_are_read_from_a_request_body() -> None:
    body = {
        "temperature": 0,
        "chat_template_kwargs": {"enable_thinking": False},
        "documents": [{"title": "t", "text": "x"}],
        "reasoning_effort": "low",
        "add_special_tokens": True,
    }
    options = PromptOptions.from_request(body)
    assert options.template_kwargs() == {
        "enable_thinking": False,
        "add_generation_prompt": True,
        "continue_final_message": False,
        "documents": [{"title": "t", "text": "x"}],
        "reasoning_effort": "low",
    }
    assert options.add_special_tokens is True
    for bad in (
        {"chat_template_kwargs": "enable_thinking"},
        {"chat_template_kwargs": {"chat_template": "x"}},
        {"chat_template": 3},
        {"documents": "text"},
        {"reasoning_effort": "extreme"},
        {"add_generation_prompt": "yes"},
        {"continue_final_message": True},
    ):
        with pytest.raises(VLLMInvalidRequestError):
            PromptOptions.from_request(bad)


ASSISTANT_TURNS = [
    AIMessage("A plain answer, long enough to be worth skipping the per-character loop."),
    AIMessage(""),
    AIMessage("Calling it.", tool_calls=[{"name": "get_weather", "args": {"a": 1}, "id": "c1"}]),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {}, "id": "c2"}]),
    AIMessage("Named.", name="planner"),
    AIMessage("Spoken.", additional_kwargs={"audio": {"id": "audio-1", "data": "..."}}),
    AIMessage("Old style.", additional_kwargs={"function_call": {"name": "f", "arguments": "{}"}}),
    AIMessage(
        "Raw calls.",
        additional_kwargs={
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]
        },
    ),
    AIMessage([{"type": "text", "text": "Blocks."}, {"type": "audio", "id": "audio-2"}]),
]


@pytest.mark.parametrize("message", ASSISTANT_TURNS, ids=range(len(ASSISTANT_TURNS)))
def test_assistant_turns_convert_exactly_as_langchain_openai_does(message: AIMessage) -> None:
    # The fast path for string content must give langchain-openai's own dict, byte for byte.
    from langchain_openai.chat_models._compat import _convert_from_v1_to_chat_completions
    from langchain_openai.chat_models.base import _convert_message_to_dict

    expected = _convert_message_to_dict(_convert_from_v1_to_chat_completions(message))
    assert messages_to_openai_dicts([message]) == [expected]


def test_a_long_conversation_counts_as_its_whole_prompt(qwen: TransformersTokenCounter) -> None:
    # Exactness of the warm path (segment cache + fast assistant conversion) on a long,
    # growing conversation: every count equals the whole prompt, rendered and encoded.
    messages: list = [SystemMessage("You are an SRE assistant.")]
    for step in range(30):
        messages += [
            HumanMessage(f"Check web-{step:02d}: p99 {80 + step} ms?\n\n" + "Logs follow. " * step),
            AIMessage(f"Step {step}: web-{step:02d} is fine; p99 is {80 + step} ms." * 3),
        ]
        whole = qwen.tokenizer.apply_chat_template(
            _conversation_for_template(messages_to_openai_dicts(messages)),
            tokenize=True,
            add_generation_prompt=True,
        )
        ids = whole["input_ids"] if isinstance(whole, dict) or hasattr(whole, "keys") else whole
        assert qwen.count_messages(messages) == len(ids)


def test_threads_that_load_a_tokenizer_at_once_all_get_it() -> None:
    import threading

    from langchain_vllm_budget import tokenizers

    tokenizers._cached_tokenizer.cache_clear()
    path = str(ensure_local_model("tiny-qwen"))
    loaded: list[object] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def load() -> None:
        barrier.wait()
        try:
            loaded.append(tokenizers._load_tokenizer(path))
        except BaseException as exc:  # the race this guards against raised ImportError
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(loaded) == 6
    assert all(t is loaded[0] for t in loaded)  # loaded once, shared
