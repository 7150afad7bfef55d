"""What the package asks of a chat model: one typed capability, :class:`BudgetedModel`.

The middlewares, the compaction, the compressor and the stages work with any LangChain chat
model. A model that can count its prompt exactly and knows its window (``ChatVLLM``, or any
model that implements :class:`BudgetedModel`) is used for both; any other model is measured
with :class:`~langchain_vllm_budget.tokenizers.ApproximateTokenCounter` (about four characters
a token), and its window must be given where one is needed. That fallback is written once,
in :func:`token_counter_of`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from langchain_vllm_budget.tokenizers import ApproximateTokenCounter, TokenCounter

if TYPE_CHECKING:
    from langchain_core.language_models import LanguageModelInput

    from langchain_vllm_budget.budget import BudgetPlan, TokenBudget

__all__ = ["BudgetedModel", "budgeted", "call_room_of", "token_counter_of"]


@runtime_checkable
class BudgetedModel(Protocol):
    """A chat model that counts its prompts exactly and plans their budget, like ChatVLLM.

    Only methods: checking a model against the protocol (``isinstance``) reads no property,
    so it never contacts a server.
    """

    def get_token_counter(self) -> TokenCounter:
        """The counter of the model's prompts (resolving it may ask the server once)."""
        ...

    def get_budget(self) -> TokenBudget:
        """The budget in use, its window known (asking the server for it once if needed)."""
        ...

    def get_budget_plan(self, messages: LanguageModelInput, **kwargs: Any) -> BudgetPlan:
        """Count a call's prompt once and plan its output room, without sending it."""
        ...

    async def aget_budget_plan(self, messages: LanguageModelInput, **kwargs: Any) -> BudgetPlan:
        """Async :meth:`get_budget_plan`."""
        ...

    def get_requested_max_tokens(self, **kwargs: Any) -> int | None:
        """The output limit a call with ``kwargs`` asks for, as the server will read it.

        The call's fields over the model's own, ``extra_body`` over the others,
        ``max_completion_tokens`` before ``max_tokens``; ``None`` when none is set. Counts
        nothing.
        """
        ...


def budgeted(model: object) -> BudgetedModel | None:
    """``model`` as a :class:`BudgetedModel`, or ``None`` when it is not one.

    Example:
        >>> budgeted(None) is None
        True
    """
    return model if isinstance(model, BudgetedModel) else None


def token_counter_of(model: object) -> TokenCounter:
    """The model's own counter (exact, for a :class:`BudgetedModel`), else the approximate one.

    Example:
        >>> token_counter_of(None).name
        'approximate'
    """
    found = budgeted(model)
    return found.get_token_counter() if found is not None else ApproximateTokenCounter()


def call_room_of(model: object) -> int | None:
    """What one call of ``model`` may hold, prompt and output together, if it knows its window.

    :meth:`~langchain_vllm_budget.budget.TokenBudget.call_room` of a
    :class:`BudgetedModel` (asking the server for the window once if needed); ``None`` for
    any other model.

    Example:
        >>> call_room_of(None) is None
        True
    """
    found = budgeted(model)
    return found.get_budget().call_room() if found is not None else None
