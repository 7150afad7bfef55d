"""Tool calls whose arguments are valid JSON but not an object, set aside as invalid.

langchain-openai turns each tool call's arguments into ``AIMessage.tool_calls[i]["args"]``,
which must be a dict: a small model that writes a list or a string there would make the whole
response fail validation. :func:`set_aside_non_object_tool_calls` takes those calls out of a
chat-completions response so that the rest of it converts as usual, and returns them as
LangChain invalid tool calls (name, the arguments as written, id, and why), the way
langchain-core already reports them for streamed tool calls.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from langchain_core.messages import InvalidToolCall
from langchain_core.messages.tool import invalid_tool_call

__all__ = ["non_object_arguments_error", "set_aside_non_object_tool_calls"]

_JSON_KINDS: dict[type, str] = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def non_object_arguments_error(name: str, arguments: str | None) -> str | None:
    """Why ``arguments`` cannot be a tool call's args, if they are valid JSON but not an object.

    Empty arguments (a tool without parameters) and invalid JSON return ``None``:
    langchain-openai already handles both.

    Example:
        >>> non_object_arguments_error("get_weather", '["Oslo"]')  # doctest: +ELLIPSIS
        'Function get_weather arguments must be a JSON object (...), got a JSON array: ["Oslo"]'
        >>> non_object_arguments_error("get_weather", '{"city": "Oslo"}') is None
        True
    """
    if not arguments:
        return None
    try:
        parsed = json.loads(arguments, strict=False)
    except json.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        return None
    kind = _JSON_KINDS.get(type(parsed), type(parsed).__name__)
    return (
        f"Function {name} arguments must be a JSON object (the tool's parameters by name), "
        f"got a JSON {kind}: {arguments}"
    )


def _choices(response: dict[str, Any] | openai.BaseModel) -> list[Any]:
    if isinstance(response, openai.BaseModel):
        return [
            # `parsed` may hold any pydantic model (structured output): not needed here.
            choice.model_dump(exclude={"message": {"parsed"}}, warnings=False)
            for choice in getattr(response, "choices", None) or []
        ]
    return list(response.get("choices") or [])


def _split_calls(raw_calls: list[dict[str, Any]]) -> tuple[list[int], list[InvalidToolCall]]:
    """The positions of the calls to keep, and the non-object ones as invalid tool calls."""
    kept: list[int] = []
    invalid: list[InvalidToolCall] = []
    for position, raw in enumerate(raw_calls):
        function = raw.get("function") or {}
        name = function.get("name") or ""
        arguments = function.get("arguments")
        error = non_object_arguments_error(name, arguments)
        if error is None:
            kept.append(position)
        else:
            invalid.append(
                invalid_tool_call(name=name, args=arguments, id=raw.get("id"), error=error)
            )
    return kept, invalid


def set_aside_non_object_tool_calls(
    response: dict[str, Any] | openai.BaseModel,
) -> tuple[dict[str, Any] | openai.BaseModel, dict[int, list[InvalidToolCall]]]:
    """Remove the tool calls whose arguments are not a JSON object from ``response``.

    Args:
        response: A chat-completions response, as the OpenAI client or a dict gives it.

    Returns:
        The response without those calls (a copy; ``response`` itself when there are none),
        and the calls set aside as invalid tool calls, by choice index.
    """
    if not isinstance(response, dict | openai.BaseModel):
        return response, {}
    choices_data = _choices(response)
    set_aside: dict[int, list[InvalidToolCall]] = {}
    kept_by_choice: dict[int, list[int]] = {}
    for index, choice in enumerate(choices_data):
        raw_calls = ((choice or {}).get("message") or {}).get("tool_calls") or []
        kept, invalid = _split_calls(raw_calls)
        if invalid:
            set_aside[index] = invalid
            kept_by_choice[index] = kept
    if not set_aside:
        return response, {}
    if isinstance(response, openai.BaseModel):
        cleaned_model = response.model_copy(deep=True)
        choices = cleaned_model.choices  # type: ignore[attr-defined]
        for index, kept in kept_by_choice.items():
            message = choices[index].message
            message.tool_calls = [message.tool_calls[i] for i in kept] or None
        return cleaned_model, set_aside
    cleaned = {**response, "choices": choices_data}
    for index, kept in kept_by_choice.items():
        choice = dict(choices_data[index])
        message = dict(choice["message"])
        message["tool_calls"] = [message["tool_calls"][i] for i in kept] or None
        choice["message"] = message
        cleaned["choices"][index] = choice
    return cleaned, set_aside
