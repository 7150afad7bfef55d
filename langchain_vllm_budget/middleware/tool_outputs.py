"""Tool-output compression for agents: summaries in the messages, raw outputs in the store.

A tool that returns 5,000 tokens puts 5,000 tokens into every later model call of the agent.
:class:`ToolOutputCompressionMiddleware` (a ``create_agent`` middleware) replaces a tool
result larger than ``threshold_tokens`` by a loss-checked, hard-capped summary written by
:func:`~langchain_vllm_budget.compression.compress_stage_result` (IDs, paths, parameters and
numbers kept; at most ``summary_max_tokens`` tokens), and nothing is lost. The summary is
query-aware: the tool's name and arguments and the user's latest request rank what it keeps
first (:func:`~langchain_vllm_budget.compression.query_summary`), and with the default
``strategy="auto"`` the summarizer model is called only when that extractive summary lost an
entity the request points at:

* the raw result is put into the LangGraph store (``runtime.store``) first, under the
  namespace ``(*namespace, thread_id)`` (default ``("tool_outputs", <thread_id>)``, the id as
  :func:`~langchain_vllm_budget.persistence.store_label` writes it; threadless runs use
  ``"-"``) and the tool-call id as key, with the value ``{"tool_call_id", "tool", "args",
  "content", "raw_tokens", "summary_tokens"}``;
* the summary ends with a note that names the call and the ``read_tool_output`` tool, which
  the middleware adds to the agent: it reads the raw result back, a slice at a time
  (``offset``/``limit`` in characters, each slice at most ``threshold_tokens`` tokens), or
  finds the lines that match a ``pattern`` (case-insensitive), each with its offset, for a
  detail the summary left out;
* :func:`load_tool_output` reads it back from outside the agent;
* the savings are recorded on the message: ``response_metadata["tool_output_compression"]``
  (raw and summary tokens, tokens saved, entity retention, the method, where it is stored).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import regex
from langchain.agents.middleware.types import AgentMiddleware, AgentState, ContextT, ResponseT
from langchain.tools import ToolRuntime
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.store.base import BaseStore
from langgraph.types import Command

from langchain_vllm_budget.capabilities import token_counter_of
from langchain_vllm_budget.compaction import is_summary_message
from langchain_vllm_budget.compression import (
    CompressionResult,
    CompressionStrategy,
    Query,
    SummarySpec,
    asummarize,
    better_for_query,
    needs_model,
    query_summary,
    summarize,
    truncate_to_tokens,
)
from langchain_vllm_budget.persistence import store_label
from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "DEFAULT_NAMESPACE",
    "METADATA_KEY",
    "READ_TOOL_NAME",
    "FoundLines",
    "ToolOutputCompressionMiddleware",
    "find_lines",
    "load_tool_output",
]

DEFAULT_NAMESPACE: tuple[str, ...] = ("tool_outputs",)
"""The store namespace prefix of raw tool outputs (the thread id follows it)."""

READ_TOOL_NAME = "read_tool_output"
"""The name of the tool that reads a raw output back."""

METADATA_KEY = "tool_output_compression"
"""Where a compressed ToolMessage records its savings, in ``response_metadata``."""

_NO_THREAD = "-"
_REQUEST_TOKENS = 200

_READ_DESCRIPTION = (
    "Read the full, uncompressed output of an earlier tool call whose result you saw as a "
    "summary. Pass its tool_call_id; read long outputs in slices with offset (a character "
    "position, 0 for the start) and limit (characters). The reply says where to continue. "
    "To find a detail the summary left out, pass pattern (a word or a regular expression, "
    "case-insensitive): the reply lists the matching lines, each with its offset."
)
_MATCH_CHARS = 400  # a matching line is shown up to this many characters
_SEARCH_SECONDS = 2.0  # what one pattern search may take over a whole stored output


def _namespace(prefix: tuple[str, ...], config: RunnableConfig | None) -> tuple[str, ...]:
    thread = ((config or {}).get("configurable") or {}).get("thread_id")
    return _thread_namespace(prefix, None if thread is None else str(thread))


def _thread_namespace(prefix: tuple[str, ...], thread_id: str | None) -> tuple[str, ...]:
    """The namespace of one thread's outputs (threadless ones share one)."""
    return (*prefix, store_label(thread_id) if thread_id else _NO_THREAD)


