"""Rendering any stage result (text, messages, dicts, pydantic models) as compact text."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

from langchain_core.messages import BaseMessage
from pydantic import BaseModel

__all__ = ["render_stage_result"]


def _scalar_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _key_value(key: str, value: Any) -> str:
    text = _scalar_text(value)
    if text and len(text) <= 80 and not any(ch.isspace() for ch in text):
        return f"{key}={text}"
    return f"{key}: {text}"


def _render_message(message: BaseMessage, call_ids: bool) -> str:
    header = [message.type]
    name = getattr(message, "name", None)
    if name:
        header.append(f"name={name}")
    tool_call_id = getattr(message, "tool_call_id", None)
    if tool_call_id and call_ids:
        header.append(f"tool_call_id={tool_call_id}")
    status = getattr(message, "status", None)
    if status and status != "success":
        header.append(f"status={status}")
    lines = [f"[{' '.join(header)}]"]
    body = str(message.text)
    if not body and message.content:
        body = "\n".join(_structured_lines(message.content, 0, call_ids))
    if body:
        lines.append(body)
    for call in getattr(message, "tool_calls", None) or []:
        args = ", ".join(_key_value(str(k), v) for k, v in (call.get("args") or {}).items())
        call_id = f" id={call['id']}" if call.get("id") and call_ids else ""
        lines.append(f"tool_call {call['name']}({args}){call_id}")
    return "\n".join(lines)


def _structured_lines(value: Any, indent: int, call_ids: bool) -> Iterator[str]:
    pad = "  " * indent
    if isinstance(value, BaseMessage):
        for line in _render_message(value, call_ids).splitlines():
            yield pad + line
    elif isinstance(value, BaseModel):
        yield from _structured_lines(value.model_dump(mode="json"), indent, call_ids)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        yield from _structured_lines(dataclasses.asdict(value), indent, call_ids)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if _is_scalar(item):
                yield pad + _key_value(str(key), item)
            elif isinstance(item, (Mapping, list, tuple, set, frozenset)) and not item:
                yield pad + f"{key}=" + ("{}" if isinstance(item, Mapping) else "[]")
            else:
                yield pad + f"{key}:"
                yield from _structured_lines(item, indent + 1, call_ids)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            if _is_scalar(item):
                yield pad + "- " + _scalar_text(item)
            else:
                yield pad + "-"
                yield from _structured_lines(item, indent + 1, call_ids)
    elif _is_scalar(value):
        yield pad + _scalar_text(value)
    elif isinstance(value, bytes):
        yield pad + value.decode("utf-8", errors="replace")
    else:
        try:
            encoded = json.dumps(value)
        except TypeError:
            msg = (
                f"Cannot render a stage result of type {type(value).__name__}: pass a str, a "
                "LangChain message (or a list of them), a pydantic model, a dataclass, or a "
                "JSON-able value (dict, list, str, int, float, bool, None)."
            )
            raise TypeError(msg) from None
        yield pad + encoded


def render_stage_result(raw: Any, *, call_ids: bool = True) -> str:
    """Render a stage result as compact text for counting, extraction and the prompt.

    Strings pass through. LangChain messages keep their role, tool name, tool calls and (with
    ``call_ids``) the IDs that pair a call with its result. Dicts, lists, pydantic models and
    dataclasses become indented lines with ``key=value`` for short scalars, so their
    parameters are recognised as entities.

    Args:
        raw: The stage result.
        call_ids: Keep tool-call IDs (a raw output kept as it was). The text a summary is
            written from leaves them out: they carry no fact, and as ID-like entities the
            summary would be held to keep them ahead of the numbers, paths and names the
            calls were about.

    Returns:
        The text.

    Raises:
        TypeError: If ``raw`` is not JSON-able.

    Example:
        >>> print(render_stage_result({"job_id": "job-7f3a", "config": {"max_tokens": 250}}))
        job_id=job-7f3a
        config:
          max_tokens=250
    """
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, BaseMessage):
        return _render_message(raw, call_ids)
    if isinstance(raw, (list, tuple)) and raw and all(isinstance(m, BaseMessage) for m in raw):
        return "\n".join(_render_message(m, call_ids) for m in raw)
    return "\n".join(_structured_lines(raw, 0, call_ids))
