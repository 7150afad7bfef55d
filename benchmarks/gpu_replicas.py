"""Two vLLM replicas sharing one GPU behind ``vllm-router``: prefix-cache hit rate by policy.

The GPU counterpart of :mod:`benchmarks.replicas` for a machine with a single GPU: both
replicas run on the same card, each with a KV budget of its own (``--kv-cache-memory-bytes``
inside a ``--gpu-memory-utilization`` share), and a real ``vllm-router`` sits in front of
them. The workload, the routing variants and the measurement are :mod:`benchmarks.replicas`'s
(session-keyed LangGraph threads of ``ChatVLLM`` calls that grow past a 2,048-token window
and are compacted; each replica's ``/metrics`` read before and after): only the servers
differ. While the replicas run, ``nvidia-smi`` is sampled to record that both processes share
the card.

Run on a machine with an NVIDIA GPU, vLLM, ``vllm-router`` and this package importable::

    python -m benchmarks.gpu_replicas --out /tmp/gpu-replicas

It writes ``results.json``, ``summary.md`` and ``server-logs.tar.gz`` (both replicas' and the
router's logs) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.replicas import WINDOW, replicas_md, run_replicas
from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalServerSpec

__all__ = ["GpuSampler", "gpu_replica_spec", "main", "summary_md"]

GIB = 1024**3


def gpu_replica_spec(
    *, kv_cache_bytes: int, memory_share: float, max_num_seqs: int, server_args: list[str]
) -> LocalServerSpec:
    """One replica's server on a shared GPU: tiny-qwen, bf16, its own KV budget.

    Args:
        kv_cache_bytes: ``--kv-cache-memory-bytes``: this replica's KV cache, sized alone.
        memory_share: ``--gpu-memory-utilization``: vLLM checks at start-up that this share of
            the card is free; two replicas need two shares that fit on the card together.
        max_num_seqs: ``--max-num-seqs``.
        server_args: More ``vllm serve`` arguments (for example an attention backend).

    Example:
        >>> spec = gpu_replica_spec(kv_cache_bytes=2**30, memory_share=0.3, max_num_seqs=16,
        ...                         server_args=[])
        >>> spec.extra_args[1:]
        ('--gpu-memory-utilization', '0.3', '--kv-cache-memory-bytes', '1073741824')
    """
    return LocalServerSpec(
        model=str(ensure_local_model("tiny-qwen")),
        served_model_name="tiny-qwen",
        max_model_len=WINDOW,
        max_num_seqs=max_num_seqs,
        dtype="bfloat16",
        extra_args=(
            "--enable-prefix-caching",
            "--gpu-memory-utilization",
            str(memory_share),
            "--kv-cache-memory-bytes",
            str(kv_cache_bytes),
            *server_args,
        ),
    )


class GpuSampler:
    """Samples ``nvidia-smi``'s compute processes in a thread: the most seen at once."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.most: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-compute-apps=pid,used_memory",
                        "--format=csv,noheader",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=False,
                ).stdout
            except (OSError, subprocess.SubprocessError):
                return
            rows = [line.strip() for line in out.splitlines() if line.strip()]
            self.samples += 1
            if len(rows) > len(self.most):
                self.most = rows


