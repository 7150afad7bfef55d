"""The vLLM servers a benchmark run measures against.

By default each server is started here with
:class:`~langchain_vllm_budget.serving.local_server.LocalVLLMServer` (and stopped at the end); a URL
given on the command line or in ``VLLM_BUDGET_BENCH_QWEN_URL`` /
``VLLM_BUDGET_BENCH_SMOLLM2_URL`` is used instead.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.serving.profiles import HERMES_TOOL_CALL_ARGS

__all__ = ["QWEN", "SMOLLM2", "BenchServers", "Served", "reset_prefix_cache", "server_spec"]

QWEN = "tiny-qwen"
"""Random-weight Qwen2 with the real Qwen tokenizer: the seed's 12288-token window."""
SMOLLM2 = "smollm2-135m-instruct"
"""SmolLM2-135M-Instruct: a real instruct model (2048-token window)."""

_WINDOWS = {QWEN: 12288, SMOLLM2: 2048}
_ENV_URLS = {QWEN: "VLLM_BUDGET_BENCH_QWEN_URL", SMOLLM2: "VLLM_BUDGET_BENCH_SMOLLM2_URL"}
# Tool calls need vLLM's auto tool choice; hermes is Qwen2's tool-call format.
_EXTRA_ARGS = {QWEN: HERMES_TOOL_CALL_ARGS, SMOLLM2: ()}
# The pipeline benchmark empties vLLM's prefix cache between runs (POST /reset_prefix_cache,
# one of vLLM's development endpoints), so that no run reuses another's prefill.
_ENV: dict[str, dict[str, str]] = {QWEN: {}, SMOLLM2: {"VLLM_SERVER_DEV_MODE": "1"}}


@dataclass(frozen=True)
class Served:
    """A model on a running vLLM server.

    Attributes:
        name: :data:`QWEN` or :data:`SMOLLM2`.
        base_url: OpenAI-compatible base URL (``.../v1``).
        model: The served model name.
        model_path: The local model folder (its tokenizer counts locally).
        max_model_len: The server's window.
        log_path: The server log, when this run started the server.
        kv_cache_space_gib: ``VLLM_CPU_KVCACHE_SPACE`` of a server started here.
    """

    name: str
    base_url: str
    model: str
    model_path: Path
    max_model_len: int
    log_path: Path | None = None
    kv_cache_space_gib: int | None = None

    @property
    def server_root(self) -> str:
        """The URL without ``/v1``."""
        return self.base_url.rstrip("/").removesuffix("/v1")


def server_spec(name: str, **changes: object) -> LocalServerSpec:
    """The spec a benchmark server of ``name`` is started with (``changes`` override it)."""
    values: dict[str, object] = {
        "model": str(ensure_local_model(name)),
        "served_model_name": name,
        "max_model_len": _WINDOWS[name],
        "extra_args": _EXTRA_ARGS[name],
        "env": _ENV[name],
    }
    values.update(changes)
    return LocalServerSpec(**values)  # type: ignore[arg-type]


def reset_prefix_cache(served: Served) -> bool:
    """Empty vLLM's prefix cache (dev-mode endpoint); ``False`` when the server refuses.

    The endpoint exists only on a server started with ``VLLM_SERVER_DEV_MODE=1``.
    """
    try:
        response = httpx.post(f"{served.server_root}/reset_prefix_cache", timeout=30.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


class BenchServers:
    """Starts (or finds) the benchmark servers, both at once, and stops what it started.

    Args:
        names: Which models to serve.
        urls: Already running servers by model name (``None`` values are ignored).
    """

    def __init__(self, names: tuple[str, ...], urls: dict[str, str | None]) -> None:
        self.names = names
        self.urls = {
            name: urls.get(name) or os.environ.get(_ENV_URLS[name]) or None for name in names
        }
        self._servers: dict[str, LocalVLLMServer] = {}
        self._served: dict[str, Served] = {}

    def __enter__(self) -> BenchServers:
        try:
            for name in self.names:
                if self.urls[name]:
                    continue
                server = LocalVLLMServer(
                    server_spec(name), log_path=cache_dir() / "logs" / f"bench-{name}.log"
                )
                server.start(wait=False)
                self._servers[name] = server
            for name in self.names:
                self._served[name] = self._describe(name)
        except BaseException:
            self.close()
            raise
        return self

    def _describe(self, name: str) -> Served:
        server = self._servers.get(name)
        if server is not None:
            server.wait_ready()
            return Served(
                name,
                server.base_url,
                server.spec.name,
                Path(server.spec.model),
                server.spec.max_model_len,
                server.log_path,
                server.spec.kv_cache_space_gib,
            )
        url = str(self.urls[name]).rstrip("/")
        data = httpx.get(f"{url}/models", timeout=30).json()["data"][0]
        root = Path(str(data.get("root") or ""))
        path = root if (root / "tokenizer_config.json").is_file() else ensure_local_model(name)
        return Served(name, url, str(data["id"]), path, int(data["max_model_len"]))

    def __getitem__(self, name: str) -> Served:
        return self._served[name]

    def started_here(self) -> list[Served]:
        """The servers this run started (their logs are readable)."""
        return [self._served[name] for name in self._servers if name in self._served]

    def close(self) -> None:
        """Stop every server this object started."""
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        self._servers.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
