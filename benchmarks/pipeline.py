"""Benchmark 4: the 4-stage pipeline with compression vs passing raw outputs forward.

*Compressed* is the real graph (:func:`graphs.graph.build_pipeline`): each stage sees the
request, the compressed summaries of earlier stages and the rolling summary. *Raw forward*
is the seed's baseline: the same stage prompts
(:func:`langchain_vllm_budget.stages.stage_messages`) carrying every earlier stage's raw
output, no rolling summary, sent through the same budget-aware ``ChatVLLM``
(``on_overflow="raise"``: a prompt that outgrows the window is reported, not sent). Both run
on the same server with the same request and output limits; per stage the prompt tokens,
output tokens and wall time
are recorded, and for the compressed run the summary's tokens, ratio and entity retention.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.store.memory import InMemoryStore
from pydantic import SecretStr

from benchmarks.servers import Served
from graphs.context import Context
from graphs.graph import STAGES, build_pipeline
from graphs.prompts import DEMO_REQUEST, STAGE_SYSTEM_PROMPTS
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.chat_models import ChatVLLM
from langchain_vllm_budget.errors import VLLMContextOverflowError
from langchain_vllm_budget.stages import StageInput, stage_messages

__all__ = ["run_pipeline"]


def _context(served: Served, *, quick: bool) -> Context:
    return Context(
        base_url=served.base_url,
        model=served.model,
        tokenizer=str(served.model_path),
        max_model_len=served.max_model_len,
        output_reserve=64 if quick else 192,
        min_output_tokens=32 if quick else 64,
        safety_margin=32,
        summary_max_tokens=32 if quick else 48,
        rolling_summary_max_tokens=48 if quick else 64,
        temperature=0.0,
    )


def _raw_forward(ctx: Context) -> dict[str, Any]:
    budget = TokenBudget(
        max_model_len=ctx.max_model_len,
        output_reserve=ctx.output_reserve,
        safety_margin=ctx.safety_margin,
        min_output_tokens=ctx.min_output_tokens,
    )
    model = ChatVLLM(
        model=ctx.model,
        base_url=ctx.base_url,
        api_key=SecretStr("x"),
        tokenizer=ctx.tokenizer,
        budget=budget,
        on_overflow="raise",
        temperature=ctx.temperature,
    )
    outputs: list[tuple[str, str]] = []
    stages: list[dict[str, Any]] = []
    started = time.perf_counter()
    for stage in STAGES:
        build = stage_messages(STAGE_SYSTEM_PROMPTS[stage])
        messages = build(StageInput(stage, DEMO_REQUEST, tuple(outputs)))
        tokens = model.get_num_tokens_from_messages(messages)
        entry: dict[str, Any] = {"stage": stage, "input_tokens": tokens}
        stage_start = time.perf_counter()
        try:
            reply = model.invoke(messages)
        except VLLMContextOverflowError as exc:
            entry.update(overflow=True, shortfall=exc.shortfall, seconds=0.0)
            stages.append(entry)
            # The stage cannot run: later stages get its (missing) output as empty text.
            outputs.append((stage, ""))
            continue
        usage: dict[str, Any] = dict(reply.usage_metadata or {})
        entry.update(
            overflow=False,
            output_tokens=usage.get("output_tokens"),
            seconds=round(time.perf_counter() - stage_start, 2),
        )
        stages.append(entry)
        outputs.append((stage, reply.text))
    return {
        "stages": stages,
        "total_prompt_tokens": sum(s["input_tokens"] for s in stages),
        "overflows": sum(1 for s in stages if s["overflow"]),
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_pipeline(served: Served, *, quick: bool = False) -> dict[str, Any]:
    """Run both pipelines once on ``served`` and report per-stage numbers.

    Args:
        served: A real instruct model's server (SmolLM2).
        quick: Smaller output limits (a smoke run).

    Returns:
        ``{"settings", "compressed": {...}, "raw_forward": {...}}``.
    """
    ctx = _context(served, quick=quick)
    from langgraph.checkpoint.memory import InMemorySaver

    graph = build_pipeline().compile(checkpointer=InMemorySaver(), store=InMemoryStore())
    config: RunnableConfig = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex[:8]}"}}
    stage_seconds: dict[str, float] = {}
    started = last = time.perf_counter()
    for update in graph.stream(
        {"request": DEMO_REQUEST}, config=config, context=ctx, stream_mode="updates"
    ):
        now = time.perf_counter()
        for stage in update:
            stage_seconds[stage] = round(now - last, 2)
        last = now
    compressed_seconds = round(time.perf_counter() - started, 2)
    ledger: dict[str, Any] = dict(graph.get_state(config).values.get("ledger") or {})
    compressed_stages = [
        {
            "stage": stage,
            "input_tokens": ledger[stage]["input_tokens"],
            "output_tokens": ledger[stage]["output_tokens"],
            "raw_tokens": ledger[stage]["raw_tokens"],
            "summary_tokens": ledger[stage]["summary_tokens"],
            "ratio": ledger[stage]["ratio"],
            "retention": ledger[stage]["retention"],
            "entities": ledger[stage]["entities"],
            "method": ledger[stage]["method"],
            "rolling_summary_tokens": ledger[stage]["rolling_summary_tokens"],
            "degraded": ledger[stage]["degraded"],
            "seconds": stage_seconds.get(stage),
        }
        for stage in STAGES
        if stage in ledger
    ]
    raw = _raw_forward(ctx)
    first = compressed_stages[0]["input_tokens"] if compressed_stages else 0
    raw_first = raw["stages"][0]["input_tokens"]
    return {
        "model": served.model,
        "max_model_len": served.max_model_len,
        "settings": {
            "stage_max_tokens": ctx.output_reserve,
            "summary_max_tokens": ctx.summary_max_tokens,
            "rolling_summary_max_tokens": ctx.rolling_summary_max_tokens,
        },
        "compressed": {
            "stages": compressed_stages,
            "total_prompt_tokens": sum(s["input_tokens"] for s in compressed_stages),
            "context_growth": round(compressed_stages[-1]["input_tokens"] / first, 2)
            if first
            else None,
            "seconds": compressed_seconds,
        },
        "raw_forward": {
            **raw,
            "context_growth": round(raw["stages"][-1]["input_tokens"] / raw_first, 2),
        },
    }
