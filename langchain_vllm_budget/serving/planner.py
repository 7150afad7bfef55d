"""A KV-cache planner that sizes the cache exactly as vLLM does (pure arithmetic).

The planner (:func:`plan_kv_cache`, :func:`kv_cache_bytes_per_token`) is pure arithmetic
over a model's ``config.json``. It follows vLLM's own sizing (``kv_cache_utils.py``) and
defaults, which are the same in every release of :data:`VLLM_VERSIONS`:
a cache block holds ``block_size`` tokens of every layer; the cache gets
``memory // bytes_per_block`` blocks; a request of ``max_model_len`` tokens needs
``ceil(max_model_len / block_size)`` blocks; vLLM logs the maximum concurrency as
``num_blocks / blocks_per_request`` and the cache size as
``int(concurrency * max_model_len)`` tokens, and refuses to start unless one full-length
request fits beside the one block its pool holds back. Planning from a GPU's memory, vLLM
gives the cache ``ceil(memory x --gpu-memory-utilization)`` (default
:data:`DEFAULT_GPU_MEMORY_UTILIZATION`) less the weights, the activation peak of its
profiling run and the memory outside PyTorch: :class:`MeasuredMemory` holds those parts as
vLLM reported them for a model.

Example:
    >>> qwen7b = {"num_hidden_layers": 28, "num_attention_heads": 28,
    ...           "num_key_value_heads": 4, "hidden_size": 3584}
    >>> kv_cache_bytes_per_token(qwen7b, kv_cache_dtype="fp8")  # 28 x (K+V) x 4 x 128 x 1 B
    28672
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "GIB",
    "MEASURED_MEMORY",
    "VLLM_IMAGE",
    "VLLM_VERSIONS",
    "InvalidSettingError",
    "KVCachePlan",
    "KVCacheTooSmallError",
    "MeasuredMemory",
    "ModelConfigError",
    "ModelDoesNotFitError",
    "ModelShape",
    "PlannerError",
    "UnsupportedDtypeError",
    "checkpoint_size_gib",
    "kv_cache_bytes_per_token",
    "load_model_config",
    "measured_memory",
    "plan_kv_cache",
]

GIB = 1 << 30
"""Bytes in a GiB; vLLM's ``GiB_bytes`` (``VLLM_CPU_KVCACHE_SPACE`` counts in these)."""

VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
"""The pinned vLLM server image: the release whose sizing the planner follows."""

VLLM_VERSIONS = ("0.22", "0.26", "0.32")
"""vLLM releases whose sizing and defaults the planner's constants were checked against.

0.32 (the pinned image's) by the tests against the installed ``vllm`` (its ``CacheConfig``
and CPU platform) and its CPU server's log lines; 0.22 and 0.26 on an NVIDIA H200
(``docs/gpu.md``): the same block size, blocks, log lines and default utilisation."""

DEFAULT_GPU_MEMORY_UTILIZATION = 0.92
"""``--gpu-memory-utilization`` when none is given: ``CacheConfig.gpu_memory_utilization``."""

Device = Literal["cuda", "cpu"]

# vLLM's default cache block size per device: ``CacheConfig.DEFAULT_BLOCK_SIZE`` (16) on
# GPUs; the CPU platform sets 128 unless ``--block-size`` is given (platforms/cpu.py).
_DEFAULT_BLOCK_SIZE: Mapping[str, int] = MappingProxyType({"cuda": 16, "cpu": 128})


@dataclass(frozen=True)
class MeasuredMemory:
    """A model server's GPU memory beside its KV cache, as vLLM reports it at start-up.

    vLLM's log line "Actual usage is W GiB for weight, A GiB for peak activation, N GiB for
    non-torch memory, and G GiB for CUDAGraph memory" gives each part; the KV cache gets what
    ``--gpu-memory-utilization`` leaves of the GPU after them.

    Attributes:
        weights_gib: The weights as loaded ("Model loading took ... GiB").
        activation_peak_gib: PyTorch's peak during the profiling forward pass (grows with
            ``--max-num-batched-tokens``).
        non_torch_gib: Memory outside PyTorch's allocator (CUDA context, cuBLAS workspaces).
        cudagraph_gib: CUDA-graph pool (0 with ``--enforce-eager``).
        outside_budget_gib: What the server's processes hold beyond
            ``--gpu-memory-utilization`` x memory, read with ``nvidia-smi``: the CUDA context
            created before vLLM's first memory snapshot, which its accounting leaves out. GPUs
            shared by several servers need it once per server.
        vllm_version: The vLLM release that reported them.
        max_num_batched_tokens: The profiling pass's batch (``--max-num-batched-tokens``).
    """

    weights_gib: float
    activation_peak_gib: float
    non_torch_gib: float
    cudagraph_gib: float = 0.0
    outside_budget_gib: float = 0.0
    vllm_version: str | None = None
    max_num_batched_tokens: int | None = None

    @property
    def overhead_gib(self) -> float:
        """Everything beside weights and KV cache: activation peak, non-torch, CUDA graphs."""
        return round(self.activation_peak_gib + self.non_torch_gib + self.cudagraph_gib, 6)


