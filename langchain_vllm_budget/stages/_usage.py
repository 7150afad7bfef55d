"""Counting the chat-model calls made inside a block: how many, and their tokens.

A compressed stage may call a summarizer model; those calls are a cost that forwarding raw
outputs does not have, so the stage's ledger entry records them.
:func:`track_model_calls` attaches a callback handler to every chat-model call made inside its
block, the way ``langchain_core.callbacks.get_usage_metadata_callback`` does (a context
variable registered as a configure hook), and also counts calls whose model reports no usage.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

if TYPE_CHECKING:
    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = ["ModelCallUsage", "track_model_calls"]


class ModelCallUsage(BaseCallbackHandler):
    """Calls, prompt tokens and output tokens of the chat-model calls it sees.

    Tokens come from each reply's ``usage_metadata`` (the server's count); a model that
    reports none (a fake chat model) is counted with ``counter`` when one is given.

    Attributes:
        calls: Chat-model calls that finished.
        input_tokens: Their prompt tokens.
        output_tokens: Their generated tokens.
    """

    def __init__(self, counter: TokenCounter | None = None) -> None:
        super().__init__()
        self.counter = counter
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self._prompts: dict[UUID, int] = {}
        self._lock = threading.Lock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        """Remember the prompt's local count, in case the reply carries no usage."""
        if self.counter is not None and messages:
            count = self.counter.count_messages(messages[0])
            with self._lock:
                self._prompts[run_id] = count

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Add the call's tokens."""
        input_tokens = output_tokens = 0
        reported = False
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                usage = getattr(message, "usage_metadata", None)
                if usage:
                    reported = True
                    input_tokens += int(usage.get("input_tokens", 0))
                    output_tokens += int(usage.get("output_tokens", 0))
                elif self.counter is not None:
                    output_tokens += self.counter.count_text(generation.text)
        with self._lock:
            local_prompt = self._prompts.pop(run_id, 0)
            self.calls += 1
            self.input_tokens += input_tokens if reported else local_prompt
            self.output_tokens += output_tokens


_current: ContextVar[ModelCallUsage | None] = ContextVar(
    "langchain_vllm_budget_model_call_usage", default=None
)
register_configure_hook(_current, inheritable=True)


@contextmanager
def track_model_calls(counter: TokenCounter | None = None) -> Iterator[ModelCallUsage]:
    """Count the chat-model calls made inside the block.

    Args:
        counter: Counts prompts and outputs of models that report no usage.

    Yields:
        The handler; read ``calls``, ``input_tokens`` and ``output_tokens`` after the block.

    Example:
        >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
        >>> from langchain_vllm_budget.tokenizers import ApproximateTokenCounter
        >>> model = FakeListChatModel(responses=["- ok"])
        >>> with track_model_calls(ApproximateTokenCounter()) as usage:
        ...     _ = model.invoke("summarize this")
        >>> usage.calls, usage.output_tokens
        (1, 1)
    """
    handler = ModelCallUsage(counter)
    token = _current.set(handler)
    try:
        yield handler
    finally:
        _current.reset(token)
