"""Context compaction that lives in the agent's state (a ``create_agent`` middleware).

:class:`ContextCompactionMiddleware` runs before each model call. When the call would not
fit the model's input limit, it compacts the agent's messages with the package's
:class:`~langchain_vllm_budget.compaction.Compactor` (once, down to a target below the
limit) and writes the result into the graph state, like LangChain's
``SummarizationMiddleware`` (``RemoveMessage(REMOVE_ALL_MESSAGES)`` and the compacted
messages). The compaction is checkpointed with the thread, so it happens once; the following
calls only append, and vLLM's prefix cache keeps hitting.

The count is exact: the model's own ``get_num_tokens_from_messages`` (ChatVLLM's counter)
with the system prompt and the tools of the request. The limit comes from the model: an
explicit ``max_input_tokens``, the model's ``profile["max_input_tokens"]``, and, for a
ChatVLLM, its window less the safety margin and the minimum output room (the smallest of
those that are known).

The system prompt and tools are only visible to ``wrap_model_call``: the middleware records
them there (and, on the first call or when they change, compacts that request itself, so
nothing is ever sent over the limit); ``before_model`` counts with what it recorded.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ContextT,
    ModelRequest,
    ModelResponse,
    ResponseT,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, BaseMessage, RemoveMessage, SystemMessage
from langchain_core.tools import BaseTool
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.runtime import Runtime

from langchain_vllm_budget.capabilities import budgeted, token_counter_of
from langchain_vllm_budget.compaction import (
    CompactionMemory,
    CompactionPolicy,
    CompactionResult,
    Compactor,
    MessageCounter,
)
from langchain_vllm_budget.compression import CompressionStrategy
from langchain_vllm_budget.tokenizers import tools_to_openai_dicts

__all__ = ["ContextCompactionMiddleware"]

_Tool = BaseTool | dict[str, Any]


def _tool_name(tool: _Tool) -> str:
    if isinstance(tool, BaseTool):
        return tool.name
    function = tool.get("function")
    if isinstance(function, Mapping):
        return str(function.get("name", ""))
    return str(tool.get("name", ""))


@dataclass(frozen=True)
class _Shape:
    """What a request adds to the messages: the system message and the tools."""

    system: SystemMessage | None
    tools: tuple[_Tool, ...]

    @property
    def key(self) -> tuple[str | None, tuple[str, ...]]:
        return (
            self.system.text if self.system is not None else None,
            tuple(_tool_name(t) for t in self.tools),
        )


@dataclass(frozen=True)
class _Plan:
    """An input that does not fit: what to compact, how to count it, and the limit."""

    messages: list[BaseMessage]
    system_len: int
    count: MessageCounter
    limit: int


class ContextCompactionMiddleware(AgentMiddleware[AgentState[ResponseT], ContextT, ResponseT]):
    """Compacts the agent's messages in state when the next model call would not fit.

    Args:
        model: The agent's chat model (a ChatVLLM counts exactly and knows its window).
        policy: ``"summarize"`` (default) replaces the oldest turns by one loss-checked
            summary; ``"trim"`` drops them.
        target: After a compaction the input fills at most this share of the input limit
            (default ``VLLM_BUDGET_COMPACTION_TARGET``, 0.6).
        max_input_tokens: The input limit; default: from the model (its profile, and for a
            ChatVLLM its window less safety margin and minimum output room).
        summarizer: Writes the summaries: a chat model, ``"extractive"`` (model-free), or
            ``None`` for ``model`` itself.
        summary_max_tokens: The hard cap on a summary (default
            ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``).
        memory: Where compactions are remembered (bridges a compaction made inside a
            model call to the state); default: a new one.
        strategy: When the compressor calls the summarizer (default
            ``VLLM_BUDGET_COMPRESSION``, ``"auto"``: only when the extractive summary would
            lose entities; ``"llm"``: on every compaction; ``"extractive"``: never).

    Raises:
        ValueError: Bad ``policy``/``target``/``strategy``, or no way to know the input
            limit.

    Example:
        ```python
        from langchain.agents import create_agent
        from langgraph.checkpoint.memory import InMemorySaver

        from langchain_vllm_budget import ChatVLLM
        from langchain_vllm_budget.middleware import ContextCompactionMiddleware

        model = ChatVLLM(model="Qwen/Qwen2.5-7B-Instruct")
        agent = create_agent(
            model,
            tools=[...],
            middleware=[ContextCompactionMiddleware(model, policy="summarize")],
            checkpointer=InMemorySaver(),
        )
        ```
    """

    def __init__(
        self,
        model: BaseChatModel,
        *,
        policy: CompactionPolicy = "summarize",
        target: float | None = None,
        max_input_tokens: int | None = None,
        summarizer: BaseChatModel | Literal["extractive"] | None = None,
        summary_max_tokens: int | None = None,
        memory: CompactionMemory | None = None,
        strategy: CompressionStrategy | None = None,
    ) -> None:
        super().__init__()
        if policy not in ("trim", "summarize"):
            msg = f"policy must be 'trim' or 'summarize', got {policy!r}"
            raise ValueError(msg)
        if max_input_tokens is not None and max_input_tokens < 1:
            msg = f"max_input_tokens must be positive, got {max_input_tokens}"
            raise ValueError(msg)
        if max_input_tokens is None and not (
            _profile_limit(model) is not None or budgeted(model) is not None
        ):
            msg = (
                f"{type(model).__name__} has no profile with max_input_tokens and no known "
                "window: pass ContextCompactionMiddleware(..., max_input_tokens=...)."
            )
            raise ValueError(msg)
        self.model = model
        self.policy: CompactionPolicy = policy
        self.max_input_tokens = max_input_tokens
        writer = None if summarizer == "extractive" else (summarizer or model)
        self.summarizer = writer if isinstance(writer, BaseChatModel) else None
        self.memory = memory if memory is not None else CompactionMemory()
        # Validated now; built on first use (the model's counter may ask the server).
        given = {
            "target": target,
            "summary_max_tokens": summary_max_tokens,
            "strategy": strategy,
        }
        # Unset ones: the Compactor's defaults (the VLLM_BUDGET_* settings).
        self._settings: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        Compactor(**self._settings)
        self._compactor: Compactor | None = None
        self._shape: _Shape | None = None

    # ------------------------------------------------------------------------ shared steps

    @property
    def compactor(self) -> Compactor:
        """The compaction engine (the model's text counter for the summary cap)."""
        if self._compactor is None:
            self._compactor = Compactor(
                **self._settings,
                memory=self.memory,
                summarizer=self.summarizer,
                text_counter=token_counter_of(self.model),
            )
        return self._compactor

    def _limit(self) -> int:
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        limits = [
            limit for limit in (_profile_limit(self.model), _window_limit(self.model)) if limit
        ]
        return min(limits)

    def _counter(self, shape: _Shape | None) -> MessageCounter:
        # Converted once per shape, not on every count of a compaction's search.
        tools = tools_to_openai_dicts(shape.tools) if shape is not None else None
        model = self.model

        def count(messages: Sequence[BaseMessage]) -> int:
            return model.get_num_tokens_from_messages(list(messages), tools=tools)

        return count

    def _plan(self, messages: Sequence[AnyMessage], shape: _Shape | None) -> _Plan | None:
        """The input (system message first) when it does not fit; ``None`` when it does."""
        system: list[BaseMessage] = [shape.system] if shape and shape.system else []
        full = [*system, *messages]
        count = self._counter(shape)
        limit = self._limit()
        if count(full) <= limit:
            return None
        return _Plan(full, len(system), count, limit)

    @staticmethod
    def _compacted(plan: _Plan, result: CompactionResult) -> list[BaseMessage] | None:
        """The compacted conversation (system message left out), or ``None`` (nothing fits)."""
        if not result.fits:
            return None
        messages = result.messages[plan.system_len :]
        for message in messages:
            if message.id is None:
                message.id = str(uuid.uuid4())
        return messages

    def _state_update(self, plan: _Plan, result: CompactionResult) -> dict[str, Any] | None:
        messages = self._compacted(plan, result)
        if messages is None:
            # Even the newest step does not fit: leave the state alone; the model raises
            # its typed overflow error (ChatVLLM) instead of sending it.
            return None
        return {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *messages]}

    def _request_check(self, request: ModelRequest[ContextT]) -> _Shape | None:
        """Record the request's shape; return it when it is new (then the request is checked)."""
        shape = _Shape(request.system_message, tuple(request.tools))
        known = self._shape
        self._shape = shape
        if known is not None and known.key == shape.key:
            return None
        return shape

    # ------------------------------------------------------------------------ hooks

    def before_model(
        self, state: AgentState[ResponseT], runtime: Runtime[ContextT]
    ) -> dict[str, Any] | None:
        """Compact the messages in state when the next call would not fit."""
        plan = self._plan(state["messages"], self._shape)
        if plan is None:
            return None
        result = self.compactor.compact(
            plan.messages, policy=self.policy, count=plan.count, limit=plan.limit
        )
        return self._state_update(plan, result)

    async def abefore_model(
        self, state: AgentState[ResponseT], runtime: Runtime[ContextT]
    ) -> dict[str, Any] | None:
        """Async :meth:`before_model` (counting runs in a worker thread)."""
        plan = await asyncio.to_thread(self._plan, state["messages"], self._shape)
        if plan is None:
            return None
        result = await self.compactor.acompact(
            plan.messages, policy=self.policy, count=plan.count, limit=plan.limit, offload=True
        )
        return self._state_update(plan, result)

    def wrap_model_call(
        self,
        request: ModelRequest[ContextT],
        handler: Callable[[ModelRequest[ContextT]], ModelResponse[ResponseT]],
    ) -> ModelResponse[ResponseT]:
        """Learn the system prompt and tools; compact a request they push over the limit."""
        shape = self._request_check(request)
        plan = self._plan(request.messages, shape) if shape is not None else None
        if plan is not None:
            result = self.compactor.compact(
                plan.messages, policy=self.policy, count=plan.count, limit=plan.limit
            )
            if (messages := self._compacted(plan, result)) is not None:
                request = request.override(messages=cast("list[AnyMessage]", messages))
        return handler(request)

    async def awrap_model_call(
        self,
        request: ModelRequest[ContextT],
        handler: Callable[[ModelRequest[ContextT]], Awaitable[ModelResponse[ResponseT]]],
    ) -> ModelResponse[ResponseT]:
        """Async :meth:`wrap_model_call`."""
        shape = self._request_check(request)
        plan = (
            await asyncio.to_thread(self._plan, request.messages, shape)
            if shape is not None
            else None
        )
        if plan is not None:
            result = await self.compactor.acompact(
                plan.messages, policy=self.policy, count=plan.count, limit=plan.limit, offload=True
            )
            if (messages := self._compacted(plan, result)) is not None:
                request = request.override(messages=cast("list[AnyMessage]", messages))
        return await handler(request)


def _profile_limit(model: BaseChatModel) -> int | None:
    profile = model.profile
    if isinstance(profile, Mapping):
        limit = profile.get("max_input_tokens")
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


def _window_limit(model: BaseChatModel) -> int | None:
    """A budgeted model's input limit: window less safety margin and minimum output room."""
    found = budgeted(model)
    return found.get_budget().input_limit() if found is not None else None
