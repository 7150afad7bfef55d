"""Benchmark 4: the 4-stage pipeline, compressed hand-offs vs raw outputs forward.

*Compressed* is the real graph
(:func:`langchain_vllm_budget.pipeline.graph.build_pipeline`, run with ``graph.ainvoke``: the
async nodes): each stage sees the request and the compressed summaries
of the earlier stages. *Raw forward* is the seed's baseline: the same stage prompts
(:func:`langchain_vllm_budget.stages.stage_messages`) carrying every earlier stage's raw
output, sent one after the other through the same budget-aware ``ChatVLLM``. Same server,
request, sampling and output limits; every model call is recorded (:mod:`benchmarks.calls`:
stage calls and summarizer calls apart, with their time and tokens) and vLLM's own counters
are read before and after each run (:mod:`benchmarks.metrics`).

Two scenarios, both at the package's hand-off defaults (``summary_max_tokens``,
``handoff_verbatim_share``, ``rolling_summary_max_tokens``, ``compression``: nothing is
overridden; each result records the values it ran with, read from the run's ``Context``):

* **no window pressure** (:data:`RELAXED`): outputs up to 256 tokens, raw forwarding stays
  inside the 2,048-token window; the goal is a wall time of at most 1.05x raw forwarding's.
  Raw forwarding, compressed with ``compression="auto"`` (a summarizer call only when the
  extractive summary would lose an entity) and compressed with ``"llm"`` (always ask the
  summarizer for an output that is compressed: the seed's behaviour), alternated (raw, auto,
  auto, raw, then llm) with vLLM's prefix cache reset before each run when the server allows
  it (``VLLM_SERVER_DEV_MODE``), so no run reuses another's prefill.
* **the window under pressure** (:data:`PRESSURE`): the demo's window and stage outputs
  (``vllm-budget run``'s local output reserve, minimum output and margin: 512-token stage
  outputs in a 2,048-token window). Raw forwarding outgrows the window by the last stage; at
  every stage whose raw prompt leaves less than the output reserve, the same prompt is also
  sent through plain ``ChatOpenAI`` (``max_tokens`` = the reserve) and the seed's chars/4
  client, and each answer is classified like the overflow sweep's. The compressed pipeline
  and raw forwarding run side by side (two sequences on the server). The goal: the
  compressed pipeline grants every stage its full output reserve, where raw forwarding does
  not (a stage truncated, refused or overflowing).

Retention is scored against the package's extracted entities and against the request's
hand-labelled must-keep facts (``benchmarks/data/must_keep.json``) that each raw output repeats.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import traceback
import uuid
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from typing import Any

import openai
from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore

from benchmarks.calls import CallRecorder
from benchmarks.metrics import counter_delta, scrape
from benchmarks.overflow_sweep import classify, seed_max_tokens
from benchmarks.requests import PipelineRequest, request_variant
from benchmarks.retention import Retention, must_keep_retention
from benchmarks.servers import Served, reset_prefix_cache
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.cli.run import _LOCAL_DEFAULTS
from langchain_vllm_budget.errors import VLLMContextOverflowError
from langchain_vllm_budget.pipeline.context import Context
from langchain_vllm_budget.pipeline.graph import STAGES, build_pipeline, make_model
from langchain_vllm_budget.pipeline.prompts import STAGE_SYSTEM_PROMPTS
from langchain_vllm_budget.stages import StageInput, stage_messages

__all__ = [
    "PRESSURE",
    "RELAXED",
    "Scenario",
    "run_compressed",
    "run_pipeline",
    "run_raw_forward",
    "warm_up",
]


@dataclass(frozen=True)
class Scenario:
    """The output limits of a pipeline run (the hand-off settings are the package defaults).

    Attributes:
        key: Short name (the results' key).
        title: What it shows.
        output_reserve: Most tokens a stage may write (``max_tokens``).
        min_output_tokens: Least output room a stage call needs.
        safety_margin: Tokens kept free in the window.
    """

    key: str
    title: str
    output_reserve: int
    min_output_tokens: int
    safety_margin: int = 32

    def context(self, served: Served, compression: str = "auto") -> Context:
        """The graph's context for this scenario on ``served``."""
        return Context(
            base_url=served.base_url,
            model=served.model,
            tokenizer=str(served.model_path),
            max_model_len=served.max_model_len,
            output_reserve=self.output_reserve,
            min_output_tokens=self.min_output_tokens,
            safety_margin=self.safety_margin,
            compression=compression,
            temperature=0.0,
        )

    def settings(self, served: Served) -> dict[str, Any]:
        """Every setting the scenario's runs use: its limits and the hand-off defaults."""
        ctx = self.context(served)
        return {
            **asdict(self),
            "max_model_len": served.max_model_len,
            "summary_max_tokens": ctx.summary_max_tokens,
            "handoff_verbatim_share": ctx.handoff_verbatim_share,
            "rolling_summary_max_tokens": ctx.rolling_summary_max_tokens,
            "rolling_summary_mode": ctx.rolling_summary_mode,
            "compression": "auto (llm: the variant that always asks the summarizer)",
            "temperature": ctx.temperature,
            "repetition_penalty": ctx.repetition_penalty,
        }


RELAXED = Scenario("relaxed", "no window pressure", 256, 64)
"""Outputs up to 256 tokens; raw forwarding's largest stage call stays near 1,400 of 2,048
tokens."""
PRESSURE = Scenario(
    "pressure",
    "the window under pressure (make demo's window and stage outputs)",
    output_reserve=_LOCAL_DEFAULTS["output_reserve"],
    min_output_tokens=_LOCAL_DEFAULTS["min_output_tokens"],
    safety_margin=_LOCAL_DEFAULTS["safety_margin"],
)
"""The demo's window and output limits (``vllm-budget run`` on the embedded server)."""


def _budget(ctx: Context) -> TokenBudget:
    """The stage budget (used only by a stage model that does not plan its own)."""
    return TokenBudget(
        max_model_len=ctx.max_model_len,
        output_reserve=ctx.output_reserve,
        safety_margin=ctx.safety_margin,
        min_output_tokens=ctx.min_output_tokens,
    )


def warm_up(served: Served, scenario: Scenario) -> None:
    """Resolve the stage and summarizer models' counters once, before any concurrent run.

    Loading a tokenizer from several threads at once fails (``from transformers import
    AutoTokenizer`` is not thread-safe on first import), and concurrent pipelines would each
    resolve the shared model's counter in a worker thread; this also fetches ``/v1/models``.
    """
    for compression in ("auto", "llm"):
        ctx = scenario.context(served, compression)
        for role in ("reasoning", "summarizer"):
            model = make_model(ctx, role)  # type: ignore[arg-type]
            model.get_max_model_len()
            _ = model.resolved_token_counter


def _config(recorder: CallRecorder, pipeline: str, **metadata: Any) -> RunnableConfig:
    return {"callbacks": [recorder], "metadata": {"pipeline": pipeline, **metadata}}


async def run_compressed(
    served: Served,
    scenario: Scenario,
    request: PipelineRequest,
    *,
    compression: str = "auto",
    recorder: CallRecorder | None = None,
    pipeline: str = "compressed",
    keep_text: bool = False,
) -> dict[str, Any]:
    """One run of the compressed pipeline (``graph.ainvoke``), measured per stage.

    ``keep_text`` adds each stage's raw output and summary to the result.

    Returns:
        ``{"seconds", "stages": [...], "calls", "prompt_tokens", "must_keep", ...}``.
    """
    recorder = recorder or CallRecorder()
    ctx = scenario.context(served, compression)
    store = InMemoryStore()
    graph = build_pipeline(budget=_budget(ctx)).compile(checkpointer=InMemorySaver(), store=store)
    config = _config(recorder, pipeline)
    config["configurable"] = {"thread_id": f"bench-{uuid.uuid4().hex[:8]}"}
    started = time.perf_counter()
    final = await graph.ainvoke({"request": request.text}, config=config, context=ctx)
    seconds = time.perf_counter() - started
    ledger: dict[str, Any] = final["ledger"]
    summaries: dict[str, str] = final["summaries"]
    stages: list[dict[str, Any]] = []
    kept_total = Retention(0, 0)
    for stage in STAGES:
        if stage not in ledger:
            continue
        entry = ledger[stage]
        *namespace, key = entry["raw_output"]
        item = store.get(tuple(namespace), key)
        raw = str(item.value.get("content", "")) if item is not None else ""
        kept = must_keep_retention(raw, summaries[stage], request.must_keep)
        kept_total = kept_total + kept
        stages.append(
            {
                "stage": stage,
                "input_tokens": entry.get("input_tokens"),
                "output_tokens": entry.get("output_tokens"),
                "granted": entry.get("max_tokens"),
                "raw_tokens": entry["raw_tokens"],
                "summary_tokens": entry["summary_tokens"],
                "summary_cap": entry["summary_cap"],
                "verbatim_limit": entry.get("verbatim_limit"),
                "ratio": entry["ratio"],
                "retention": entry["retention"],
                "entities": entry["entities"],
                "method": entry["method"],
                "summarizer_calls": entry["summarizer_calls"],
                "degraded": entry.get("degraded", []),
                "seconds": entry.get("seconds"),
                "must_keep": kept.as_dict(),
                **({"raw_output": raw, "summary": summaries[stage]} if keep_text else {}),
            }
        )
    mine = [r for r in recorder.records if r.pipeline == pipeline]
    return {
        "variant": f"compressed ({compression})",
        "seconds": round(seconds, 2),
        "stages": stages,
        "calls": recorder.totals(mine),
        "prompt_tokens": sum(int(s["input_tokens"] or 0) for s in stages),
        "output_tokens": sum(int(s["output_tokens"] or 0) for s in stages),
        "summarizer_calls": sum(s["summarizer_calls"] for s in stages),
        "every_stage_full_reserve": all(s["granted"] == ctx.output_reserve for s in stages),
        "verbatim_stages": sum(s["method"] == "verbatim" for s in stages),
        "extracted_retention_min": min((s["retention"] for s in stages), default=1.0),
        "must_keep": kept_total.as_dict(),
    }


async def _probe(
    served: Served, ctx: Context, messages: list[Any], stage: str
) -> dict[str, dict[str, Any]]:
    """What plain ChatOpenAI and the seed's client do with a raw prompt that does not fit."""
    common: dict[str, Any] = {
        "model": served.model,
        "base_url": served.base_url,
        "api_key": "x",
        "temperature": ctx.temperature,
        "max_retries": 0,
        "extra_body": {"repetition_penalty": ctx.repetition_penalty},
    }
    asks = {
        "ChatOpenAI (plain)": ctx.output_reserve,
        "seed client (chars/4)": seed_max_tokens(
            messages, int(ctx.max_model_len or 0), None, reserve=ctx.output_reserve
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    for client, max_tokens in asks.items():
        model = ChatOpenAI(**common, max_tokens=max_tokens)
        try:
            reply = await model.ainvoke(messages, config={"metadata": {"stage": stage}})
        except openai.BadRequestError as exc:
            out[client] = {
                "outcome": "length_400",
                "sent_max_tokens": max_tokens,
                "error": str(exc.message)[:160],
            }
            continue
        usage: dict[str, Any] = dict(reply.usage_metadata or {})
        result = {
            "outcome": "sent",
            "finish_reason": reply.response_metadata.get("finish_reason"),
            "completion_tokens": usage.get("output_tokens"),
        }
        out[client] = {
            "outcome": classify(result, max_tokens),
            "sent_max_tokens": max_tokens,
            "finish_reason": result["finish_reason"],
            "completion_tokens": result["completion_tokens"],
        }
    return out


async def run_raw_forward(
    served: Served,
    scenario: Scenario,
    request: PipelineRequest,
    *,
    recorder: CallRecorder | None = None,
    pipeline: str = "raw",
    probe: bool = False,
    keep_text: bool = False,
) -> dict[str, Any]:
    """One run of raw forwarding: every earlier raw output in every stage prompt.

    Stages go through the budget-aware ``ChatVLLM`` (``on_overflow="raise"``): a stage whose
    prompt leaves less than the output reserve gets what is left, reported; one that leaves
    less than ``min_output_tokens`` is refused before sending and the pipeline stops there.

    Args:
        served: The server.
        scenario: Output limits.
        request: The request.
        recorder: Records the calls.
        pipeline: The run's name in the recorder.
        probe: Also send each stage prompt that leaves less than the reserve through plain
            ``ChatOpenAI`` and the seed's client (:func:`_probe`).
        keep_text: Add each stage's output to the result.

    Returns:
        ``{"seconds", "stages": [...], "completed", "stopped_at", ...}``.
    """
    recorder = recorder or CallRecorder()
    ctx = scenario.context(served)
    model = make_model(ctx, "reasoning")
    counter = await asyncio.to_thread(lambda: model.resolved_token_counter)
    window = int(ctx.max_model_len or 0)
    outputs: list[tuple[str, str]] = []
    stages: list[dict[str, Any]] = []
    kept_total = Retention(0, 0)
    stopped_at: str | None = None
    started = time.perf_counter()
    for stage in STAGES:
        messages = stage_messages(STAGE_SYSTEM_PROMPTS[stage])(
            StageInput(stage, request.text, tuple(outputs))
        )
        tokens = counter.count_messages(messages)
        room = window - tokens - ctx.safety_margin
        entry: dict[str, Any] = {
            "stage": stage,
            "input_tokens": tokens,
            "room": room,
            "fits_reserve": room >= ctx.output_reserve,
            "needed": tokens + ctx.output_reserve + ctx.safety_margin,
        }
        if probe and room < ctx.output_reserve:
            entry["probes"] = await _probe(served, ctx, messages, stage)
        stage_start = time.perf_counter()
        try:
            reply = await model.ainvoke(messages, config=_config(recorder, pipeline, stage=stage))
        except VLLMContextOverflowError as exc:
            entry.update(outcome="refused_before_sending", shortfall=exc.shortfall, seconds=0.0)
            stages.append(entry)
            stopped_at = stage
            break
        budget: dict[str, Any] = dict(reply.response_metadata.get("budget") or {})
        usage: dict[str, Any] = dict(reply.usage_metadata or {})
        finish = reply.response_metadata.get("finish_reason")
        entry.update(
            outcome=classify(
                {
                    "outcome": "sent",
                    "budget": budget,
                    "finish_reason": finish,
                    "completion_tokens": usage.get("output_tokens"),
                },
                ctx.output_reserve,
            ),
            granted=budget.get("max_tokens"),
            output_tokens=usage.get("output_tokens"),
            finish_reason=finish,
            seconds=round(time.perf_counter() - stage_start, 2),
            **({"raw_output": reply.text} if keep_text else {}),
        )
        # What the next stage gets is the raw output itself: score it as the "summary".
        kept_total = kept_total + must_keep_retention(reply.text, reply.text, request.must_keep)
        stages.append(entry)
        outputs.append((stage, reply.text))
    seconds = time.perf_counter() - started
    mine = [r for r in recorder.records if r.pipeline == pipeline]
    return {
        "variant": "raw forward",
        "seconds": round(seconds, 2),
        "stages": stages,
        "calls": recorder.totals(mine),
        "prompt_tokens": sum(s["input_tokens"] for s in stages if "granted" in s),
        "output_tokens": sum(int(s.get("output_tokens") or 0) for s in stages),
        "completed": stopped_at is None,
        "stopped_at": stopped_at,
        "every_stage_full_reserve": all(s.get("granted") == ctx.output_reserve for s in stages),
        "must_keep": kept_total.as_dict(),
    }


# --------------------------------------------------------------------------------------------
# The two scenarios


async def _measured(served: Served, run: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Await ``run`` (it starts only then) between two reads of vLLM's counters."""
    before = await asyncio.to_thread(scrape, served.server_root)
    result = await run
    after = await asyncio.to_thread(scrape, served.server_root)
    result["server"] = counter_delta(before, after)
    return result


async def _relaxed(
    served: Served, request: PipelineRequest, *, repeats: int, scenario: Scenario = RELAXED
) -> dict[str, Any]:
    plan: list[str] = []
    for rep in range(repeats):
        plan += ["raw", "auto"] if rep % 2 == 0 else ["auto", "raw"]
    plan.append("llm")
    await asyncio.to_thread(warm_up, served, scenario)
    runs: list[dict[str, Any]] = []
    reset_ok = True
    for index, variant in enumerate(plan):
        reset_ok = await asyncio.to_thread(reset_prefix_cache, served) and reset_ok
        recorder = CallRecorder()
        first = variant not in plan[:index]
        run = (
            run_raw_forward(served, scenario, request, recorder=recorder, keep_text=first)
            if variant == "raw"
            else run_compressed(
                served, scenario, request, compression=variant, recorder=recorder, keep_text=first
            )
        )
        result = await _measured(served, run)
        result["order"] = index
        runs.append(result)
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    summary = {
        variant: {
            "runs": len(mine),
            "median_seconds": round(statistics.median(r["seconds"] for r in mine), 2),
            "seconds": [r["seconds"] for r in mine],
            "prompt_tokens": mine[0]["prompt_tokens"],
            "output_tokens": mine[0]["output_tokens"],
            "engine_tokens": mine[0]["calls"]["engine_tokens"],
            "summarizer_calls": mine[0]["calls"]["summarizer"]["calls"],
            "summarizer_seconds": round(
                statistics.median(r["calls"]["summarizer"]["seconds"] for r in mine), 2
            ),
            "stage_call_seconds": round(
                statistics.median(r["calls"]["stage"]["seconds"] for r in mine), 2
            ),
            "must_keep": mine[0]["must_keep"],
            "prefix_cache_hits": mine[0].get("server", {}).get("vllm:prefix_cache_hits"),
        }
        for variant, mine in by_variant.items()
    }
    raw = summary["raw forward"]
    auto = summary["compressed (auto)"]
    goal = {
        "wall_time_ratio": round(auto["median_seconds"] / raw["median_seconds"], 3),
        "wall_time_ratio_max": 1.05,
        "prompt_token_ratio": round(auto["prompt_tokens"] / raw["prompt_tokens"], 3),
        "must_keep_rate": auto["must_keep"]["rate"],
    }
    goal["met"] = goal["wall_time_ratio"] <= 1.05
    return {
        "settings": scenario.settings(served),
        "request": request.index,
        "prefix_cache_reset": reset_ok,
        "order": plan,
        "runs": runs,
        "summary": summary,
        "goal": goal,
    }


async def _pressure(
    served: Served, request: PipelineRequest, scenario: Scenario = PRESSURE
) -> dict[str, Any]:
    await asyncio.to_thread(warm_up, served, scenario)
    recorder = CallRecorder()
    compressed, raw = await asyncio.gather(
        run_compressed(
            served, scenario, request, recorder=recorder, pipeline="compressed", keep_text=True
        ),
        run_raw_forward(
            served, scenario, request, recorder=recorder, pipeline="raw", probe=True, keep_text=True
        ),
    )
    first_c, last_c = compressed["stages"][0], compressed["stages"][-1]
    first_r, last_r = raw["stages"][0], raw["stages"][-1]
    raw_short = not raw["completed"] or not raw["every_stage_full_reserve"]
    return {
        "settings": scenario.settings(served),
        "request": request.index,
        "max_model_len": served.max_model_len,
        "goal": {
            "compressed_every_stage_full_reserve": compressed["every_stage_full_reserve"],
            "compressed_stages": len(compressed["stages"]),
            "raw_forward_short": raw_short,
            "met": compressed["every_stage_full_reserve"]
            and len(compressed["stages"]) == len(STAGES)
            and raw_short,
        },
        "compressed": compressed,
        "raw_forward": raw,
        "growth": {
            "compressed": round(last_c["input_tokens"] / first_c["input_tokens"], 2),
            "raw_forward": round(last_r["input_tokens"] / first_r["input_tokens"], 2),
            "raw_forward_last_stage": last_r["stage"],
        },
    }


def run_pipeline(served: Served, *, quick: bool = False, repeats: int = 2) -> dict[str, Any]:
    """Both scenarios on ``served`` (SmolLM2).

    Args:
        served: A real instruct model's server.
        quick: The no-pressure scenario only, one run of each variant.
        repeats: Runs of raw forwarding and of the compressed pipeline (``"auto"``) without
            window pressure (alternated); the ``"llm"`` variant runs once.

    Returns:
        ``{"model", "max_model_len", "relaxed": {...}, "pressure": {...}}``.
    """
    request = request_variant(0)

    async def both() -> dict[str, Any]:
        out: dict[str, Any] = {"model": served.model, "max_model_len": served.max_model_len}
        scenarios: list[tuple[str, Coroutine[Any, Any, dict[str, Any]]]] = [
            ("relaxed", _relaxed(served, request, repeats=1 if quick else repeats))
        ]
        if not quick:
            scenarios.append(("pressure", _pressure(served, request)))
        for key, scenario in scenarios:
            try:
                out[key] = await scenario
            except Exception as exc:  # keep the other scenario's results
                traceback.print_exc()
                out[key] = {"error": f"{type(exc).__name__} (traceback in the run's output)"}
        return out

    return asyncio.run(both())
