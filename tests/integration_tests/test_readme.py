"""The README's examples, run as written against real vLLM servers.

Each ```python block under a ``<!-- readme-test: NAME SERVER -->`` line runs in its own
namespace with ``VLLM_API_BASE`` pointing at the fixture server and the README's model name
replaced by the served one; small output settings come from the environment (the examples
use the package's defaults, which read it).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import langchain.agents
import pytest
from langchain.agents.middleware import wrap_model_call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from langchain_vllm_budget.compaction import is_summary_message
from langchain_vllm_budget.middleware import load_tool_output
from langchain_vllm_budget.middleware.tool_outputs import METADATA_KEY
from langchain_vllm_budget.stages import get_raw_output
from tests.integration_tests.conftest import ServedModel

README = Path(__file__).resolve().parents[2] / "README.md"
README_MODEL = "Qwen/Qwen2.5-7B-Instruct-AWQ"
_EXAMPLE = re.compile(r"<!-- readme-test: (\w+) (\w+) -->\n```python\n(.*?)```", re.S)


def _examples() -> dict[str, tuple[str, str]]:
    return {name: (server, code) for name, server, code in _EXAMPLE.findall(README.read_text())}


def test_the_readme_has_its_three_examples() -> None:
    assert list(_examples()) == ["chat", "agent", "stages"]
    for _, code in _examples().values():
        assert README_MODEL in code


def _run(
    name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], str, ServedModel]:
    server, code = _examples()[name]
    served: ServedModel = request.getfixturevalue(server)
    monkeypatch.setenv("VLLM_API_BASE", served.base_url)
    monkeypatch.setenv("VLLM_BUDGET_OUTPUT_RESERVE", "48")
    monkeypatch.setenv("VLLM_BUDGET_MIN_OUTPUT_TOKENS", "16")
    namespace: dict[str, Any] = {"__name__": f"readme_{name}"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace(README_MODEL, served.model), f"README:{name}", "exec"), namespace)
    return namespace, out.getvalue(), served


def test_example_chat(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, out, served = _run("chat", request, monkeypatch)
    budget = namespace["budget"]
    assert budget["max_model_len"] == served.max_model_len
    assert budget["input_tokens"] + budget["max_tokens"] <= served.max_model_len
    assert f"do not fit {served.max_model_len}; remove" in out


def _decides_like_an_instruct_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example's agent, with the tool decisions an instruct model would make.

    The test server's model has random weights and never calls a tool on its own, so each
    model call that answers a question is still sent to the server (the window, the count
    and the compaction are real) but its reply is replaced by the call the README's model
    makes: ``search_logs`` for the service asked about. Everything else runs as written.
    """
    create_agent = langchain.agents.create_agent

    @wrap_model_call
    def decide(request: Any, handler: Any) -> Any:
        reply = handler(request)
        last = request.messages[-1]
        if not isinstance(last, HumanMessage):
            return reply
        service = re.search(r"the (\w+) jobs", last.text)
        assert service is not None, last.text
        call = {"name": "search_logs", "args": {"service": service[1]}, "id": f"call_{service[1]}"}
        return AIMessage("", tool_calls=[call])

    def with_decisions(*args: Any, middleware: Any = (), **kwargs: Any) -> Any:
        return create_agent(*args, middleware=[decide, *middleware], **kwargs)

    monkeypatch.setattr(langchain.agents, "create_agent", with_decisions)


def test_example_agent(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    _decides_like_an_instruct_model(monkeypatch)
    namespace, out, served = _run("agent", request, monkeypatch)
    agent, config, search_logs = namespace["agent"], namespace["config"], namespace["search_logs"]
    assert isinstance(namespace["result"]["messages"][-1], AIMessage)
    assert out.strip().splitlines()[-1] == str(served.max_model_len - 128 - 16)
    # each tool output was stored raw and read back from the store, byte for byte
    for service in ("checkout", "payments", "search"):
        stored = load_tool_output(agent.store, f"call_{service}", thread_id="incident-42")
        assert stored is not None
        assert stored["content"] == search_logs.invoke({"service": service})
    # and the agent saw a capped summary of it, with what it saved
    messages = agent.get_state(config).values["messages"]
    [latest] = [m for m in messages if isinstance(m, ToolMessage) and m.name == "search_logs"]
    savings = latest.response_metadata[METADATA_KEY]
    assert savings["raw_tokens"] > 1000
    assert savings["summary_tokens"] <= 250
    assert savings["saved_tokens"] == savings["raw_tokens"] - savings["summary_tokens"]
    assert 'read_tool_output(tool_call_id="call_search")' in latest.text
    # the conversation outgrew the middleware's limit once: the oldest turns are one summary
    # in the checkpointed state, and what is left fits the limit
    assert is_summary_message(messages[0])
    assert sum(is_summary_message(m) for m in messages) == 1
    assert namespace["model"].get_num_tokens_from_messages(messages) <= 1200


def test_example_stages(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, out, _ = _run("stages", request, monkeypatch)
    final, graph = namespace["final"], namespace["graph"]
    assert list(final["ledger"]) == ["triage", "lookup", "fix"]
    assert all(entry["summary_tokens"] <= 250 for entry in final["ledger"].values())
    assert "ticket=INC-4821" in final["summaries"]["lookup"]
    raw = get_raw_output(graph.store, "t1", final["run_id"], "fix")
    assert raw is not None
    assert raw.strip()[:40] in out
