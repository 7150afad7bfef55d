"""vLLM server profiles: named ``vllm serve`` configurations, checked by the planner.

A :class:`ServerProfile` is a named ``vllm serve`` configuration held as data: model,
quantization, KV-cache dtype, ``--max-model-len``, ``--max-num-seqs``,
``--gpu-memory-utilization``. It renders itself as ``vllm serve`` arguments, as the
``command:`` of a docker compose service, and as the client's
:class:`~langchain_vllm_budget.budget.TokenBudget`, so the server and the client read the
context window from one place. :data:`PROFILES` holds the built-in ones:

* ``long-window``: one long conversation at a time on a 12 GB GPU (Qwen2.5-7B-Instruct-AWQ,
  fp8 KV cache, 12288 tokens x 2 sequences).
* ``balanced``: the same model with more concurrency (8192 tokens x 6 sequences).
* ``long-window-shared`` and ``summarizer``: the two-model setup, a 7B reasoner and a 3B
  summarizer sharing one 12 GB GPU (their memory fractions add up to the 0.88 of
  ``long-window``).

Example:
    >>> plan = PROFILES["long-window"].plan()
    >>> plan.bytes_per_token  # 28 layers x (K + V) x 4 KV heads x 128 dims x 1 byte (fp8)
    28672
    >>> plan.fits_max_num_seqs
    True
    >>> PROFILES["long-window"].vllm_serve_args()[:3]
    ['Qwen/Qwen2.5-7B-Instruct-AWQ', '--host', '0.0.0.0']
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from langchain_vllm_budget.serving.planner import KVCachePlan, PlannerError, plan_kv_cache

if TYPE_CHECKING:
    from langchain_vllm_budget.budget import TokenBudget

__all__ = ["PROFILES", "ServerProfile", "UnknownProfileError", "get_profile"]


class UnknownProfileError(PlannerError, KeyError):
    """No built-in profile has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        ValueError.__init__(
            self, f"No profile named {name!r}: choose one of {', '.join(PROFILES)}."
        )

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ServerProfile:
    """A named ``vllm serve`` configuration, and what the planner needs to check it.

    Attributes:
        name: The profile's name.
        description: One line on what it is for.
        model: The model to serve (a hub id or a folder).
        model_config: The architecture fields of the model's ``config.json`` (enough to
            plan without downloading it).
        weights_gib: The weights' GPU memory, whole model, in GiB (None: unknown).
        max_model_len: ``--max-model-len``.
        max_num_seqs: ``--max-num-seqs``.
        kv_cache_dtype: ``--kv-cache-dtype``.
        quantization: ``--quantization``, if any.
        dtype: ``--dtype``.
        gpu_memory_utilization: ``--gpu-memory-utilization``.
        enforce_eager: ``--enforce-eager`` (no CUDA graphs: less memory, slower decode).
        tensor_parallel_size: ``--tensor-parallel-size``.
        gpu_memory_gib: Memory of the GPU the profile is planned for.
        overhead_gib: Non-weight, non-KV memory per GPU assumed by the plan (estimate).
        host: ``--host``.
        port: ``--port``.
        output_reserve: The client's cap on output tokens.
        safety_margin: Tokens the client keeps free in the window.
        extra_args: More ``vllm serve`` arguments, passed through.
    """

    name: str
    description: str
    model: str
    model_config: Mapping[str, Any] = field(compare=False)
    weights_gib: float | None
    max_model_len: int
    max_num_seqs: int
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    gpu_memory_gib: float = 12.0
    overhead_gib: float = 1.0
    host: str = "0.0.0.0"
    port: int = 8000
    output_reserve: int = 3000
    safety_margin: int = 128
    extra_args: tuple[str, ...] = ()

    def vllm_serve_args(self) -> list[str]:
        """The arguments after ``vllm serve`` (the model first), in a fixed order."""
        args = [self.model, "--host", self.host, "--port", str(self.port)]
        if self.quantization:
            args += ["--quantization", self.quantization]
        args += [
            "--dtype",
            self.dtype,
            "--kv-cache-dtype",
            self.kv_cache_dtype,
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
        ]
        if self.tensor_parallel_size != 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.enforce_eager:
            args.append("--enforce-eager")
        args.extend(self.extra_args)
        return args

    def serve_command(self) -> list[str]:
        """The whole command: ``["vllm", "serve", ...]``."""
        return ["vllm", "serve", *self.vllm_serve_args()]

    def shell_command(self) -> str:
        """The command as one shell-quoted line."""
        return shlex.join(self.serve_command())

    def compose_command(self) -> list[str]:
        """The compose service's ``command:`` (the image's entrypoint is ``vllm serve``)."""
        return self.vllm_serve_args()

    def token_budget(self) -> TokenBudget:
        """The client's budget for this server: same window, the profile's reserve and margin."""
        from langchain_vllm_budget.budget import TokenBudget

        return TokenBudget(
            max_model_len=self.max_model_len,
            output_reserve=self.output_reserve,
            safety_margin=self.safety_margin,
        )

    def client_env(self) -> dict[str, str]:
        """The client's environment variables for this server (the seed's names)."""
        return {
            "LLM_MODEL": self.model,
            "LLM_MAX_MODEL_LEN": str(self.max_model_len),
            "LLM_OUTPUT_RESERVE": str(self.output_reserve),
            "LLM_SAFETY_MARGIN": str(self.safety_margin),
        }

    def plan(self, **overrides: Any) -> KVCachePlan:
        """Plan this profile's KV cache on its GPU; keyword arguments override settings.

        Raises:
            PlannerError: See :func:`plan_kv_cache`.
        """
        settings: dict[str, Any] = {
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "gpu_memory_gib": self.gpu_memory_gib,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "weights_gib": self.weights_gib,
            "tensor_parallel_size": self.tensor_parallel_size,
            "model_dtype": self.dtype,
            "overhead_gib": self.overhead_gib,
        }
        settings.update(overrides)
        if settings.get("kv_cache_memory_bytes") is not None:
            settings["gpu_memory_gib"] = None
        return plan_kv_cache(self.model_config, **settings)

    def with_settings(self, **changes: Any) -> ServerProfile:
        """A copy with some fields changed."""
        return replace(self, **changes)