def _gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def summary_md(result: dict[str, Any]) -> str:
    """The run's ``summary.md``: :func:`benchmarks.replicas.replicas_md`'s table, then the setup.

    Example:
        >>> row = {"policy": None, "session_key": True, "calls": 4, "seconds": 2.0,
        ...        "calls_per_s": 2.0, "latency_p50_s": 0.4, "latency_p95_s": 0.6,
        ...        "over_window": {"hit_rate": 0.5, "prompt_tokens": 10, "tokens_prefilled": 5,
        ...                        "requests_per_replica": [1]},
        ...        "whole_run": {"hit_rate": 0.6, "prompt_tokens": 20, "tokens_prefilled": 8,
        ...                      "requests_per_replica": [2]}}
        >>> result = {"settings": {"model": "m", "replicas": 2, "window": 2048, "sessions": 2,
        ...           "turns": 2, "turn_tokens": 260, "over_window_from_turn": 1,
        ...           "compaction": "on_overflow=trim"}, "variants": {"one": row},
        ...           "goal": {"key_minus_round_robin_points": 30.0,
        ...                    "single_minus_key_points": 1.0,
        ...                    "at_least_25_points_above_round_robin": True,
        ...                    "within_5_points_of_single_replica": True},
        ...           "gpu": {"device": "H", "kv_cache_gib_per_replica": 2.0,
        ...                   "memory_share_per_replica": 0.3, "server_args": [],
        ...                   "compute_processes_seen_at_once": ["1, 9 MiB", "2, 9 MiB"]},
        ...           "meta": {"started": "t", "command": "c", "vllm": "v",
        ...                    "vllm_router": "r"}}
        >>> "2 compute processes" in summary_md(result)
        True
    """
    gpu, meta = result["gpu"], result["meta"]
    procs = gpu["compute_processes_seen_at_once"]
    lines = [
        *replicas_md(result),
        "",
        f"Both replicas on one GPU ({gpu['device']}): each with "
        f"`--kv-cache-memory-bytes` = {gpu['kv_cache_gib_per_replica']} GiB inside a "
        f"`--gpu-memory-utilization` share of {gpu['memory_share_per_replica']}, bf16, "
        f"eager mode, prefix caching on; more server flags: "
        f"`{shlex.join(gpu['server_args']) or 'none'}`. `nvidia-smi` saw "
        f"{len(procs)} compute processes on the card at once ({'; '.join(procs)}).",
        "",
        f"Run {meta['started']}; vLLM {meta['vllm']}, vllm-router {meta['vllm_router']}. "
        f"Command: `{meta['command']}`. The round_robin and cache_aware hit rates vary from "
        "run to run: where a thread's next turn lands depends on how the threads' turns "
        "interleave.",
    ]
    return "\n".join(lines) + "\n"


def _pack_logs(out: Path) -> None:
    logs = cache_dir() / "logs"
    with tarfile.open(out / "server-logs.tar.gz", "w:gz") as tar:
        for path in sorted(logs.glob("*.log")):
            tar.add(path, arcname=path.name)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the arguments, run every variant over two replicas on one GPU, write the files."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_replicas", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--sessions", type=int, default=16, help="agent threads at once")
    parser.add_argument("--turns", type=int, default=12, help="turns per thread")
    parser.add_argument("--max-num-seqs", type=int, default=16, help="per replica")
    parser.add_argument(
        "--kv-cache-gib", type=float, default=2.0, help="each replica's KV cache, GiB"
    )
    parser.add_argument(
        "--memory-share", type=float, default=0.3, help="each replica's --gpu-memory-utilization"
    )
    parser.add_argument(
        "--server-args", default="", help="more vllm serve arguments for both replicas"
    )
    args = parser.parse_args(argv)
    server_args = shlex.split(args.server_args)
    spec = gpu_replica_spec(
        kv_cache_bytes=int(args.kv_cache_gib * GIB),
        memory_share=args.memory_share,
        max_num_seqs=args.max_num_seqs,
        server_args=server_args,
    )
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with GpuSampler() as sampler:
            result = run_replicas(spec=spec, sessions_turns=(args.sessions, args.turns))
    finally:
        _pack_logs(args.out)
    result["settings"]["max_num_seqs"] = args.max_num_seqs
    result["gpu"] = {
        "device": _gpu_name(),
        "kv_cache_gib_per_replica": args.kv_cache_gib,
        "memory_share_per_replica": args.memory_share,
        "server_args": server_args,
        "compute_processes_seen_at_once": sampler.most,
        "nvidia_smi_samples": sampler.samples,
    }
    result["meta"] = {
        "started": started,
        "command": shlex.join(["python", "-m", "benchmarks.gpu_replicas", *sys.argv[1:]]),
        "python": platform.python_version(),
        "vllm": _version("vllm"),
        "vllm_router": _version("vllm-router"),
        "torch": _version("torch"),
        "cpu_count": os.cpu_count(),
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "summary.md").write_text(summary_md(result))
    return result


if __name__ == "__main__":
    main()
