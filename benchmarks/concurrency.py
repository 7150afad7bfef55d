"""Benchmark 7: more pipelines per server: N concurrent pipelines on a deliberately small KV cache.

One SmolLM2 server (``--max-num-seqs`` = N, so every pipeline has a slot) gets a KV cache of
:data:`KV_BLOCKS` blocks of 128 tokens, set with vLLM's ``--num-gpu-blocks-override`` (its
switch "for testing preemption"). ``VLLM_CPU_KVCACHE_SPACE`` only takes whole GiB, and one GiB
holds 23,296 SmolLM2 tokens: filling it on this 2-core CPU would take longer than the whole
benchmark run should; the planner is then given the same cache as bytes (blocks x bytes per
block), which is how vLLM accounts for an override too.N
pipelines (:func:`benchmarks.requests.request_variant`: N distinct requests) run at once with
``asyncio.gather``, first the compressed graph (``graph.ainvoke``), then raw forwarding, with
the no-pressure scenario's output limits (:data:`benchmarks.pipeline.RELAXED`). Reported per
mode: pipelines finished per minute, failures, p50/p95 stage-call latency, and vLLM's own
``vllm:num_preemptions``, ``vllm:kv_cache_usage_perc`` and queue depth
(``vllm:num_requests_waiting``) sampled from ``/metrics`` every half second.

The planner's prediction is checked against ``/metrics``: from the KV plan
(:func:`~langchain_vllm_budget.serving.planner.plan_kv_cache`: blocks the server holds) and
the calls each mode made (prompt + completion tokens, when each ran), :func:`kv_demand` gives
the blocks the in-flight sequences need at their full length; the planner says the server
must preempt once that exceeds the blocks it can hand out, and when that first happens.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.calls import CallRecord, CallRecorder, percentile
from benchmarks.metrics import MetricsSampler, counter_delta, scrape, summarize_samples
from benchmarks.pipeline import RELAXED, Scenario, run_compressed, run_raw_forward, warm_up
from benchmarks.planner import CAPACITY_LINE
from benchmarks.requests import request_variant
from benchmarks.servers import SMOLLM2, Served, server_spec
from langchain_vllm_budget.serving.local_models import cache_dir
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.serving.planner import KVCachePlan, load_model_config, plan_kv_cache

__all__ = ["KV_BLOCKS", "PIPELINES", "kv_demand", "kv_server_spec", "run_concurrency"]

PIPELINES = 8
"""Concurrent pipelines (and the server's ``--max-num-seqs``)."""
KV_BLOCKS = 50
"""KV-cache blocks the server gets: 8 compressed pipelines fit at once, raw forwarding not."""
_MAX_MODEL_LEN = 2048
_SERVED_NAME = "bench-kv-pressure"


def _plan(spec: LocalServerSpec, memory: int) -> KVCachePlan:
    return plan_kv_cache(
        load_model_config(spec.model),
        kv_cache_dtype=spec.kv_cache_dtype,
        model_dtype=spec.dtype,
        max_model_len=spec.max_model_len,
        kv_cache_memory_bytes=memory,
        device="cpu",
        max_num_seqs=spec.max_num_seqs,
    )


def kv_server_spec(
    pipelines: int = PIPELINES, blocks: int = KV_BLOCKS
) -> tuple[LocalServerSpec, int]:
    """The small-KV server's spec and its KV-cache bytes (``blocks`` whole blocks).

    Returns:
        ``(spec, kv_cache_memory_bytes)``: what the planner is given.
    """
    spec = server_spec(
        SMOLLM2,
        served_model_name=_SERVED_NAME,
        max_model_len=_MAX_MODEL_LEN,
        max_num_seqs=pipelines,
        extra_args=("--num-gpu-blocks-override", str(blocks)),
    )
    return spec, blocks * _plan(spec, 1 << 30).bytes_per_block


def kv_demand(
    records: Sequence[CallRecord], *, block_size: int, t0: float = 0.0
) -> list[tuple[float, int]]:
    """Blocks the in-flight calls need at their full length, at each call's start and end.

    A call holds ``ceil((prompt + completion) / block_size)`` blocks from its start to its end
    (the most it ever holds; vLLM allocates as it goes).

    Returns:
        ``[(seconds since t0, blocks in use right after that moment), ...]`` in time order.

    Example:
        >>> from benchmarks.calls import CallRecord
        >>> a = CallRecord("s1", "stage", "p0", 0.0, 10.0, 200, 100)   # 3 blocks of 128
        >>> b = CallRecord("s1", "stage", "p1", 5.0, 10.0, 100, 0)     # 1 block
        >>> kv_demand([a, b], block_size=128)
        [(0.0, 3), (5.0, 4), (10.0, 1), (15.0, 0)]
    """
    events: list[tuple[float, int]] = []
    for r in records:
        blocks = math.ceil((r.prompt_tokens + r.completion_tokens) / block_size)
        events.append((r.started - t0, blocks))
        events.append((r.started + r.seconds - t0, -blocks))
    events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at the same instant
    timeline: list[tuple[float, int]] = []
    level = 0
    for t, change in events:
        level += change
        if timeline and timeline[-1][0] == round(t, 3):
            timeline[-1] = (round(t, 3), level)
        else:
            timeline.append((round(t, 3), level))
    return timeline


def _prediction(
    records: Sequence[CallRecord], plan: KVCachePlan, t0: float, pipelines: int
) -> dict[str, Any]:
    """The planner's view of a run: per-stage blocks, peak demand, predicted onset."""
    usable = plan.num_blocks - 1  # vLLM's pool holds one block back (the null block)
    timeline = kv_demand(records, block_size=plan.block_size, t0=t0)
    over = next((t for t, blocks in timeline if blocks > usable), None)
    per_stage: dict[str, Any] = {}
    for stage in sorted({r.stage for r in records if r.kind == "stage"}):
        lengths = [r.prompt_tokens + r.completion_tokens for r in records if r.stage == stage]
        longest = max(lengths)
        blocks = math.ceil(longest / plan.block_size)
        per_stage[stage] = {
            "longest_sequence": longest,
            "blocks": blocks,
            "fit_at_once": usable // blocks,
            "all_fit": pipelines * blocks <= usable,
        }
    return {
        "usable_blocks": usable,
        "peak_demand_blocks": max((b for _, b in timeline), default=0),
        "predicts_preemption": over is not None,
        "predicted_onset_s": over,
        "per_stage": per_stage,
    }


async def _run_mode(
    served: Served, mode: str, pipelines: int, plan: KVCachePlan, scenario: Scenario = RELAXED
) -> dict[str, Any]:
    await asyncio.to_thread(warm_up, served, scenario)
    recorder = CallRecorder()
    requests = [request_variant(index + 1) for index in range(pipelines)]
    before = await asyncio.to_thread(scrape, served.server_root)
    with MetricsSampler(served.server_root) as sampler:
        t0 = time.perf_counter()
        jobs = [
            run_compressed(served, scenario, r, recorder=recorder, pipeline=f"p{r.index}")
            if mode == "compressed"
            else run_raw_forward(served, scenario, r, recorder=recorder, pipeline=f"p{r.index}")
            for r in requests
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        wall = time.perf_counter() - t0
    after = await asyncio.to_thread(scrape, served.server_root)
    failures = [f"{type(r).__name__}: {r}"[:160] for r in results if isinstance(r, BaseException)]
    finished = [r for r in results if isinstance(r, dict) and r.get("completed", True)]
    stage_seconds = [r.seconds for r in recorder.records if r.kind == "stage" and not r.error]
    return {
        "mode": mode,
        "pipelines": pipelines,
        "finished": len(finished),
        "failures": failures
        + [
            f"stopped at {r['stopped_at']}"
            for r in results
            if isinstance(r, dict) and r.get("stopped_at")
        ],
        "seconds": round(wall, 1),
        "pipelines_per_minute": round(len(finished) / wall * 60, 3),
        "stage_latency_p50_s": round(percentile(stage_seconds, 50), 2) if stage_seconds else None,
        "stage_latency_p95_s": round(percentile(stage_seconds, 95), 2) if stage_seconds else None,
        "calls": recorder.totals(),
        "prompt_tokens": sum(r["prompt_tokens"] for r in results if isinstance(r, dict)),
        "must_keep_rate": _must_keep_rate(results),
        "server": counter_delta(before, after),
        "metrics": summarize_samples(sampler.samples),
        "timeline": [
            {"t": round(s.t, 1), **{k.removeprefix("vllm:"): v for k, v in s.values.items()}}
            for s in sampler.samples
        ],
        "prediction": _prediction(recorder.records, plan, t0, pipelines),
        "per_pipeline": [_pipeline_brief(r) for r in results if isinstance(r, dict)],
        "stage_starts_s": _stage_starts(recorder.records, t0),
    }


def _pipeline_brief(result: dict[str, Any]) -> dict[str, Any]:
    """One pipeline's run in a line: time, prompt tokens, hand-off methods and calls."""
    return {
        "seconds": result["seconds"],
        "prompt_tokens": result["prompt_tokens"],
        "completed": result.get("completed", True),
        "summarizer_calls": result["calls"]["summarizer"]["calls"],
        "methods": [s.get("method", s.get("outcome")) for s in result["stages"]],
        "summary_tokens": [s.get("summary_tokens") for s in result["stages"]],
    }


def _must_keep_rate(results: Sequence[Any]) -> float | None:
    totals = [r["must_keep"] for r in results if isinstance(r, dict) and "must_keep" in r]
    total = sum(m["total"] for m in totals)
    return round(sum(m["kept"] for m in totals) / total, 4) if total else None


def _stage_starts(records: Sequence[CallRecord], t0: float) -> dict[str, float]:
    """When the first pipeline started each stage (seconds since the start)."""
    starts: dict[str, float] = {}
    for r in sorted(records, key=lambda r: r.started):
        if r.kind == "stage":
            starts.setdefault(r.stage, round(r.started - t0, 1))
    return starts


async def _both_modes(
    served: Served, pipelines: int, plan: KVCachePlan, scenario: Scenario = RELAXED
) -> dict[str, Any]:
    """Compressed, then raw, on one event loop (the models' async clients belong to it)."""
    return {
        mode: await _run_mode(served, mode, pipelines, plan, scenario)
        for mode in ("compressed", "raw")
    }


def run_concurrency(*, quick: bool = False, url: str | None = None) -> dict[str, Any]:
    """Start the small-KV server, run both modes, stop it.

    Args:
        quick: 4 pipelines (and 25 blocks) instead of 8 (and 50).
        url: An already running server started with :func:`kv_server_spec`'s settings
            (its KV plan is computed from the spec, not read from the server).

    Returns:
        ``{"settings", "plan", "logged", "modes": {"compressed": {...}, "raw": {...}},
        "throughput_ratio", "goal"}``.
    """
    pipelines, blocks = (4, 25) if quick else (PIPELINES, KV_BLOCKS)
    spec, memory = kv_server_spec(pipelines, blocks)
    plan = _plan(spec, memory)
    server: LocalVLLMServer | None = None
    logged = None
    try:
        if url is None:
            server = LocalVLLMServer(
                spec, log_path=cache_dir() / "logs" / f"bench-{_SERVED_NAME}.log"
            )
            server.start(wait=True)
            match = CAPACITY_LINE.search(server.log_path.read_text(errors="replace"))
            logged = match[0] if match else None
            url = server.base_url
        served = Served(
            SMOLLM2, url.rstrip("/"), _SERVED_NAME, Path(spec.model), spec.max_model_len
        )
        modes = asyncio.run(_both_modes(served, pipelines, plan))
    finally:
        if server is not None:
            server.stop()
    compressed, raw = modes["compressed"], modes["raw"]
    ratio = (
        round(compressed["pipelines_per_minute"] / raw["pipelines_per_minute"], 2)
        if raw["pipelines_per_minute"]
        else None
    )
    return {
        "settings": {
            "pipelines": pipelines,
            "max_num_seqs": pipelines,
            "max_model_len": spec.max_model_len,
            "kv_cache_memory_bytes": memory,
            "kv_blocks": blocks,
            "scenario": asdict(RELAXED),
        },
        "plan": {
            "block_size": plan.block_size,
            "num_blocks": plan.num_blocks,
            "capacity_tokens": plan.capacity_tokens,
            "max_concurrency_full_length": round(plan.max_concurrency, 2),
            "log_line": plan.log_line(),
        },
        "logged": logged,
        "planner_matches_log": logged == plan.log_line() if logged else None,
        "modes": modes,
        "throughput_ratio": ratio,
        "goal": {
            "throughput_ratio_min": 1.3,
            "met": bool(ratio and ratio >= 1.3)
            and not compressed["failures"]
            and compressed["finished"] == pipelines,
        },
        "median_stage_latency_ratio": (
            round(raw["stage_latency_p50_s"] / compressed["stage_latency_p50_s"], 2)
            if raw["stage_latency_p50_s"] and compressed["stage_latency_p50_s"]
            else None
        ),
    }
