"""Benchmark 3: what budgeting adds to each call, at 1K / 4K / 12K prompt tokens.

Budgeting is the exact count plus the plan: ``ChatVLLM.get_num_tokens_from_messages`` then
``TokenBudget.plan`` (the work ``ChatVLLM`` does before it sends; nothing else is added when
the input fits). It is timed in-process for the local tokenizer and for the server's
``/tokenize``, and set against the latency of the request itself (a plain ``ChatOpenAI``
call with the same prompt and ``max_tokens``). End-to-end latencies of ``ChatVLLM`` and
``ChatOpenAI`` are reported too. Every repetition uses a fresh prompt (a nonce in the system
message), so vLLM's prefix cache never serves a prompt it has seen: each request pays its
full prefill, as a new conversation does.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from langchain_openai import ChatOpenAI

from benchmarks.overflow_sweep import conversation_of
from benchmarks.servers import Served
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.chat_models import ChatVLLM
from langchain_vllm_budget.tokenizers import TransformersTokenCounter

__all__ = ["SIZES", "run_overhead"]

SIZES: tuple[int, ...] = (1000, 4000, 12000)
_MAX_TOKENS = 16


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def run_overhead(served: Served, *, repeats: int = 7) -> dict[str, Any]:
    """Measure budgeting time and request latency at each size.

    Args:
        served: The 12288-token tiny-qwen server.
        repeats: Repetitions per size (medians are reported).

    Returns:
        ``{"sizes": {tokens: {...medians in ms...}}, "target": ...}``.
    """
    # 12000 input tokens + margin + 16 output tokens fit the 12288 window.
    budget = TokenBudget(
        output_reserve=_MAX_TOKENS, safety_margin=128, min_output_tokens=_MAX_TOKENS
    )
    common: dict[str, Any] = {"model": served.model, "base_url": served.base_url, "api_key": "x"}
    local = ChatVLLM(
        **common,
        budget=budget,
        tokenizer=str(served.model_path),
        token_counter="transformers",
        temperature=0,
    )
    remote = ChatVLLM(**common, budget=budget, token_counter="server", temperature=0)
    plain = ChatOpenAI(**common, temperature=0)
    counter = TransformersTokenCounter(str(served.model_path))
    window = local.get_max_model_len()
    planner = budget.with_max_model_len(window)
    # Warm up: tokenizer load, /v1/models discovery, connection pools.
    warm, _ = conversation_of(200, counter, nonce="warm")
    local.invoke(warm, max_tokens=_MAX_TOKENS)
    remote.invoke(warm, max_tokens=_MAX_TOKENS)
    plain.invoke(warm, max_tokens=_MAX_TOKENS)

    results: dict[str, Any] = {}
    for size in SIZES:
        samples: dict[str, list[float]] = {
            "budget_local_ms": [],
            "budget_tokenize_ms": [],
            "request_chatopenai_ms": [],
            "request_chatvllm_ms": [],
        }
        tokens = 0
        for rep in range(repeats):
            messages, tokens = conversation_of(size, counter, nonce=f"overhead-{size}-{rep}-a")
            for key, model in (("budget_local_ms", local), ("budget_tokenize_ms", remote)):
                start = time.perf_counter()
                plan = planner.plan(model.get_num_tokens_from_messages(messages), _MAX_TOKENS)
                samples[key].append(time.perf_counter() - start)
                assert plan.fits, plan
            start = time.perf_counter()
            plain.invoke(messages, max_tokens=_MAX_TOKENS)
            samples["request_chatopenai_ms"].append(time.perf_counter() - start)
            other, _ = conversation_of(size, counter, nonce=f"overhead-{size}-{rep}-b")
            start = time.perf_counter()
            reply = local.invoke(other, max_tokens=_MAX_TOKENS)
            samples["request_chatvllm_ms"].append(time.perf_counter() - start)
            assert reply.response_metadata["budget"]["counter"] == "transformers"
        medians: dict[str, Any] = {
            key: _ms(statistics.median(values)) for key, values in samples.items()
        }
        request = medians["request_chatopenai_ms"]
        medians["budget_local_pct_of_request"] = round(
            100 * medians["budget_local_ms"] / request, 3
        )
        medians["budget_tokenize_pct_of_request"] = round(
            100 * medians["budget_tokenize_ms"] / request, 3
        )
        medians["end_to_end_difference_ms"] = round(
            medians["request_chatvllm_ms"] - medians["request_chatopenai_ms"], 3
        )
        medians["input_tokens"] = tokens
        medians["samples_ms"] = {k: [_ms(v) for v in values] for k, values in samples.items()}
        results[str(size)] = medians
    largest = results[str(SIZES[-1])]
    return {
        "repeats": repeats,
        "max_tokens": _MAX_TOKENS,
        "sizes": results,
        "target": {
            "budget_local_ms_below": 5.0,
            "pct_of_request_below": 1.0,
            "met_ms": largest["budget_local_ms"] < 5.0,
            "met_pct": largest["budget_local_pct_of_request"] < 1.0,
        },
    }
