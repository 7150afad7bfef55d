"""LangChain's standard integration suite for ChatVLLM, against a real vLLM (SmolLM2-135M).

The server runs the ``tools`` setup (``SERVER_SETUPS["tools"]``): named and ``"required"``
``tool_choice`` are decoded under vLLM's hermes structural tag with the arguments pinned to
the tool's schema (``--tool-strict-level parameter``), and ``response_format`` JSON is decoded
without free whitespace. With it, every tool-calling and structured-output test of the suite
passes on SmolLM2-135M except the two that need the model to decide something the decoder
cannot decide for it (see the xfails below).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_vllm_budget import ChatVLLM

pytestmark = pytest.mark.integration


class TestChatVLLMStandard(ChatModelIntegrationTests):
    _served = None

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _use_smollm2(cls, smollm2) -> None:
        cls._served = smollm2

    @property
    def chat_model_class(self) -> type[ChatVLLM]:
        return ChatVLLM

    @property
    def chat_model_params(self) -> dict:
        served = type(self)._served
        assert served is not None
        return {
            "model": served.model,
            "base_url": served.base_url,
            # A constrained tool call costs SmolLM2 ~40 tokens of envelope alone: its
            # vocabulary has no <tool_call> token, so the forced text goes in 1-3 characters a
            # token (the unicode test's call is ~80 tokens).
            "max_tokens": 100,
            # Greedy, so that a run is reproducible. Measured on SmolLM2-135M: without a
            # frequency penalty it repeats inside a JSON string ("sampu, sampu, ...") or pads
            # tool arguments with whitespace (the structural tag allows it) until max_tokens.
            # frequency_penalty counts only generated tokens, so unlike repetition_penalty
            # it does not stop the model from copying the prompt's "3" or "你好啊集团".
            "temperature": 0,
            "frequency_penalty": 0.8,
        }

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # with_structured_output runs with ChatVLLM's default method, json_schema: vLLM decodes the
    # answer under the schema (response_format json_schema).

    # The two failures left are the model's, measured on vLLM 0.32 (CPU) with the tools setup.
    # Each is pinned with ``raises=`` to the assertion (or parser) that rejects the model's
    # answer, so an exception from this package still fails the test.
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    @pytest.mark.xfail(
        reason=(
            "SmolLM2-135M does not call a tool on its own (tool_choice auto): its chat "
            "template has no tools section, so it never sees the tool and answers in prose; "
            "the decoder only constrains a call once the model opens <tool_call>"
        ),
        raises=AssertionError,
    )
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        reason=(
            "SmolLM2-135M does not follow a schema it is only told about in words: json_mode "
            "(response_format json_object) constrains the output to some JSON object, and the "
            "model nests its keys ({'setup': {'punchline': ...}}) instead of writing 'setup' "
            "and 'punchline' side by side"
        ),
        raises=OutputParserException,
    )
    def test_json_mode(self, model) -> None:
        super().test_json_mode(model)


# ------------------------------------------------ tool calls whose arguments are not an object

GET_WEATHER = {
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


FORCED_MAX_TOKENS = 160


def _forced_tool_call(arguments: str) -> dict:
    """vLLM structured-output settings that make the model write exactly this tool call.

    The tiny Qwen's random weights are steered by a regex to the hermes ``<tool_call>`` text;
    the server's hermes parser then returns it as a tool call with these ``arguments``. The
    regex fixes the text, not its tokenization: random weights sometimes spell it in short
    tokens (up to ~60 for this call), so the tests leave ``FORCED_MAX_TOKENS`` of room.
    """
    text = f'<tool_call>\n{{"name": "get_weather", "arguments": {arguments}}}\n</tool_call>'
    return {"structured_outputs": {"regex": re.escape(text)}}


@pytest.mark.parametrize("arguments", ['["Oslo", "c"]', '"Oslo"'], ids=["array", "string"])
def test_non_object_tool_arguments_are_invalid_tool_calls(tiny_qwen, arguments: str) -> None:
    model = ChatVLLM(
        model=tiny_qwen.model, base_url=tiny_qwen.base_url, max_tokens=FORCED_MAX_TOKENS
    )
    bound = model.bind_tools([GET_WEATHER], tool_choice="auto")
    reply = bound.invoke("Weather in Oslo?", extra_body=_forced_tool_call(arguments))
    assert isinstance(reply, AIMessage)
    assert reply.tool_calls == []
    [invalid] = reply.invalid_tool_calls
    assert invalid["name"] == "get_weather"
    assert json.loads(invalid["args"] or "") == json.loads(arguments)
    assert invalid["id"]
    assert "must be a JSON object" in (invalid["error"] or "")
    assert reply.response_metadata["finish_reason"] == "tool_calls"
    assert reply.usage_metadata is not None

    streamed = None
    for chunk in bound.stream("Weather in Oslo?", extra_body=_forced_tool_call(arguments)):
        streamed = chunk if streamed is None else streamed + chunk
    assert isinstance(streamed, AIMessageChunk)
    assert streamed.tool_calls == []
    [streamed_invalid] = streamed.invalid_tool_calls
    assert streamed_invalid["name"] == "get_weather"
    assert json.loads(streamed_invalid["args"] or "") == json.loads(arguments)
    assert streamed_invalid["id"] == streamed.tool_call_chunks[0]["id"]


def test_object_tool_arguments_are_tool_calls(tiny_qwen) -> None:
    model = ChatVLLM(
        model=tiny_qwen.model, base_url=tiny_qwen.base_url, max_tokens=FORCED_MAX_TOKENS
    )
    bound = model.bind_tools([GET_WEATHER], tool_choice="auto")
    reply = bound.invoke("Weather in Oslo?", extra_body=_forced_tool_call('{"city": "Oslo"}'))
    assert isinstance(reply, AIMessage)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert reply.invalid_tool_calls == []


# --------------------------------------------------------------------- requests in flight


class _InFlight:
    """Counts chat-completion requests between sending and closing their response."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.total = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.total += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