# Read on an NVIDIA H200 with vLLM 0.26.0 (torch 2.11, cu130), AWQ checkpoints of the models'
# full sizes served with awq_marlin, fp8 KV cache, --enforce-eager and
# --max-num-batched-tokens 2048 (what `vllm serve` picks on GPUs under 70 GiB):
# benchmarks/results/gpu/awq-7b-12gb/ (docs/gpu.md). outside_budget_gib: the least excess
# of a server's nvidia-smi peak over its budget in that run (0.67-0.78 GiB, five servers).
MEASURED_MEMORY: Mapping[str, Mapping[str, MeasuredMemory]] = MappingProxyType(
    {
        "Qwen/Qwen2.5-7B-Instruct-AWQ": MappingProxyType(
            {
                "0.26": MeasuredMemory(
                    weights_gib=5.38,
                    activation_peak_gib=0.27,
                    non_torch_gib=0.22,
                    outside_budget_gib=0.67,
                    vllm_version="0.26.0",
                    max_num_batched_tokens=2048,
                )
            }
        ),
        "Qwen/Qwen2.5-3B-Instruct-AWQ": MappingProxyType(
            {
                "0.26": MeasuredMemory(
                    weights_gib=1.99,
                    activation_peak_gib=0.16,
                    non_torch_gib=0.22,
                    outside_budget_gib=0.53,
                    vllm_version="0.26.0",
                    max_num_batched_tokens=2048,
                )
            }
        ),
    }
)
"""vLLM's own memory report per model and vLLM release (``major.minor``)."""


def measured_memory(model: str, vllm_version: str | None = None) -> MeasuredMemory:
    """The measured memory of ``model``: for ``vllm_version``, else the newest release measured.

    Args:
        model: The hub id.
        vllm_version: ``major.minor`` (or a full version); None: the newest measured.

    Raises:
        KeyError: No measurement of this model (or of this release).

    Example:
        >>> measured_memory("Qwen/Qwen2.5-7B-Instruct-AWQ").weights_gib
        5.38
    """
    by_version = MEASURED_MEMORY[model]
    if vllm_version is None:
        return by_version[max(by_version, key=lambda v: tuple(int(p) for p in v.split(".")))]
    return by_version[".".join(vllm_version.split(".")[:2])]


# Bytes per element of each dtype name accepted for ``kv_cache_dtype`` (vLLM's names plus
# the usual short aliases). The fp8 variants store one byte per element.
_DTYPE_BYTES: Mapping[str, int] = MappingProxyType(
    {
        "float32": 4,
        "fp32": 4,
        "float": 4,
        "float16": 2,
        "fp16": 2,
        "half": 2,
        "bfloat16": 2,
        "bf16": 2,
        "fp8": 1,
        "fp8_e4m3": 1,
        "fp8_e5m2": 1,
        "fp8_inc": 1,
    }
)
# ``--dtype`` values: the weights' dtype, which an ``auto`` KV cache inherits.
_MODEL_DTYPES = ("auto", "float32", "fp32", "float", "float16", "fp16", "half", "bfloat16", "bf16")

# Where multimodal and composite configs keep their language model's settings (the keys
# transformers' ``get_text_config`` looks at).
_NESTED_CONFIG_KEYS = (
    "text_config",
    "llm_config",
    "language_config",
    "language_model_config",
    "thinker_config",
    "decoder",
)
# Field names that mean the same thing across architectures, in vLLM's order of preference.
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads")
_KV_HEAD_KEYS = (
    "n_head_kv",
    "num_kv_heads",
    "num_key_value_heads",
    "multi_query_group_num",
    "num_attention_groups",
)
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")


class PlannerError(ValueError):
    """Base class of the planner's errors: bad input or a setting that cannot work."""


class ModelConfigError(PlannerError):
    """``config.json`` lacks a field the planner needs, or holds a malformed value.

    Attributes:
        field: The field (or fields) at fault.
    """

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


