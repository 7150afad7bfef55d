"""Benchmark 5: compressing realistic stage results under a 250-token cap.

Each stage output of :func:`benchmarks.corpus.build_stage_outputs` (an incident ticket, a
configuration diff, an execution plan, a tool-run report: 1,000+ tokens of narrative around
IDs, UUIDs, paths, ``key=value`` settings, flags, numbers with units and tool names) is
compressed with :func:`~langchain_vllm_budget.compression.compress_stage_result`, the
summarizer being ``ChatVLLM`` on the SmolLM2 server and the cap counted with SmolLM2's own
tokenizer. Reported per output: raw and summary tokens, the ratio, the retention of the
entities the compressor extracted, the method (the model's summary, the model's summary with
entities restored, or the extractive fallback) and the median wall time.

Retention is reported twice: against the entities the compressor extracted (its own view) and
against the hand-labelled must-keep facts of ``benchmarks/data/must_keep.json``
(:mod:`benchmarks.retention`), which the extractor never saw.

Every repetition changes the request line of the prompt (it comes before the result), so
vLLM's prefix cache never serves the result's prefill: each compression pays its full cost.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from pydantic import SecretStr

from benchmarks.corpus import build_stage_outputs
from benchmarks.retention import load_must_keep, must_keep_retention
from benchmarks.servers import Served
from langchain_vllm_budget.chat_models import ChatVLLM
from langchain_vllm_budget.compression import compress_stage_result
from langchain_vllm_budget.tokenizers import TransformersTokenCounter

__all__ = ["CAP", "GOAL_RATIO", "run_compression"]

CAP = 250
"""The summary cap in tokens (the seed's)."""
GOAL_RATIO = 4.0
"""The reduction the issue asks for on outputs of 1,000+ tokens."""


def run_compression(served: Served, *, repeats: int = 3, quick: bool = False) -> dict[str, Any]:
    """Compress every stage output ``repeats`` times; report sizes, retention and time.

    Args:
        served: The SmolLM2 server (a real instruct model writes the summaries).
        repeats: Compressions per output (the time is their median).
        quick: Two outputs, one repetition (a smoke run).

    Returns:
        ``{"model", "cap", "rows": [...], "summary": {...}}``.
    """
    model = ChatVLLM(
        model=served.model,
        base_url=served.base_url,
        api_key=SecretStr("x"),
        tokenizer=str(served.model_path),
        temperature=0,
        max_retries=0,
        timeout=600.0,
    )
    counter = TransformersTokenCounter(str(served.model_path))
    outputs = build_stage_outputs()
    must_keep = load_must_keep()["compression"]
    if quick:
        outputs, repeats = outputs[:2], 1
    rows: list[dict[str, Any]] = []
    for output in outputs:
        runs: list[dict[str, Any]] = []
        for rep in range(repeats):
            started = time.perf_counter()
            result = compress_stage_result(
                output.text,
                model=model,
                stage_name=output.stage,
                user_request=f"{output.request} (run {rep + 1})",
                max_tokens=CAP,
                tokenizer=counter,
            )
            seconds = time.perf_counter() - started
            kept = must_keep_retention(output.text, result.summary, must_keep[output.name])
            runs.append(
                {
                    "seconds": round(seconds, 2),
                    "summary_tokens": result.summary_tokens,
                    "ratio": result.ratio,
                    "retention": result.retention,
                    "must_keep": kept.as_dict(),
                    "method": result.method,
                    "missing": list(result.missing),
                    "restored": len(result.restored),
                    "fallback_reason": result.fallback_reason,
                    "chunks": result.chunks,
                    "model_calls": result.model_calls,
                    "summary": result.summary,
                }
            )
        first = runs[0]
        rows.append(
            {
                "output": output.name,
                "stage": output.stage,
                "raw_tokens": counter.count_text(output.text),
                "entities": len(result.entities),
                "summary_tokens_max": max(r["summary_tokens"] for r in runs),
                "ratio_min": min(r["ratio"] for r in runs),
                "retention_min": min(r["retention"] for r in runs),
                "must_keep_total": runs[0]["must_keep"]["total"],
                "must_keep_min": min(r["must_keep"]["kept"] for r in runs),
                "must_keep_missing": sorted({m for r in runs for m in r["must_keep"]["missing"]}),
                "model_calls": sum(r["model_calls"] for r in runs),
                "methods": sorted({r["method"] for r in runs}),
                "median_seconds": round(statistics.median(r["seconds"] for r in runs), 2),
                "example_summary": first["summary"],
                "runs": runs,
            }
        )
    every = [run for row in rows for run in row["runs"]]
    return {
        "model": served.model,
        "cap": CAP,
        "repeats": repeats,
        "rows": rows,
        "summary": {
            "compressions": len(every),
            "under_cap": sum(1 for r in every if r["summary_tokens"] <= CAP),
            "ratio_at_least_goal": sum(1 for r in every if r["ratio"] >= GOAL_RATIO),
            "full_retention": sum(1 for r in every if r["retention"] >= 1.0),
            "full_must_keep": sum(
                1 for r in every if r["must_keep"]["kept"] == r["must_keep"]["total"]
            ),
            "must_keep_rate": round(
                sum(r["must_keep"]["kept"] for r in every)
                / max(sum(r["must_keep"]["total"] for r in every), 1),
                4,
            ),
            "model_calls": sum(r["model_calls"] for r in every),
            "median_ratio": round(statistics.median(r["ratio"] for r in every), 2),
            "median_seconds": round(statistics.median(r["seconds"] for r in every), 2),
            "methods": {m: sum(1 for r in every if r["method"] == m) for m in _methods(every)},
        },
    }


def _methods(runs: list[dict[str, Any]]) -> list[str]:
    return sorted({str(r["method"]) for r in runs})
