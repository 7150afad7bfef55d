"""Reasoning models against a real vLLM started with ``--reasoning-parser qwen3``.

The served model is tiny-qwen (random weights, the real Qwen3 tokenizer and chat template).
With vLLM's ``qwen3`` reasoning parser every token it writes before ``</think>`` is thinking
text, so the server does return ``reasoning``, from a model that does not know what it
means. Where a test needs a known shape, vLLM's structured outputs write it: the server is
started with ``enable_in_reasoning`` so that the constraint also applies inside the thinking
section. Nothing here is a recorded response: every answer comes from the server.

Also here (they need the same launch flags): counting with a request's own
``chat_template`` (``--trust-request-chat-template``) and ``documents``.

Set ``VLLM_BUDGET_TEST_QWEN_REASONING_URL`` to use such a server that is already running.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

import httpx
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage

from langchain_vllm_budget import ChatVLLM, TokenBudget, VLLMInvalidRequestError
from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer

from .conftest import QWEN_MAX_MODEL_LEN, ServedModel
from .test_token_counting import WEATHER_TOOL as TOOL

pytestmark = pytest.mark.integration

REASONING_FLAGS = (
    "--reasoning-parser",
    "qwen3",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
    "--trust-request-chat-template",
    "--structured-outputs-config",
    json.dumps({"backend": "xgrammar", "enable_in_reasoning": True}),
)


@pytest.fixture(scope="session")
def tiny_qwen_reasoning() -> Iterator[ServedModel]:
    """tiny-qwen on a vLLM that separates thinking (``--reasoning-parser qwen3``)."""
    path = ensure_local_model("tiny-qwen")
    url = os.environ.get("VLLM_BUDGET_TEST_QWEN_REASONING_URL")
    if url:
        models = httpx.get(f"{url}/models", timeout=10).json()["data"]
        yield ServedModel(url, models[0]["id"], path, int(models[0]["max_model_len"]))
        return
    spec = LocalServerSpec(
        model=str(path),
        served_model_name="tiny-qwen-reasoning",
        max_model_len=QWEN_MAX_MODEL_LEN,
        extra_args=REASONING_FLAGS,
    )
    log = cache_dir() / "logs" / "test-tiny-qwen-reasoning.log"
    with LocalVLLMServer(spec, log_path=log) as server:
        yield ServedModel(server.base_url, spec.name, path, QWEN_MAX_MODEL_LEN)


def _model(served: ServedModel, **kwargs) -> ChatVLLM:
    kwargs.setdefault("max_tokens", 40)
    return ChatVLLM(model=served.model, base_url=served.base_url, temperature=0, **kwargs)


THOUGHT = "Peru is in South America and its capital is Lima."
ANSWER = "Lima."


def _forced(thought: str, answer: str) -> dict:
    """Structured outputs that make the model think ``thought``, then answer ``answer``."""
    return {"structured_outputs": {"regex": re.escape(f"{thought}</think>\n\n{answer}")}}


def test_thinking_text_is_kept_on_invoke(tiny_qwen_reasoning) -> None:
    model = _model(tiny_qwen_reasoning, extra_body=_forced(THOUGHT, ANSWER))
    reply = model.invoke("Capital of Peru?")
    assert isinstance(reply, AIMessage)
    assert reply.additional_kwargs["reasoning_content"] == THOUGHT
    assert reply.text.strip() == ANSWER
    assert reply.content_blocks[0] == {"type": "reasoning", "reasoning": THOUGHT}
    assert reply.response_metadata["model_provider"] == "vllm"
    usage = reply.usage_metadata
    assert usage is not None
    assert usage["output_token_details"]["reasoning"] > 0
    assert usage["input_tokens"] == reply.response_metadata["budget"]["input_tokens"]


async def test_thinking_text_is_kept_on_ainvoke(tiny_qwen_reasoning) -> None:
    model = _model(tiny_qwen_reasoning, extra_body=_forced(THOUGHT, ANSWER))
    reply = await model.ainvoke("Capital of Peru?")
    assert reply.additional_kwargs["reasoning_content"] == THOUGHT
    assert reply.text.strip() == ANSWER


# A Qwen chat template whose generation prompt opens the thinking section, as the templates
# of DeepSeek-R1 and Qwen3's thinking models do: vLLM's thinking budget counts from there.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def _thinking(served: ServedModel, **kwargs) -> ChatVLLM:
    """Thinks first (the template opens the section), answers once the budget is spent."""
    kwargs.setdefault("thinking_budget", 8)
    return _model(
        served,
        max_tokens=None,
        budget=TokenBudget(output_reserve=40, min_output_tokens=16),
        extra_body={"chat_template": THINKING_TEMPLATE},
        **kwargs,
    )


async def test_streams_split_thinking_and_answer_as_invoke_does(tiny_qwen_reasoning) -> None:
    """The stream's deltas carry the thinking; merged, the same split as the (greedy) invoke.

    vLLM ends the thinking with the ``</think>`` token here (the thinking budget forces it),
    which its streaming parser recognizes.
    """
    model = _thinking(tiny_qwen_reasoning)
    reply = model.invoke("Capital of Peru?")
    thinking = reply.additional_kwargs["reasoning_content"]
    assert thinking
    assert reply.text
    streamed = None
    for chunk in model.stream("Capital of Peru?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert isinstance(streamed, AIMessageChunk)
    assert streamed.additional_kwargs["reasoning_content"] == thinking
    assert streamed.text == reply.text
    assert streamed.content_blocks[0] == {"type": "reasoning", "reasoning": thinking}
    assert streamed.response_metadata["model_provider"] == "vllm"
    astreamed = None
    async for chunk in model.astream("Capital of Peru?"):
        astreamed = chunk if astreamed is None else astreamed + chunk
    assert isinstance(astreamed, AIMessageChunk)
    assert astreamed.additional_kwargs["reasoning_content"] == thinking


def test_v1_output_puts_the_reasoning_block_in_content(tiny_qwen_reasoning) -> None:
    model = _model(tiny_qwen_reasoning, extra_body=_forced(THOUGHT, ANSWER), output_version="v1")
    reply = model.invoke("Capital of Peru?")
    assert isinstance(reply.content, list)
    assert reply.content[0] == {"type": "reasoning", "reasoning": THOUGHT}
    # The v1 message goes back with its thinking in the next request, counted exactly.
    follow_up = [HumanMessage("Capital of Peru?"), reply, HumanMessage("And of Chile?")]
    model = _model(tiny_qwen_reasoning, max_tokens=1)
    again = model.invoke(follow_up)
    assert again.usage_metadata is not None
    assert again.usage_metadata["input_tokens"] == model.get_num_tokens_from_messages(follow_up)


@pytest.mark.parametrize("counter", ["transformers", "server"])
def test_earlier_thinking_is_sent_back_and_counted(tiny_qwen_reasoning, counter: str) -> None:
    """Thinking after the last user turn is rendered by Qwen3's template: sent and counted."""
    call = AIMessage(
        "",
        tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "c1"}],
        additional_kwargs={"reasoning_content": "I should look up the weather in Oslo."},
    )
    turns = [HumanMessage("Weather in Oslo?"), call, ToolMessage("-3 C, snow", tool_call_id="c1")]
    without = [turns[0], call.model_copy(update={"additional_kwargs": {}}), turns[2]]
    model = _model(tiny_qwen_reasoning, token_counter=counter, max_tokens=1)
    bound = model.bind_tools([TOOL], tool_choice="none")
    reply = bound.invoke(turns)
    assert reply.usage_metadata is not None
    counted = reply.response_metadata["budget"]["input_tokens"]
    assert counted == reply.usage_metadata["input_tokens"]
    assert counted > model.get_num_tokens_from_messages(without, tools=[TOOL])


