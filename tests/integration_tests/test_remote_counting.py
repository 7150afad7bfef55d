"""Exact counting against a server whose model root is a hub id, as on a remote GPU box.

Two real vLLM servers are started once for this module, both serving tiny-qwen under the hub id
``budget-test/tiny-qwen`` from a Hugging Face cache laid out as the hub lays it out
(:func:`~langchain_vllm_budget.serving.hub_cache.install_in_hub_cache`), with
``HF_HUB_OFFLINE=1``: so ``/v1/models`` reports the hub id as the root, not a folder. One is
started with ``--enable-scale-out`` (vLLM's render endpoint served), the other without.

The client side decides what this machine knows: ``HF_HOME`` pointing at the same cache (the
hub-cache path), or at an empty one (the root is unknown here: the render endpoint, or
``/tokenize``). Every count is checked against the server's own ``usage.prompt_tokens``, and
the counting requests the server received are read from its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver

from langchain_vllm_budget import ChatVLLM, TransformersTokenCounter
from langchain_vllm_budget.middleware import ContextCompactionMiddleware
from langchain_vllm_budget.serving.hub_cache import install_in_hub_cache
from langchain_vllm_budget.serving.local_models import cache_dir
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.tokenizers import ServerTokenCounter

pytestmark = pytest.mark.integration

REPO = "budget-test/tiny-qwen"
WINDOW = 4096
_COUNTING = ("/tokenize", "/v1/chat/completions/render")


@dataclass(frozen=True)
class HubServers:
    hf_home: Path
    render_url: str
    tokenize_url: str


@pytest.fixture(scope="module")
def hub_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServers]:
    hf_home = tmp_path_factory.mktemp("hf-home")
    install_in_hub_cache("tiny-qwen", REPO, hf_home)
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    servers = [
        LocalVLLMServer(
            LocalServerSpec(
                model=REPO,
                served_model_name=REPO,
                max_model_len=WINDOW,
                setup="tool-parser",
                extra_args=extra,
                env=env,
            ),
            log_path=cache_dir() / "logs" / f"test-hub-{name}.log",
        )
        for name, extra in (("render", ("--enable-scale-out",)), ("tokenize", ()))
    ]
    try:
        for server in servers:  # both start at once
            server.start(wait=False)
        for server in servers:
            server.wait_ready()
        yield HubServers(hf_home, servers[0].base_url, servers[1].base_url)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def knows_the_model(hub_servers: HubServers, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's Hugging Face cache holds the model (as after an earlier download)."""
    monkeypatch.setenv("HF_HOME", str(hub_servers.hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def knows_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Hugging Face cache here, offline: the root is unknown to this machine."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _model(base_url: str, **kwargs: object) -> ChatVLLM:
    return ChatVLLM(model=REPO, base_url=base_url, max_tokens=2, temperature=0, **kwargs)


@tool
def lookup(host: str) -> str:
    """Look up a host's status."""
    return f"{host}: ok"


def _conversations() -> list[list[BaseMessage]]:
    return [
        [HumanMessage("Hi")],
        [
            SystemMessage("You are the operations assistant. Keep every ID."),
            HumanMessage("Ticket INC-4411: web-07 p99 83 ms, /var/log/nginx/error.log"),
            AIMessage("Noted INC-4411."),
            HumanMessage("Und jetzt: 服务器 web-08 的队列深度?"),
        ],
    ]


def _assert_exact(model: ChatVLLM) -> None:
    for messages in _conversations():
        for bound in (model, model.bind_tools([lookup])):
            tools = [lookup] if bound is not model else None
            counted = model.get_num_tokens_from_messages(messages, tools=tools)
            answer = bound.invoke(messages)
            assert answer.usage_metadata is not None
            assert counted == answer.usage_metadata["input_tokens"]
            assert answer.response_metadata["budget"]["input_tokens"] == counted


def _counting_requests(base_url: str) -> int:
    """Counting requests the server has answered (its own /metrics)."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^http_requests_total\{([^}]*)\} (\S+)$", line)
        if match and any(f'handler="{h}"' in match.group(1) for h in _COUNTING):
            total += float(match.group(2))
    return int(total)


def test_the_root_is_the_hub_id(hub_servers: HubServers) -> None:
    models = httpx.get(f"{hub_servers.render_url}/models", timeout=10).json()["data"]
    assert models[0]["root"] == REPO
    assert not Path(REPO).exists()


@pytest.mark.usefixtures("knows_the_model")
def test_a_hub_root_counts_locally_from_the_hugging_face_cache(hub_servers: HubServers) -> None:
    model = _model(hub_servers.render_url)
    counter = model.resolved_token_counter
    assert isinstance(counter, TransformersTokenCounter)
    assert counter.source.startswith(str(hub_servers.hf_home))
    before = _counting_requests(hub_servers.render_url)
    _assert_exact(model)
    assert _counting_requests(hub_servers.render_url) == before  # nothing asked the server


@pytest.mark.usefixtures("knows_nothing")
def test_an_unknown_root_counts_with_the_render_endpoint(hub_servers: HubServers) -> None:
    model = _model(hub_servers.render_url)
    counter = model.resolved_token_counter
    assert isinstance(counter, ServerTokenCounter)
    assert counter.endpoint == "render"
    _assert_exact(model)


@pytest.mark.usefixtures("knows_nothing")
def test_past_the_window_render_refuses_and_tokenize_counts(hub_servers: HubServers) -> None:
    render = ServerTokenCounter(hub_servers.render_url, REPO, endpoint="render")
    tokenize = ServerTokenCounter(hub_servers.render_url, REPO)
    long = [HumanMessage("web-07 p99 83 ms; " * 900)]
    count = render.count_messages(long)
    assert count > WINDOW
    assert count == tokenize.count_messages(long)
    assert render.calls == 2  # the render endpoint refused it, /tokenize counted it


@pytest.mark.usefixtures("knows_nothing")
def test_without_render_an_unknown_root_counts_with_tokenize(hub_servers: HubServers) -> None:
    model = _model(hub_servers.tokenize_url)
    counter = model.resolved_token_counter
    assert isinstance(counter, ServerTokenCounter)
    assert counter.endpoint == "tokenize"
    _assert_exact(model)


@pytest.mark.parametrize("endpoint", ["render", "tokenize"])
def test_a_repeated_count_is_answered_from_the_cache(
    hub_servers: HubServers, endpoint: str
) -> None:
    counter = ServerTokenCounter(hub_servers.render_url, REPO, endpoint=endpoint)
    messages = _conversations()[1]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    first = counter.count_messages(messages, tools)
    assert asyncio.run(counter.acount_messages(messages, tools)) == first
    assert counter.count_messages(messages, tools) == first
    assert counter.calls == 1
    # Another request (no tools) is counted anew, over the async client this time.
    assert asyncio.run(counter.acount_messages(messages)) < first
    assert counter.calls == 2


def _agent_loop(base_url: str, steps: int, *, use_async: bool) -> list[int]:
    """Counting requests the server answered for each agent step (one model request each)."""
    model = _model(base_url)
    agent = create_agent(
        model,
        tools=[lookup],
        system_prompt="You are the operations assistant.",
        middleware=[ContextCompactionMiddleware(model, policy="trim")],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": f"loop-{use_async}"}}
    per_step: list[int] = []

    def state(step: int) -> dict[str, list[BaseMessage]]:
        return {"messages": [HumanMessage(f"Step {step}: check web-{step:02d} and its p99.")]}

    async def run_async() -> None:  # one event loop for the whole loop, as in an app
        for step in range(steps):
            before = _counting_requests(base_url)
            await agent.ainvoke(state(step), config)
            per_step.append(_counting_requests(base_url) - before)

    if use_async:
        asyncio.run(run_async())
    else:
        for step in range(steps):
            before = _counting_requests(base_url)
            agent.invoke(state(step), config)
            per_step.append(_counting_requests(base_url) - before)
    return per_step


@pytest.mark.usefixtures("knows_nothing")
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("server", ["render_url", "tokenize_url"])
def test_an_agent_loop_makes_one_counting_request_per_model_request(
    hub_servers: HubServers, server: str, use_async: bool
) -> None:
    per_step = _agent_loop(getattr(hub_servers, server), 5, use_async=use_async)
    # The first step also resolves the counter and reads the profile (its probes).
    assert all(calls == 1 for calls in per_step[1:]), per_step