# Architecture fields of the models' config.json files (Qwen2.5 family).
_QWEN25_7B_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "model_type": "qwen2",
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "hidden_size": 3584,
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "torch_dtype": "float16",
    }
)
_QWEN25_3B_CONFIG: Mapping[str, Any] = MappingProxyType(
    {
        "model_type": "qwen2",
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "hidden_size": 2048,
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "torch_dtype": "float16",
    }
)

# AWQ checkpoints in vLLM's Marlin kernels. The vLLM the seed ran logged that awq_marlin is
# faster than the awq it was given, and one report measured about 5x the throughput of forcing
# `awq`. In vLLM 0.32 both names select the same AutoAWQ method, which uses Marlin on GPUs that
# support it; naming awq_marlin keeps the intent explicit on older releases too.
_AWQ = "awq_marlin"

_LONG_WINDOW = ServerProfile(
    name="long-window",
    description="Profile A: one long conversation at a time on a 12 GB GPU (7B AWQ, fp8 KV).",
    model="Qwen/Qwen2.5-7B-Instruct-AWQ",
    model_config=_QWEN25_7B_CONFIG,
    # 4-bit linear layers (~3.3 GB) + fp16 embeddings and LM head (2 x 1.09 GB): ~5.57 GB.
    weights_gib=5.2,
    quantization=_AWQ,
    kv_cache_dtype="fp8",
    max_model_len=12288,
    max_num_seqs=2,
    gpu_memory_utilization=0.88,
    enforce_eager=True,
)

PROFILES: Mapping[str, ServerProfile] = MappingProxyType(
    {
        profile.name: profile
        for profile in (
            _LONG_WINDOW,
            _LONG_WINDOW.with_settings(
                name="balanced",
                description="Profile B: more users at once, 8K each (7B AWQ, fp8 KV).",
                max_model_len=8192,
                max_num_seqs=6,
            ),
            _LONG_WINDOW.with_settings(
                name="long-window-shared",
                description="Profile A's window beside the summarizer on one 12 GB GPU.",
                gpu_memory_utilization=0.6,
            ),
            ServerProfile(
                name="summarizer",
                description="A 3B summarizer for stage compression, beside long-window-shared.",
                model="Qwen/Qwen2.5-3B-Instruct-AWQ",
                model_config=_QWEN25_3B_CONFIG,
                # 4-bit linear layers (~1.45 GB) + tied fp16 embeddings (0.62 GB): ~2.07 GB.
                weights_gib=1.93,
                quantization=_AWQ,
                kv_cache_dtype="fp8",
                max_model_len=8192,
                max_num_seqs=2,
                gpu_memory_utilization=0.28,
                enforce_eager=True,
                output_reserve=400,
            ),
        )
    }
)
"""The built-in profiles by name."""


def get_profile(name: str) -> ServerProfile:
    """Return the built-in profile called ``name``.

    Raises:
        UnknownProfileError: No such profile (the message lists the names).
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfileError(name) from None
