"""The state a compressed stage reads and writes: summaries, never raw outputs.

Raw stage outputs are deliberately *not* part of the state: they live in the LangGraph store
(see :mod:`~langchain_vllm_budget.stages.store`), out of every prompt and out of what the
stages pass along. What the state holds belongs to one **run**: :func:`start_run` begins a
new run for each new request on a thread, with a fresh ``run_id`` and empty summaries, so a
reused thread never mixes one request's summaries, ledger or rolling summary into another's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from typing_extensions import NotRequired, TypedDict

__all__ = [
    "StageLedger",
    "StagesInput",
    "StagesState",
    "merge_run_dicts",
    "new_run_update",
]

_RESET = "__new_run__"


def merge_run_dicts(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Reducer: a stage's keys replace the same keys; a new run starts from nothing.

    Example:
        >>> merge_run_dicts({"classify": 1}, {"select": 2})
        {'classify': 1, 'select': 2}
        >>> merge_run_dicts({"classify": 1}, new_run_update("r2")["summaries"])
        {}
    """
    if right.get(_RESET):
        return {key: value for key, value in right.items() if key != _RESET}
    return {**left, **right}


def latest(left: str, right: str) -> str:
    """Reducer: the newest value wins, also when parallel branches both write one step.

    Example:
        >>> latest("after logs", "after metrics")
        'after metrics'
    """
    return right


def new_run_update(run_id: str | None = None) -> dict[str, Any]:
    """The state update that starts a run: a new ``run_id``, every run-scoped field empty.

    Args:
        run_id: The run's id; default: a new random one.

    Returns:
        The update for :class:`StagesState` (what :func:`start_run` returns).
    """
    empty = {_RESET: True}
    return {
        "run_id": run_id or f"run-{uuid.uuid4().hex[:12]}",
        "summaries": dict(empty),
        "ledger": dict(empty),
        "folded": dict(empty),
        "rolling_summaries": dict(empty),
        "rolling_summary": "",
    }


class StageLedger(TypedDict):
    """Token accounting of one stage of one run.

    Attributes:
        stage: Stage name.
        run_id: The run the stage belongs to.
        raw_output: Where the raw output is: ``[*namespace, key]`` in the store.
        raw_tokens: Tokens of the stage's raw output.
        summary_tokens: Tokens of its compressed summary.
        summary_cap: The summary's token cap.
        verbatim_limit: The most tokens of the output handed off verbatim (see
            :func:`~langchain_vllm_budget.compression.spec.verbatim_limit`).
        ratio: ``raw_tokens / summary_tokens``.
        retention: Share of the output's entities kept in the summary.
        entities: Number of entities extracted from the output.
        missing: Entities the summary could not hold (the cap was too small for them).
        method: How the summary was made: verbatim, extractive, llm or llm+restored.
        fallback_reason: Why the model's summary was rejected, if it was.
        rolling_summary_tokens: Tokens of the rolling summary after this stage.
        rolling_covers: The stages that rolling summary covers, each with the run of it
            covered (all the earlier ones in a straight line; after parallel branches, the
            branch it extends and the others; a stage run again by a loop, its latest run).
            Ledgers written before runs were recorded hold the stage names alone.
        attempt: Which run of the stage this is in the run (1, then 2, ... when a loop runs
            it again), as the store numbers its raw outputs: a run that failed after storing
            its output counts; ``get_raw_output(..., attempt=)`` finds each.
        counter: The token counter (``transformers``, ``server`` or ``approximate``).
        summarizer_calls: Summarizer model calls made for this stage (compression and the
            rolling summary; 0 when the output fit or the extractive summary kept everything).
        summarizer_input_tokens: Prompt tokens of those calls.
        summarizer_output_tokens: Tokens those calls generated.
        seconds: Wall time of the stage, compression included.
        input_tokens: Prompt tokens of the stage's model call (model stages).
        output_tokens: Tokens the stage's model generated (model stages).
        max_tokens: The ``max_tokens`` the budget granted the call (model stages).
        max_model_len: The context window the call was planned against (model stages).
        degraded: What was done to make the prompt fit, in order (model stages).
        folded_summary_tokens: Tokens of the rolling summary of folded stages in the prompt.
        budget: The one budget plan the call was sent with (model stages): the plan's
            numbers as ``ChatVLLM`` reported them in ``response_metadata["budget"]``.
    """

    stage: str
    run_id: str
    raw_output: list[str]
    raw_tokens: int
    summary_tokens: int
    summary_cap: int
    verbatim_limit: int
    ratio: float
    retention: float
    entities: int
    missing: list[str]
    method: str
    fallback_reason: str | None
    rolling_summary_tokens: int
    rolling_covers: NotRequired[dict[str, int] | list[str]]
    attempt: NotRequired[int]
    counter: str
    summarizer_calls: int
    summarizer_input_tokens: int
    summarizer_output_tokens: int
    seconds: float
    input_tokens: NotRequired[int]
    output_tokens: NotRequired[int]
    max_tokens: NotRequired[int]
    max_model_len: NotRequired[int]
    degraded: NotRequired[list[str]]
    folded_summary_tokens: NotRequired[int]
    budget: NotRequired[dict[str, Any]]


@dataclass(kw_only=True)
class StagesInput:
    """What a run starts from.

    Attributes:
        request: The user's request.
    """

    request: str = ""


@dataclass(kw_only=True)
class StagesState(StagesInput):
    """The state compressed stages pass along (extend it with your own fields).

    Attributes:
        run_id: The current run (set by :func:`start_run`); raw outputs are stored per run.
        summaries: Compressed summary of each finished stage of this run, by stage name.
        rolling_summary: Digest of the run so far, updated after every stage. Prompts carry
            it only for stages folded out of them. When stages run in parallel branches, one
            branch's is kept at the join, and the next stage adds the summaries of the
            others to it (the ledger's ``rolling_covers`` says which stages it covers).
        ledger: Token accounting of each finished stage of this run, by stage name.
        folded: Stages whose summaries were dropped from later prompts to make them fit, and
            the stage at which that happened (their content survives in the rolling summary).
        rolling_summaries: The rolling summary as it was after each stage: the one after
            stage X covers X and every stage before it in a straight line (after parallel
            branches, the stages in the ledger's ``rolling_covers``).
    """

    run_id: str = ""
    summaries: Annotated[dict[str, str], merge_run_dicts] = field(default_factory=dict)
    rolling_summary: Annotated[str, latest] = ""
    ledger: Annotated[dict[str, StageLedger], merge_run_dicts] = field(default_factory=dict)
    folded: Annotated[dict[str, str], merge_run_dicts] = field(default_factory=dict)
    rolling_summaries: Annotated[dict[str, str], merge_run_dicts] = field(default_factory=dict)