def test_without_a_thinking_budget_thinking_can_take_all_of_max_tokens(
    tiny_qwen_reasoning,
) -> None:
    """The problem: thinking tokens come out of max_tokens, and may leave no answer."""
    model = _thinking(tiny_qwen_reasoning, thinking_budget=None)
    reply = model.invoke("Capital of Peru?")
    usage = reply.usage_metadata
    assert usage is not None
    assert usage["output_tokens"] == 40
    assert usage["output_token_details"]["reasoning"] == 40
    assert reply.text == ""


@pytest.mark.parametrize(
    ("thinking_budget", "expected_cap"),
    [(8, 8), (1000, 40 - 16)],
    ids=["thinking-budget", "capped-by-max-tokens"],
)
def test_a_thinking_budget_leaves_the_answer_its_room(
    tiny_qwen_reasoning, thinking_budget: int, expected_cap: int
) -> None:
    model = _thinking(tiny_qwen_reasoning, thinking_budget=thinking_budget)
    reply = model.invoke("Capital of Peru?")
    budget = reply.response_metadata["budget"]
    assert (budget["max_tokens"], budget["thinking_token_budget"]) == (40, expected_cap)
    usage = reply.usage_metadata
    assert usage is not None
    thinking = usage["output_token_details"]["reasoning"]
    # vLLM forces </think> once the budget is spent; the rest of max_tokens is the answer's.
    assert expected_cap - 1 <= thinking <= expected_cap
    assert usage["output_tokens"] - thinking >= 16
    assert reply.text
    assert reply.additional_kwargs["reasoning_content"]


