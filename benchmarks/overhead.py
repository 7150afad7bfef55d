"""Benchmark 3: what budgeting adds to each call, at 1K / 4K / 12K prompt tokens.

Budgeting is the exact count plus the plan: ``ChatVLLM.get_num_tokens_from_messages`` then
``TokenBudget.plan`` (the work ``ChatVLLM`` does before it sends; nothing else is added when
the input fits). It is timed in-process for the local tokenizer and for the server's
``/tokenize``, in two cases:

* **agent loop** (the realistic one): a conversation that grows by one turn per call (the
  model's answer and the next question). The local counter has counted the earlier turns
  already (it caches the count of each piece between special tokens), and vLLM's prefix
  cache holds the earlier prompt, so the request itself is cheap too.
* **cold**: every message of every call is new text (a nonce in each), so neither the
  counter's cache nor vLLM's prefix cache helps: each request pays its full prefill.

Each budgeting time is set against the latency of the request it precedes in that case (a
plain ``ChatOpenAI`` call with the same prompt and ``max_tokens``).

**Counting** (no server): the local counter alone on one 42-message, ~11,500-token
conversation, median of many calls, in four cases: the whole prompt tokenized on every call
(rendered with the chat template and encoded whole: no segment cache), the conversation grown
by one turn per call, the same conversation again, and a first count of a conversation whose
every message is new. Every count is checked against the whole-prompt count. A fifth case,
``raw_encode``, is the tokenizer alone (``tokenizer.encode`` of an already rendered all-new
prompt): its throughput on this CPU, the floor of any first count. The goals
(:data:`COUNTING_GOALS_MS`): the agent loop (grown by one turn) and a first count at ~12K
tokens, each below its limit, with the first count's ratio to the raw tokenizer.
"""

from __future__ import annotations

import functools
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_openai import ChatOpenAI

from benchmarks.corpus import filler_conversation
from benchmarks.overflow_sweep import conversation_of
from benchmarks.servers import Served
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.chat_models import ChatVLLM
from langchain_vllm_budget.tokenizers import TransformersTokenCounter, messages_to_openai_dicts

__all__ = ["CASES", "COUNTING_CASES", "COUNTING_GOALS_MS", "SIZES", "run_counting", "run_overhead"]

SIZES: tuple[int, ...] = (1000, 4000, 12000)
CASES: tuple[str, ...] = ("agent_loop", "cold")
_MAX_TOKENS = 16
_TARGET_MS, _TARGET_PCT = 5.0, 1.0
COUNTING_CASES: tuple[str, ...] = (
    "whole_prompt",
    "grown_by_one_turn",
    "same_again",
    "first_count",
    "raw_encode",
)
COUNTING_GOALS_MS: dict[str, float] = {"grown_by_one_turn": 2.0, "first_count": 10.0}
"""Median limits at ~12K tokens: the agent loop, and a cold (all-new) conversation."""
_COUNTING_TOKENS, _COUNTING_TURNS = 11_500, 20  # 1 system + 20 pairs + 1 question = 42


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _all_new(messages: list[BaseMessage], nonce: str) -> list[BaseMessage]:
    """The same conversation with every message made unique (nothing cached anywhere)."""
    return [type(m)(content=f"[{nonce}.{i}] {m.text}") for i, m in enumerate(messages)]


def _next_turn(step: int) -> list[BaseMessage]:
    """One more turn of an agent loop: the model's answer and the next question."""
    return [
        AIMessage(f"Step {step}: checked host web-{step:02d}; p99 is {80 + step} ms, no errors."),
        HumanMessage(f"Good. Now check web-{step + 1:02d} and compare its queue depth."),
    ]


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def _medians(samples: dict[str, list[float]], tokens: list[int]) -> dict[str, Any]:
    medians: dict[str, Any] = {k: _ms(statistics.median(v)) for k, v in samples.items()}
    request = medians["request_ms"]
    for key in ("budget_local", "budget_tokenize"):
        medians[f"{key}_pct_of_request"] = round(100 * medians[f"{key}_ms"] / request, 3)
    medians["input_tokens"] = int(statistics.median(tokens))
    medians["samples_ms"] = {k: [_ms(v) for v in values] for k, values in samples.items()}
    return medians


def _whole_prompt_count(counter: TransformersTokenCounter, messages: list[BaseMessage]) -> int:
    """Render with the chat template and tokenize the whole prompt (what no cache can help)."""
    tokenizer = counter.tokenizer
    prompt = tokenizer.apply_chat_template(
        messages_to_openai_dicts(messages), add_generation_prompt=True, tokenize=False
    )
    return len(tokenizer.encode(prompt, add_special_tokens=False))


