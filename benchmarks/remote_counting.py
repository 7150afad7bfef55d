"""Counting against a server whose model root is a hub id: each way ``auto`` resolves, side by side.

``python -m benchmarks.remote_counting`` (or ``python -m benchmarks.run --only remote_counting``).

A vLLM server is started here on tiny-qwen filed under the hub id ``budget-test/tiny-qwen`` in a
Hugging Face cache laid out as the hub lays it out, offline, with ``--enable-scale-out`` (so
its render endpoint is served): its ``/v1/models`` root is the hub id, as on a GPU box started
with ``vllm serve Org/Name``. One ``ChatVLLM`` per row, each resolving its counter as a user's
would:

* ``local_folder``: ``tokenizer=`` the model's folder (the reference);
* ``hub_cache``: ``token_counter="auto"`` with this machine's ``HF_HOME`` holding the model:
  the tokenizer comes from the Hugging Face cache;
* ``render``: ``"auto"`` with an empty ``HF_HOME``, offline: the root is unknown here, so the
  server's ``/v1/chat/completions/render`` counts;
* ``tokenize``: a :class:`~langchain_vllm_budget.tokenizers.ServerTokenCounter` on ``/tokenize``
  (what ``auto`` falls to on a server without the render endpoint).

Per row, at about 12K prompt tokens (a 12,288-token window):

* **agent loop**: the conversation grows by one turn per call; each call is counted and planned
  the way an agent middleware does (``get_num_tokens_from_messages`` + ``TokenBudget.plan``:
  ``budget_ms``), then sent with ``invoke`` (which counts again). The counting requests the
  server answered for the whole call (``/tokenize`` and render, from its ``/metrics``) are
  ``counting_calls_per_request``;
* **cold**: a first count of a 12K conversation whose every message is new (``cold_count_ms``);
* ``resolve_ms``: resolving the counter on first use (loading a tokenizer, or probing the
  render endpoint).

Results go to ``benchmarks/results/remote_counting/`` (``results.json``, ``summary.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from benchmarks.overflow_sweep import conversation_of
from benchmarks.overhead import _all_new, _next_turn
from benchmarks.section import write_section
from benchmarks.servers import QWEN, server_spec
from langchain_vllm_budget import ChatVLLM, TokenBudget
from langchain_vllm_budget.serving.hub_cache import install_in_hub_cache
from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalVLLMServer
from langchain_vllm_budget.tokenizers import ServerTokenCounter, TransformersTokenCounter

__all__ = ["ROWS", "remote_counting_md", "run_remote_counting"]

REPO = "budget-test/tiny-qwen"
WINDOW = 12288
TOKENS = 12000
ROWS: tuple[str, ...] = ("local_folder", "hub_cache", "render", "tokenize")
GOAL_MS = 2.0
"""The hub-id root's goal: the local folder's cost, below 2 ms per agent-loop call."""
_MAX_TOKENS = 2
_COUNTING = ("/tokenize", "/v1/chat/completions/render")
_DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "remote_counting"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@contextlib.contextmanager
def _hf_home(path: Path) -> Iterator[None]:
    """This process's Hugging Face home (and offline mode) for the block."""
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE")}
    os.environ.update({"HF_HOME": str(path), "HF_HUB_OFFLINE": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _counting_requests(base_url: str) -> int:
    """The counting requests the server has answered (``http_requests_total`` in /metrics)."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^http_requests_total\{([^}]*)\} (\S+)$", line)
        if match and any(f'handler="{h}"' in match.group(1) for h in _COUNTING):
            total += float(match.group(2))
    return int(total)


def _model(row: str, base_url: str, folder: Path, budget: TokenBudget) -> ChatVLLM:
    common: dict[str, Any] = {
        "model": REPO,
        "base_url": base_url,
        "budget": budget,
        "max_tokens": _MAX_TOKENS,
        "temperature": 0,
    }
    if row == "local_folder":
        return ChatVLLM(**common, tokenizer=str(folder))
    if row == "tokenize":
        return ChatVLLM(**common, token_counter=ServerTokenCounter(base_url, REPO))
    return ChatVLLM(**common)  # "auto": the hub cache or the render endpoint


def _expected(row: str, counter: Any) -> bool:
    if row in ("local_folder", "hub_cache"):
        return isinstance(counter, TransformersTokenCounter)
    return isinstance(counter, ServerTokenCounter) and counter.endpoint == row


def _row(
    row: str,
    base_url: str,
    folder: Path,
    home: Path,
    reference: TransformersTokenCounter,
    *,
    steps: int,
    cold: int,
) -> dict[str, Any]:
    budget = TokenBudget(output_reserve=16, safety_margin=64, min_output_tokens=8)
    model = _model(row, base_url, folder, budget)
    with _hf_home(home):
        started = time.perf_counter()
        counter = model.resolved_token_counter
        resolve = time.perf_counter() - started
    if not _expected(row, counter):
        msg = f"{row}: resolved to {counter!r}"
        raise AssertionError(msg)
    planner = budget.with_max_model_len(model.get_max_model_len())
    run = uuid.uuid4().hex[:6]
    messages, _ = conversation_of(TOKENS - 40 * steps, reference, nonce=f"{row}-{run}")
    model.get_num_tokens_from_messages(messages)
    model.invoke(messages)  # the conversation so far: counted and in vLLM's prefix cache
    budget_s: list[float] = []
    request_s: list[float] = []
    calls: list[int] = []
    exact: list[bool] = []

    def timed(run: Callable[[], Any]) -> tuple[float, Any]:
        start = time.perf_counter()
        value = run()
        return time.perf_counter() - start, value

    for step in range(steps):
        messages = [*messages, *_next_turn(step)]
        before = _counting_requests(base_url)
        seconds, plan = timed(
            functools.partial(
                lambda m: planner.plan(model.get_num_tokens_from_messages(m), _MAX_TOKENS),
                messages,
            )
        )
        budget_s.append(seconds)
        seconds, answer = timed(functools.partial(model.invoke, messages))
        request_s.append(seconds)
        calls.append(_counting_requests(base_url) - before)
        exact.append(plan.input_tokens == (answer.usage_metadata or {}).get("input_tokens"))
    cold_s = []
    base, _ = conversation_of(TOKENS, reference, nonce=f"cold-{row}-{run}")
    for rep in range(cold):
        fresh = _all_new(base, f"{run}{rep}")
        cold_s.append(timed(functools.partial(model.get_num_tokens_from_messages, fresh))[0])
    budget_ms = _ms(statistics.median(budget_s))
    request_ms = _ms(statistics.median(request_s))
    return {
        "counter": repr(counter),
        "input_tokens": reference.count_messages(messages),
        "resolve_ms": _ms(resolve),
        "budget_ms": budget_ms,
        "request_ms": request_ms,
        "budget_pct_of_request": round(100 * budget_ms / request_ms, 2),
        "counting_calls_per_request": calls,
        "max_counting_calls_per_request": max(calls),
        "counts_equal_usage": all(exact),
        "cold_count_ms": _ms(statistics.median(cold_s)),
        "samples_ms": {
            "budget": [_ms(s) for s in budget_s],
            "request": [_ms(s) for s in request_s],
            "cold_count": [_ms(s) for s in cold_s],
        },
    }


def run_remote_counting(*, quick: bool = False) -> dict[str, Any]:
    """Start the hub-id server, measure every row, stop it.

    Args:
        quick: Fewer steps and cold counts (a smoke run).

    Returns:
        ``{"rows": {row: {...}}, "goal": {...}, ...}``.
    """
    steps, cold = (3, 2) if quick else (7, 5)
    folder = ensure_local_model(QWEN)
    reference = TransformersTokenCounter(folder)
    with tempfile.TemporaryDirectory(prefix="bench-hf-") as tmp:
        home, empty = Path(tmp) / "home", Path(tmp) / "empty"
        install_in_hub_cache(QWEN, REPO, home)
        spec = server_spec(
            QWEN,
            model=REPO,
            served_model_name=REPO,
            extra_args=(*server_spec(QWEN).extra_args, "--enable-scale-out"),
            env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"},
        )
        with LocalVLLMServer(spec, log_path=cache_dir() / "logs" / "bench-hub-root.log") as server:
            root = httpx.get(f"{server.base_url}/models", timeout=10).json()["data"][0]["root"]
            rows = {
                row: _row(
                    row,
                    server.base_url,
                    folder,
                    home if row == "hub_cache" else empty,
                    reference,
                    steps=steps,
                    cold=cold,
                )
                for row in ROWS
            }
    hub, local = rows["hub_cache"], rows["local_folder"]
    return {
        "model_root": root,
        "window": WINDOW,
        "steps": steps,
        "cold_counts": cold,
        "rows": rows,
        "goal": {
            "hub_cache_budget_ms_below": GOAL_MS,
            "hub_cache_budget_ms": hub["budget_ms"],
            "local_folder_budget_ms": local["budget_ms"],
            "met": hub["budget_ms"] < GOAL_MS,
        },
    }


def remote_counting_md(result: dict[str, Any]) -> list[str]:
    """The section of ``summary.md``."""
    lines = [
        f"### Counting against a hub-id root (`{result['model_root']}`, "
        f"{result['window']}-token window; medians of {result['steps']} agent-loop calls "
        f"and {result['cold_counts']} cold counts at ~12K tokens)",
        "",
        "| counter | resolves to | agent loop: count + plan (ms) | counting requests per "
        "request | request (ms) | cold 12K count (ms) | resolve (ms) | counts = usage |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in result["rows"].items():
        calls = row["counting_calls_per_request"]
        lines.append(
            f"| {name} | `{row['counter']}` | {row['budget_ms']} | "
            f"{max(calls)} (each: {calls}) | {row['request_ms']} | {row['cold_count_ms']} | "
            f"{row['resolve_ms']} | {'yes' if row['counts_equal_usage'] else 'NO'} |"
        )
    goal = result["goal"]
    lines += [
        "",
        "Goal: a hub-id root costs what a local folder costs, below "
        f"{goal['hub_cache_budget_ms_below']} ms per agent-loop call: "
        f"{goal['hub_cache_budget_ms']} ms (local folder "
        f"{goal['local_folder_budget_ms']} ms): {'met' if goal['met'] else 'NOT met'}.",
    ]
    return lines


def write(result: dict[str, Any], out: Path, command: str) -> list[Path]:
    """Write ``results.json`` and ``summary.md`` into ``out``."""
    return write_section(result, out, command, remote_counting_md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.remote_counting", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result = {**run_remote_counting(quick=args.quick), "started": started}
    command = "python -m benchmarks.remote_counting" + (" --quick" if args.quick else "")
    for path in write(result, args.out, command):
        print(f"[remote_counting] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
