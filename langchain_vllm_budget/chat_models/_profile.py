"""``ChatVLLM.profile``: the model's LangChain profile, read from the server on first use.

LangChain's middleware reads ``model.profile["max_input_tokens"]`` for its fractional
triggers (``SummarizationMiddleware(trigger=("fraction", 0.8))``), and ``create_agent`` reads
``structured_output``. vLLM's window (``max_model_len``) covers input *and* output, so the
profile's ``max_input_tokens`` is the largest prompt that ``ChatVLLM`` sends without its
overflow policy acting: ``max_model_len - safety_margin - min_output_tokens``. A fractional
trigger below 1.0 therefore always fires before ``ChatVLLM`` has to trim or raise. How this
number, a request's ``max_tokens`` and the compaction target fit together (for harnesses that
subtract their own reserve and headroom) is the contract written in
:mod:`langchain_vllm_budget.budget` (:meth:`~langchain_vllm_budget.budget.TokenBudget.input_limit`,
:func:`~langchain_vllm_budget.budget.harness_room`).

LangChain fills ``profile`` once, when the model is built; a server's window is only known
once the server is asked. :class:`ServerProfileAttribute` makes ``ChatVLLM.profile`` follow
what is known, without surprises:

* a ``profile=`` given to the constructor, or assigned later, is returned unchanged;
* once the server has been asked (any call, ``get_budget_plan``, ``aget_profile``), the
  server's profile: its window, and what the chat template renders;
* in sync code, the first read asks the server (once, as a call would);
* inside a running event loop the read never asks (that would block the loop), and a server
  that cannot be reached never makes the read raise: until a discovery succeeds the profile
  is :func:`configured_profile`, built from ``budget`` alone (with ``max_input_tokens`` only
  when ``budget.max_model_len`` is set).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from langchain_core.language_models import ModelProfile

if TYPE_CHECKING:
    from langchain_vllm_budget.budget import TokenBudget

__all__ = ["ServerProfileAttribute", "check_profile", "configured_profile", "server_profile"]


def server_profile(
    *,
    max_model_len: int,
    budget: TokenBudget,
    tool_calling: bool | None = None,
    reasoning_output: bool | None = None,
) -> ModelProfile:
    """The profile of a model served with a window of ``max_model_len`` tokens.

    Args:
        max_model_len: The server's context window (input and output together).
        budget: The model's budget (its safety margin, minimum and reserved output).
        tool_calling: Whether the chat template renders tool definitions, when known.
        reasoning_output: Whether the model thinks before answering, when known.

    Returns:
        ``max_input_tokens``: the largest prompt sent without the overflow policy acting;
        ``max_output_tokens``: the output a request gets when it asks for no limit
        (``output_reserve``, capped by the window); text in and out; structured output
        (vLLM enforces JSON schemas, regexes and grammars while decoding); tool calling and
        reasoning where known.

    Raises:
        ValueError: The window leaves no room for input after the safety margin and the
            minimum output.

    Example:
        >>> from langchain_vllm_budget.budget import TokenBudget
        >>> profile = server_profile(max_model_len=12288, budget=TokenBudget())
        >>> profile["max_input_tokens"], profile["max_output_tokens"]
        (11904, 3000)
    """
    served = budget.with_max_model_len(max_model_len)
    input_room = served.input_limit()
    if input_room < 1:
        msg = (
            f"The window of {max_model_len} tokens leaves no room for input after "
            f"safety_margin ({budget.safety_margin}) and min_output_tokens "
            f"({budget.min_output_tokens}); lower them or serve a larger --max-model-len."
        )
        raise ValueError(msg)
    profile = ModelProfile(
        max_input_tokens=input_room,
        # What a one-token prompt that asks for no limit gets.
        max_output_tokens=served.plan(1).max_tokens,
        text_inputs=True,
        text_outputs=True,
        structured_output=True,
    )
    if tool_calling is not None:
        profile["tool_calling"] = tool_calling
        # Named and "required" tool choices are enforced by vLLM's structured outputs;
        # "auto" also needs the server's --enable-auto-tool-choice.
        profile["tool_choice"] = tool_calling
    if reasoning_output is not None:
        profile["reasoning_output"] = reasoning_output
    return profile


def configured_profile(budget: TokenBudget) -> ModelProfile:
    """The profile before the server is known: from the configured window, if any.

    Example:
        >>> from langchain_vllm_budget.budget import TokenBudget
        >>> configured_profile(TokenBudget(max_model_len=12288))["max_input_tokens"]
        11904
        >>> "max_input_tokens" in configured_profile(TokenBudget(max_model_len=None))
        False
    """
    if budget.max_model_len is not None:
        return server_profile(max_model_len=budget.max_model_len, budget=budget)
    return ModelProfile(text_inputs=True, text_outputs=True, structured_output=True)


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def check_profile(profile: Mapping[str, Any] | None) -> None:
    """Reject a profile whose token limits are not positive whole numbers.

    Raises:
        ValueError: ``max_input_tokens`` or ``max_output_tokens`` is not a positive integer.

    Example:
        >>> check_profile({"max_input_tokens": -1})
        Traceback (most recent call last):
        ...
        ValueError: profile['max_input_tokens'] must be a positive whole number of tokens, \
got -1; ...
    """
    if profile is None:
        return
    for key in ("max_input_tokens", "max_output_tokens"):
        value = profile.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            msg = (
                f"profile[{key!r}] must be a positive whole number of tokens, got {value!r}; "
                "leave profile unset to read the window from the server."
            )
            raise ValueError(msg)


class _ProfiledModel(Protocol):
    __dict__: dict[str, Any]
    __pydantic_private__: dict[str, Any] | None

    def _current_profile(self, *, ask: bool) -> ModelProfile: ...


class ServerProfileAttribute:
    """The ``profile`` attribute of ``ChatVLLM``: given, else the server's, else configured.

    Installed on the class after pydantic built it (a data descriptor wins over the
    instance's ``__dict__``, where pydantic keeps the field). While the model is being built
    it returns what was given (LangChain's own validators read ``profile`` then), so building
    a model never contacts the server.
    """

    def __get__(self, instance: _ProfiledModel | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        given = instance.__dict__.get("profile")
        if isinstance(given, Mapping):
            return given
        private = instance.__pydantic_private__ or {}
        if not private.get("_profile_ready"):
            return None
        return instance._current_profile(ask=not _in_event_loop())

    def __set__(self, instance: _ProfiledModel, value: Any) -> None:
        instance.__dict__["profile"] = value
