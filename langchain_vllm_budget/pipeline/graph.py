"""The seed's pipeline: classify -> select -> plan -> execute, from compressed stages.

Each stage is :func:`~langchain_vllm_budget.stages.compressed_stage` over a budget-aware
``ChatVLLM``: it sees the request and the earlier stages' compressed summaries (never their
raw outputs), its prompt is fitted to the window, its raw output goes to the store and its
summary and ledger entry into the state. ``graph`` is what ``vllm-budget run`` runs by default
and what the app folder's ``langgraph.json`` serves (the LangGraph server brings the
checkpointer and the store); :func:`build_pipeline` builds the same graph with other models,
e.g. for tests.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import openai
from langchain_core.language_models import BaseChatModel
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from langchain_vllm_budget import ChatVLLM, TokenBudget
from langchain_vllm_budget.chat_models._discovery import served_model_names
from langchain_vllm_budget.chat_models._error_mapping import ServerTarget, map_openai_error
from langchain_vllm_budget.pipeline import prompts
from langchain_vllm_budget.pipeline.context import Context
from langchain_vllm_budget.pipeline.state import InputState, State
from langchain_vllm_budget.stages import ModelSpec, build_stage_graph, compressed_stage

__all__ = ["STAGES", "build_pipeline", "graph", "make_model"]

STAGES: tuple[str, ...] = ("classify", "select", "plan", "execute")
"""The stages, in order (the seed's A -> B -> C -> D)."""

Role = Literal["reasoning", "summarizer"]


@functools.lru_cache(maxsize=16)
def _served_model(base_url: str) -> str:
    """The one model a server serves (for a context that names none; asked with the API key)."""
    try:
        served = served_model_names(base_url)
    except openai.APIError as exc:
        # The typed error ChatVLLM's discovery gives (down, timed out, a rejected key; a
        # wrong URL is raised typed already); anything else says which setting to give.
        mapped = map_openai_error(exc, ServerTarget(base_url=base_url, model="(any)"))
        if mapped is not exc:
            raise mapped from exc
        msg = (
            f"No model is configured and the server at {base_url} cannot be asked for one "
            f"({exc}): set Context.model or VLLM_BUDGET_MODEL."
        )
        raise ValueError(msg) from exc
    if len(served) != 1:
        msg = (
            f"No model is configured and the server at {base_url} serves "
            f"{list(served) or 'none'}: set Context.model or VLLM_BUDGET_MODEL to one of them."
        )
        raise ValueError(msg)
    return served[0]


@functools.lru_cache(maxsize=16)
def make_model(ctx: Context, role: Role) -> ChatVLLM:
    """The budget-aware chat model for ``role`` (cached per context).

    Args:
        ctx: The run's context.
        role: ``"reasoning"`` (the stage calls) or ``"summarizer"`` (compression).

    Returns:
        The stage model: its budget is the context's (window, output reserve, margin,
        minimum output); the summarizer (a smaller model on its own server in the two-model
        layout) has its own window and tokenizer, and its output is the summary cap.
    """
    if role == "reasoning":
        return ChatVLLM(
            model=ctx.model or _served_model(ctx.base_url),
            base_url=ctx.base_url,
            tokenizer=ctx.tokenizer,
            budget=TokenBudget(
                max_model_len=ctx.max_model_len,
                output_reserve=ctx.output_reserve,
                safety_margin=ctx.safety_margin,
                min_output_tokens=min(ctx.min_output_tokens, ctx.output_reserve),
            ),
            temperature=ctx.temperature,
            extra_body=(
                {"repetition_penalty": ctx.repetition_penalty}
                if ctx.repetition_penalty != 1.0
                else None
            ),
        )
    main_model = ctx.summarizer_url == ctx.base_url and not ctx.summarizer_model
    reserve = max(ctx.summary_max_tokens, ctx.rolling_summary_max_tokens)
    return ChatVLLM(
        model=ctx.summarizer or _served_model(ctx.summarizer_url),
        base_url=ctx.summarizer_url,
        tokenizer=ctx.summarizer_tokenizer or (ctx.tokenizer if main_model else None),
        budget=TokenBudget(
            max_model_len=ctx.summarizer_max_model_len
            or (ctx.max_model_len if main_model else None),
            output_reserve=reserve,
            safety_margin=ctx.safety_margin,
            min_output_tokens=min(16, reserve),
        ),
        temperature=0.0,
    )


def _context(runtime: Runtime[Any]) -> Context:
    context = runtime.context
    if isinstance(context, Context):
        return context
    return Context(**context) if isinstance(context, dict) else Context()


def _reasoning(runtime: Runtime[Any]) -> BaseChatModel:
    return make_model(_context(runtime), "reasoning")


def _summarizer(runtime: Runtime[Any]) -> BaseChatModel:
    return make_model(_context(runtime), "summarizer")


def build_pipeline(
    model: ModelSpec = _reasoning,
    summarizer: ModelSpec | None = _summarizer,
    *,
    budget: TokenBudget | None = None,
) -> StateGraph[State, Context, InputState, State]:
    """The four stages as a graph (uncompiled: compile it with a checkpointer and a store).

    Args:
        model: The stage model, or a function of the runtime that makes it (default:
            :func:`make_model` from the run's :class:`Context`).
        summarizer: The summarizer, likewise; ``None``: extractive summaries only.
        budget: The budget of a stage model that does not plan its own (not ChatVLLM).

    Returns:
        ``START -> start_run -> classify -> select -> plan -> execute -> END``.
    """
    stages = [
        compressed_stage(
            name,
            model=model,
            system_prompt=prompts.STAGE_SYSTEM_PROMPTS[name],
            summarizer=summarizer,
            budget=budget,
        )
        for name in STAGES
    ]
    return build_stage_graph(
        stages, state_schema=State, context_schema=Context, input_schema=InputState
    )


graph = build_pipeline().compile(name="pipeline")
"""The compiled pipeline (``vllm-budget run``'s default; the server or the CLI adds persistence)."""
