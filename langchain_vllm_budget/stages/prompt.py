"""What a stage sees, its prompt, and the degrade order that makes the prompt fit.

A stage sees the user's request and the **compressed summaries** of the earlier stages of
the run (:class:`StageInput`), never their raw outputs. Nothing is said twice: while every
earlier summary fits, the prompt carries them and no rolling summary; once older summaries
are folded out to make room, it carries the rolling summary as it was after the last folded
stage (which covers exactly those stages) and the summaries of the stages after it.

:func:`fit_stage_prompt` degrades a model stage's prompt until its budget plan fits:

1. **fold** the oldest earlier summary out of the prompt, into the rolling summary, then the
   next oldest, and so on;
2. **trim the rolling summary** of the folded stages, keeping its newest part;
3. **trim the request**, keeping its beginning;
4. still too large: :class:`StageInputTooLargeError` with the numbers.

Each candidate prompt is planned once (one exact count); the plan that fits is the one the
call is sent with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from langchain_vllm_budget.budget import BudgetPlan
from langchain_vllm_budget.compression import truncate_to_tokens

if TYPE_CHECKING:
    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "EARLIER_STAGES_HEADER",
    "ROLLING_SUMMARY_HEADER",
    "STAGE_USER_PROMPT",
    "FittedPrompt",
    "PromptBuilder",
    "StageInput",
    "StageInputTooLargeError",
    "fit_stage_prompt",
    "fold_summary",
    "stage_messages",
]

STAGE_USER_PROMPT = """Request:
{request}
{context}
Write the {stage} result now."""
"""User prompt of a model stage: the request, then the compressed context (may be empty)."""

ROLLING_SUMMARY_HEADER = "Folded earlier stages (rolling summary):"
"""Header of the rolling summary of the stages folded out of a prompt."""
EARLIER_STAGES_HEADER = "Earlier stages (compressed summaries):"
"""Header of the compressed summaries of the earlier stages still in the prompt."""

_MAX_TRIM_ROUNDS = 8


@dataclass(frozen=True)
class StageInput:
    """What a stage sees: the request and the compressed context of the earlier stages.

    Attributes:
        stage: The stage's name.
        request: The user's request.
        summaries: ``(stage, summary)`` of the earlier stages still in the prompt, oldest
            first.
        rolling_summary: The rolling summary of the stages folded out of the prompt (empty
            while nothing is folded).
        thread_id: The thread the run belongs to.
        run_id: The run.
    """

    stage: str
    request: str
    summaries: tuple[tuple[str, str], ...] = ()
    rolling_summary: str = ""
    thread_id: str = ""
    run_id: str = ""

    @property
    def context(self) -> str:
        """The compressed context as prompt text: rolling summary, then the summaries.

        Example:
            >>> print(StageInput("plan", "Fix INC-1", (("select", "- tool: x"),), "- P1").context)
            Folded earlier stages (rolling summary):
            - P1
            <BLANKLINE>
            Earlier stages (compressed summaries):
            [select]
            - tool: x
        """
        blocks: list[str] = []
        if self.rolling_summary.strip():
            blocks.append(f"{ROLLING_SUMMARY_HEADER}\n{self.rolling_summary.strip()}")
        if self.summaries:
            body = "\n".join(f"[{name}]\n{text.strip()}" for name, text in self.summaries)
            blocks.append(f"{EARLIER_STAGES_HEADER}\n{body}")
        return "\n\n".join(blocks)

    def as_text(self) -> str:
        """The request and the context as one text (the default input of a non-model stage).

        Example:
            >>> StageInput("search", "Find INC-1").as_text()
            'Find INC-1'
        """
        context = self.context
        return f"{self.request.strip()}\n\n{context}" if context else self.request.strip()


PromptBuilder = Callable[[StageInput], list[BaseMessage]]
"""Builds a model stage's messages from what the stage sees."""


def stage_messages(system_prompt: str | None) -> PromptBuilder:
    """The default prompt of a model stage: ``system_prompt``, then the request and context.

    Args:
        system_prompt: The stage's instructions (``None``: no system message).

    Returns:
        A prompt builder.

    Example:
        >>> build = stage_messages("You plan.")
        >>> msgs = build(StageInput("plan", "Fix INC-1", (("select", "- tool: x"),)))
        >>> print(msgs[1].content)
        Request:
        Fix INC-1
        <BLANKLINE>
        Earlier stages (compressed summaries):
        [select]
        - tool: x
        <BLANKLINE>
        Write the plan result now.
    """

    def build(stage_input: StageInput) -> list[BaseMessage]:
        context = stage_input.context
        user = STAGE_USER_PROMPT.format(
            request=stage_input.request.strip(),
            context=f"\n{context}\n" if context else "",
            stage=stage_input.stage,
        )
        messages: list[BaseMessage] = [HumanMessage(user)]
        if system_prompt:
            messages.insert(0, SystemMessage(system_prompt))
        return messages

    return build