class _CountedAsyncStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, counter: _InFlight) -> None:
        self._inner, self._counter, self._open = inner, counter, True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            yield part

    async def aclose(self) -> None:
        await self._inner.aclose()
        if self._open:
            self._open = False
            self._counter.leave()


class _CountedSyncStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, counter: _InFlight) -> None:
        self._inner, self._counter, self._open = inner, counter, True

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        self._inner.close()
        if self._open:
            self._open = False
            self._counter.leave()


class _CountingAsyncTransport(httpx.AsyncHTTPTransport):
    def __init__(self, counter: _InFlight) -> None:
        super().__init__()
        self.counter = counter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/chat/completions"):
            return await super().handle_async_request(request)
        self.counter.enter()
        try:
            response = await super().handle_async_request(request)
        except BaseException:
            self.counter.leave()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CountedAsyncStream(response.stream, self.counter),
            extensions=response.extensions,
        )


class _CountingSyncTransport(httpx.HTTPTransport):
    def __init__(self, counter: _InFlight) -> None:
        super().__init__()
        self.counter = counter

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/chat/completions"):
            return super().handle_request(request)
        self.counter.enter()
        try:
            response = super().handle_request(request)
        except BaseException:
            self.counter.leave()
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CountedSyncStream(response.stream, self.counter),
            extensions=response.extensions,
        )


def _counted_model(served, counter: _InFlight, **kwargs) -> ChatVLLM:
    return ChatVLLM(
        model=served.model,
        base_url=served.base_url,
        max_tokens=8,
        max_retries=0,
        timeout=300.0,
        http_client=httpx.Client(transport=_CountingSyncTransport(counter)),
        http_async_client=httpx.AsyncClient(transport=_CountingAsyncTransport(counter)),
        **kwargs,
    )


async def test_max_concurrency_caps_async_requests_in_flight(tiny_qwen) -> None:
    unlimited = _InFlight()
    model = _counted_model(tiny_qwen, unlimited)
    await asyncio.gather(*(model.ainvoke(f"Request {i}") for i in range(8)))
    assert unlimited.peak > 2, "without a limit all 8 requests are sent at once"

    counter = _InFlight()
    model = _counted_model(tiny_qwen, counter, max_concurrency=2)
    copies = [model, model.bind(stop=["\n\n"]), model.with_config(tags=["copy"])]
    replies = await asyncio.gather(
        *(copies[i % 3].ainvoke(f"Request {i}") for i in range(8)),
        *(_collect(copies[i % 3].astream(f"Stream {i}")) for i in range(4)),
    )
    assert counter.total == 12
    assert counter.peak == 2
    assert counter.now == 0
    for reply in replies:
        assert reply.usage_metadata is not None
        assert reply.usage_metadata["output_tokens"] >= 1
        assert reply.response_metadata["budget"]["max_tokens"] == 8


async def _collect(chunks: AsyncIterator[AIMessageChunk]) -> AIMessageChunk:
    full = None
    async for chunk in chunks:
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessageChunk)
    return full


def test_max_concurrency_caps_threaded_requests_in_flight(tiny_qwen) -> None:
    counter = _InFlight()
    model = _counted_model(tiny_qwen, counter, max_concurrency=2)
    replies = model.batch([f"Request {i}" for i in range(6)], config={"max_concurrency": 6})
    streamed = []
    threads = [
        threading.Thread(target=lambda i=i: streamed.append(list(model.stream(f"Stream {i}"))))
        for i in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert counter.total == 9
    assert counter.peak == 2
    assert counter.now == 0
    assert all(reply.usage_metadata for reply in replies)
    assert len(streamed) == 3
    for chunks in streamed:
        assert any(chunk.usage_metadata for chunk in chunks)
