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

import pytest
from langchain_core.messages import AIMessage

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


def test_example_agent(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, out, served = _run("agent", request, monkeypatch)
    assert isinstance(namespace["result"]["messages"][-1], AIMessage)
    assert out.strip().splitlines()[-1] == str(served.max_model_len - 128 - 16)


def test_example_stages(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, out, _ = _run("stages", request, monkeypatch)
    final, graph = namespace["final"], namespace["graph"]
    assert list(final["ledger"]) == ["triage", "lookup", "fix"]
    assert all(entry["summary_tokens"] <= 250 for entry in final["ledger"].values())
    assert "ticket=INC-4821" in final["summaries"]["lookup"]
    raw = get_raw_output(graph.store, "t1", final["run_id"], "fix")
    assert raw is not None
    assert raw.strip()[:40] in out
