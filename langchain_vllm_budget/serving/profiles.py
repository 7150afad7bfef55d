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
  summarizer sharing one 12 GB GPU (memory fractions 0.56 + 0.24: each server's process also
  holds its CUDA context beyond its fraction, measured at 0.5-0.8 GiB).

Weights and runtime overhead are vLLM's own memory report for each model
(:data:`~langchain_vllm_budget.serving.planner.MEASURED_MEMORY`, ``docs/gpu.md``).

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

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from langchain_vllm_budget import settings
from langchain_vllm_budget.serving.planner import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GIB,
    InvalidSettingError,
    KVCachePlan,
    KVCacheTooSmallError,
    ModelDoesNotFitError,
    PlannerError,
    measured_memory,
    plan_kv_cache,
)

if TYPE_CHECKING:
    from langchain_vllm_budget.budget import TokenBudget

__all__ = [
    "LAYOUTS",
    "PROFILES",
    "Layout",
    "LayoutChoice",
    "LayoutFit",
    "NoLayoutFitsError",
    "ServerProfile",
    "UnknownProfileError",
    "choose_layout",
    "get_profile",
]


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
        overhead_gib: Non-weight, non-KV memory per GPU inside the memory fraction
            (activation peak, non-torch memory, CUDA graphs): measured for the built-in
            profiles, an estimate otherwise.
        outside_budget_gib: Memory the server's processes hold beyond the fraction (the CUDA
            context): counts once per server on a shared GPU.
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
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    gpu_memory_gib: float = 12.0
    overhead_gib: float = 1.0
    outside_budget_gib: float = 0.0
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

    def client_env(self, *, base_url: str | None = None) -> dict[str, str]:
        """The client's settings for this server, by environment variable.

        The names are those of :mod:`langchain_vllm_budget.settings`. The tokenizer is the
        model's hub id, which loads from a Hugging Face cache that holds the model (the
        docker layouts share the vLLM servers' cache with the app, read-only).

        Args:
            base_url: The server's URL as the client reaches it, if known.

        Example:
            >>> env = PROFILES["balanced"].client_env(base_url="http://vllm:8000/v1")
            >>> env["VLLM_API_BASE"], env["VLLM_BUDGET_MAX_MODEL_LEN"]
            ('http://vllm:8000/v1', '8192')
        """
        env = {settings.API_BASE.env: base_url} if base_url else {}
        env |= {
            settings.MODEL.env: self.model,
            settings.TOKENIZER.env: self.model,
            settings.MAX_MODEL_LEN.env: str(self.max_model_len),
            settings.MAX_CONCURRENCY.env: str(self.max_num_seqs),
            settings.OUTPUT_RESERVE.env: str(self.output_reserve),
            settings.SAFETY_MARGIN.env: str(self.safety_margin),
        }
        return env

    def summarizer_env(self, *, base_url: str) -> dict[str, str]:
        """The client's settings for this server used as the summarizer, by variable.

        Its own window and tokenizer: the main model's are never forced onto it.

        Args:
            base_url: The summarizer server's URL as the client reaches it.

        Example:
            >>> env = PROFILES["summarizer"].summarizer_env(base_url="http://s:8000/v1")
            >>> env["VLLM_BUDGET_SUMMARIZER_MODEL"], env["VLLM_BUDGET_SUMMARIZER_MAX_MODEL_LEN"]
            ('Qwen/Qwen2.5-3B-Instruct-AWQ', '8192')
        """
        return {
            settings.SUMMARIZER_API_BASE.env: base_url,
            settings.SUMMARIZER_MODEL.env: self.model,
            settings.SUMMARIZER_TOKENIZER.env: self.model,
            settings.SUMMARIZER_MAX_MODEL_LEN.env: str(self.max_model_len),
        }

    def min_gpu_memory_gib(self) -> float:
        """The least GPU memory on which ``max_num_seqs`` full-length requests fit.

        Per GPU, in GiB, rounded up to 0.1, at this profile's ``--gpu-memory-utilization``:
        its fraction must hold weights, overhead and the cache, and the rest of the GPU the
        memory outside the fraction.

        Raises:
            PlannerError: The profile cannot be planned (e.g. its weights are unknown).

        Example:
            >>> PROFILES["long-window"].min_gpu_memory_gib()  # (5.38 + 0.49 + 0.66) / 0.88
            7.5
        """
        if self.weights_gib is None:
            raise InvalidSettingError(
                "weights_gib", None, f"give the weights' size of profile {self.name!r}"
            )
        # The block geometry does not depend on the memory: plan against any cache size.
        geometry = self.plan(kv_cache_memory_bytes=_GEOMETRY_PROBE_BYTES)
        blocks = self.max_num_seqs * geometry.blocks_per_request + 1  # + the held-back block
        kv_gib = blocks * geometry.bytes_per_block / GIB
        fixed_gib = self.weights_gib / self.tensor_parallel_size + self.overhead_gib
        # +1 byte per term absorbs the planner's truncation of each term to whole bytes.
        needed = (kv_gib + fixed_gib + 2 / GIB) / self.gpu_memory_utilization
        if self.outside_budget_gib:
            rest = 1 - self.gpu_memory_utilization
            needed = max(needed, self.outside_budget_gib / rest if rest > 0 else math.inf)
        return math.ceil(needed * 10) / 10

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

    def with_tool_calls(self) -> ServerProfile:
        """A copy that serves ``tool_choice="auto"`` (:data:`HERMES_TOOL_CALL_ARGS`), once.

        Example:
            >>> summarizer = get_profile("summarizer").with_tool_calls()
            >>> summarizer.vllm_serve_args().count("--tool-call-parser")
            1
            >>> get_profile("long-window").with_tool_calls() == get_profile("long-window")
            True
        """
        if any(arg.split("=", 1)[0] == "--tool-call-parser" for arg in self.extra_args):
            return self
        return replace(self, extra_args=(*self.extra_args, *HERMES_TOOL_CALL_ARGS))