class StageInputTooLargeError(ValueError):
    """A stage prompt cannot be made to fit the window, even after degrading it.

    Attributes:
        stage: The stage.
        input_tokens: Prompt tokens after every degradation step.
        max_model_len: The window.
        needed_output_tokens: Output room the stage needs.
        safety_margin: Tokens kept free.
    """

    def __init__(
        self,
        stage: str,
        *,
        input_tokens: int,
        max_model_len: int,
        needed_output_tokens: int,
        safety_margin: int,
    ) -> None:
        self.stage = stage
        self.input_tokens = input_tokens
        self.max_model_len = max_model_len
        self.needed_output_tokens = needed_output_tokens
        self.safety_margin = safety_margin
        super().__init__(
            f"Stage {stage!r}: the prompt is {input_tokens} tokens after folding every earlier "
            f"summary and trimming the rolling summary and the request; with "
            f"{needed_output_tokens} output tokens and a safety margin of {safety_margin} it "
            f"needs {input_tokens + needed_output_tokens + safety_margin} > max_model_len "
            f"{max_model_len}. Serve a larger window, or lower the stage model's "
            "min_output_tokens."
        )


@dataclass(frozen=True)
class FittedPrompt:
    """A stage prompt that fits, its one budget plan, and what was done to make it fit.

    Attributes:
        messages: The prompt.
        plan: Its budget plan (``plan.input_tokens`` is the exact count,
            ``plan.max_tokens`` the output room).
        stage_input: What the stage saw after degrading (the folded context).
        degraded: The degradation actions, in the order they were taken.
        folded: Stages whose summaries were folded out of the prompt by this call.
    """

    messages: list[BaseMessage]
    plan: BudgetPlan
    stage_input: StageInput
    degraded: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)


def fold_summary(rolling: str, stage: str, summary: str) -> str:
    r"""The rolling summary with a folded stage's summary appended, under its name.

    Example:
        >>> print(fold_summary("[classify]\nbug", "select", " INC-7 "))
        [classify]
        bug
        [select]
        INC-7
    """
    return "\n".join(p for p in (rolling.strip(), f"[{stage}]\n{summary.strip()}") if p)


def fit_stage_prompt(
    stage_input: StageInput,
    build: PromptBuilder,
    *,
    plan: Callable[[list[BaseMessage]], BudgetPlan],
    counter: TokenCounter,
    rolling_summaries: Mapping[str, str] | None = None,
) -> FittedPrompt:
    """Build the stage prompt and degrade it, in the documented order, until it fits.

    Args:
        stage_input: What the stage sees before degrading.
        build: Makes the messages from a :class:`StageInput`.
        plan: Counts a prompt exactly and plans its budget (``ChatVLLM.get_budget_plan``).
        counter: Counts plain text (for trimming), as the model's tokenizer does.
        rolling_summaries: The rolling summaries that cover their stage and every stage
            before it: folding stage X puts ``rolling_summaries[X]`` in place of the
            summaries it covers; for a stage without one (none given, or after parallel
            branches one that covers its branch only), the folded summary is appended to the
            rolling summary as it is.

    Returns:
        The fitting prompt and its plan.

    Raises:
        StageInputTooLargeError: Nothing left to fold or trim and it still does not fit.
    """
    current = stage_input
    digests = rolling_summaries or {}
    degraded: list[str] = []
    folded: list[str] = []

    def measure(candidate: StageInput) -> tuple[list[BaseMessage], BudgetPlan]:
        messages = build(candidate)
        return messages, plan(messages)

    messages, budget = measure(current)
    while not budget.fits and current.summaries:
        (name, summary), *kept = current.summaries
        folded.append(name)
        rolling = digests.get(name) or fold_summary(current.rolling_summary, name, summary)
        before = budget.input_tokens
        current = replace(current, summaries=tuple(kept), rolling_summary=rolling)
        messages, budget = measure(current)
        degraded.append(
            f"folded the {name} summary into the rolling summary "
            f"({before} -> {budget.input_tokens} tokens)"
        )
    trims: tuple[tuple[Literal["rolling_summary", "request"], Literal["head", "tail"]], ...] = (
        ("rolling_summary", "tail"),
        ("request", "head"),
    )
    for attribute, keep in trims:
        source: str = getattr(current, attribute)
        if budget.fits or not source:
            continue
        original = counter.count_text(source)
        target = original
        text = source
        for _ in range(_MAX_TRIM_ROUNDS):
            if budget.fits or target == 0:
                break
            target = max(0, min(target - budget.shortfall, target - 1))
            text = truncate_to_tokens(source, target, counter, keep=keep)
            current = (
                replace(current, request=text)
                if attribute == "request"
                else replace(current, rolling_summary=text)
            )
            messages, budget = measure(current)
        label = attribute.replace("_", " ")
        degraded.append(
            f"trimmed the {label} from {original} to {counter.count_text(text)} tokens "
            f"(kept its {'newest' if keep == 'tail' else 'first'} part)"
        )
    if not budget.fits:
        raise StageInputTooLargeError(
            stage_input.stage,
            input_tokens=budget.input_tokens,
            max_model_len=budget.max_model_len,
            needed_output_tokens=budget.needed_output_tokens,
            safety_margin=budget.safety_margin,
        )
    return FittedPrompt(messages, budget, current, degraded, folded)