def _result_message(
    request: ToolCallRequest, result: ToolMessage | Command[Any]
) -> ToolMessage | None:
    """The tool call's result message, if it is one to read.

    ``result`` itself, or the ``ToolMessage`` of this call in a ``Command``'s
    ``update["messages"]`` (how a subagent's or a handoff tool's result comes back).
    """
    if isinstance(result, ToolMessage):
        return result
    call_id = request.tool_call.get("id")
    return next(
        (
            m
            for m in _update_messages(result)
            if isinstance(m, ToolMessage) and m.tool_call_id == call_id
        ),
        None,
    )


def _update_messages(result: Command[Any]) -> list[Any]:
    """The messages of a ``Command``'s dict ``update`` (a list: what LangGraph's ToolNode takes)."""
    update = result.update
    messages = update.get("messages") if isinstance(update, Mapping) else None
    return messages if isinstance(messages, list) else []


def _with_message(
    result: ToolMessage | Command[Any], original: ToolMessage, message: ToolMessage
) -> ToolMessage | Command[Any]:
    """``result`` with its result message ``original`` replaced by ``message``."""
    if not isinstance(result, Command):
        return message
    update = dict(cast("Mapping[str, Any]", result.update))
    update["messages"] = [message if m is original else m for m in _update_messages(result)]
    return dataclasses.replace(result, update=update)


def load_tool_output(
    store: BaseStore,
    tool_call_id: str,
    *,
    thread_id: str | None = None,
    namespace: tuple[str, ...] = DEFAULT_NAMESPACE,
) -> dict[str, Any] | None:
    """The stored raw output of a compressed tool call (from outside the agent).

    Args:
        store: The agent's LangGraph store.
        tool_call_id: The tool call's id (``ToolMessage.tool_call_id``).
        thread_id: The thread it ran in; ``None`` searches every thread.
        namespace: The middleware's namespace prefix.

    Returns:
        The stored value (``content`` is the raw output), or ``None``.

    Example:
        >>> from langgraph.store.memory import InMemoryStore
        >>> store = InMemoryStore()
        >>> store.put(("tool_outputs", "t1"), "call_1", {"tool_call_id": "call_1", "content": "x"})
        >>> load_tool_output(store, "call_1")["content"]
        'x'
        >>> load_tool_output(store, "call_1", thread_id="t2") is None
        True
    """
    if thread_id is not None:
        item = store.get(_thread_namespace(namespace, thread_id), tool_call_id)
        return dict(item.value) if item is not None else None
    found = store.search(namespace, filter={"tool_call_id": tool_call_id}, limit=1)
    return dict(found[0].value) if found else None


@dataclass(frozen=True)
class _Job:
    """A tool result to compress: its text, size, and where the raw text goes."""

    message: ToolMessage
    text: str
    tokens: int
    store: BaseStore
    namespace: tuple[str, ...]
    request: str
    value: dict[str, Any]


