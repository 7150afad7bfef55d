"""The summarizer request that reuses the conversation's own prefix (vLLM's prefix cache).

A compaction summarizes the oldest part of a conversation that was just sent to the model.
Sent as a fresh prompt (:data:`~langchain_vllm_budget.compression.COMPRESSION_PROMPT` with
the span rendered as text), the span is prefilled again from nothing. When the summarizer
is the chat model itself, the same request can instead send the conversation exactly as it
was sent (the system message, the messages up to the cut, the same tool definitions and
the same chat-template fields) and append one human message with the instruction: the
rendered prompt then starts with the tokens of the earlier request, and vLLM serves them
from its prefix cache.

:class:`PrefixCall` holds what the conversation was sent with; :meth:`PrefixCall.request`
builds the summarizer request, or ``None`` when it does not fit the summarizer's call room
(the caller then sends the fresh prompt). :class:`SummarizerRequest` is one request of
either kind, as the compressor's drivers send it.

The request asks for no tool call: ``tool_choice="none"``. vLLM still renders the tools
into the prompt (unless the server runs with ``--exclude-tools-when-tool-choice-none``, off
by default), so the prefix matches, and it parses no tool call from the reply; only the
reply's text is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from langchain_vllm_budget.tokenizers import PromptOptions

__all__ = [
    "PREFIX_STACKED_SUMMARY_INSTRUCTION",
    "PREFIX_SUMMARY_INSTRUCTION",
    "PrefixCall",
    "SummarizerRequest",
]

_INSTRUCTION = """Stop the task here: do not answer and do not call a tool.
Summarize the conversation above ({scope}) in at most {{max_tokens}} tokens, as bullet points of at most 25 tokens each.
- Keep exactly as written: IDs, file paths, numbers with their units, parameters (key=value), tool names, and decisions made.
- Keep the user's latest request: {{user_request}}
- Omit narrative, boilerplate and repetition.
Reply with the summary only."""  # noqa: E501

PREFIX_SUMMARY_INSTRUCTION = _INSTRUCTION.format(
    scope="the messages after the system prompt, nothing else"
)
"""The last message of a prefix summarizer request: ``str.format`` placeholders
``{max_tokens}`` and ``{user_request}``."""

PREFIX_STACKED_SUMMARY_INSTRUCTION = _INSTRUCTION.format(
    scope="only the messages after the last summary of the earlier conversation: "
    "the summaries stay as they are, do not repeat them"
)
"""The same, when earlier summaries stay in front of the span (stacked summaries)."""

# What changes the prompt but is not an end-of-prompt choice of the request
# (add_generation_prompt / continue_final_message only shape the prompt's end): read from
# PromptOptions so that one list says which request fields render into the prompt.
_PROMPT_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(PromptOptions)
    if f.name not in ("add_generation_prompt", "continue_final_message")
)


@dataclass(frozen=True)
class SummarizerRequest:
    """One summarizer request: its messages and the keyword arguments of the model call.

    Attributes:
        messages: The prompt.
        kwargs: The call's keyword arguments (``max_tokens`` included).
    """

    messages: list[BaseMessage]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class PrefixCall:
    """What a conversation was sent with, so that a summarizer request sends it again.

    Set on a :class:`~langchain_vllm_budget.compaction.Compactor` only when the summarizer is
    the chat model itself (a separate summarizer has no cache of this conversation).

    Attributes:
        tools: The tool definitions as sent (OpenAI dicts), or ``None``.
        fields: The call's other fields that change the rendered prompt
            (``chat_template_kwargs``, ``reasoning_effort``, ... and ``extra_body``'s), as the
            call passed them; the model's own fields are sent by the model itself.

    Example:
        >>> call = PrefixCall.from_call(
        ...     None, {"temperature": 0, "extra_body": {"chat_template_kwargs": {"x": 1}}}
        ... )
        >>> call.fields
        {'extra_body': {'chat_template_kwargs': {'x': 1}}}
    """

    tools: list[dict[str, Any]] | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_call(cls, tools: list[dict[str, Any]] | None, call: Mapping[str, Any]) -> PrefixCall:
        """The prompt-shaping part of a call's keyword arguments.

        Args:
            tools: The tools the call sent (OpenAI dicts).
            call: The call's keyword arguments (a ChatVLLM call's, or an agent's
                ``model_settings``).

        Returns:
            The tools, and the fields that render into the prompt (top-level and
            ``extra_body``'s); sampling and output fields are left out.
        """
        fields: dict[str, Any] = {k: call[k] for k in _PROMPT_FIELDS if k in call}
        extra = call.get("extra_body")
        if isinstance(extra, Mapping):
            fields["extra_body"] = {k: extra[k] for k in _PROMPT_FIELDS if k in extra}
        return cls(tools=tools or None, fields=fields)

    def request(
        self,
        prefix: Sequence[BaseMessage],
        *,
        max_tokens: int,
        user_request: str,
        count: Callable[[Sequence[BaseMessage]], int],
        room: int,
        stacked: bool = False,
    ) -> SummarizerRequest | None:
        """The conversation as sent up to the cut, then the instruction; ``None`` if too big.

        Args:
            prefix: The messages as they were sent, system message first, up to the cut.
            max_tokens: The summary's cap (also the request's ``max_tokens``).
            user_request: The user's latest request, for the instruction.
            count: Counts a prompt exactly with this call's tools and fields.
            room: What one call of the summarizer may hold, prompt and output together
                (:meth:`~langchain_vllm_budget.budget.TokenBudget.call_room`).
            stacked: Earlier summaries lead the prefix and stay: the instruction asks for
                the messages after them only.

        Returns:
            The request, or ``None`` when prompt plus ``max_tokens`` exceeds ``room``.
        """
        template = PREFIX_STACKED_SUMMARY_INSTRUCTION if stacked else PREFIX_SUMMARY_INSTRUCTION
        instruction = template.format(
            max_tokens=max_tokens, user_request=user_request or "(none given)"
        )
        messages = [*prefix, HumanMessage(instruction)]
        if count(messages) + max_tokens > room:
            return None
        kwargs: dict[str, Any] = {**self.fields, "max_tokens": max_tokens}
        if self.tools:
            # The tools render into the prompt as before; "none" asks for text only.
            kwargs.update(tools=self.tools, tool_choice="none")
        return SummarizerRequest(messages, kwargs)