class UnsupportedDtypeError(PlannerError):
    """A dtype name the planner does not know.

    Attributes:
        dtype: The name given.
        supported: The names accepted.
    """

    def __init__(self, dtype: str, *, supported: tuple[str, ...], what: str) -> None:
        self.dtype = dtype
        self.supported = supported
        super().__init__(f"Unknown {what} {dtype!r}: use one of {', '.join(supported)}.")


class InvalidSettingError(PlannerError):
    """A setting outside its valid range (utilisation, lengths, parallelism, memory).

    Attributes:
        setting: The setting's name.
        value: The value given.
    """

    def __init__(self, setting: str, value: object, requirement: str) -> None:
        self.setting = setting
        self.value = value
        super().__init__(f"{setting}={value!r} is invalid: {requirement}.")


class ModelDoesNotFitError(PlannerError):
    """The weights (plus runtime overhead) leave no GPU memory for a KV cache.

    Attributes:
        usable_gib: GPU memory vLLM may use on each GPU (memory x utilisation).
        needed_gib: Weights per GPU plus the runtime overhead.
    """

    def __init__(self, *, usable_gib: float, needed_gib: float, tensor_parallel_size: int) -> None:
        self.usable_gib = usable_gib
        self.needed_gib = needed_gib
        super().__init__(
            f"The model does not fit: each GPU may use {usable_gib:.2f} GiB, but weights and "
            f"runtime overhead need {needed_gib:.2f} GiB per GPU (tensor_parallel_size="
            f"{tensor_parallel_size}), leaving nothing for the KV cache. Raise "
            "--gpu-memory-utilization, use a larger GPU or more GPUs "
            "(--tensor-parallel-size), or a smaller / more quantized model."
        )


class KVCacheTooSmallError(PlannerError):
    """The KV cache cannot hold a single request of ``max_model_len`` tokens.

    vLLM refuses to start in this case ("To serve at least one request with the model's max
    seq len ...").

    Attributes:
        max_model_len: The window asked for.
        needed_bytes: KV cache one full-length request needs.
        available_bytes: KV cache memory, less the block vLLM's pool holds back.
        estimated_max_model_len: The longest window that fits (vLLM's own estimate).
    """

    def __init__(
        self,
        *,
        max_model_len: int,
        needed_bytes: int,
        available_bytes: int,
        estimated_max_model_len: int,
    ) -> None:
        self.max_model_len = max_model_len
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        self.estimated_max_model_len = estimated_max_model_len
        hint = (
            f"lower --max-model-len to {estimated_max_model_len} or less, or "
            if estimated_max_model_len > 0
            else ""
        )
        super().__init__(
            f"One request of {max_model_len} tokens needs {needed_bytes / GIB:.3f} GiB of KV "
            f"cache but only {available_bytes / GIB:.3f} GiB is available: {hint}give the "
            "cache more memory (--gpu-memory-utilization, VLLM_CPU_KVCACHE_SPACE, "
            "--kv-cache-memory-bytes) or use a smaller --kv-cache-dtype such as fp8."
        )


# --------------------------------------------------------------------------------------------
# The model's shape, from config.json


def _text_config(config: Mapping[str, Any], path: str = "") -> tuple[Mapping[str, Any], str]:
    """Return the language model's part of a (possibly nested) config and where it is."""
    for key in _NESTED_CONFIG_KEYS:
        nested = config.get(key)
        if isinstance(nested, Mapping):
            found, where = _text_config(nested, f"{path}{key}.")
            if any(name in found for name in _LAYER_KEYS):
                return found, where
    return config, path


def _positive_int(config: Mapping[str, Any], keys: tuple[str, ...], where: str) -> int | None:
    for key in keys:
        if key not in config or config[key] is None:
            continue
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelConfigError(
                f"config.json field {where}{key} must be a positive integer, got {value!r}: "
                "fix the config.json.",
                field=f"{where}{key}",
            )
        return value
    return None


def _required_int(config: Mapping[str, Any], keys: tuple[str, ...], where: str) -> int:
    value = _positive_int(config, keys, where)
    if value is None:
        names = " / ".join(f"{where}{key}" for key in keys)
        raise ModelConfigError(
            f"config.json has no {names}: pass the model's own config.json (a decoder "
            "language model's, with its layer and head counts).",
            field=names,
        )
    return value