class ToolOutputCompressionMiddleware(AgentMiddleware[AgentState[ResponseT], ContextT, ResponseT]):
    """Replaces large tool results by loss-checked summaries; raw results go to the store.

    Args:
        model: The agent's chat model: its counter measures tool outputs (exact for a
            ChatVLLM) and, unless ``summarizer`` says otherwise, it writes the summaries.
        threshold_tokens: Results larger than this are compressed (and a read-back slice is
            at most this large).
        summary_max_tokens: The hard cap on a summary (default
            ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``); must be below ``threshold_tokens``.
        summarizer: A chat model, ``"extractive"`` (model-free), or ``None`` for ``model``.
        namespace: The store namespace prefix (the thread id is appended).
        strategy: When the compressor calls the summarizer (default
            ``VLLM_BUDGET_COMPRESSION``, ``"auto"``: only when the extractive summary would
            lose entities; ``"llm"``: for every large result; ``"extractive"``: never).

    Raises:
        ValueError: ``threshold_tokens`` not above ``summary_max_tokens``, or an unknown
            ``strategy``.

    Example:
        ```python
        from langchain.agents import create_agent
        from langgraph.store.memory import InMemoryStore

        from langchain_vllm_budget.middleware import ToolOutputCompressionMiddleware

        agent = create_agent(
            model,
            tools=[search_logs],
            middleware=[ToolOutputCompressionMiddleware(model, threshold_tokens=1000)],
            store=InMemoryStore(),
        )
        ```
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        threshold_tokens: int = 1000,
        summary_max_tokens: int | None = None,
        summarizer: BaseChatModel | Literal["extractive"] | None = None,
        namespace: tuple[str, ...] = DEFAULT_NAMESPACE,
        strategy: CompressionStrategy | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.summarizer = None if summarizer == "extractive" else (summarizer or model)
        self.summary = SummarySpec.from_settings(
            max_tokens=summary_max_tokens, strategy=strategy, model=self.summarizer
        )
        if threshold_tokens <= self.summary.max_tokens:
            msg = (
                f"threshold_tokens ({threshold_tokens}) must be above summary_max_tokens "
                f"({self.summary.max_tokens}): a result is compressed only when its summary "
                "is smaller."
            )
            raise ValueError(msg)
        self.threshold_tokens = threshold_tokens
        self.namespace = tuple(namespace)
        self._text_counter: TokenCounter | None = None
        self.tools = [self._read_tool()]

    @property
    def summary_max_tokens(self) -> int:
        """The hard cap on a summary (the spec's)."""
        return self.summary.max_tokens

    @property
    def strategy(self) -> CompressionStrategy:
        """When the summarizer is called (the spec's)."""
        return self.summary.strategy

    # ------------------------------------------------------------------------ shared steps

    @property
    def counter(self) -> TokenCounter:
        """Counts tool outputs: the model's own counter (ChatVLLM), else the approximate one."""
        if self._text_counter is None:
            self._text_counter = token_counter_of(self.model)
        return self._text_counter

    def _job(self, request: ToolCallRequest, result: ToolMessage | Command[Any]) -> _Job | None:
        """The compression to do, or ``None`` (small, not text, or the read-back tool)."""
        message = _result_message(request, result)
        if message is None or request.tool_call["name"] == READ_TOOL_NAME:
            return None
        if not isinstance(message.content, str) and any(
            not (isinstance(b, str) or (isinstance(b, Mapping) and b.get("type") == "text"))
            for b in message.content
        ):
            return None  # images and other blocks are left as they are
        text = message.text
        tokens = self.counter.count_text(text)
        if tokens <= self.threshold_tokens:
            return None
        store = request.runtime.store if request.runtime is not None else None
        if store is None:
            msg = (
                "ToolOutputCompressionMiddleware keeps raw tool outputs in the LangGraph "
                "store, and this agent has none: pass create_agent(..., store=InMemoryStore()) "
                "(or another BaseStore)."
            )
            raise ValueError(msg)
        config = request.runtime.config if request.runtime is not None else None
        tool_call_id = message.tool_call_id
        value = {
            "tool_call_id": tool_call_id,
            "tool": request.tool_call["name"],
            "args": request.tool_call.get("args", {}),
            "content": text,
            "raw_tokens": tokens,
        }
        return _Job(
            message,
            text,
            tokens,
            store,
            _namespace(self.namespace, config),
            _last_request(request.state),
            value,
        )

    def _first(self, job: _Job) -> CompressionResult:
        """The extractive summary ranked by the tool call and the user's request."""
        query = Query.of(job.request, tool=job.value["tool"], args=job.value["args"])
        return query_summary(
            job.text, query=query, max_tokens=self.summary_max_tokens, tokenizer=self.counter
        )

    def _needs_model(self, first: CompressionResult) -> bool:
        return needs_model(first, self.strategy, has_model=self.summarizer is not None)

    def _summarize(self, job: _Job) -> tuple[str, SummarySpec, str]:
        """What :func:`summarize` takes for ``job``: the output, the spec, the user's request."""
        request = truncate_to_tokens(job.request, _REQUEST_TOKENS, self.counter)
        return job.text, self.summary.with_(counter=self.counter), request

    def _replace(self, job: _Job, compressed: CompressionResult) -> ToolMessage:
        """The ToolMessage with the summary, a note on where the raw output is, and savings."""
        message = job.message
        note = (
            f"[{job.value['tool']} output compressed from {job.tokens} to "
            f"{compressed.summary_tokens} tokens. Full output: "
            f'{READ_TOOL_NAME}(tool_call_id="{message.tool_call_id}"), with pattern= to '
            "find a detail.]"
        )
        savings = {
            "raw_tokens": job.tokens,
            "summary_tokens": compressed.summary_tokens,
            "saved_tokens": job.tokens - compressed.summary_tokens,
            "retention": compressed.retention,
            "missing": list(compressed.missing),
            "query_missing": list(compressed.query_missing),
            "method": compressed.method,
            "store_namespace": list(job.namespace),
            "store_key": message.tool_call_id,
        }
        return message.model_copy(
            update={
                "content": f"{compressed.summary}\n\n{note}",
                "response_metadata": {**message.response_metadata, METADATA_KEY: savings},
            }
        )

    # ------------------------------------------------------------------------ hooks

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Run the tool; store a large result raw and return its summary."""
        result = handler(request)
        job = self._job(request, result)
        if job is None:
            return result
        job.store.put(job.namespace, job.message.tool_call_id, job.value)
        compressed = self._first(job)
        if self._needs_model(compressed):
            text, spec, user_request = self._summarize(job)
            other = summarize(
                text, spec, subject=f"{job.value['tool']} tool", user_request=user_request
            )
            compressed = better_for_query(compressed, other)
        return _with_message(result, job.message, self._replace(job, compressed))

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call` (counting in worker threads, the summarizer awaited)."""
        result = await handler(request)
        job = await asyncio.to_thread(self._job, request, result)
        if job is None:
            return result
        await job.store.aput(job.namespace, job.message.tool_call_id, job.value)
        compressed = await asyncio.to_thread(self._first, job)
        if self._needs_model(compressed):
            text, spec, user_request = await asyncio.to_thread(self._summarize, job)
            other = await asummarize(
                text, spec, subject=f"{job.value['tool']} tool", user_request=user_request
            )
            compressed = await asyncio.to_thread(better_for_query, compressed, other)
        return _with_message(result, job.message, self._replace(job, compressed))

    # ------------------------------------------------------------------------ read-back tool

    def _slice(
        self, value: dict[str, Any] | None, tool_call_id: str, offset: int, limit: int
    ) -> str:
        if value is None:
            return (
                f"No stored output for tool_call_id={tool_call_id!r} in this thread: only "
                "outputs shown as compressed summaries are stored."
            )
        raw = str(value.get("content", ""))
        start = min(max(offset, 0), len(raw))
        piece = truncate_to_tokens(
            raw[start : start + max(limit, 1)], self.threshold_tokens, self.counter
        )
        end = start + len(piece)
        more = f"call again with offset={end} for more" if end < len(raw) else "end of output"
        header = (
            f"[{value.get('tool', 'tool')} output of {tool_call_id}: characters {start}-{end} "
            f"of {len(raw)}; {more}]"
        )
        return f"{header}\n{piece}"

    def _search(
        self, value: dict[str, Any] | None, tool_call_id: str, pattern: str, offset: int
    ) -> str:
        """The lines of a stored output that match ``pattern``, from ``offset`` on."""
        if value is None:
            return self._slice(value, tool_call_id, offset, 0)
        try:
            compiled = regex.compile(pattern, regex.IGNORECASE)
        except regex.error as exc:
            return (
                f"pattern={pattern!r} is not a valid regular expression ({exc}); pass a plain "
                "word, or escape the special characters."
            )
        found = find_lines(str(value.get("content", "")), compiled, offset)
        tool = value.get("tool", "tool")
        shown: list[str] = []
        used = 0
        next_offset = None
        for line_start, start, text in found.lines:
            entry = f"{start}: {text}"
            size = self.counter.count_text(entry) + 1
            if used + size > self.threshold_tokens:
                if not shown:  # one entry at least, cut to fit: the reply always moves on
                    shown.append(truncate_to_tokens(entry, self.threshold_tokens, self.counter))
                    used = self.threshold_tokens
                    continue
                next_offset = line_start
                break
            shown.append(entry)
            used += size
        if next_offset is None and found.stopped_at is not None:
            next_offset = found.stopped_at
        stopped = (
            f"; the search ran out of its {_SEARCH_SECONDS:g} s before offset="
            f"{found.stopped_at} (call again with that offset to go on; a plainer pattern "
            "searches faster)"
            if found.stopped_at is not None
            else ""
        )
        if not found.lines:
            return (
                f"[{tool} output of {tool_call_id}: no line matches pattern={pattern!r}{stopped}]"
            )
        more = (
            f"the first {len(shown)}; call again with offset={next_offset} for the rest"
            if next_offset is not None
            else "all of them"
        )
        header = (
            f"[{tool} output of {tool_call_id}: {len(found.lines)} lines match "
            f"pattern={pattern!r}, shown {more}; each starts with its offset: read around one "
            f"with offset{stopped}]"
        )
        return "\n".join([header, *shown])

    def _read(
        self,
        value: dict[str, Any] | None,
        tool_call_id: str,
        offset: int,
        limit: int,
        pattern: str | None,
    ) -> str:
        if pattern:
            return self._search(value, tool_call_id, pattern, offset)
        return self._slice(value, tool_call_id, offset, limit)

    def _read_tool(self) -> BaseTool:
        def read_tool_output(
            tool_call_id: str,
            runtime: ToolRuntime,
            offset: int = 0,
            limit: int = 8000,
            pattern: str | None = None,
        ) -> str:
            store = runtime.store
            item = (
                store.get(_namespace(self.namespace, runtime.config), tool_call_id)
                if store is not None
                else None
            )
            value = dict(item.value) if item else None
            return self._read(value, tool_call_id, offset, limit, pattern)

        async def aread_tool_output(
            tool_call_id: str,
            runtime: ToolRuntime,
            offset: int = 0,
            limit: int = 8000,
            pattern: str | None = None,
        ) -> str:
            store = runtime.store
            item = (
                await store.aget(_namespace(self.namespace, runtime.config), tool_call_id)
                if store is not None
                else None
            )
            value = dict(item.value) if item else None
            return await asyncio.to_thread(self._read, value, tool_call_id, offset, limit, pattern)

        return StructuredTool.from_function(
            func=read_tool_output,
            coroutine=aread_tool_output,
            name=READ_TOOL_NAME,
            description=_READ_DESCRIPTION,
        )


@dataclass(frozen=True)
class FoundLines:
    """The lines of a text that match a pattern (see :func:`find_lines`).

    Attributes:
        lines: ``(line_offset, offset, text)`` per matching line: where the line starts (to
            page from), the text shown (the line, or for a long one the
            :data:`_MATCH_CHARS` characters around the match) and where that text starts.
        stopped_at: Where to go on when the search ran out of time (after the line it was
            in: a line one search cannot finish is skipped), else None.
    """

    lines: list[tuple[int, int, str]]
    stopped_at: int | None = None


def find_lines(text: str, pattern: regex.Pattern[str], offset: int = 0) -> FoundLines:
    r"""The lines of ``text`` from ``offset`` on that ``pattern`` matches, within a time limit.

    The pattern comes from a model, so it may backtrack for ever (``(a+)+$``): the ``regex``
    module (the standard ``re`` has no timeout) stops it, :data:`_SEARCH_SECONDS` in all.

    Example:
        >>> found = find_lines("a: 1\nb: 2\n  ab: 3\n", regex.compile("b"))
        >>> found.lines, found.stopped_at
        ([(5, 5, 'b: 2'), (10, 12, 'ab: 3')], None)
    """
    deadline = time.monotonic() + _SEARCH_SECONDS
    found: list[tuple[int, int, str]] = []
    end = 0
    for line in text.splitlines(keepends=True):
        position, end = end, end + len(line)
        if position < max(offset, 0):
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return FoundLines(found, stopped_at=position)
        try:
            match = pattern.search(line, timeout=left)
        except TimeoutError:
            return FoundLines(found, stopped_at=end)
        if match is None:
            continue
        body = line.rstrip("\r\n")
        start = 0
        if len(body) > _MATCH_CHARS:  # a long line (minified JSON): the text around the match
            start = max(0, min(match.start() - _MATCH_CHARS // 2, len(body) - _MATCH_CHARS))
            body = body[start : start + _MATCH_CHARS]
        start += len(body) - len(body.lstrip())
        found.append((position, position + start, body.strip()))
    return FoundLines(found)


def _last_request(state: Any) -> str:
    """The newest human message of the agent's state, as context for the summarizer.

    A compaction's summary message (this package's or LangChain's) is not a request.
    """
    messages = state.get("messages", []) if isinstance(state, Mapping) else []
    for message in reversed(messages):
        if isinstance(message, HumanMessage) and not is_summary_message(message):
            return message.text
    return ""
