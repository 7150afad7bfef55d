"""Session affinity: the session key each request carries, from the LangGraph thread."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from langchain_vllm_budget import ChatVLLM, TokenBudget
from langchain_vllm_budget.routing import (
    SessionCookieJars,
    SessionRouting,
    current_thread_id,
    session_key,
)


class _Server:
    """An OpenAI-style chat endpoint that records each request's headers."""

    def __init__(self, set_cookie: str | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.set_cookie = set_cookie

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})
        self.requests.append(request)
        body = json.loads(request.content)
        answer = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "ok"},
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        headers = {"set-cookie": self.set_cookie} if self.set_cookie else {}
        return httpx.Response(200, json=answer, headers=headers)

    def keys(self, header: str = "X-Session-ID") -> list[str | None]:
        return [r.headers.get(header) for r in self.requests]


def _model(server: _Server, **kwargs: Any) -> ChatVLLM:
    transport = httpx.MockTransport(server.handle)
    clients: dict[str, Any] = {}
    if not kwargs.get("session_cookies"):
        clients = {
            "http_client": kwargs.pop("http_client", None) or httpx.Client(transport=transport),
            "http_async_client": httpx.AsyncClient(transport=transport),
        }
    return ChatVLLM(
        model="m",
        base_url="http://vllm.test/v1",
        api_key="x",
        token_counter="approximate",
        budget=kwargs.pop(
            "budget", TokenBudget(max_model_len=4096, output_reserve=64, min_output_tokens=16)
        ),
        max_retries=0,
        **clients,
        **kwargs,
    )


def _graph(model: ChatVLLM, *, subgraph: bool = False) -> Any:
    def call(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    inner = StateGraph(MessagesState)
    inner.add_node("call", call)
    inner.add_edge(START, "call")
    inner.add_edge("call", END)
    if not subgraph:
        return inner.compile(checkpointer=InMemorySaver())
    outer = StateGraph(MessagesState)
    outer.add_node("call", call)
    outer.add_node("subagent", inner.compile())
    outer.add_edge(START, "call")
    outer.add_edge("call", "subagent")
    outer.add_edge("subagent", END)
    return outer.compile(checkpointer=InMemorySaver())


def _run(graph: Any, thread_id: str, text: str = "hi") -> None:
    graph.invoke({"messages": [HumanMessage(text)]}, {"configurable": {"thread_id": thread_id}})


def test_every_call_of_a_thread_carries_the_threads_key_and_threads_differ() -> None:
    server = _Server()
    graph = _graph(_model(server))
    _run(graph, "thread-a")
    _run(graph, "thread-b")
    _run(graph, "thread-a", "again")
    a, b = session_key("thread-a"), session_key("thread-b")
    assert a != b
    assert server.keys() == [a, b, a]


def test_a_subagent_of_the_thread_carries_the_same_key() -> None:
    server = _Server()
    _run(_graph(_model(server), subgraph=True), "parent")
    assert server.keys() == [session_key("parent")] * 2


def test_summarizer_calls_of_the_thread_carry_the_same_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_BUDGET_COMPRESSION", "llm")  # the summarizer is always called
    server = _Server()
    summarizer = _model(server)
    model = _model(
        server,
        on_overflow="summarize",
        summarizer=summarizer,
        budget=TokenBudget(max_model_len=600, output_reserve=64, min_output_tokens=32),
    )
    history = [
        message
        for i in range(3)
        for message in (HumanMessage(f"question {i} " * 40), AIMessage(f"answer {i} " * 40))
    ]
    graph = _graph(model)
    graph.invoke(
        {"messages": [*history, HumanMessage("now?")]},
        {"configurable": {"thread_id": "long"}},
    )
    assert len(server.requests) == 2, "the summarizer was not called"
    assert server.keys() == [session_key("long")] * len(server.requests)


async def test_async_runs_carry_their_threads_key() -> None:
    server = _Server()

    async def call(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    model = _model(server)
    builder = StateGraph(MessagesState)
    builder.add_node("call", call)
    builder.add_edge(START, "call")
    graph = builder.compile(checkpointer=InMemorySaver())
    await graph.ainvoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "t"}})
    assert server.keys() == [session_key("t")]


async def test_a_config_passed_on_names_the_thread_where_none_is_in_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An async node on Python 3.10 (LangGraph cannot put the run's config in context there)
    that passes its config to the model, as LangChain advises there: the call carries the key
    (read from the call's callback metadata, where LangGraph puts the thread_id)."""
    import langgraph._internal._runnable as runnable

    monkeypatch.setattr(runnable, "ASYNCIO_ACCEPTS_CONTEXT", False)  # Python 3.10's LangGraph
    server = _Server()
    model = _model(server)

    async def call(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"], config)]}

    builder = StateGraph(MessagesState)
    builder.add_node("call", call)
    builder.add_edge(START, "call")
    graph = builder.compile(checkpointer=InMemorySaver())
    await graph.ainvoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "t"}})
    model.invoke("hi", {"metadata": {"thread_id": "u"}})  # the same, outside LangGraph
    (RunnableLambda(lambda text: text) | model).invoke("hi", {"metadata": {"thread_id": "v"}})
    assert server.keys() == [session_key("t"), session_key("u"), session_key("v")]


