"""What a vLLM server says about the model it serves (``GET /v1/models``), asked once.

vLLM's model list gives each served name's context window (``max_model_len``) and where its
weights and tokenizer live (``root``); a LoRA adapter's entry names its base model
(``parent``) and has no window of its own. :class:`ServerDiscovery` asks once per server and
model (sync or async), caches the answer, and is shared by a chat model's copies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai

from langchain_vllm_budget.errors import (
    VLLMConnectionError,
    VLLMModelNotFoundError,
    VLLMServerError,
)

__all__ = [
    "ServerDiscovery",
    "ServerInfo",
    "not_the_api_root",
    "read_models",
    "served_model_names",
]


@dataclass(frozen=True)
class ServerInfo:
    """What ``/v1/models`` says about one served model.

    Attributes:
        max_model_len: The context window in tokens, or ``None`` if not reported.
        root: The model's folder or hub name on the server (its tokenizer is there).
        served: Every name the server serves.
    """

    max_model_len: int | None
    root: str | None
    served: tuple[str, ...]


UNKNOWN_SERVER = ServerInfo(max_model_len=None, root=None, served=())
"""No answer from the server (nothing asked yet, or nothing needed)."""


def read_models(data: Sequence[Mapping[str, Any]], model: str, base_url: str) -> ServerInfo:
    """Read the entry of ``model`` from the ``data`` list of ``/v1/models``.

    Args:
        data: The ``data`` list of the server's answer.
        model: The served model name.
        base_url: The server's base URL (for the error message).

    Returns:
        The model's window, root and the served names. A LoRA adapter gets its base
        model's window.

    Raises:
        VLLMModelNotFoundError: The server does not serve ``model``.
        VLLMServerError: The server reports a window that is not a positive number.

    Example:
        >>> info = read_models(
        ...     [
        ...         {"id": "qwen", "max_model_len": 12288, "root": "/models/qwen"},
        ...         {"id": "qwen-sql", "root": "/adapters/sql", "parent": "qwen"},
        ...     ],
        ...     "qwen-sql",
        ...     "http://localhost:8000/v1",
        ... )
        >>> info.max_model_len, info.root, info.served
        (12288, '/adapters/sql', ('qwen', 'qwen-sql'))
    """
    by_name = {str(entry.get("id")): entry for entry in data}
    served = tuple(by_name)
    entry = by_name.get(model)
    if entry is None:
        raise VLLMModelNotFoundError(model, base_url, list(served))
    window = entry.get("max_model_len")
    parent = by_name.get(str(entry.get("parent")))
    if window is None and parent is not None:
        window = parent.get("max_model_len")
    if window is not None and (not isinstance(window, int) or window <= 0):
        msg = (
            f"/v1/models reports max_model_len={window!r} for {model!r}, not a positive "
            "number of tokens"
        )
        raise VLLMServerError(base_url, msg)
    root = entry.get("root")
    return ServerInfo(max_model_len=window, root=str(root) if root else None, served=served)


def served_model_names(
    base_url: str, *, api_key: str | None = None, timeout: float = 10.0
) -> tuple[str, ...]:
    """Every model name a server serves (``GET /v1/models``), with the server's API key.

    For an app that names no model and takes the server's only one. The key defaults to
    ``VLLM_API_KEY`` (:data:`~langchain_vllm_budget.settings.API_KEY`), as ``ChatVLLM``'s does:
    a server started with ``--api-key`` refuses ``/v1/models`` without it.

    Args:
        base_url: The server's OpenAI-compatible URL (ending in ``/v1``).
        api_key: The server's key; default: ``VLLM_API_KEY``, else none.
        timeout: Seconds to wait for the answer.

    Raises:
        openai.APIError: The server could not be asked, or refused the key.
        VLLMConnectionError: ``GET /models`` is not found there: not the OpenAI API root.
    """
    from langchain_vllm_budget import settings

    key = settings.API_KEY.get(api_key) or "EMPTY"  # the OpenAI client needs some key
    with (
        openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0) as client,
        _at_the_api_root(client),
    ):
        return tuple(str(model.id) for model in client.models.list().data)


@contextmanager
def _at_the_api_root(client: openai.OpenAI | openai.AsyncOpenAI) -> Iterator[None]:
    """``GET /models`` in the block: a 404 there is a wrong URL (:func:`not_the_api_root`)."""
    try:
        yield
    except openai.NotFoundError as exc:
        raise not_the_api_root(str(client.base_url)) from exc


class ServerDiscovery:
    """Asks ``/v1/models`` once per (base URL, model) and remembers the answer.

    Copies of a chat model share one discovery (``copy.deepcopy`` returns it as is), so a
    model's ``bind``/``model_copy`` copies do not ask again.

    Example:
        >>> discovery = ServerDiscovery()
        >>> client = openai.OpenAI(base_url="http://localhost:8000/v1", api_key="EMPTY")
        >>> discovery.cached(client, "qwen") is None
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], ServerInfo] = {}

    def cached(self, client: openai.OpenAI | openai.AsyncOpenAI, model: str) -> ServerInfo | None:
        """The remembered answer for the server of ``client``, without asking."""
        return self._known.get((str(client.base_url), model))

    def _remember(
        self, client: openai.OpenAI | openai.AsyncOpenAI, model: str, data: list[dict[str, Any]]
    ) -> ServerInfo:
        base_url = str(client.base_url)
        info = read_models(data, model, base_url)
        with self._lock:
            self._known[(base_url, model)] = info
        return info

    def get(self, client: openai.OpenAI, model: str) -> ServerInfo:
        """The server's answer for ``model``, asked with the sync client if not known.

        Raises:
            openai.APIError: The server could not be asked (the caller maps it).
            VLLMConnectionError: ``GET /models`` is not found there: not the OpenAI API root.
            VLLMModelNotFoundError: The server does not serve ``model``.
        """
        known = self.cached(client, model)
        if known is not None:
            return known
        with _at_the_api_root(client):
            page = client.models.list()
        return self._remember(client, model, [m.model_dump() for m in page.data])

    async def aget(self, client: openai.AsyncOpenAI, model: str) -> ServerInfo:
        """Async :meth:`get`, with the async client (the event loop is never blocked)."""
        known = self.cached(client, model)
        if known is not None:
            return known
        with _at_the_api_root(client):
            page = await client.models.list()
        return self._remember(client, model, [m.model_dump() for m in page.data])

    def forget(self, client: openai.OpenAI | openai.AsyncOpenAI, model: str) -> None:
        """Drop the answer for ``model`` (the server changed: ask again next time)."""
        with self._lock:
            self._known.pop((str(client.base_url), model), None)

    def __deepcopy__(self, memo: dict[int, Any]) -> ServerDiscovery:
        return self

    def __repr__(self) -> str:
        return f"ServerDiscovery(known={sorted(self._known)})"


def not_the_api_root(base_url: str) -> VLLMConnectionError:
    """The error for a 404 from ``GET /models``: vLLM always answers it at its API root.

    A wrong URL does not heal by retrying: the error is not retryable, unlike a server that
    is down.
    """
    reason = (
        "GET /models answered 404 Not Found, so this is not the server's OpenAI API root; "
        "base_url usually ends in /v1"
    )
    return VLLMConnectionError(base_url.rstrip("/"), reason, retryable=False)
