"""The GPU replicas benchmark's server flags and summary (offline: no GPU, no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu_replicas
from benchmarks.replicas import WINDOW


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_each_replica_gets_its_own_kv_budget_on_a_shared_card(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gpu_replicas, "ensure_local_model", lambda name: Path("/m") / name)
    spec = gpu_replicas.gpu_replica_spec(
        kv_cache_bytes=3 * 2**30,
        memory_share=0.25,
        max_num_seqs=16,
        server_args=["--attention-backend", "TRITON_ATTN"],
    )
    args = spec.vllm_args(port=8001)
    assert _flag(args, "--kv-cache-memory-bytes") == str(3 * 2**30)
    assert _flag(args, "--gpu-memory-utilization") == "0.25"
    assert _flag(args, "--dtype") == "bfloat16"
    assert _flag(args, "--max-model-len") == str(WINDOW)
    assert _flag(args, "--served-model-name") == "tiny-qwen"
    assert _flag(args, "--attention-backend") == "TRITON_ATTN"
    assert "--enable-prefix-caching" in args


def _row(rate: float, per_replica: list[int]) -> dict[str, Any]:
    part = {"hit_rate": rate, "prompt_tokens": 100, "tokens_prefilled": 50}
    return {
        "policy": "p",
        "session_key": True,
        "calls": 4,
        "seconds": 1.0,
        "calls_per_s": 4.0,
        "latency_p50_s": 0.1,
        "latency_p95_s": 0.2,
        "over_window": {**part, "requests_per_replica": per_replica},
        "whole_run": {**part, "requests_per_replica": per_replica},
    }


def test_summary_reports_the_table_the_goal_and_the_shared_card() -> None:
    result = {
        "settings": {
            "model": "tiny-qwen",
            "replicas": 2,
            "window": 2048,
            "sessions": 16,
            "turns": 12,
            "turn_tokens": 260,
            "over_window_from_turn": 7,
            "compaction": "on_overflow=trim",
        },
        "variants": {"consistent_hash + key": _row(0.5, [9, 7]), "round_robin": _row(0.3, [8, 8])},
        "goal": {
            "key_minus_round_robin_points": 20.0,
            "single_minus_key_points": 0.0,
            "at_least_25_points_above_round_robin": False,
            "within_5_points_of_single_replica": True,
        },
        "gpu": {
            "device": "GPU X",
            "kv_cache_gib_per_replica": 2.0,
            "memory_share_per_replica": 0.3,
            "server_args": [],
            "compute_processes_seen_at_once": ["11, 900 MiB", "12, 700 MiB"],
        },
        "meta": {"started": "t", "command": "c", "vllm": "v", "vllm_router": "r"},
    }
    text = gpu_replicas.summary_md(result)
    assert "| consistent_hash + key | 50.0% |" in text
    assert "| round_robin | 30.0% |" in text
    assert "(goal >= 25: NOT met)" in text
    assert "2 compute processes on the card at once" in text
    assert "GPU X" in text