def _conversation(tokens: int, counter: TransformersTokenCounter, nonce: str) -> list[BaseMessage]:
    chars = tokens * 4
    for _ in range(4):
        messages = filler_conversation(chars, nonce=nonce, turns=_COUNTING_TURNS)
        count = counter.count_messages(messages)
        if abs(count - tokens) <= tokens // 200:
            break
        chars = int(chars * tokens / count)
    return messages


def run_counting(tokenizer: str, *, calls: int = 100) -> dict[str, Any]:
    """Time the local counter (count + plan) in the four :data:`COUNTING_CASES`.

    Args:
        tokenizer: The tokenizer folder (tiny-qwen's: the real Qwen tokenizer).
        calls: Timed calls per case (the median is reported).

    Returns:
        ``{"messages", "input_tokens", "calls", "cases": {case: {"median_ms", ...}}}``.
    """
    counter = TransformersTokenCounter(tokenizer)
    budget = TokenBudget(
        max_model_len=12288, output_reserve=16, safety_margin=64, min_output_tokens=8
    )
    base = _conversation(_COUNTING_TOKENS, counter, nonce="counting")
    expected = _whole_prompt_count(counter, base)
    samples: dict[str, list[float]] = {case: [] for case in COUNTING_CASES}

    def timed(case: str, count: Callable[[], int], check: int | None = None) -> None:
        seconds, tokens = _timed(lambda: budget.plan(count(), 16).input_tokens)
        if check is not None and tokens != check:
            msg = f"{case}: counted {tokens}, the whole prompt has {check} tokens"
            raise AssertionError(msg)
        samples[case].append(seconds)

    for _ in range(calls):
        timed("whole_prompt", functools.partial(_whole_prompt_count, counter, base), expected)
    counter.count_messages(base)
    for _ in range(calls):
        timed("same_again", functools.partial(counter.count_messages, base), expected)
    grown = list(base[:-1])
    for step in range(calls):
        grown = [*grown, *_next_turn(step)]
        check = _whole_prompt_count(counter, [*grown, base[-1]]) if step % 10 == 0 else None
        timed(
            "grown_by_one_turn",
            functools.partial(counter.count_messages, [*grown, base[-1]]),
            check,
        )
    run = uuid.uuid4().hex[:6]
    for call in range(calls):
        fresh = _all_new(base, f"{run}{call}")
        timed(
            "first_count",
            functools.partial(counter.count_messages, fresh),
            _whole_prompt_count(counter, fresh) if call % 10 == 0 else None,
        )
        # The tokenizer alone on text it has not seen either (another nonce), rendered first.
        prompt = counter.render(_all_new(base, f"{run}{call}raw"))
        samples["raw_encode"].append(
            _timed(functools.partial(counter.tokenizer.encode, prompt, add_special_tokens=False))[0]
        )
    cases = {
        case: {
            "median_ms": _ms(statistics.median(values)),
            "p90_ms": _ms(statistics.quantiles(values, n=10)[-1]),
        }
        for case, values in samples.items()
    }
    return {
        "tokenizer": Path(tokenizer).name,
        "messages": len(base),
        "input_tokens": expected,
        "calls": calls,
        "cases": cases,
        **counting_goals(cases, expected),
    }


def counting_goals(cases: dict[str, dict[str, float]], tokens: int) -> dict[str, Any]:
    """The raw tokenizer's throughput, the first count's ratio to it, and each goal met or not.

    Example:
        >>> cases = {"grown_by_one_turn": {"median_ms": 1.5}, "first_count": {"median_ms": 30.0},
        ...          "raw_encode": {"median_ms": 25.0}}
        >>> result = counting_goals(cases, 10_000)
        >>> result["raw_encode_tokens_per_s"], result["first_count_over_raw_encode"]
        (400000, 1.2)
        >>> [(g["case"], g["met"]) for g in result["goals"]]
        [('grown_by_one_turn', True), ('first_count', False)]
    """
    raw_ms = cases["raw_encode"]["median_ms"]
    return {
        "raw_encode_tokens_per_s": round(tokens / (raw_ms / 1000.0)) if raw_ms else None,
        "first_count_over_raw_encode": (
            round(cases["first_count"]["median_ms"] / raw_ms, 2) if raw_ms else None
        ),
        "goals": [
            {
                "case": case,
                "below_ms": limit,
                "median_ms": cases[case]["median_ms"],
                "met": cases[case]["median_ms"] < limit,
            }
            for case, limit in COUNTING_GOALS_MS.items()
        ],
    }


