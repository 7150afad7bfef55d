"""OpenAI client errors from a vLLM server, mapped to this package's typed errors.

One function, :func:`map_openai_error`, decides; :func:`mapped_openai_errors` applies it to a
block of code. vLLM's length rejections are not handled here: the chat model corrects and
retries those (see ``ChatVLLM``), and raises
:class:`~langchain_vllm_budget.errors.VLLMContextOverflowError` itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
from langchain_core.exceptions import ModelError
from langchain_core.messages import AIMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_openai.chat_models.base import (
    OpenAIAuthenticationError,
    OpenAIPermissionDeniedError,
    OpenAIRateLimitError,
)

from langchain_vllm_budget.errors import (
    VLLMConnectionError,
    VLLMInvalidRequestError,
    VLLMModelNotFoundError,
    VLLMRequestAbortedError,
    VLLMServerError,
    VLLMTimeoutError,
)

__all__ = [
    "ABORTED",
    "ServerTarget",
    "aborted_reply",
    "map_openai_error",
    "mapped_openai_errors",
]

ABORTED = "abort"
"""The ``finish_reason`` of a reply vLLM aborted (shutdown, ``/pause?mode=abort``)."""


@dataclass(frozen=True)
class ServerTarget:
    """Where the failed request went, for the error message.

    Attributes:
        base_url: The server's OpenAI-compatible base URL.
        model: The served model name that was requested.
        timeout: The request timeout in seconds, when one number.
        served: The model names the server serves, when already known.
    """

    base_url: str
    model: str
    timeout: float | None = None
    served: Sequence[str] | None = None


# (a part of vLLM's 400 message, the request option, what to change)
_UNSUPPORTED_OPTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "thinking_token_budget is set but reasoning_config is not configured",
        "thinking_budget",
        "a thinking budget needs a server started with --reasoning-parser (e.g. "
        "--reasoning-parser qwen3); unset thinking_budget / thinking_token_budget or restart "
        "vLLM with the parser.",
    ),
    (
        "Chat template is passed with request, but --trust-request-chat-template is not set",
        "chat_template",
        "a chat_template sent with the request needs a server started with "
        "--trust-request-chat-template; restart vLLM with it, or serve the template with "
        "--chat-template and leave chat_template out of the request.",
    ),
    (
        '"auto" tool choice requires --enable-auto-tool-choice',
        "tool_choice",
        "tool_choice='auto' needs a server started with --enable-auto-tool-choice and "
        "--tool-call-parser; restart vLLM with both, or pass tool_choice='required' or a "
        "tool's name (vLLM enforces those with structured outputs).",
    ),
)


# The errors langchain-openai gives a chat call (LangChain's typed model errors) for the
# statuses this package does not map itself, so that a 401 reads the same whether discovery
# (GET /models, through the bare OpenAI client) or the chat call met it first.
_StatusError = type[openai.APIStatusError]
_LANGCHAIN_OPENAI_ERRORS: tuple[tuple[_StatusError, _StatusError], ...] = (
    (openai.AuthenticationError, OpenAIAuthenticationError),
    (openai.PermissionDeniedError, OpenAIPermissionDeniedError),
    (openai.RateLimitError, OpenAIRateLimitError),
)


# A router in front of vLLM replicas (vllm-router) that reaches none of them answers 503
# "No available workers" (or a 503 with no body) or 500 "error sending request for url"; to
# the caller that is a server that cannot be reached, not a server that failed. A 503 that
# says something else (e.g. vLLM's own "overloaded") stays a server error.
_NO_REPLICA_MARKERS: tuple[str, ...] = ("No available workers", "error sending request for url")


def _no_replica_left(exc: openai.InternalServerError) -> bool:
    empty_503 = exc.status_code == 503 and exc.message == "Error code: 503"
    return empty_503 or any(marker in exc.message for marker in _NO_REPLICA_MARKERS)


def map_openai_error(exc: Exception, target: ServerTarget) -> Exception:
    """The typed error for an OpenAI client error, or ``exc`` itself if none applies.

    Args:
        exc: The error the OpenAI client raised.
        target: The server and model the request went to.

    Returns:
        A :class:`~langchain_vllm_budget.errors.VLLMError` subclass, or ``exc`` unchanged.

    Example:
        >>> import httpx
        >>> request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
        >>> failure = openai.APIError("EngineCore encountered an issue.", request, body=None)
        >>> mapped = map_openai_error(failure, ServerTarget("http://127.0.0.1:9/v1", "m"))
        >>> type(mapped).__name__, mapped.status_code
        ('VLLMServerError', None)
    """
    if isinstance(exc, openai.BadRequestError):
        for marker, option, advice in _UNSUPPORTED_OPTIONS:
            if marker in exc.message:
                return VLLMInvalidRequestError(option, advice, server_message=exc.message)
        return exc
    if isinstance(exc, openai.NotFoundError):
        served = list(target.served) if target.served is not None else None
        return VLLMModelNotFoundError(target.model, target.base_url, served)
    if isinstance(exc, openai.APITimeoutError):
        return VLLMTimeoutError(target.base_url, target.timeout)
    if isinstance(exc, openai.APIConnectionError):
        return VLLMConnectionError(target.base_url, str(exc.__cause__ or exc))
    if isinstance(exc, openai.InternalServerError) and _no_replica_left(exc):
        reason = f"no replica reachable (HTTP {exc.status_code}): {exc.message}"
        return VLLMConnectionError(target.base_url, reason)
    if isinstance(exc, openai.InternalServerError):
        return VLLMServerError(target.base_url, exc.message, exc.status_code)
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIStatusError):
        # An error event inside a stream: the server failed mid-answer.
        return VLLMServerError(target.base_url, exc.message)
    if isinstance(exc, openai.APIStatusError) and not isinstance(exc, ModelError):
        for raw, typed in _LANGCHAIN_OPENAI_ERRORS:
            if isinstance(exc, raw):
                return typed(message=exc.message, response=exc.response, body=exc.body)
    return exc


@contextmanager
def mapped_openai_errors(target: ServerTarget) -> Iterator[None]:
    """Raise the typed error (:func:`map_openai_error`) for OpenAI errors in the block.

    Args:
        target: The server and model the block talks to.

    Yields:
        Nothing; the block runs inside.
    """
    try:
        yield
    except openai.APIError as exc:
        mapped = map_openai_error(exc, target)
        if mapped is exc:
            raise
        raise mapped from exc
    except Exception as exc:
        partial = aborted_reply(exc)
        if partial is None:
            raise
        raise VLLMRequestAbortedError(target.base_url, partial=partial) from exc


def aborted_reply(exc: Exception) -> AIMessage | None:
    """The reply so far when ``exc`` came from reading a reply vLLM aborted, else ``None``.

    Structured output (``response_format``) is parsed by the OpenAI client before this
    package sees the reply, so a reply cut off by an abort (``finish_reason="abort"``) fails
    there, as invalid JSON; langchain-openai attaches the HTTP response to that error.

    Example:
        >>> import httpx
        >>> body = {"choices": [{"finish_reason": "abort", "message": {"content": '{"a": '}}],
        ...         "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
        >>> failure = ValueError("Invalid JSON: EOF while parsing")
        >>> failure.response = httpx.Response(200, json=body)
        >>> partial = aborted_reply(failure)
        >>> partial.content, partial.usage_metadata["output_tokens"]
        ('{"a": ', 3)
        >>> aborted_reply(ValueError("other")) is None
        True
    """
    response = getattr(exc, "response", None)
    if not isinstance(response, httpx.Response):
        return None
    try:  # a reply that is not a chat completion says nothing of an abort
        body = response.json()
        choice = body["choices"][0]
        if choice["finish_reason"] != ABORTED:
            return None
        content = (choice.get("message") or {}).get("content") or ""
    except Exception:  # any shape at all (unread body, no choices): not an abort to read
        return None
    return AIMessage(
        content=str(content),
        response_metadata={"finish_reason": ABORTED, "model_name": body.get("model")},
        usage_metadata=_usage(body.get("usage")),
    )


def _usage(usage: Any) -> UsageMetadata | None:
    """The usage of an OpenAI-style reply (``None`` when it has none or it does not read)."""
    if not isinstance(usage, dict):
        return None
    try:
        given = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        total = int(usage.get("total_tokens") or sum(given))
    except (TypeError, ValueError):
        return None
    return UsageMetadata(input_tokens=given[0], output_tokens=given[1], total_tokens=total)
