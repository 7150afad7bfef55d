"""Benchmark 6: the KV-cache planner against what vLLM logs at startup.

For each configuration a real vLLM server was started with, the planner's prediction
(:func:`~langchain_vllm_budget.serving.planner.plan_kv_cache`) is set beside vLLM's own line
"CPU KV cache size: N tokens, Maximum concurrency for L tokens per request: Cx". The
benchmark's main servers count as configurations when this run started them; extra
configurations are started here and stopped as soon as vLLM has logged the line.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from benchmarks.servers import QWEN, SMOLLM2, Served, server_spec
from langchain_vllm_budget.serving.local_models import cache_dir
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.serving.planner import GIB, load_model_config, plan_kv_cache

__all__ = ["CAPACITY_LINE", "EXTRA_CONFIGS", "run_planner"]

CAPACITY_LINE = re.compile(
    r"CPU KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per "
    r"request: ([\d.]+)x"
)

EXTRA_CONFIGS: tuple[tuple[str, dict[str, Any]], ...] = (
    # 2 GiB of KV cache and a window that is not a multiple of the 128-token CPU block.
    (SMOLLM2, {"max_model_len": 3000, "kv_cache_space_gib": 2, "dtype": "bfloat16"}),
    # The seed's "balanced" shape on the CPU: 8K x 6 sequences.
    (QWEN, {"max_model_len": 8192, "max_num_seqs": 6, "kv_cache_space_gib": 1}),
)


def _row(label: str, spec: LocalServerSpec, logged: re.Match[str] | None) -> dict[str, Any]:
    plan = plan_kv_cache(
        load_model_config(spec.model),
        kv_cache_dtype=spec.kv_cache_dtype,
        model_dtype=spec.dtype,
        max_model_len=spec.max_model_len,
        kv_cache_memory_bytes=spec.kv_cache_space_gib * GIB,
        device="cpu",
        max_num_seqs=spec.max_num_seqs,
    )
    row: dict[str, Any] = {
        "config": label,
        "model": Path(spec.model).name,
        "dtype": spec.dtype,
        "kv_cache_dtype": spec.kv_cache_dtype,
        "kv_cache_space_gib": spec.kv_cache_space_gib,
        "max_model_len": spec.max_model_len,
        "max_num_seqs": spec.max_num_seqs,
        "bytes_per_token": plan.bytes_per_token,
        "predicted_capacity_tokens": plan.capacity_tokens,
        "predicted_max_concurrency": round(plan.max_concurrency, 2),
        "logged_capacity_tokens": None,
        "logged_max_concurrency": None,
    }
    if logged is not None:
        row["logged_capacity_tokens"] = int(logged[1].replace(",", ""))
        row["logged_max_concurrency"] = float(logged[3])
        row["exact"] = (
            row["logged_capacity_tokens"] == plan.capacity_tokens
            and abs(row["logged_max_concurrency"] - round(plan.max_concurrency, 2)) < 1e-9
        )
    return row


def run_planner(started: list[Served], *, extra: bool = True) -> dict[str, Any]:
    """Compare the planner with vLLM's log for each configuration.

    Args:
        started: Benchmark servers this run started (their logs hold the line).
        extra: Also start :data:`EXTRA_CONFIGS` (both at once) and read their lines.

    Returns:
        ``{"rows": [...], "exact": n, "total": n}``.
    """
    rows: list[dict[str, Any]] = []
    for served in started:
        assert served.log_path is not None
        spec = server_spec(served.name)
        match = CAPACITY_LINE.search(served.log_path.read_text(errors="replace"))
        rows.append(_row(f"{served.name} (benchmark server)", spec, match))
    if extra:
        servers: list[tuple[str, LocalVLLMServer]] = []
        try:
            for index, (name, changes) in enumerate(EXTRA_CONFIGS):
                spec = server_spec(
                    name, served_model_name=f"bench-planner-{index}", extra_args=(), **changes
                )
                server = LocalVLLMServer(
                    spec, log_path=cache_dir() / "logs" / f"bench-planner-{index}.log"
                )
                server.start(wait=False)
                servers.append((f"{name} {changes}", server))
            for label, server in servers:
                started_at = time.monotonic()
                match = server.wait_for_log(CAPACITY_LINE)
                server.stop()
                row = _row(label, server.spec, match)
                row["seconds_to_log_line"] = round(time.monotonic() - started_at, 1)
                rows.append(row)
        finally:
            for _, server in servers:
                server.stop()
    return {
        "rows": rows,
        "exact": sum(1 for r in rows if r.get("exact")),
        "total": len(rows),
    }