def test_a_thinking_budget_on_a_server_without_a_reasoning_parser_is_a_typed_error(
    tiny_qwen,
) -> None:
    model = ChatVLLM(
        model=tiny_qwen.model, base_url=tiny_qwen.base_url, max_tokens=4, thinking_budget=8
    )
    with pytest.raises(VLLMInvalidRequestError, match="--reasoning-parser") as info:
        model.invoke("hi")
    assert info.value.option == "thinking_budget"


def test_a_request_chat_template_the_server_does_not_trust_is_a_typed_error(tiny_qwen) -> None:
    model = ChatVLLM(
        model=tiny_qwen.model,
        base_url=tiny_qwen.base_url,
        max_tokens=4,
        token_counter="transformers",
        tokenizer=str(tiny_qwen.model_path),
        extra_body={"chat_template": THINKING_TEMPLATE},
    )
    with pytest.raises(VLLMInvalidRequestError, match="--trust-request-chat-template"):
        model.invoke("hi")


DOCUMENTS_TEMPLATE = (
    "{% for d in documents or [] %}<|im_start|>system\nDocument {{ loop.index }} "
    "({{ d.title }}): {{ d.text }}<|im_end|>\n{% endfor %}" + THINKING_TEMPLATE
)
DOCUMENTS = [
    {"title": "Peru", "text": "Lima has been the capital of Peru since 1535."},
    {"title": "Chile", "text": "Santiago is the capital of Chile."},
]


@pytest.mark.parametrize("counter", ["transformers", "server"])
@pytest.mark.parametrize(
    "extra_body",
    [
        {"chat_template": THINKING_TEMPLATE},
        {"chat_template": DOCUMENTS_TEMPLATE, "documents": DOCUMENTS},
        {"chat_template": DOCUMENTS_TEMPLATE, "documents": DOCUMENTS, "reasoning_effort": "none"},
    ],
    ids=["chat_template", "documents", "documents-reasoning-effort"],
)
def test_request_chat_templates_and_documents_are_counted(
    tiny_qwen_reasoning, counter: str, extra_body: dict
) -> None:
    model = _model(tiny_qwen_reasoning, token_counter=counter, max_tokens=1)
    messages = [HumanMessage("Which capital is older?")]
    counted = model.get_num_tokens_from_messages(messages, extra_body=extra_body)
    reply = model.invoke(messages, extra_body=extra_body)
    assert reply.usage_metadata is not None
    assert counted == reply.usage_metadata["input_tokens"]
    assert reply.response_metadata["budget"]["input_tokens"] == counted
    assert counted != model.get_num_tokens_from_messages(messages)
