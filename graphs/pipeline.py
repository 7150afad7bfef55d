"""The four-stage pipeline: classify → select → plan → execute, with compressed hand-offs.

Each stage node:

1. builds its prompt from the user's request and the compressed summaries of the earlier
   stages, never from earlier raw outputs. Nothing is said twice: while every earlier summary
   fits, the prompt carries them and no rolling summary; once stages are folded out, it
   carries the rolling summary as it was after the last folded stage (which covers exactly
   the folded stages) and the summaries of the stages after it;
2. makes the prompt fit the window, degrading in this order when it does not (each action is
   recorded in the stage's ledger entry):

   a. **fold** the oldest earlier summary out of the prompt, into the rolling summary, then
      the next oldest, and so on;
   b. **trim the rolling summary** of the folded stages, keeping its newest part;
   c. **trim the request**, keeping its beginning;
   d. if it still does not fit, raise :class:`StageInputTooLargeError`;

3. calls the reasoning model (a budget-aware ``ChatVLLM``: ``max_tokens`` is what the budget
   grants), stores the raw output in the LangGraph store under
   ``("stage_outputs", thread_id)`` / stage name;
4. compresses the output with :func:`~langchain_vllm_budget.compression.compress_stage_result`
   (summarizer model, hard cap ``summary_max_tokens``), updates the rolling summary (the
   run's running digest: the previous one plus the new summary, merged under its own cap
   without a model call unless ``rolling_summary_mode="llm"``), and writes the summary, the
   rolling summary and the ledger entry into the state.

``graph`` (no checkpointer, no store) is what ``langgraph.json`` serves: the LangGraph server
brings its own. :func:`build_graph` compiles the same graph with a checkpointer and a store for
use from Python; :func:`sqlite_persistence` and :func:`postgres_persistence` make those.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore

from graphs import prompts
from graphs.context import Context
from graphs.state import RAW_OUTPUT_NAMESPACE, InputState, StageLedger, State
from graphs.usage import track_model_calls
from langchain_vllm_budget.budget import BudgetPlan, TokenBudget
from langchain_vllm_budget.compression import (
    compress_stage_result,
    extractive_summary,
    truncate_to_tokens,
)

if TYPE_CHECKING:
    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "STAGES",
    "CounterFactory",
    "ModelFactory",
    "ModelRole",
    "StageInput",
    "StageInputTooLargeError",
    "build_graph",
    "build_stage_messages",
    "default_counter",
    "default_model",
    "fit_stage_input",
    "graph",
    "postgres_persistence",
    "raw_output_namespace",
    "sqlite_persistence",
]

STAGES: tuple[str, ...] = ("classify", "select", "plan", "execute")
"""The stages, in order (the seed's A → B → C → D)."""

ModelRole = Literal["reasoning", "summarizer"]
ModelFactory = Callable[[Context, ModelRole], BaseChatModel]
"""Makes the chat model for a role from the run's context."""
CounterFactory = Callable[[Context, BaseChatModel], "TokenCounter"]
"""Makes the token counter that measures prompts and summaries for the reasoning model."""

_MAX_TRIM_ROUNDS = 8


class StageInputTooLargeError(ValueError):
    """A stage prompt cannot be made to fit the window, even after degrading it.

    Attributes:
        stage: The stage.
        input_tokens: Prompt tokens after every degradation step.
        max_model_len: The window.
        needed_output_tokens: Output room the stage needs (``min_stage_output_tokens``).
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
            f"{max_model_len}. Serve a larger window, or lower min_stage_output_tokens."
        )


# --------------------------------------------------------------------------------------------
# Prompt building and the degrade order (pure, given a counter)
# --------------------------------------------------------------------------------------------


def build_stage_messages(
    stage: str,
    request: str,
    summaries: Sequence[tuple[str, str]],
    rolling_summary: str,
) -> list[BaseMessage]:
    """The prompt of ``stage``: request + rolling summary of folded stages + summaries.

    Args:
        stage: One of :data:`STAGES`.
        request: The user's request.
        summaries: ``(stage, summary)`` of the earlier stages that are still in the prompt
            (or, for a raw-forward baseline, their raw outputs).
        rolling_summary: The rolling summary of the stages folded out of the prompt; empty
            while nothing is folded (then no block is added).

    Returns:
        System and user messages.

    Example:
        >>> msgs = build_stage_messages("plan", "Fix INC-1", [("select", "- tool: x")], "- P1")
        >>> print(msgs[1].content)
        Request:
        Fix INC-1
        <BLANKLINE>
        Folded earlier stages (rolling summary):
        - P1
        <BLANKLINE>
        Earlier stages (compressed summaries):
        [select]
        - tool: x
        <BLANKLINE>
        Write the plan result now.
    """
    blocks: list[str] = []
    if rolling_summary.strip():
        blocks.append(f"{prompts.ROLLING_SUMMARY_HEADER}\n{rolling_summary.strip()}")
    if summaries:
        body = "\n".join(f"[{name}]\n{text.strip()}" for name, text in summaries)
        blocks.append(f"{prompts.EARLIER_STAGES_HEADER}\n{body}")
    context = "".join(f"\n{block}\n" for block in blocks)
    user = prompts.STAGE_USER_PROMPT.format(request=request.strip(), context=context, stage=stage)
    return [SystemMessage(prompts.STAGE_SYSTEM_PROMPTS[stage]), HumanMessage(user)]


@dataclass(frozen=True)
class StageInput:
    """A stage prompt that fits, and what was done to make it fit.

    Attributes:
        messages: The prompt.
        input_tokens: Its token count.
        plan: The budget plan for it (``plan.max_tokens`` is the output room).
        degraded: The degradation actions, in the order they were taken.
        folded: Stages whose summaries were folded out of the prompt by this call.
        rolling_summary: The rolling summary of the folded stages as it is in the prompt
            (maybe trimmed; empty while nothing is folded).
    """

    messages: list[BaseMessage]
    input_tokens: int
    plan: BudgetPlan
    degraded: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)
    rolling_summary: str = ""


def fit_stage_input(
    stage: str,
    request: str,
    summaries: Sequence[tuple[str, str]],
    rolling_summary: str,
    *,
    counter: TokenCounter,
    budget: TokenBudget,
    rolling_summaries: Mapping[str, str] | None = None,
) -> StageInput:
    """Build the stage prompt and degrade it, in the documented order, until it fits.

    Order: fold the oldest earlier summaries out, into the rolling summary, then trim the
    rolling summary (keeping its newest part), then trim the request (keeping its beginning).
    Trimming is done on the text blocks of one user message, so ``trim_messages`` (which
    drops whole messages) does not apply.

    Args:
        stage: The stage.
        request: The user's request.
        summaries: ``(stage, summary)`` of the earlier stages still in the prompt, oldest
            first.
        rolling_summary: The rolling summary of the stages already folded out (empty if none).
        counter: Counts the prompt as the server will.
        budget: The stage's budget; its ``max_model_len`` must be set.
        rolling_summaries: The rolling summary after each earlier stage. Folding stage X puts
            ``rolling_summaries[X]`` (which covers X and every stage before it) in place of
            the summaries it covers; without it, the folded summary is appended to the
            rolling summary as it is.

    Returns:
        The fitting prompt, its plan, and what was done.

    Raises:
        StageInputTooLargeError: Nothing left to drop or trim and it still does not fit.
    """
    kept = list(summaries)
    rolling = rolling_summary
    text = request
    degraded: list[str] = []
    folded: list[str] = []
    digests = rolling_summaries or {}

    def measure() -> tuple[list[BaseMessage], int, BudgetPlan]:
        messages = build_stage_messages(stage, text, kept, rolling)
        tokens = counter.count_messages(messages)
        return messages, tokens, budget.plan(tokens)

    messages, tokens, plan = measure()
    while not plan.fits and kept:
        name, summary = kept.pop(0)
        folded.append(name)
        rolling = digests.get(name) or "\n".join(
            part for part in (rolling.strip(), f"[{name}]\n{summary.strip()}") if part
        )
        before = tokens
        messages, tokens, plan = measure()
        degraded.append(
            f"folded the {name} summary into the rolling summary ({before} -> {tokens} tokens)"
        )
    for label, keep in (("rolling summary", "tail"), ("request", "head")):
        current = rolling if label == "rolling summary" else text
        if plan.fits or not current:
            continue
        original = counter.count_text(current)
        target = original
        for _ in range(_MAX_TRIM_ROUNDS):
            if plan.fits or target == 0:
                break
            target = max(0, min(target - plan.shortfall, target - 1))
            trimmed = truncate_to_tokens(current, target, counter, keep=keep)  # type: ignore[arg-type]
            if label == "rolling summary":
                rolling = trimmed
            else:
                text = trimmed
            messages, tokens, plan = measure()
        degraded.append(
            f"trimmed the {label} from {original} to {counter.count_text(trimmed)} tokens "
            f"(kept its {'newest' if keep == 'tail' else 'first'} part)"
        )
    if not plan.fits:
        raise StageInputTooLargeError(
            stage,
            input_tokens=tokens,
            max_model_len=plan.max_model_len,
            needed_output_tokens=plan.min_output_tokens,
            safety_margin=plan.safety_margin,
        )
    return StageInput(messages, tokens, plan, degraded, folded, rolling)


# --------------------------------------------------------------------------------------------
# Models, counters and the window
# --------------------------------------------------------------------------------------------


def _window(ctx: Context, model: BaseChatModel) -> int:
    """The context window: ``Context.max_model_len``, else what the model discovered."""
    if ctx.max_model_len:
        return ctx.max_model_len
    get_window = getattr(model, "get_max_model_len", None)
    if callable(get_window):
        return int(get_window())
    msg = (
        f"Cannot tell the context window of {type(model).__name__}: set Context.max_model_len "
        "(or VLLM_BUDGET_MAX_MODEL_LEN)."
    )
    raise ValueError(msg)


@functools.lru_cache(maxsize=16)
def default_model(ctx: Context, role: ModelRole) -> BaseChatModel:
    """The budget-aware ``ChatVLLM`` for ``role`` (cached per context).

    Args:
        ctx: The run's context.
        role: ``"reasoning"`` (stage calls) or ``"summarizer"`` (compression).

    Returns:
        The chat model.
    """
    from langchain_vllm_budget.chat_models import ChatVLLM

    reasoning = role == "reasoning"
    budget = TokenBudget(
        max_model_len=ctx.max_model_len or None,
        output_reserve=ctx.stage_max_tokens if reasoning else max(ctx.summary_max_tokens * 2, 64),
        safety_margin=ctx.safety_margin,
        min_output_tokens=min(
            ctx.min_stage_output_tokens, ctx.stage_max_tokens, max(ctx.summary_max_tokens, 1)
        ),
    )
    return ChatVLLM(
        model=ctx.reasoning_model if reasoning else ctx.summarizer,
        base_url=ctx.base_url if reasoning else ctx.summarizer_url,
        tokenizer=ctx.tokenizer_path or None,
        budget=budget,
        on_overflow="raise",
        temperature=ctx.temperature if reasoning else 0.1,
        extra_body=(
            {"repetition_penalty": ctx.repetition_penalty}
            if reasoning and ctx.repetition_penalty != 1.0
            else None
        ),
    )


@functools.lru_cache(maxsize=16)
def _context_counter(ctx: Context) -> TokenCounter:
    from langchain_vllm_budget.tokenizers import ServerTokenCounter, TransformersTokenCounter

    if ctx.tokenizer_path:
        return TransformersTokenCounter(ctx.tokenizer_path)
    return ServerTokenCounter(ctx.base_url, ctx.reasoning_model)


def default_counter(ctx: Context, model: BaseChatModel) -> TokenCounter:
    """The reasoning model's own counter, else one from the context.

    Args:
        ctx: The run's context.
        model: The reasoning model.

    Returns:
        The counter a ``ChatVLLM`` resolved (local tokenizer or the server's ``/tokenize``),
        else a transformers counter on ``ctx.tokenizer_path``, else the server's ``/tokenize``.
    """
    counter = getattr(model, "resolved_token_counter", None)
    if counter is not None and hasattr(counter, "count_messages"):
        return counter  # type: ignore[no-any-return]
    return _context_counter(ctx)


def raw_output_namespace(thread_id: str) -> tuple[str, str]:
    """Store namespace of a thread's raw stage outputs (the key is the stage name).

    Example:
        >>> raw_output_namespace("t-1")
        ('stage_outputs', 't-1')
    """
    return (RAW_OUTPUT_NAMESPACE, thread_id)


def _thread_id(runtime: Runtime[Context]) -> str:
    info = getattr(runtime, "execution_info", None)
    thread = getattr(info, "thread_id", None)
    if not thread:
        thread = get_config().get("configurable", {}).get("thread_id")
    return str(thread) if thread else "no-thread"


# --------------------------------------------------------------------------------------------
# Stage nodes
# --------------------------------------------------------------------------------------------


def _reply_budget(reply: BaseMessage) -> dict[str, Any]:
    """The budget the chat model reports for the call (``ChatVLLM``), JSON-able; else ``{}``."""
    meta = reply.response_metadata.get("budget") or {}
    if not isinstance(meta, dict):
        meta = getattr(meta, "as_dict", dict)()
    return {
        str(key): value
        for key, value in meta.items()
        if value is None or isinstance(value, (str, int, float, bool))
    }


def _folded_digest(state: State, index: int) -> str:
    """The rolling summary covering exactly the stages folded before stage ``index``.

    Folding always takes the oldest summaries first, so the folded stages are the first
    ones, and the rolling summary after the last of them covers them all.
    """
    folded = [name for name in STAGES[:index] if name in state.folded]
    if not folded:
        return ""
    return state.rolling_summaries.get(folded[-1], state.rolling_summary)


def _reply_numbers(
    reply: BaseMessage, stage_input: StageInput, counter: TokenCounter
) -> dict[str, int]:
    usage = getattr(reply, "usage_metadata", None) or {}
    meta = _reply_budget(reply)
    return {
        "input_tokens": int(
            meta.get("input_tokens") or usage.get("input_tokens") or stage_input.input_tokens
        ),
        "output_tokens": int(usage.get("output_tokens") or counter.count_text(reply.text)),
        "max_tokens_granted": int(meta.get("max_tokens") or stage_input.plan.max_tokens),
    }


class _StageNode(Protocol):
    """A stage node as LangGraph calls it (the runtime is injected by name)."""

    def __call__(self, state: State, *, runtime: Runtime[Context]) -> dict[str, Any]: ...


def _stage_node(
    stage: str, model_factory: ModelFactory, counter_factory: CounterFactory
) -> _StageNode:
    index = STAGES.index(stage)

    def run_stage(state: State, *, runtime: Runtime[Context]) -> dict[str, Any]:
        ctx = runtime.context or Context()
        request = state.request.strip()
        if not request:
            msg = "The pipeline input needs a non-empty 'request', e.g. {'request': 'Fix INC-1'}."
            raise ValueError(msg)
        store = runtime.store
        if store is None:
            msg = (
                "The pipeline needs a store for raw stage outputs: compile it with "
                "graphs.pipeline.build_graph(store=...) or run it under `langgraph dev`."
            )
            raise RuntimeError(msg)
        reasoning = model_factory(ctx, "reasoning")
        summarizer = model_factory(ctx, "summarizer")
        counter = counter_factory(ctx, reasoning)
        window = _window(ctx, reasoning)
        output_reserve = max(1, min(ctx.stage_max_tokens, window - 1))
        budget = TokenBudget(
            max_model_len=window,
            output_reserve=output_reserve,
            safety_margin=ctx.safety_margin,
            min_output_tokens=min(ctx.min_stage_output_tokens, output_reserve),
        )
        earlier = [
            (name, state.summaries[name])
            for name in STAGES[:index]
            if name in state.summaries and name not in state.folded
        ]
        stage_input = fit_stage_input(
            stage,
            request,
            earlier,
            _folded_digest(state, index),
            counter=counter,
            budget=budget,
            rolling_summaries=state.rolling_summaries,
        )
        reply = reasoning.invoke(stage_input.messages, max_tokens=stage_input.plan.max_tokens)
        raw = reply.text
        numbers = _reply_numbers(reply, stage_input, counter)

        namespace = raw_output_namespace(_thread_id(runtime))
        raw_tokens = counter.count_text(raw) if raw else 0
        store.put(
            namespace,
            stage,
            {"stage": stage, "content": raw, "tokens": raw_tokens, "request": request},
        )
        raw_forward = [
            (name, str(item.value.get("content", "")))
            for name in STAGES[:index]
            if (item := store.get(namespace, name)) is not None
        ]
        raw_forward_tokens = counter.count_messages(
            build_stage_messages(stage, request, raw_forward, "")
        )

        with track_model_calls(counter) as usage:
            summary = compress_stage_result(
                raw,
                model=summarizer,
                stage_name=stage,
                user_request=request,
                max_tokens=ctx.summary_max_tokens,
                tokenizer=counter,
                chunk_tokens=_window(ctx, summarizer),
            )
            rolling = _update_rolling_summary(
                state.rolling_summary, stage, summary.summary, request, summarizer, counter, ctx
            )
        entry: StageLedger = {
            "stage": stage,
            **numbers,  # type: ignore[typeddict-item]
            "raw_forward_input_tokens": raw_forward_tokens,
            "raw_tokens": summary.raw_tokens,
            "summary_tokens": summary.summary_tokens,
            "ratio": summary.ratio,
            "retention": summary.retention,
            "entities": len(summary.entities),
            "missing": list(summary.missing),
            "method": summary.method,
            "fallback_reason": summary.fallback_reason,
            "summary_cap": ctx.summary_max_tokens,
            "rolling_summary_tokens": counter.count_text(rolling) if rolling else 0,
            "degraded": stage_input.degraded,
            "tokenizer": str(getattr(counter, "name", type(counter).__name__)),
            "max_model_len": window,
            "folded_summary_tokens": (
                counter.count_text(stage_input.rolling_summary)
                if stage_input.rolling_summary
                else 0
            ),
            "summarizer_calls": usage.calls,
            "summarizer_input_tokens": usage.input_tokens,
            "summarizer_output_tokens": usage.output_tokens,
            "budget": _reply_budget(reply),
        }
        return {
            "summaries": {stage: summary.summary},
            "rolling_summary": rolling,
            "rolling_summaries": {stage: rolling},
            "ledger": {stage: entry},
            "folded": {name: stage for name in stage_input.folded},
        }

    run_stage.__name__ = stage
    run_stage.__doc__ = f"Stage {stage}: prompt, call, store the raw output, compress."
    return run_stage


def _update_rolling_summary(
    previous: str,
    stage: str,
    summary: str,
    request: str,
    summarizer: BaseChatModel,
    counter: TokenCounter,
    ctx: Context,
) -> str:
    """The previous rolling summary plus the stage summary, under the rolling cap.

    Appended as they are while they fit; then merged by the entity-first extractive summary
    (no model call: both inputs are already compressed and entity-checked), or, with
    ``rolling_summary_mode="llm"``, by a guarded summarizer call (the seed's
    ``_create_rolling_summary``).
    """
    merged = "\n".join(part for part in (previous.strip(), f"[{stage}]\n{summary}") if part)
    if counter.count_text(merged) <= ctx.rolling_summary_max_tokens:
        return merged
    if ctx.rolling_summary_mode == "extractive":
        return extractive_summary(
            merged, max_tokens=ctx.rolling_summary_max_tokens, tokenizer=counter
        ).summary
    result = compress_stage_result(
        merged,
        model=summarizer,
        stage_name="stage summaries",
        user_request=request,
        max_tokens=ctx.rolling_summary_max_tokens,
        tokenizer=counter,
        prompt_template=prompts.ROLLING_SUMMARY_PROMPT,
    )
    return result.summary


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------


def _builder(
    model_factory: ModelFactory, counter_factory: CounterFactory
) -> StateGraph[State, Context, InputState, State]:
    builder = StateGraph(State, context_schema=Context, input_schema=InputState)
    previous = START
    for stage in STAGES:
        builder.add_node(stage, _stage_node(stage, model_factory, counter_factory))
        builder.add_edge(previous, stage)
        previous = stage
    builder.add_edge(previous, END)
    return builder


def build_graph(
    checkpointer: BaseCheckpointSaver[Any] | None = None,
    store: BaseStore | None = None,
    *,
    model_factory: ModelFactory | None = None,
    counter_factory: CounterFactory | None = None,
) -> CompiledStateGraph[State, Context, InputState, State]:
    """Compile the pipeline with persistence.

    Args:
        checkpointer: Makes runs resumable (see :func:`sqlite_persistence`,
            :func:`postgres_persistence`); ``None`` for none.
        store: Where raw stage outputs go; required to run the graph.
        model_factory: Makes the chat models (default: :func:`default_model`, ``ChatVLLM``).
        counter_factory: Makes the token counter (default: :func:`default_counter`).

    Returns:
        The compiled graph.
    """
    builder = _builder(model_factory or default_model, counter_factory or default_counter)
    return builder.compile(checkpointer=checkpointer, store=store, name="vllm-budget-pipeline")


@contextmanager
def sqlite_persistence(path: str | Path) -> Iterator[tuple[BaseCheckpointSaver[Any], BaseStore]]:
    """A SQLite checkpointer and store in one database file (created if missing).

    Args:
        path: The database file.

    Yields:
        ``(checkpointer, store)`` for :func:`build_graph`.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.store.sqlite import SqliteStore

    db = Path(path)
    db.parent.mkdir(parents=True, exist_ok=True)
    with (
        SqliteSaver.from_conn_string(str(db)) as saver,
        SqliteStore.from_conn_string(str(db)) as store,
    ):
        saver.setup()
        store.setup()
        yield saver, store


@contextmanager
def postgres_persistence(dsn: str) -> Iterator[tuple[BaseCheckpointSaver[Any], BaseStore]]:
    """A PostgreSQL checkpointer and store (needs the ``postgres`` extra).

    Args:
        dsn: A libpq connection string, e.g. ``postgresql://user@host:5432/db``.

    Yields:
        ``(checkpointer, store)`` for :func:`build_graph`; tables are created if missing.
    """
    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.store.postgres import PostgresStore

    with PostgresSaver.from_conn_string(dsn) as saver, PostgresStore.from_conn_string(dsn) as store:
        saver.setup()
        store.setup()
        yield saver, store


graph = _builder(default_model, default_counter).compile(name="vllm-budget-pipeline")
"""The pipeline as ``langgraph.json`` serves it (the server provides checkpointer and store)."""