def run_overhead(
    served: Served, *, repeats: int = 7, request_repeats: int = 3, counting_calls: int = 100
) -> dict[str, Any]:
    """Measure budgeting time and request latency at each size, in both cases.

    Args:
        served: The 12288-token tiny-qwen server.
        repeats: Budgeting timings per size and case (medians are reported); in the agent
            loop each one precedes a request.
        request_repeats: Cold requests per size (a 12K-token cold prefill takes tens of
            seconds on a CPU).
        counting_calls: Calls per case of :func:`run_counting`.

    Returns:
        ``{"cases": {case: {tokens: {...medians in ms...}}}, "target": ...}``.
    """
    # 12000 input tokens + the turns added + margin + 16 output tokens fit the 12288 window.
    budget = TokenBudget(output_reserve=_MAX_TOKENS, safety_margin=64, min_output_tokens=8)
    common: dict[str, Any] = {"model": served.model, "base_url": served.base_url, "api_key": "x"}
    local = ChatVLLM(**common, budget=budget, tokenizer=str(served.model_path))
    remote = ChatVLLM(**common, budget=budget, token_counter="server")
    plain = ChatOpenAI(**common, temperature=0, max_completion_tokens=_MAX_TOKENS)
    counter = TransformersTokenCounter(str(served.model_path))
    planner = budget.with_max_model_len(local.get_max_model_len())
    # Warm up: tokenizer load, /v1/models discovery, connection pools.
    warm, _ = conversation_of(200, counter, nonce="warm")
    for model in (local, remote):
        model.get_num_tokens_from_messages(warm)
    plain.invoke(warm)

    def budget_ms(model: ChatVLLM, messages: list[BaseMessage]) -> float:
        seconds, plan = _timed(
            lambda: planner.plan(model.get_num_tokens_from_messages(messages), _MAX_TOKENS)
        )
        assert plan.fits, plan
        return float(seconds)

    run = uuid.uuid4().hex[:6]  # prompts of an earlier run may still be in the prefix cache
    cases: dict[str, dict[str, Any]] = {case: {} for case in CASES}
    for size in SIZES:
        # Cold: every message new to the counter and to vLLM.
        samples: dict[str, list[float]] = {"budget_local_ms": [], "budget_tokenize_ms": []}
        samples["request_ms"] = []
        tokens: list[int] = []
        for rep in range(repeats):
            # The tags add about 6 tokens per message.
            base, _ = conversation_of(size - 80, counter, nonce=f"cold-{size}-{rep}")
            messages = _all_new(base, f"{run}{rep}")
            tokens.append(counter.count_messages(messages))
            samples["budget_local_ms"].append(budget_ms(local, messages))
            samples["budget_tokenize_ms"].append(budget_ms(remote, messages))
            if rep < request_repeats:
                samples["request_ms"].append(_timed(functools.partial(plain.invoke, messages))[0])
        cases["cold"][str(size)] = _medians(samples, tokens)

        # Agent loop: the conversation so far has been counted and sent once.
        messages, _ = conversation_of(size - 40 * repeats, counter, nonce=f"loop-{size}-{run}")
        local.get_num_tokens_from_messages(messages)
        plain.invoke(messages)
        samples = {"budget_local_ms": [], "budget_tokenize_ms": [], "request_ms": []}
        tokens = []
        for step in range(repeats):
            messages = [*messages, *_next_turn(step)]
            tokens.append(counter.count_messages(messages))
            samples["budget_local_ms"].append(budget_ms(local, messages))
            samples["budget_tokenize_ms"].append(budget_ms(remote, messages))
            samples["request_ms"].append(_timed(functools.partial(plain.invoke, messages))[0])
        cases["agent_loop"][str(size)] = _medians(samples, tokens)

    largest = str(SIZES[-1])
    target: dict[str, Any] = {"budget_local_ms_below": _TARGET_MS, "pct_of_request_below": 1.0}
    for case in CASES:
        entry = cases[case][largest]
        target[case] = {
            "met_ms": entry["budget_local_ms"] < _TARGET_MS,
            "met_pct": entry["budget_local_pct_of_request"] < _TARGET_PCT,
        }
    return {
        "counting": run_counting(str(served.model_path), calls=counting_calls),
        "repeats": repeats,
        "request_repeats": request_repeats,
        "max_tokens": _MAX_TOKENS,
        "cases": cases,
        "target": target,
    }