def test_a_session_header_the_user_set_on_the_model_stands() -> None:
    server = _Server()
    _run(_graph(_model(server, default_headers={"x-session-id": "tenant-9"})), "t")
    _run(_graph(_model(server, extra_headers={"X-SESSION-ID": "tenant-10"})), "t")
    assert server.keys() == ["tenant-9", "tenant-10"]


def test_the_models_own_extra_headers_are_sent_beside_the_key() -> None:
    server = _Server()
    _run(_graph(_model(server, extra_headers={"X-Tenant": "acme"})), "t")
    _model(server, session_id="s-1", extra_headers={"X-Tenant": "acme"}).invoke("hi")
    assert server.keys() == [session_key("t"), "s-1"]
    assert server.keys("X-Tenant") == ["acme", "acme"]


def test_a_calls_own_extra_headers_replace_the_models_as_in_langchain_openai() -> None:
    server = _Server()
    model = _model(server, extra_headers={"X-Tenant": "acme"})
    _run(_graph(model.bind(extra_headers={"X-Call": "1"})), "t")  # type: ignore[arg-type]
    _run(_graph(model.bind(extra_headers={})), "t")  # type: ignore[arg-type]
    off = _model(server, session_affinity="off", extra_headers={"X-Tenant": "acme"})
    off.invoke("hi", extra_headers={"X-Call": "2"})
    assert server.keys() == [session_key("t"), session_key("t"), None]
    assert server.keys("X-Tenant") == [None, None, None]
    assert server.keys("X-Call") == ["1", None, "2"]


def test_outside_a_run_there_is_no_key_unless_one_is_given() -> None:
    server = _Server()
    _model(server).invoke("hi")
    _model(server, session_id="fixed").invoke("hi")
    assert current_thread_id() is None
    assert server.keys() == [None, "fixed"]


def test_the_explicit_id_wins_and_the_off_switch_sends_nothing() -> None:
    server = _Server()
    _run(_graph(_model(server, session_id="fixed")), "t")
    _run(_graph(_model(server, session_affinity="off", session_id="fixed")), "t")
    assert server.keys() == ["fixed", None]


def test_the_header_name_and_the_off_switch_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = _Server()
    monkeypatch.setenv("VLLM_BUDGET_SESSION_HEADER", "X-User-ID")
    _run(_graph(_model(server)), "t")
    monkeypatch.setenv("VLLM_BUDGET_SESSION_AFFINITY", "off")
    _run(_graph(_model(server)), "t")
    assert server.keys("X-User-ID") == [session_key("t"), None]
    assert server.keys() == [None, None]


def test_a_callers_own_header_wins() -> None:
    server = _Server()
    graph = _graph(_model(server).bind(extra_headers={"X-Session-ID": "mine"}))  # type: ignore[arg-type]
    _run(graph, "t")
    assert server.keys() == ["mine"]


def test_session_cookies_build_clients_that_keep_a_jar_per_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_BUDGET_SESSION_HEADER", "X-User-ID")
    model = _model(_Server(), session_cookies=True)
    for client in (model.http_client, model.http_async_client):
        jars = client.event_hooks["request"][0].__self__
        assert isinstance(jars, SessionCookieJars)
        assert jars.header == "X-User-ID"


def test_each_session_gets_its_own_cookie_jar() -> None:
    server = _Server(set_cookie="replica=r1; Path=/")
    jars = SessionCookieJars("X-Session-ID")
    transport = httpx.MockTransport(server.handle)
    model = _model(server, http_client=jars.client(transport=transport))
    graph = _graph(model)
    _run(graph, "a")
    _run(graph, "a", "again")
    _run(graph, "b")
    cookies = [r.headers.get("cookie") for r in server.requests]
    assert cookies == [None, "replica=r1", None]


def test_cookie_jars_are_kept_per_key_and_bounded() -> None:
    jars = SessionCookieJars("X-Session-ID", max_sessions=2)
    request = httpx.Request("POST", "http://r.test/v1/chat/completions")
    request.headers["X-Session-ID"] = "k1"
    jars.on_response(httpx.Response(200, headers={"set-cookie": "s=1"}, request=request))
    follow_up = httpx.Request("POST", "http://r.test/v1/chat/completions")
    follow_up.headers["X-Session-ID"] = "k1"
    jars.on_request(follow_up)
    assert follow_up.headers["cookie"] == "s=1"
    jars.jar("k2")
    jars.jar("k3")
    assert not jars.jar("k1")  # the least recently used session was dropped


def test_routing_without_a_key_adds_no_header() -> None:
    assert SessionRouting("thread", "X-Session-ID").headers() == {}
    assert SessionRouting("off", "X-Session-ID", "fixed").headers() == {}