def _uses_sliding_window(config: Mapping[str, Any]) -> bool:
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list) and any(kind != "full_attention" for kind in layer_types):
        return True
    enabled = config.get("use_sliding_window")
    if enabled is not None:
        return bool(enabled)
    window = config.get("sliding_window")
    return isinstance(window, int) and not isinstance(window, bool) and window > 0


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache size depends on, read from a model's ``config.json``.

    Attributes:
        num_layers: Decoder layers (each keeps its own K and V per token).
        num_attention_heads: Query heads.
        num_kv_heads: Key/value heads (fewer than query heads under grouped-query attention).
        head_dim: Size of one head; ``hidden_size / num_attention_heads`` if not given.
        dtype: The checkpoint's dtype (``torch_dtype`` / ``dtype``), if stated.
        max_position_embeddings: The longest window the model was trained for, if stated.
        model_type: The ``model_type`` field, if any.
    """

    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str | None = None
    max_position_embeddings: int | None = None
    model_type: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Read the shape from a ``config.json`` mapping, nested text configs included.

        Args:
            config: The parsed ``config.json``.

        Returns:
            The shape.

        Raises:
            ModelConfigError: A needed field is missing or malformed, or the model's
                attention is of a kind the planner does not size (sliding window, MLA).

        Example:
            >>> ModelShape.from_config(
            ...     {"text_config": {"num_hidden_layers": 2, "num_attention_heads": 4,
            ...                      "hidden_size": 256}}
            ... ).head_dim
            64
        """
        if not isinstance(config, Mapping):
            raise ModelConfigError(
                f"config.json must hold a JSON object, got {type(config).__name__}.",
                field="<root>",
            )
        text, where = _text_config(config)
        if "kv_lora_rank" in text:
            raise ModelConfigError(
                "config.json describes multi-head latent attention (kv_lora_rank), whose KV cache "
                "this planner does not size: read vLLM's 'KV cache size' log line instead.",
                field=f"{where}kv_lora_rank",
            )
        if _uses_sliding_window(text):
            raise ModelConfigError(
                "config.json describes sliding-window attention (sliding_window / layer_types), "
                "which vLLM caches per window: the planner sizes full-attention models only.",
                field=f"{where}sliding_window",
            )
        layers = _required_int(text, _LAYER_KEYS, where)
        heads = _required_int(text, _HEAD_KEYS, where)
        kv_heads = _positive_int(text, _KV_HEAD_KEYS, where) or heads
        if kv_heads > heads:
            raise ModelConfigError(
                f"config.json says {kv_heads} KV heads but only {heads} attention heads: a "
                "model has at most as many KV heads as attention heads; fix the config.",
                field=f"{where}num_key_value_heads",
            )
        head_dim = _positive_int(text, ("head_dim", "hidden_size_per_head"), where)
        if head_dim is None:
            hidden = _required_int(text, _HIDDEN_KEYS, where)
            head_dim = hidden // heads
            if head_dim == 0:
                raise ModelConfigError(
                    f"hidden_size {hidden} is smaller than num_attention_heads {heads}: "
                    "fix the config or give head_dim.",
                    field=f"{where}hidden_size",
                )
        dtype = text.get("torch_dtype", text.get("dtype"))
        if dtype is None:
            dtype = config.get("torch_dtype", config.get("dtype"))
        model_type = text.get("model_type", config.get("model_type"))
        return cls(
            num_layers=layers,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=str(dtype) if dtype is not None else None,
            max_position_embeddings=_positive_int(text, ("max_position_embeddings",), where),
            model_type=str(model_type) if model_type is not None else None,
        )


