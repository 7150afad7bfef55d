"""Context compaction that lives in the agent's state (a ``create_agent`` middleware).

:class:`ContextCompactionMiddleware` wraps each model call. When the call would not fit the
model's input limit, it compacts the call's messages with the package's
:class:`~langchain_vllm_budget.compaction.Compactor` (once, down to a target below the
limit), sends the compacted request, and writes the compaction into the graph state with the
model's reply, like LangChain's ``SummarizationMiddleware`` (``RemoveMessage(
REMOVE_ALL_MESSAGES)`` and the compacted messages). The compaction is checkpointed with the
thread, so it happens once; the following calls only append, and vLLM's prefix cache keeps
hitting.

Every fact comes from the request, as in LangChain's own middleware: the model
(``request.model``), its system prompt (``request.system_message``) and its tools
(``request.tools``). The count is exact: the model's own ``get_num_tokens_from_messages``
(ChatVLLM's counter) with the system prompt and the tools. The limit comes from the model:
an explicit ``max_input_tokens``, the model's ``profile["max_input_tokens"]``, and, for a
:class:`~langchain_vllm_budget.capabilities.BudgetedModel` such as ChatVLLM, its input limit
(window less safety margin and minimum output room; the smallest of those that are known).

The middleware keeps nothing per run: threads that share a compiled agent (with different
system prompts or tools from other middleware) are each checked on their own shape. The
compaction memory it holds is a cache keyed by the messages themselves.
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
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
    ResponseT,
)
from langchain.agents.structured_output import (
    AutoStrategy,
    OutputToolBinding,
    ProviderStrategy,
    ToolStrategy,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AnyMessage, BaseMessage, RemoveMessage
from langchain_core.tools import BaseTool
from langgraph.graph.message import REMOVE_ALL_MESSAGES
from langgraph.types import Command

from langchain_vllm_budget import settings
from langchain_vllm_budget.capabilities import budgeted, token_counter_of
from langchain_vllm_budget.compaction import (
    CompactionMemory,
    CompactionPolicy,
    CompactionResult,
    Compactor,
    MessageCounter,
)
from langchain_vllm_budget.compression import CompressionStrategy, SummarySpec
from langchain_vllm_budget.compression.prefix import PrefixCall
from langchain_vllm_budget.tokenizers import tools_to_openai_dicts

__all__ = ["ContextCompactionMiddleware"]


@dataclass(frozen=True)
class _Plan:
    """A call that does not fit: what to compact, how to count it, the limit, what else.

    ``sent`` is what the call sends besides its messages: its tools and prompt fields.
    """

    messages: list[BaseMessage]
    system_len: int
    count: MessageCounter
    limit: int
    sent: PrefixCall
    output_limit: int | None = None


class ContextCompactionMiddleware(AgentMiddleware[AgentState[ResponseT], ContextT, ResponseT]):
    """Compacts the agent's messages in state when the next model call would not fit.

    It writes what it compacts into the state, so list it before any middleware that edits
    the messages of one call only (LangChain's ``ContextEditingMiddleware``): edits made
    before it would be kept in the state for good.

    Args:
        model: The agent's chat model (a ChatVLLM counts exactly and knows its window).
        policy: ``"summarize"`` (default) replaces the oldest turns by one loss-checked
            summary, after the summaries of earlier compactions (they stay until they would
            take half the target, then are summarized into one); ``"trim"`` drops them.
        target: After a compaction the input fills at most this share of the input limit
            (default ``VLLM_BUDGET_COMPACTION_TARGET``, 0.6), and, for a ChatVLLM, no more
            than leaves the call's ``max_tokens`` and the safety margin in the window
            (:meth:`~langchain_vllm_budget.budget.TokenBudget.compaction_target`).
        max_input_tokens: The input limit; default: from the model (its profile, and for a
            ChatVLLM its window less safety margin and minimum output room). A harness that
            checks requests against its own budget passes that budget
            (:func:`~langchain_vllm_budget.budget.harness_room`).
        summarizer: Writes the summaries: a chat model, ``"extractive"`` (model-free), or
            ``None`` (or ``model``) for the call's model itself, asked with the call's own
            prefix (its
            messages as sent, its tools and prompt fields, then the instruction), which
            vLLM serves from its prefix cache.
        summary_max_tokens: The hard cap on a summary (default
            ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``).
        memory: Where compactions are remembered (a cache keyed by the messages: a call
            whose reply did not reach the state reuses the same compaction); default: a new
            one.
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
            budgeted(model) is not None or _profile_limit(model) is not None
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
        # The summarizer is the call's model: its requests reuse the call's prefix.
        self.summarizer_is_model = summarizer is None or summarizer is model
        self.memory = memory if memory is not None else CompactionMemory()
        # Checked now, once; unset values are the settings' (VLLM_BUDGET_*).
        self.summary = SummarySpec.from_settings(
            max_tokens=summary_max_tokens, strategy=strategy, model=self.summarizer
        )
        self.target = (
            target if target is not None else settings.COMPACTION_TARGET.required_factory()()
        )
        Compactor(target=self.target)

    # ------------------------------------------------------------------------ shared steps

    def compactor_for(self, model: BaseChatModel, prefix: PrefixCall | None = None) -> Compactor:
        """The compaction engine for a call of ``model`` (its text counter caps the summary).

        Args:
            model: The call's model (``request.model``).
            prefix: What the call is sent with (tools, prompt fields); when the summarizer
                is the model itself, its request sends the call's prefix again.

        Returns:
            A compactor with this middleware's settings and memory.
        """
        summary = self.summary.with_(counter=token_counter_of(model))
        if not self.summarizer_is_model or self.summarizer is None:
            return Compactor(target=self.target, memory=self.memory, summary=summary)
        # The call's model writes the summary: the one whose cache holds this conversation.
        # Only a budgeted model (a ChatVLLM) is sent the call's prefix again: its payload
        # takes the tools and tool_choice="none" as vLLM reads them; any other model gets
        # the fresh compression prompt, which every chat model accepts.
        return Compactor(
            target=self.target,
            memory=self.memory,
            summary=summary.with_(model=model),
            prefix=prefix if budgeted(model) is not None else None,
        )

    @property
    def compactor(self) -> Compactor:
        """The compaction engine for the middleware's own model."""
        return self.compactor_for(self.model)

    def _limit(self, model: BaseChatModel) -> int:
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        limits = [limit for limit in (_profile_limit(model), _window_limit(model)) if limit]
        if not limits:
            msg = (
                f"{type(model).__name__} has no profile with max_input_tokens and no known "
                "window: pass ContextCompactionMiddleware(..., max_input_tokens=...)."
            )
            raise ValueError(msg)
        return min(limits)

    def _plan(self, request: ModelRequest[ContextT]) -> _Plan | None:
        """The call's input (system message first) when it does not fit; ``None`` when it does."""
        model = request.model
        system: list[BaseMessage] = (
            [request.system_message] if request.system_message is not None else []
        )
        full = [*system, *request.messages]
        # Converted once per call, not on every count of a compaction's search.
        bound = [*request.tools, *_structured_output_tools(request)]
        tools = tools_to_openai_dicts(bound) if bound else None

        def count(messages: Sequence[BaseMessage]) -> int:
            return model.get_num_tokens_from_messages(list(messages), tools=tools)

        limit = self._limit(model)
        if count(full) <= limit:
            return None
        sent = PrefixCall.from_call(tools, request.model_settings)
        return _Plan(full, len(system), count, limit, sent, _output_limit(model, request))

    @staticmethod
    def _compacted(plan: _Plan, result: CompactionResult) -> list[BaseMessage] | None:
        """The compacted conversation (system message left out), or ``None`` (nothing fits)."""
        if not result.fits:
            # Even the newest step does not fit: the request goes as it is, and the model
            # raises its typed overflow error (ChatVLLM) instead of sending it.
            return None
        messages = result.messages[plan.system_len :]
        for message in messages:
            if message.id is None:
                message.id = str(uuid.uuid4())
        return messages

    @staticmethod
    def _persisted(
        compacted: list[BaseMessage], response: ModelResponse[ResponseT]
    ) -> ExtendedModelResponse[ResponseT]:
        """The reply, and the compaction written into the state in front of it."""
        for message in response.result:
            if message.id is None:
                message.id = str(uuid.uuid4())
        update = {"messages": [RemoveMessage(id=REMOVE_ALL_MESSAGES), *compacted, *response.result]}
        return ExtendedModelResponse(model_response=response, command=Command(update=update))

    # ------------------------------------------------------------------------ hooks

    def wrap_model_call(
        self,
        request: ModelRequest[ContextT],
        handler: Callable[[ModelRequest[ContextT]], ModelResponse[ResponseT]],
    ) -> ModelResponse[ResponseT] | ExtendedModelResponse[ResponseT]:
        """Compact a call that does not fit, send it, and keep the compaction in the state."""
        plan = self._plan(request)
        if plan is None:
            return handler(request)
        result = self.compactor_for(request.model, plan.sent).compact(
            plan.messages,
            policy=self.policy,
            count=plan.count,
            limit=plan.limit,
            output_limit=plan.output_limit,
        )
        compacted = self._compacted(plan, result)
        if compacted is None:
            return handler(request)
        response = handler(request.override(messages=cast("list[AnyMessage]", compacted)))
        return self._persisted(compacted, response)

    async def awrap_model_call(
        self,
        request: ModelRequest[ContextT],
        handler: Callable[[ModelRequest[ContextT]], Awaitable[ModelResponse[ResponseT]]],
    ) -> ModelResponse[ResponseT] | ExtendedModelResponse[ResponseT]:
        """Async :meth:`wrap_model_call` (counting and compacting run in worker threads)."""
        plan = await asyncio.to_thread(self._plan, request)
        if plan is None:
            return await handler(request)
        compactor = await asyncio.to_thread(self.compactor_for, request.model, plan.sent)
        result = await compactor.acompact(
            plan.messages,
            policy=self.policy,
            count=plan.count,
            limit=plan.limit,
            output_limit=plan.output_limit,
            offload=True,
        )
        compacted = self._compacted(plan, result)
        if compacted is None:
            return await handler(request)
        response = await handler(request.override(messages=cast("list[AnyMessage]", compacted)))
        return self._persisted(compacted, response)


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


def _output_limit(model: BaseChatModel, request: ModelRequest[ContextT]) -> int | None:
    """For a budgeted model: the most input that leaves the call's ``max_tokens`` and margin.

    The call's ``max_tokens`` as the model reads it
    (:meth:`~langchain_vllm_budget.capabilities.BudgetedModel.get_requested_max_tokens`: the
    request's settings over the model's own); ``None`` when none is set (the compaction then
    aims at ``target`` of the limit alone).
    """
    found = budgeted(model)
    if found is None:
        return None
    requested = found.get_requested_max_tokens(**request.model_settings)
    if requested is None:  # (one below 1 raised a typed error already)
        return None
    return found.get_budget().output_limit(requested)


def _structured_output_tools(request: ModelRequest[Any]) -> list[BaseTool]:
    """The tools ``create_agent`` binds for structured output besides ``request.tools``.

    A ``ToolStrategy`` (or a bare schema, for a model whose profile does not offer structured
    output: ``create_agent`` then picks a ``ToolStrategy``) is sent as one tool per schema,
    and its definition takes room in the prompt like any other tool.
    """
    response_format = request.response_format
    if response_format is None or isinstance(response_format, ProviderStrategy):
        return []
    if not isinstance(response_format, ToolStrategy):
        # create_agent's rule for a bare schema, as far as the model's profile tells it
        # (its private helper also matches some hosted models by name): a model it would
        # give the provider's structured output is at worst counted one tool too many here,
        # which only compacts a little earlier.
        profile = request.model.profile or {}
        if profile.get("structured_output"):
            return []  # the provider's structured output: no tool in the prompt
        schema = (
            response_format.schema
            if isinstance(response_format, AutoStrategy)
            else response_format  # a bare schema
        )
        response_format = ToolStrategy(schema=schema)
    return [OutputToolBinding.from_schema_spec(spec).tool for spec in response_format.schema_specs]
