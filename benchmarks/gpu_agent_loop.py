"""The agent loop's compaction part on an NVIDIA GPU: the same workload, a GPU vLLM server.

:mod:`benchmarks.agent_loop`'s part 1 (one agent chat to ~3x a 4,096-token window, every
compaction variant side by side, per-request ``cached_tokens``) against tiny-qwen served by
vLLM on the GPU (bf16, prefix caching, ``--enable-prompt-tokens-details``, and
``VLLM_SERVER_DEV_MODE=1`` so the prefix cache is emptied between variants). Run on a machine
with an NVIDIA GPU, vLLM and this package importable::

    python -m benchmarks.gpu_agent_loop --out /tmp/gpu-agent-loop

It writes ``results.json``, ``summary.md`` and ``server.log`` into ``--out`` (the plot is
drawn where matplotlib is installed: ``benchmarks.agent_loop.write``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.agent_loop import CHAT_VARIANTS, CHAT_WINDOW, run_agent_loop, summary_markdown
from benchmarks.gpu_replicas import gpu_replica_spec
from langchain_vllm_budget.serving.local_server import LocalVLLMServer

__all__ = ["main"]

GIB = 1024**3
COMMAND = "python -m benchmarks.gpu_agent_loop"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Serve tiny-qwen on the GPU, run the compaction part against it, write the results."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--server-args",
        default="--attention-backend TRITON_ATTN",
        help="more `vllm serve` arguments (default: Triton attention, see docs/gpu.md)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    spec = gpu_replica_spec(
        kv_cache_bytes=8 * GIB,
        memory_share=0.5,
        max_num_seqs=8,
        server_args=[
            *shlex.split(args.server_args),
            "--enable-prompt-tokens-details",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
        ],
    )
    spec = dataclasses.replace(
        spec,
        max_model_len=CHAT_WINDOW,
        # reset_prefix_cache between variants; vLLM without FlashInfer samples without it
        env={"VLLM_SERVER_DEV_MODE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0"},
    )
    server_name = f"vLLM {metadata.version('vllm')} on an NVIDIA GPU"

    def save(results: dict[str, Any]) -> None:
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        summary = summary_markdown(results, COMMAND, server=server_name)
        (args.out / "summary.md").write_text("\n".join([*summary, ""]))

    with LocalVLLMServer(spec, log_path=args.out / "server.log", startup_timeout=600) as server:
        return run_agent_loop(
            chat_url=server.base_url, parts=("chat",), variants=CHAT_VARIANTS, done=save
        )


if __name__ == "__main__":
    main()