# Any cache size does to read the block geometry (bytes per block, blocks per request).
_GEOMETRY_PROBE_BYTES = 1 << 40

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

_QWEN25_7B_MEASURED = measured_memory("Qwen/Qwen2.5-7B-Instruct-AWQ")
_QWEN25_3B_MEASURED = measured_memory("Qwen/Qwen2.5-3B-Instruct-AWQ")

# AWQ checkpoints in vLLM's Marlin kernels. The vLLM the seed ran logged that awq_marlin is
# faster than the awq it was given, and one report measured about 5x the throughput of forcing
# `awq`. In vLLM 0.32 both names select the same AutoAWQ method, which uses Marlin on GPUs that
# support it; naming awq_marlin keeps the intent explicit on older releases too.
_AWQ = "awq_marlin"

HERMES_TOOL_CALL_ARGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")
"""What vLLM needs for ``tool_choice="auto"`` (create_agent's default, and the read tool of
ToolOutputCompressionMiddleware) with Qwen2.5's tool-call format (hermes): the served
profiles', the embedded server's ``tools`` setup and the benchmarks' servers."""

_LONG_WINDOW = ServerProfile(
    name="long-window",
    description="Profile A: one long conversation at a time on a 12 GB GPU (7B AWQ, fp8 KV).",
    model="Qwen/Qwen2.5-7B-Instruct-AWQ",
    model_config=_QWEN25_7B_CONFIG,
    # 4-bit linear layers (~3.4 GB) + fp16 embeddings and LM head (2 x 1.09 GB): 5.57 GB of
    # safetensors; vLLM reports 5.38 GiB loaded, 0.49 GiB beside weights and cache.
    weights_gib=_QWEN25_7B_MEASURED.weights_gib,
    overhead_gib=_QWEN25_7B_MEASURED.overhead_gib,
    outside_budget_gib=_QWEN25_7B_MEASURED.outside_budget_gib,
    quantization=_AWQ,
    kv_cache_dtype="fp8",
    max_model_len=12288,
    max_num_seqs=2,
    gpu_memory_utilization=0.88,
    enforce_eager=True,
    extra_args=HERMES_TOOL_CALL_ARGS,
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
                gpu_memory_utilization=0.56,
            ),
            ServerProfile(
                name="summarizer",
                description="A 3B summarizer for stage compression, beside long-window-shared.",
                model="Qwen/Qwen2.5-3B-Instruct-AWQ",
                model_config=_QWEN25_3B_CONFIG,
                # 4-bit linear layers (~1.45 GB) + tied fp16 embeddings (0.62 GB): 2.06 GB of
                # safetensors; vLLM reports 1.99 GiB loaded, 0.38 GiB beside weights and cache.
                weights_gib=_QWEN25_3B_MEASURED.weights_gib,
                overhead_gib=_QWEN25_3B_MEASURED.overhead_gib,
                outside_budget_gib=_QWEN25_3B_MEASURED.outside_budget_gib,
                quantization=_AWQ,
                kv_cache_dtype="fp8",
                max_model_len=8192,
                max_num_seqs=2,
                gpu_memory_utilization=0.24,
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


# --------------------------------------------------------------------------------------------
# Layouts: the servers that share one GPU (the docker compose profiles)


@dataclass(frozen=True)
class Layout:
    """A GPU layout: the vLLM servers that share one GPU, in their start order.

    Each layout is a docker compose profile of ``docker/compose.yaml`` (its name), with its own
    app service configured for exactly these servers.

    Attributes:
        name: The layout's (and compose profile's) name.
        description: One line on what it is for.
        reasoner: The profile name of the main model's server (started first).
        summarizer: The profile name of a separate summarizer server on the same GPU
            (started once the reasoner is healthy: vLLM checks the free GPU memory at
            start-up), if any.
    """

    name: str
    description: str
    reasoner: str
    summarizer: str | None = None

    @property
    def servers(self) -> tuple[ServerProfile, ...]:
        """The server profiles, in start order."""
        names = (self.reasoner,) if self.summarizer is None else (self.reasoner, self.summarizer)
        return tuple(get_profile(name) for name in names)

    def min_gpu_memory_gib(self, *, overhead_gib: float | None = None) -> float:
        """The least GPU memory on which every server of the layout fits (GiB, estimate).

        Args:
            overhead_gib: Runtime memory per server; default: each profile's estimate.
        """
        servers = self.servers
        if overhead_gib is not None:
            servers = tuple(p.with_settings(overhead_gib=overhead_gib) for p in servers)
        least = max(profile.min_gpu_memory_gib() for profile in servers)
        # The fractions together, and each server's memory outside its fraction.
        rest = 1 - sum(profile.gpu_memory_utilization for profile in servers)
        outside = sum(profile.outside_budget_gib for profile in servers)
        if outside:
            least = max(least, math.ceil(outside / rest * 10) / 10 if rest > 0 else math.inf)
        return least

    def fit(
        self, gpu_memory_gib: float, *, concurrency: int = 1, overhead_gib: float | None = None
    ) -> LayoutFit:
        """Plan every server of the layout on one GPU of ``gpu_memory_gib``.

        Args:
            gpu_memory_gib: The GPU's memory in GiB.
            concurrency: Requests the app must have served at once (the reasoner's
                ``--max-num-seqs`` must allow them).
            overhead_gib: Runtime memory per server beside weights and KV cache; default:
                each profile's estimate.

        Returns:
            The plans and, when it does not fit, every reason why.

        Raises:
            InvalidSettingError: ``concurrency`` below 1 or a bad ``gpu_memory_gib``.
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidSettingError("concurrency", concurrency, "use a whole number >= 1")
        problems: list[str] = []
        plans: list[tuple[ServerProfile, KVCachePlan]] = []
        reasoner = self.servers[0]
        if concurrency > reasoner.max_num_seqs:
            problems.append(
                f"{reasoner.name} serves {reasoner.max_num_seqs} requests at once "
                f"(--max-num-seqs), not {concurrency}"
            )
        shared = sum(profile.gpu_memory_utilization for profile in self.servers)
        outside = sum(profile.outside_budget_gib for profile in self.servers)
        if shared > 1:
            problems.append(
                f"the servers' --gpu-memory-utilization add up to {shared:g} > 1: the later "
                "one would find too little free memory at start-up"
            )
        elif shared * gpu_memory_gib + outside > gpu_memory_gib:
            problems.append(
                f"the servers' fractions ({shared:g} x {gpu_memory_gib:g} GiB) and their "
                f"processes' {outside:.2f} GiB outside them (CUDA contexts) exceed the GPU"
            )
        for profile in self.servers:
            changes = {} if overhead_gib is None else {"overhead_gib": overhead_gib}
            try:
                plan = profile.plan(gpu_memory_gib=gpu_memory_gib, **changes)
            except ModelDoesNotFitError as exc:
                problems.append(
                    f"{profile.name}: weights + overhead need {exc.needed_gib:.2f} GiB of the "
                    f"{exc.usable_gib:.2f} GiB it may use ({profile.gpu_memory_utilization:g} x "
                    f"{gpu_memory_gib:g} GiB)"
                )
                continue
            except KVCacheTooSmallError as exc:
                problems.append(
                    f"{profile.name}: one {exc.max_model_len:,}-token request needs "
                    f"{exc.needed_bytes / GIB:.2f} GiB of KV cache, "
                    f"{exc.available_bytes / GIB:.2f} GiB is left"
                )
                continue
            plans.append((profile, plan))
            if not plan.fits_max_num_seqs:
                problems.append(
                    f"{profile.name}: {plan.max_num_seqs} x {plan.max_model_len:,} tokens need "
                    f"{(plan.seqs_bytes or 0) / GIB:.2f} GiB of KV cache but only "
                    f"{plan.kv_cache_memory_bytes / GIB:.2f} GiB is left "
                    f"({plan.recommended_max_num_seqs} fit)"
                )
        return LayoutFit(self, gpu_memory_gib, tuple(plans), tuple(problems))


@dataclass(frozen=True)
class LayoutFit:
    """A layout planned on one GPU.

    Attributes:
        layout: The layout.
        gpu_memory_gib: The GPU's memory in GiB.
        plans: Each server that could be planned, with its KV-cache plan.
        problems: Why the layout does not fit (empty: it fits).
    """

    layout: Layout
    gpu_memory_gib: float
    plans: tuple[tuple[ServerProfile, KVCachePlan], ...]
    problems: tuple[str, ...]

    @property
    def fits(self) -> bool:
        """Every server starts and holds its ``max_num_seqs`` full-length requests."""
        return not self.problems


class NoLayoutFitsError(PlannerError):
    """No layout fits the GPU (or serves the concurrency asked for).

    Attributes:
        gpu_memory_gib: The GPU's memory in GiB.
        concurrency: Requests asked to be served at once.
        fits: Every layout's plan, with its reasons.
        smallest_gpu: ``(GiB, layout name)``: the least GPU memory on which a layout
            that serves ``concurrency`` fits, if any layout serves it.
    """

    def __init__(
        self,
        *,
        gpu_memory_gib: float,
        concurrency: int,
        fits: tuple[LayoutFit, ...],
        smallest_gpu: tuple[float, str] | None,
    ) -> None:
        self.gpu_memory_gib = gpu_memory_gib
        self.concurrency = concurrency
        self.fits = fits
        self.smallest_gpu = smallest_gpu
        reasons = "; ".join(f"{fit.layout.name} layout: {', '.join(fit.problems)}" for fit in fits)
        if smallest_gpu is None:
            most = max(LAYOUTS.values(), key=lambda layout: layout.servers[0].max_num_seqs)
            advice = (
                f"no layout serves {concurrency} requests at once (at most "
                f"{most.servers[0].max_num_seqs}, {most.name}): lower the concurrency or add a "
                "profile with a larger --max-num-seqs."
            )
        else:
            gib, name = smallest_gpu
            advice = (
                f"the smallest GPU that fits one is {gib:g} GiB ({name}); on this GPU use a "
                "smaller or more quantized model, or shorter windows (a profile of your own)."
            )
        super().__init__(
            f"No layout fits a {gpu_memory_gib:g} GiB GPU for {concurrency} request(s) at once "
            f"({reasons}): {advice}"
        )


@dataclass(frozen=True)
class LayoutChoice:
    """The layout to run on a GPU, and how every layout fared.

    Attributes:
        chosen: The first layout, in :data:`LAYOUTS` order, that fits.
        fits: Every layout's plan, in :data:`LAYOUTS` order.
    """

    chosen: LayoutFit
    fits: tuple[LayoutFit, ...]


LAYOUTS: Mapping[str, Layout] = MappingProxyType(
    {
        layout.name: layout
        for layout in (
            Layout(
                name="summarizer",
                description="The 7B reasoner (12K x 2) and a 3B summarizer for stage "
                "compression on one GPU.",
                reasoner="long-window-shared",
                summarizer="summarizer",
            ),
            Layout(
                name="solo",
                description="Profile A: the 7B alone, one long conversation at a time (12K x 2).",
                reasoner="long-window",
            ),
            Layout(
                name="balanced",
                description="Profile B: the 7B alone, more requests at once (8K x 6).",
                reasoner="balanced",
            ),
        )
    }
)
"""The GPU layouts by name, in the order :func:`choose_layout` prefers them.

``summarizer`` first: its reasoner has the window and sequences of ``solo``, and the 3B takes
compression off it, in memory that ``solo`` leaves idle at two sequences. ``balanced`` is
chosen when more requests must run at once than the others allow.
"""


def choose_layout(
    gpu_memory_gib: float,
    *,
    concurrency: int = 1,
    overhead_gib: float | None = None,
    layouts: tuple[Layout, ...] | None = None,
) -> LayoutChoice:
    """The layout to run on one GPU of ``gpu_memory_gib``: the first in :data:`LAYOUTS` that fits.

    Args:
        gpu_memory_gib: The GPU's memory in GiB.
        concurrency: Requests the app must have served at once.
        overhead_gib: Runtime memory per server beside weights and KV cache;
            default: each profile's.
        layouts: The layouts to choose from, in order of preference; default: all of
            :data:`LAYOUTS` (replicas choose among the one-server layouts).

    Returns:
        The chosen layout and every layout's plan.

    Raises:
        NoLayoutFitsError: None fits (the message gives each layout's reasons and the
            smallest GPU that would do).
        InvalidSettingError: A bad ``gpu_memory_gib`` or ``concurrency``.

    Example:
        >>> choose_layout(12).chosen.layout.name
        'summarizer'
        >>> choose_layout(8).chosen.layout.name  # the 3B does not fit beside the 7B
        'solo'
        >>> choose_layout(12, concurrency=4).chosen.layout.name
        'balanced'
    """
    candidates_in_order = tuple(LAYOUTS.values()) if layouts is None else layouts
    fits = tuple(
        layout.fit(gpu_memory_gib, concurrency=concurrency, overhead_gib=overhead_gib)
        for layout in candidates_in_order
    )
    for fit in fits:
        if fit.fits:
            return LayoutChoice(fit, fits)
    candidates = [
        (layout.min_gpu_memory_gib(overhead_gib=overhead_gib), layout.name)
        for layout in candidates_in_order
        if layout.servers[0].max_num_seqs >= concurrency
    ]
    raise NoLayoutFitsError(
        gpu_memory_gib=gpu_memory_gib,
        concurrency=concurrency,
        fits=fits,
        smallest_gpu=min(candidates) if candidates else None,
    )
