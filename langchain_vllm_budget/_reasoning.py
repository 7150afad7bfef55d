"""Thinking text of reasoning models: read from vLLM's answers, sent back in later turns.

vLLM started with ``--reasoning-parser`` returns the model's thinking apart from its answer,
in the message's ``reasoning`` field (releases before 0.10: ``reasoning_content``), and in the
``delta`` of stream chunks. It is kept in ``AIMessage.additional_kwargs["reasoning_content"]``
(where langchain-core's ``content_blocks`` finds it and makes a standard ``reasoning`` block;
DeepSeek, Ollama, xAI and Groq keep it there too). In a later request, an assistant turn's
thinking goes back in vLLM's ``reasoning`` field, and the chat template decides whether it is
rendered (Qwen3's keeps only the thinking after the last user turn).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

__all__ = ["REASONING_KEY", "reasoning_in", "reasoning_of", "with_reasoning"]

REASONING_KEY = "reasoning_content"
"""The ``additional_kwargs`` key that holds an assistant message's thinking text."""

_SERVER_FIELDS = ("reasoning", "reasoning_content")


def reasoning_in(message: Mapping[str, Any] | None) -> str | None:
    """The thinking text of a vLLM response message or stream delta, if any.

    Example:
        >>> reasoning_in({"role": "assistant", "content": "4", "reasoning": "2 + 2 is 4"})
        '2 + 2 is 4'
        >>> reasoning_in({"content": "4", "reasoning_content": "old field"})
        'old field'
        >>> reasoning_in({"content": "4"}) is None
        True
    """
    if not message:
        return None
    for field in _SERVER_FIELDS:
        value = message.get(field)
        if isinstance(value, str):
            return value
    return None


def reasoning_of(message: BaseMessage) -> str | None:
    """The thinking text an assistant message carries, if any.

    Read from ``additional_kwargs["reasoning_content"]``, else from standard ``reasoning``
    content blocks (``output_version="v1"``).

    Example:
        >>> reasoning_of(AIMessage("4", additional_kwargs={"reasoning_content": "2 + 2"}))
        '2 + 2'
        >>> blocks = [{"type": "reasoning", "reasoning": "2 + 2"}, {"type": "text", "text": "4"}]
        >>> reasoning_of(AIMessage(blocks))
        '2 + 2'
    """
    if not isinstance(message, AIMessage):
        return None
    stored = message.additional_kwargs.get(REASONING_KEY)
    if isinstance(stored, str):
        return stored
    if isinstance(message.content, list):
        parts = [
            block["reasoning"]
            for block in message.content
            if isinstance(block, dict)
            and block.get("type") == "reasoning"
            and isinstance(block.get("reasoning"), str)
        ]
        if parts:
            return "".join(parts)
    return None


def with_reasoning(
    payload_messages: list[dict[str, Any]], messages: Sequence[BaseMessage]
) -> list[dict[str, Any]]:
    """Add each assistant turn's thinking to its request dict, in vLLM's ``reasoning`` field.

    Args:
        payload_messages: The request's ``messages``, one per message of ``messages``.
        messages: The LangChain messages they were converted from.

    Returns:
        The request messages, with ``reasoning`` on the assistant turns that have thinking.
    """
    if len(payload_messages) != len(messages):  # pragma: no cover - converters are 1:1
        return payload_messages
    result = []
    for payload, message in zip(payload_messages, messages, strict=True):
        thinking = reasoning_of(message)
        result.append({**payload, "reasoning": thinking} if thinking else payload)
    return result
