"""The KV-cache planner against the real vLLM: the numbers vLLM logs at startup, exactly.

Each case starts its own server with special settings (all at once) and stops it as soon as
vLLM has logged "CPU KV cache size: N tokens, Maximum concurrency for L tokens per request:
Cx" (no need to wait for /health). The fp8 case checks the size vLLM computes before it refuses an
fp8 KV cache on CPUs without AVX-512.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from langchain_vllm_budget.serving.local_models import cache_dir, ensure_local_model
from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer
from langchain_vllm_budget.serving.planner import GIB, load_model_config, plan_kv_cache

CAPACITY_LINE = re.compile(
    r"CPU KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per "
    r"request: ([\d.]+)x"
)


@dataclass(frozen=True)
class Case:
    model: str
    dtype: str
    kv_cache_dtype: str
    kv_cache_space_gib: int
    max_model_len: int


CASES = [
    # The measured line: fp32, 1 GiB, 2048 tokens -> 23,296 tokens, 11.38x.
    Case("smollm2-135m-instruct", "float32", "auto", 1, 2048),
    # 2 GiB and a window that is not a multiple of the 128-token CPU block.
    Case("smollm2-135m-instruct", "bfloat16", "auto", 2, 3000),
    # The same in fp8: vLLM sizes the cache (then refuses fp8 on AVX2-only CPUs).
    Case("smollm2-135m-instruct", "bfloat16", "fp8", 2, 3000),
    # Another architecture (Qwen2, 2 KV heads) at the seed's 12K window.
    Case("tiny-qwen", "float32", "auto", 1, 12288),
]


def _server(case: Case, log_path: Path) -> LocalVLLMServer:
    spec = LocalServerSpec(
        model=str(ensure_local_model(case.model)),
        served_model_name=f"planner-{case.model}",
        max_model_len=case.max_model_len,
        max_num_seqs=2,
        dtype=case.dtype,
        kv_cache_dtype=case.kv_cache_dtype,
        kv_cache_space_gib=case.kv_cache_space_gib,
    )
    return LocalVLLMServer(spec, log_path=log_path, startup_timeout=900)


@pytest.fixture(scope="module")
def logged() -> dict[Case, tuple[int, int, str]]:
    """Start one server per case, all at once, and keep the line each logged.

    Each server is stopped as soon as its line is in its log (they never serve a request).
    """
    logs = cache_dir() / "logs"
    found: dict[Case, tuple[int, int, str]] = {}
    with contextlib.ExitStack() as stack:
        servers = {}
        for i, case in enumerate(CASES):
            servers[case] = _server(case, logs / f"test-planner-case-{i}.log")
            stack.callback(servers[case].stop)
            servers[case].start(wait=False)
        for case, server in servers.items():
            match = server.wait_for_log(CAPACITY_LINE)
            server.stop()
            found[case] = (int(match[1].replace(",", "")), int(match[2].replace(",", "")), match[3])
    return found


@pytest.mark.integration
@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: (
        f"{c.model}-{c.dtype}-{c.kv_cache_dtype}-{c.kv_cache_space_gib}GiB-{c.max_model_len}"
    ),
)
def test_planner_equals_vllm_log(case: Case, logged: dict[Case, tuple[int, int, str]]) -> None:
    tokens, window, concurrency = logged[case]
    plan = plan_kv_cache(
        load_model_config(ensure_local_model(case.model)),
        kv_cache_dtype=case.kv_cache_dtype,
        model_dtype=case.dtype,
        max_model_len=case.max_model_len,
        kv_cache_memory_bytes=case.kv_cache_space_gib * GIB,
        device="cpu",
    )
    assert window == case.max_model_len
    assert plan.capacity_tokens == tokens
    assert f"{plan.max_concurrency:.2f}" == concurrency


@pytest.mark.integration
def test_fp8_cache_holds_twice_the_bf16_tokens(logged: dict[Case, tuple[int, int, str]]) -> None:
    bf16, fp8 = (logged[CASES[1]][0], logged[CASES[2]][0])
    assert fp8 == 2 * bf16


@pytest.mark.integration
def test_measured_smollm2_line(logged: dict[Case, tuple[int, int, str]]) -> None:
    assert logged[CASES[0]] == (23_296, 2048, "11.38")