def load_model_config(source: str | Path) -> dict[str, Any]:
    """Read a ``config.json`` from its path or from the model folder that holds it.

    Raises:
        ModelConfigError: No such file, or it is not a JSON object.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelConfigError(
            f"No config.json at {path}: pass a model folder or the path of its config.json.",
            field="<file>",
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{path} is not valid JSON: {exc}.", field="<file>") from exc
    if not isinstance(config, dict):
        raise ModelConfigError(f"{path} must hold a JSON object.", field="<root>")
    return config


def checkpoint_size_gib(folder: str | Path) -> float:
    """Size of a model folder's weight files (``*.safetensors``, else ``*.bin``) in GiB.

    A good first estimate of the GPU memory the weights take.

    Raises:
        ModelConfigError: The folder holds no weight files.
    """
    root = Path(folder)
    files = list(root.glob("*.safetensors")) or list(root.glob("*.bin"))
    if not files:
        raise ModelConfigError(
            f"{root} holds no *.safetensors or *.bin weights: pass --weights-gib.",
            field="<weights>",
        )
    return sum(file.stat().st_size for file in files) / GIB


# --------------------------------------------------------------------------------------------
# The planner


def _normalize_dtype(name: str, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(name, str) or name.lower() not in allowed:
        raise UnsupportedDtypeError(str(name), supported=allowed, what=what)
    return name.lower()


def _kv_dtype_bytes(shape: ModelShape, kv_cache_dtype: str, model_dtype: str) -> int:
    kv = _normalize_dtype(kv_cache_dtype, ("auto", *_DTYPE_BYTES), "kv_cache_dtype")
    if kv != "auto":
        return _DTYPE_BYTES[kv]
    served = _normalize_dtype(model_dtype, _MODEL_DTYPES, "model dtype (--dtype)")
    if served != "auto":
        return _DTYPE_BYTES[served]
    if shape.dtype is None:
        raise ModelConfigError(
            "kv_cache_dtype='auto' follows the weights' dtype, but config.json states none "
            "(torch_dtype / dtype): pass the served --dtype or an explicit kv_cache_dtype.",
            field="torch_dtype",
        )
    checkpoint = shape.dtype.removeprefix("torch.").lower()
    if checkpoint not in _DTYPE_BYTES:
        raise UnsupportedDtypeError(
            checkpoint, supported=tuple(_DTYPE_BYTES), what="checkpoint dtype (torch_dtype)"
        )
    # vLLM's --dtype auto serves float32 checkpoints in 16 bits (_resolve_auto_dtype).
    return min(_DTYPE_BYTES[checkpoint], 2)


def _kv_heads_per_gpu(shape: ModelShape, tensor_parallel_size: int) -> int:
    if (
        isinstance(tensor_parallel_size, bool)
        or not isinstance(tensor_parallel_size, int)
        or (tensor_parallel_size < 1)
    ):
        raise InvalidSettingError(
            "tensor_parallel_size", tensor_parallel_size, "use a whole number of GPUs, >= 1"
        )
    if shape.num_attention_heads % tensor_parallel_size:
        raise InvalidSettingError(
            "tensor_parallel_size",
            tensor_parallel_size,
            f"it must divide the {shape.num_attention_heads} attention heads (vLLM requires it)",
        )
    # vLLM splits the KV heads across GPUs and replicates them when there are fewer KV heads
    # than GPUs, so each GPU holds at least one (ModelConfig.get_num_kv_heads).
    return max(1, shape.num_kv_heads // tensor_parallel_size)


def kv_cache_bytes_per_token(
    model_config: Mapping[str, Any],
    kv_cache_dtype: str,
    *,
    model_dtype: str = "auto",
    tensor_parallel_size: int = 1,
) -> int:
    """KV-cache bytes one token takes on each GPU: layers x (K + V) x KV heads x head dim x dtype.

    Args:
        model_config: The model's parsed ``config.json`` (nested text configs are found).
        kv_cache_dtype: ``--kv-cache-dtype``: ``auto`` (the weights' dtype), ``float16`` /
            ``fp16``, ``bfloat16`` / ``bf16``, ``fp8`` (and ``fp8_e4m3``, ``fp8_e5m2``), or
            ``float32`` / ``fp32`` (what ``auto`` gives a model served with
            ``--dtype float32``).
        model_dtype: ``--dtype`` of the weights; only used when ``kv_cache_dtype`` is
            ``auto``. ``auto`` reads ``torch_dtype`` and, like vLLM, serves float32
            checkpoints in 16 bits.
        tensor_parallel_size: GPUs the KV heads are split across.

    Returns:
        Bytes per token of context on each GPU.

    Raises:
        ModelConfigError: ``config.json`` lacks or garbles a needed field.
        UnsupportedDtypeError: An unknown dtype name.
        InvalidSettingError: A tensor-parallel size the model cannot be split by.

    Example:
        >>> qwen_7b = {"num_hidden_layers": 28, "num_attention_heads": 28,
        ...            "num_key_value_heads": 4, "hidden_size": 3584}
        >>> kv_cache_bytes_per_token(qwen_7b, "fp16"), kv_cache_bytes_per_token(qwen_7b, "fp8")
        (57344, 28672)
    """
    shape = ModelShape.from_config(model_config)
    kv_heads = _kv_heads_per_gpu(shape, tensor_parallel_size)
    dtype_bytes = _kv_dtype_bytes(shape, kv_cache_dtype, model_dtype)
    return shape.num_layers * 2 * kv_heads * shape.head_dim * dtype_bytes


@dataclass(frozen=True)
class KVCachePlan:
    """The KV cache vLLM will build for one model and setting, on each GPU.

    Attributes:
        model: The model's shape.
        device: ``cuda`` or ``cpu`` (which sets vLLM's default block size).
        kv_cache_dtype: The KV dtype asked for.
        kv_dtype_bytes: Bytes per stored element (1 for fp8).
        tensor_parallel_size: GPUs the model is split across.
        kv_heads_per_gpu: KV heads each GPU caches.
        block_size: Tokens per cache block.
        bytes_per_token: KV bytes one token takes on each GPU.
        bytes_per_block: Bytes of one block (``block_size`` tokens of every layer).
        kv_cache_memory_bytes: Memory given to the KV cache on each GPU.
        num_blocks: Blocks that memory holds (``kv_cache_memory_bytes // bytes_per_block``).
        max_model_len: ``--max-model-len``.
        blocks_per_request: Blocks one request of ``max_model_len`` tokens needs.
        max_concurrency: Full-length requests the cache holds at once, as vLLM logs it.
        capacity_tokens: The "KV cache size" vLLM logs:
            ``int(max_concurrency * max_model_len)``.
        max_num_seqs: ``--max-num-seqs`` planned, if given.
        recommended_max_num_seqs: Full-length requests that fit at once beside the block
            vLLM holds back: the most sequences worth allowing at this ``max_model_len``.
        recommended_max_model_len: The longest block-aligned window that lets
            ``max_num_seqs`` (or 1) requests of that length fit at once.
        gpu_memory_gib: GPU memory per GPU, when planned from it.
        gpu_memory_utilization: ``--gpu-memory-utilization``, when planned from it.
        weights_gib: Weights of the whole model, when planned from GPU memory.
        overhead_gib: Runtime memory beside weights and KV cache (activations, CUDA
            context), when planned from GPU memory: an estimate, not a measurement.
    """

    model: ModelShape
    device: Device
    kv_cache_dtype: str
    kv_dtype_bytes: int
    tensor_parallel_size: int
    kv_heads_per_gpu: int
    block_size: int
    bytes_per_token: int
    bytes_per_block: int
    kv_cache_memory_bytes: int
    num_blocks: int
    max_model_len: int
    blocks_per_request: int
    max_concurrency: float
    capacity_tokens: int
    max_num_seqs: int | None
    recommended_max_num_seqs: int
    recommended_max_model_len: int
    gpu_memory_gib: float | None = None
    gpu_memory_utilization: float | None = None
    weights_gib: float | None = None
    overhead_gib: float | None = None

    @property
    def block_tokens(self) -> int:
        """Token slots in all blocks (``num_blocks x block_size``)."""
        return self.num_blocks * self.block_size

    @property
    def request_bytes(self) -> int:
        """KV bytes one request of ``max_model_len`` tokens takes (whole blocks)."""
        return self.blocks_per_request * self.bytes_per_block

    @property
    def seqs_bytes(self) -> int | None:
        """KV bytes ``max_num_seqs`` full-length requests take at once, if planned."""
        if self.max_num_seqs is None:
            return None
        return self.max_num_seqs * self.request_bytes

    @property
    def fits_max_num_seqs(self) -> bool | None:
        """Whether ``max_num_seqs`` full-length requests fit at once (None: not planned)."""
        if self.max_num_seqs is None:
            return None
        return self.max_num_seqs <= self.recommended_max_num_seqs

    def max_model_len_for(self, num_seqs: int) -> int:
        """The longest block-aligned window that lets ``num_seqs`` such requests fit at once."""
        if num_seqs < 1:
            raise InvalidSettingError("num_seqs", num_seqs, "use 1 or more")
        longest = ((self.num_blocks - 1) // num_seqs) * self.block_size
        if self.model.max_position_embeddings is not None:
            longest = min(longest, self.model.max_position_embeddings)
        return longest

    def log_line(self) -> str:
        """The capacity line vLLM logs at startup for this setting."""
        pool = "GPU" if self.device == "cuda" else "CPU"
        return (
            f"{pool} KV cache size: {self.capacity_tokens:,} tokens, Maximum concurrency "
            f"for {self.max_model_len:,} tokens per request: {self.max_concurrency:.2f}x"
        )


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidSettingError(name, value, "use a whole number >= 1")
    return value


def _check_non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidSettingError(name, value, "use a number >= 0")
    return float(value)


def _kv_memory_per_gpu(
    *,
    kv_cache_memory_bytes: int | None,
    gpu_memory_gib: float | None,
    gpu_memory_utilization: float,
    weights_gib: float | None,
    overhead_gib: float,
    tensor_parallel_size: int,
) -> int:
    if kv_cache_memory_bytes is not None:
        if gpu_memory_gib is not None:
            raise InvalidSettingError(
                "gpu_memory_gib",
                gpu_memory_gib,
                "give either kv_cache_memory_bytes (an explicit cache size, as "
                "--kv-cache-memory-bytes or VLLM_CPU_KVCACHE_SPACE set it) or "
                "gpu_memory_gib + weights_gib, not both",
            )
        return _check_positive_int("kv_cache_memory_bytes", kv_cache_memory_bytes)
    if gpu_memory_gib is None:
        raise InvalidSettingError(
            "kv_cache_memory_bytes",
            None,
            "give kv_cache_memory_bytes (e.g. VLLM_CPU_KVCACHE_SPACE x 2**30) or "
            "gpu_memory_gib with weights_gib",
        )
    if _check_non_negative("gpu_memory_gib", gpu_memory_gib) == 0:
        raise InvalidSettingError("gpu_memory_gib", gpu_memory_gib, "use the GPU's memory, > 0")
    if weights_gib is None:
        raise InvalidSettingError(
            "weights_gib",
            None,
            "planning from GPU memory needs the weights' size (e.g. the checkpoint's "
            "*.safetensors total, 5.2 for Qwen2.5-7B-Instruct-AWQ)",
        )
    weights = _check_non_negative("weights_gib", weights_gib)
    usable_gib = gpu_memory_gib * gpu_memory_utilization
    needed_gib = weights / tensor_parallel_size + overhead_gib
    free = int(usable_gib * GIB) - int(needed_gib * GIB)
    if free <= 0:
        raise ModelDoesNotFitError(
            usable_gib=usable_gib, needed_gib=needed_gib, tensor_parallel_size=tensor_parallel_size
        )
    return free


def plan_kv_cache(
    model_config: Mapping[str, Any],
    *,
    kv_cache_dtype: str,
    max_model_len: int,
    kv_cache_memory_bytes: int | None = None,
    gpu_memory_gib: float | None = None,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    weights_gib: float | None = None,
    tensor_parallel_size: int = 1,
    max_num_seqs: int | None = None,
    model_dtype: str = "auto",
    device: Device = "cuda",
    block_size: int | None = None,
    overhead_gib: float = 1.0,
) -> KVCachePlan:
    """Plan the KV cache vLLM builds for a model and setting, exactly as vLLM sizes it.

    Give the cache's memory either explicitly (``kv_cache_memory_bytes``: vLLM's
    ``--kv-cache-memory-bytes``, or ``VLLM_CPU_KVCACHE_SPACE`` GiB on the CPU, where the
    result equals vLLM's log line) or as a GPU budget: ``gpu_memory_gib x
    gpu_memory_utilization`` less the weights on each GPU (``weights_gib /
    tensor_parallel_size``) less ``overhead_gib`` for the activation peak, memory outside
    PyTorch and CUDA graphs, which vLLM measures at start-up (take them from a
    :class:`MeasuredMemory` of the same model and batch size).

    Args:
        model_config: The model's parsed ``config.json``.
        kv_cache_dtype: ``--kv-cache-dtype`` (see :func:`kv_cache_bytes_per_token`).
        max_model_len: ``--max-model-len``.
        kv_cache_memory_bytes: KV cache memory on each GPU (or on the CPU).
        gpu_memory_gib: Memory of each GPU, in GiB.
        gpu_memory_utilization: ``--gpu-memory-utilization``, in (0, 1]; vLLM's default
            when not given.
        weights_gib: The weights of the whole model, in GiB.
        tensor_parallel_size: ``--tensor-parallel-size``: weights and KV heads split
            across this many GPUs.
        max_num_seqs: ``--max-num-seqs`` to check against the cache.
        model_dtype: ``--dtype`` (used when ``kv_cache_dtype`` is ``auto``).
        device: ``cuda`` (block size 16) or ``cpu`` (block size 128).
        block_size: ``--block-size``, if set.
        overhead_gib: Non-weight, non-KV memory per GPU when planning from GPU memory.

    Returns:
        The plan.

    Raises:
        ModelConfigError: ``config.json`` lacks or garbles a needed field.
        UnsupportedDtypeError: An unknown dtype.
        InvalidSettingError: A setting out of range (utilisation outside (0, 1], lengths
            below 1, both or neither memory source, a tensor-parallel size that does not
            divide the heads).
        ModelDoesNotFitError: The weights leave no GPU memory for the cache.
        KVCacheTooSmallError: Not even one request of ``max_model_len`` fits.

    Example:
        >>> smollm2 = {"num_hidden_layers": 30, "num_attention_heads": 9,
        ...            "num_key_value_heads": 3, "hidden_size": 576}
        >>> plan = plan_kv_cache(smollm2, kv_cache_dtype="float32", max_model_len=2048,
        ...                      kv_cache_memory_bytes=1 * GIB, device="cpu")
        >>> plan.log_line()
        'CPU KV cache size: 23,296 tokens, Maximum concurrency for 2,048 tokens per request: 11.38x'
    """
    if device not in _DEFAULT_BLOCK_SIZE:
        raise InvalidSettingError("device", device, "use 'cuda' or 'cpu'")
    if (
        isinstance(gpu_memory_utilization, bool)
        or not isinstance(gpu_memory_utilization, (int, float))
        or not 0 < gpu_memory_utilization <= 1
    ):
        raise InvalidSettingError(
            "gpu_memory_utilization",
            gpu_memory_utilization,
            "it is the fraction of GPU memory vLLM may use: choose a value in (0, 1], e.g. 0.9",
        )
    max_model_len = _check_positive_int("max_model_len", max_model_len)
    if max_num_seqs is not None:
        max_num_seqs = _check_positive_int("max_num_seqs", max_num_seqs)
    block = _check_positive_int(
        "block_size", _DEFAULT_BLOCK_SIZE[device] if block_size is None else block_size
    )
    overhead = _check_non_negative("overhead_gib", overhead_gib)

    shape = ModelShape.from_config(model_config)
    kv_heads = _kv_heads_per_gpu(shape, tensor_parallel_size)
    dtype_bytes = _kv_dtype_bytes(shape, kv_cache_dtype, model_dtype)
    bytes_per_token = shape.num_layers * 2 * kv_heads * shape.head_dim * dtype_bytes
    memory = _kv_memory_per_gpu(
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        gpu_memory_gib=gpu_memory_gib,
        gpu_memory_utilization=gpu_memory_utilization,
        weights_gib=weights_gib,
        overhead_gib=overhead,
        tensor_parallel_size=tensor_parallel_size,
    )

    # One block holds `block` tokens of every layer (kv_cache_utils.get_kv_cache_config_
    # from_groups); full-attention pages need no extra stride alignment.
    bytes_per_block = bytes_per_token * block
    num_blocks = memory // bytes_per_block
    blocks_per_request = math.ceil(max_model_len / block)
    # vLLM checks against the memory less the one block its pool holds back (the null block).
    usable = memory - bytes_per_block
    if blocks_per_request * bytes_per_block > usable:
        estimate = max(0, min(max_model_len, (usable // bytes_per_block) * block))
        raise KVCacheTooSmallError(
            max_model_len=max_model_len,
            needed_bytes=blocks_per_request * bytes_per_block,
            available_bytes=max(usable, 0),
            estimated_max_model_len=estimate,
        )
    # The same float arithmetic as get_max_concurrency_for_kv_cache_config and
    # get_kv_cache_capacity, so the numbers equal vLLM's log line.
    max_concurrency = num_blocks / blocks_per_request
    capacity_tokens = int(max_concurrency * max_model_len)
    recommended_seqs = (num_blocks - 1) // blocks_per_request
    plan = KVCachePlan(
        model=shape,
        device=device,
        kv_cache_dtype=kv_cache_dtype.lower(),
        kv_dtype_bytes=dtype_bytes,
        tensor_parallel_size=tensor_parallel_size,
        kv_heads_per_gpu=kv_heads,
        block_size=block,
        bytes_per_token=bytes_per_token,
        bytes_per_block=bytes_per_block,
        kv_cache_memory_bytes=memory,
        num_blocks=num_blocks,
        max_model_len=max_model_len,
        blocks_per_request=blocks_per_request,
        max_concurrency=max_concurrency,
        capacity_tokens=capacity_tokens,
        max_num_seqs=max_num_seqs,
        recommended_max_num_seqs=recommended_seqs,
        recommended_max_model_len=0,
        gpu_memory_gib=None if kv_cache_memory_bytes is not None else gpu_memory_gib,
        gpu_memory_utilization=(
            None if kv_cache_memory_bytes is not None else gpu_memory_utilization
        ),
        weights_gib=None if kv_cache_memory_bytes is not None else weights_gib,
        overhead_gib=None if kv_cache_memory_bytes is not None else overhead,
    )
    return replace(plan, recommended_max_model_len=plan.max_model_len_for(max_num_seqs or 1))
