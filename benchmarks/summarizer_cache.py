"""Prefix-cache hits of the compaction's summarizer request: the prefix request against the fresh.

``python -m benchmarks.summarizer_cache --base-url http://127.0.0.1:PORT/v1`` against a running
tiny-qwen server started with ``--enable-prompt-tokens-details`` (the test suite's shared
server is one).

One chat of ticket turns (about a tenth of the window each, one tool bound) runs past the
window with ``ChatVLLM(on_overflow="summarize")`` and ``VLLM_BUDGET_COMPRESSION=llm`` (the
model writes every summary), twice:

* **prefix**: the default; the summarizer is the chat model itself, and its request is the
  conversation as it was sent, up to the cut, then the instruction;
* **fresh**: the same model set as a separate ``summarizer``, which gets the compression
  prompt with the span rendered as text (what every summarizer request was before).

Each run starts its system prompt with its own nonce, so neither run hits the other's
cached blocks. Every request's prompt and cached tokens come from vLLM's usage
(``prompt_tokens_details.cached_tokens``).

Results: ``benchmarks/results/summarizer_cache/`` (``results.json``, ``summary.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool

from benchmarks.section import write_section
from langchain_vllm_budget import ChatVLLM, TokenBudget, TransformersTokenCounter
from langchain_vllm_budget.compression import is_summarizer_prompt
from langchain_vllm_budget.serving.local_models import ensure_local_model

_DEFAULT_OUT = Path(__file__).parent / "results" / "summarizer_cache"


@tool
def lookup(host: str) -> str:
    """Look up a host's status."""
    return f"{host}: ok"


class _Usage(BaseCallbackHandler):
    """Each call's prompt, prompt tokens and cached prompt tokens, in call order."""

    def __init__(self) -> None:
        self.prompts: dict[Any, list[BaseMessage]] = {}
        self.calls: list[dict[str, Any]] = []

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[BaseMessage]], *, run_id: Any, **kwargs: Any
    ) -> None:
        self.prompts[run_id] = messages[0]

    def on_llm_end(self, response: Any, *, run_id: Any, **kwargs: Any) -> None:
        prompt = self.prompts.pop(run_id, [])
        summarizer = is_summarizer_prompt(prompt)
        for generations in response.generations:
            for generation in generations:
                usage = generation.message.usage_metadata or {}
                cached = (usage.get("input_token_details") or {}).get("cache_read") or 0
                self.calls.append(
                    {
                        "summarizer": summarizer,
                        "prompt_tokens": int(usage.get("input_tokens", 0)),
                        "cached_tokens": int(cached),
                    }
                )


def _rate(calls: list[dict[str, Any]]) -> float | None:
    tokens = sum(c["prompt_tokens"] for c in calls)
    return round(sum(c["cached_tokens"] for c in calls) / tokens, 4) if tokens else None


def ticket_text(i: int, tokens: int, counter: TransformersTokenCounter) -> str:
    """A ticket of about ``tokens`` tokens, full of IDs, hosts and numbers."""
    lines = [f"Ticket INC-{4000 + i}: host db-{i}.prod at 10.2.{i % 250}.7 is slow."]
    j = 0
    while counter.count_text("\n".join(lines)) < tokens:
        lines.append(
            f"- check {j}: /var/log/db-{i}/shard-{j}.log shows p99 latency {180 + j} ms "
            f"and queue depth {j * 3} on node node-{i}-{j}."
        )
        j += 1
    return "\n".join(lines)


def run_one(base_url: str, name: str, *, separate: bool, turns: int) -> dict[str, Any]:
    """One chat past the window; the usage of its agent and summarizer requests."""
    path = ensure_local_model("tiny-qwen")
    window = int(httpx.get(f"{base_url}/models", timeout=10).json()["data"][0]["max_model_len"])
    counter = TransformersTokenCounter(path)
    usage = _Usage()
    model = ChatVLLM(
        model="tiny-qwen",
        base_url=base_url,
        tokenizer=str(path),
        max_tokens=4,
        max_retries=0,
        on_overflow="summarize",
        summary_max_tokens=48,
        budget=TokenBudget(output_reserve=64, min_output_tokens=16),
        callbacks=[usage],
    )
    if separate:
        model = model.model_copy(
            update={"summarizer": model.model_copy(update={"on_overflow": "raise"})}
        )
    agent = model.bind_tools([lookup])
    system = SystemMessage(
        f"Run {uuid.uuid4().hex}. You are an operations assistant. Track every ticket and host."
    )
    history: list[BaseMessage] = [system]
    requests: list[str | None] = []
    started = time.perf_counter()
    for i in range(turns):
        history.append(HumanMessage(ticket_text(i, window // 10, counter)))
        reply = agent.invoke(history)
        history.append(AIMessage(reply.text))
        report = reply.response_metadata["budget"]["compaction"]
        requests.append(report["summary_request"] if report else None)
    summarizer = [c for c in usage.calls if c["summarizer"]]
    agent_calls = [c for c in usage.calls if not c["summarizer"]]
    return {
        "run": name,
        "window": window,
        "turns": turns,
        "seconds": round(time.perf_counter() - started, 1),
        "summary_requests": [r for r in requests if r],
        "summarizer_requests": summarizer,
        "summarizer_hit_rate": _rate(summarizer),
        "agent_hit_rate": _rate(agent_calls[1:]),
        "all_hit_rate": _rate(usage.calls[1:]),
    }


def summarizer_cache_md(result: dict[str, Any]) -> list[str]:
    """The summary table."""
    lines = [
        "| run | summarizer requests | their prompt tokens | cached | summarizer hit rate "
        "| agent calls hit rate | all requests hit rate | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["runs"]:
        calls = row["summarizer_requests"]
        lines.append(
            f"| {row['run']} | {len(calls)} | {sum(c['prompt_tokens'] for c in calls)} | "
            f"{sum(c['cached_tokens'] for c in calls)} | {row['summarizer_hit_rate']} | "
            f"{row['agent_hit_rate']} | {row['all_hit_rate']} | {row['seconds']} |"
        )
    lines += [
        "",
        "Hit rates are cached prompt tokens over prompt tokens (the first call of each run, "
        "cold by construction, left out).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.summarizer_cache", description=__doc__
    )
    parser.add_argument("--base-url", default=os.environ.get("VLLM_BUDGET_TEST_QWEN_URL"))
    parser.add_argument("--turns", type=int, default=14)
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.base_url:
        parser.error("--base-url (a tiny-qwen server with --enable-prompt-tokens-details)")
    os.environ["VLLM_BUDGET_COMPRESSION"] = "llm"
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = [
        run_one(args.base_url, "fresh (separate summarizer)", separate=True, turns=args.turns),
        run_one(args.base_url, "prefix (the chat model)", separate=False, turns=args.turns),
    ]
    result = {"started": started, "runs": runs}
    command = "python -m benchmarks.summarizer_cache"
    for path in write_section(result, args.out, command, summarizer_cache_md):
        print(f"[summarizer_cache] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
