"""The pipeline's state: summaries in place of raw outputs, a rolling summary, a token ledger.

Raw stage outputs are deliberately *not* part of the state: they live in the LangGraph store
under ``(RAW_OUTPUT_NAMESPACE, thread_id)`` with the stage name as key, out of every prompt and
out of what the stages pass along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from typing_extensions import NotRequired, TypedDict

__all__ = [
    "RAW_OUTPUT_NAMESPACE",
    "InputState",
    "StageLedger",
    "State",
    "merge_dicts",
]

RAW_OUTPUT_NAMESPACE = "stage_outputs"
"""First element of the store namespace that holds raw stage outputs."""


def merge_dicts(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Reducer: keys written by a node replace the same keys, others stay.

    Example:
        >>> merge_dicts({"classify": 1}, {"select": 2})
        {'classify': 1, 'select': 2}
    """
    return {**left, **right}


class StageLedger(TypedDict):
    """Token accounting of one stage.

    Attributes:
        stage: Stage name.
        input_tokens: Prompt tokens of the stage call (the server's count when reported).
        output_tokens: Tokens the stage generated.
        max_tokens_granted: ``max_tokens`` the budget granted the stage call.
        raw_forward_input_tokens: Prompt tokens the stage would have had with earlier raw
            outputs passed forward instead of summaries (counted, not sent).
        raw_tokens: Tokens of the stage's raw output.
        summary_tokens: Tokens of its compressed summary.
        ratio: ``raw_tokens / summary_tokens``.
        retention: Share of the output's entities kept in the summary.
        entities: Number of entities extracted from the output.
        missing: Entities the summary could not hold (the cap was too small for them).
        method: How the summary was made: verbatim, llm, llm+restored or extractive.
        fallback_reason: Why the model's summary was rejected, if it was.
        summary_cap: The summary's token cap.
        rolling_summary_tokens: Tokens of the rolling summary after this stage.
        degraded: What was done to make the stage input fit, in order (empty if nothing).
        tokenizer: The token counter used (``server``, ``transformers`` or ``approximate``).
        max_model_len: The context window the stage was budgeted against.
        folded_summary_tokens: Tokens of the rolling summary of folded stages in the prompt
            (0 while nothing is folded).
        summarizer_calls: Summarizer model calls made for this stage (compression and the
            rolling summary; 0 when everything fit verbatim or merged without a model).
        summarizer_input_tokens: Prompt tokens of those calls (the server's count; counted
            locally when the model reports no usage). A cost the raw-forward pipeline does
            not have.
        summarizer_output_tokens: Tokens those calls generated.
        budget: The budget the stage call was sent with, as the chat model reported it
            (``ChatVLLM``'s ``response_metadata["budget"]``: ``input_tokens``,
            ``max_tokens``, ``max_model_len``, ``safety_margin``, ``counter``,
            ``counter_exact``, ``action``, ...); empty if the model reports none.
    """

    stage: str
    input_tokens: int
    output_tokens: int
    max_tokens_granted: int
    raw_forward_input_tokens: int
    raw_tokens: int
    summary_tokens: int
    ratio: float
    retention: float
    entities: int
    missing: list[str]
    method: str
    fallback_reason: str | None
    summary_cap: int
    rolling_summary_tokens: int
    degraded: list[str]
    tokenizer: str
    max_model_len: NotRequired[int]
    folded_summary_tokens: NotRequired[int]
    summarizer_calls: NotRequired[int]
    summarizer_input_tokens: NotRequired[int]
    summarizer_output_tokens: NotRequired[int]
    budget: NotRequired[dict[str, Any]]


@dataclass(kw_only=True)
class InputState:
    """What a run starts from.

    Attributes:
        request: The user's request.
    """

    request: str = ""


@dataclass(kw_only=True)
class State(InputState):
    """The state the stages pass along.

    Attributes:
        summaries: Compressed summary of each finished stage, by stage name.
        rolling_summary: Digest of the pipeline so far, updated after every stage. It is not
            part of the stage prompts while every earlier summary fits: a prompt carries the
            summaries themselves, and a digest only of what was folded out.
        ledger: Token accounting of each finished stage, by stage name.
        folded: Stages whose summaries were dropped from later prompts to make them fit, and
            the stage at which that happened (their content survives in the rolling summary).
        rolling_summaries: The rolling summary as it was after each stage: the one after stage
            X covers X and every stage before it, and is what a prompt carries once X and the
            stages before it are folded out.
    """

    summaries: Annotated[dict[str, str], merge_dicts] = field(default_factory=dict)
    rolling_summary: str = ""
    ledger: Annotated[dict[str, StageLedger], merge_dicts] = field(default_factory=dict)
    folded: Annotated[dict[str, str], merge_dicts] = field(default_factory=dict)
    rolling_summaries: Annotated[dict[str, str], merge_dicts] = field(default_factory=dict)
