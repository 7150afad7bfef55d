"""The KV-cache planner's arithmetic, its errors, and the server profiles."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from langchain_vllm_budget import settings
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.cli import app
from langchain_vllm_budget.serving.planner import (
    GIB,
    InvalidSettingError,
    KVCacheTooSmallError,
    ModelConfigError,
    ModelDoesNotFitError,
    ModelShape,
    PlannerError,
    UnsupportedDtypeError,
    checkpoint_size_gib,
    kv_cache_bytes_per_token,
    load_model_config,
    plan_kv_cache,
)
from langchain_vllm_budget.serving.profiles import (
    LAYOUTS,
    PROFILES,
    Layout,
    NoLayoutFitsError,
    UnknownProfileError,
    choose_layout,
    get_profile,
)

# The seed's model: Qwen2.5-7B-Instruct(-AWQ) config.json (architecture fields).
QWEN_7B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "sliding_window": 131072,
    "use_sliding_window": False,
    "torch_dtype": "float16",
}
# SmolLM2-135M: 30 layers, 3 KV heads, head dim 64 (576 / 9).
SMOLLM2: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}


# ---- bytes per token ---------------------------------------------------------------------


def test_seed_model_fp16_vs_fp8_per_token() -> None:
    fp16 = kv_cache_bytes_per_token(QWEN_7B, "fp16")
    fp8 = kv_cache_bytes_per_token(QWEN_7B, "fp8")
    assert fp16 == 28 * 2 * 4 * 128 * 2 == 57_344  # 56 KiB
    assert fp8 == 28_672  # 28 KiB: fp8 halves it
    assert fp16 == 2 * fp8


@pytest.mark.parametrize(
    ("dtype", "element_bytes"),
    [
        ("float32", 4),
        ("fp32", 4),
        ("float16", 2),
        ("half", 2),
        ("bfloat16", 2),
        ("BF16", 2),
        ("fp8", 1),
        ("fp8_e4m3", 1),
        ("fp8_e5m2", 1),
    ],
)
def test_dtype_names(dtype: str, element_bytes: int) -> None:
    assert kv_cache_bytes_per_token(SMOLLM2, dtype) == 30 * 2 * 3 * 64 * element_bytes


def test_auto_follows_the_served_weights_dtype() -> None:
    assert kv_cache_bytes_per_token(SMOLLM2, "auto") == 30 * 2 * 3 * 64 * 2  # bfloat16 config
    assert kv_cache_bytes_per_token(SMOLLM2, "auto", model_dtype="float32") == 46_080
    # vLLM's --dtype auto serves a float32 checkpoint in 16 bits.
    fp32_checkpoint = {**SMOLLM2, "torch_dtype": "float32"}
    assert kv_cache_bytes_per_token(fp32_checkpoint, "auto") == 23_040
    # transformers 5 writes "dtype" rather than "torch_dtype".
    renamed = {k: v for k, v in SMOLLM2.items() if k != "torch_dtype"} | {"dtype": "float32"}
    assert kv_cache_bytes_per_token(renamed, "auto", model_dtype="float32") == 46_080


def test_head_dim_given_explicitly_wins_over_hidden_size() -> None:
    # Qwen3-style: head_dim 128 although hidden_size / heads = 64.
    config = {
        "num_hidden_layers": 2,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "hidden_size": 1024,
        "head_dim": 128,
    }
    assert kv_cache_bytes_per_token(config, "bf16") == 2 * 2 * 8 * 128 * 2


def test_no_kv_heads_field_means_multi_head_attention() -> None:
    config = {"n_layer": 12, "n_head": 12, "n_embd": 768}  # GPT-2 names
    assert kv_cache_bytes_per_token(config, "fp16") == 12 * 2 * 12 * 64 * 2


@pytest.mark.parametrize("key", ["text_config", "llm_config", "language_config"])
def test_nested_text_configs(key: str) -> None:
    arch = {k: v for k, v in QWEN_7B.items() if k != "architectures"}
    composite = {"model_type": "vision-wrapper", "vision_config": {"hidden_size": 1280}, key: arch}
    assert kv_cache_bytes_per_token(composite, "fp8") == 28_672
    assert ModelShape.from_config(composite).max_position_embeddings == 32768


def test_doubly_nested_config_and_top_level_dtype() -> None:
    arch = {k: v for k, v in SMOLLM2.items() if k != "torch_dtype"}
    config = {"torch_dtype": "float32", "thinker_config": {"text_config": arch}}
    assert ModelShape.from_config(config).dtype == "float32"
    assert kv_cache_bytes_per_token(config, "fp16") == 23_040


@pytest.mark.parametrize(
    ("tp", "kv_heads_per_gpu"),
    [(1, 4), (2, 2), (4, 1), (7, 1), (14, 1)],  # more GPUs than KV heads: heads replicate
)
def test_tensor_parallel_splits_kv_heads(tp: int, kv_heads_per_gpu: int) -> None:
    per_gpu = kv_cache_bytes_per_token(QWEN_7B, "fp8", tensor_parallel_size=tp)
    assert per_gpu == 28 * 2 * kv_heads_per_gpu * 128


def test_tensor_parallel_must_divide_attention_heads() -> None:
    with pytest.raises(InvalidSettingError, match="28 attention heads") as caught:
        kv_cache_bytes_per_token(QWEN_7B, "fp8", tensor_parallel_size=3)
    assert caught.value.setting == "tensor_parallel_size"
    with pytest.raises(InvalidSettingError, match=">= 1"):
        kv_cache_bytes_per_token(QWEN_7B, "fp8", tensor_parallel_size=0)


# ---- capacity, concurrency, block alignment ------------------------------------------------


def test_smollm2_cpu_matches_the_measured_vllm_log() -> None:
    # Measured: VLLM_CPU_KVCACHE_SPACE=1, fp32, --max-model-len 2048 logs
    # "CPU KV cache size: 23,296 tokens, Maximum concurrency for 2,048 tokens per request: 11.38x"
    plan = plan_kv_cache(
        SMOLLM2,
        kv_cache_dtype="auto",
        model_dtype="float32",
        max_model_len=2048,
        kv_cache_memory_bytes=GIB,
        device="cpu",
    )
    assert plan.block_size == 128
    assert plan.bytes_per_block == 46_080 * 128
    assert plan.num_blocks == GIB // (46_080 * 128) == 182
    assert plan.capacity_tokens == 23_296
    assert f"{plan.max_concurrency:.2f}" == "11.38"
    assert plan.log_line() == (
        "CPU KV cache size: 23,296 tokens, Maximum concurrency for 2,048 tokens per request: 11.38x"
    )
    two_gib = plan_kv_cache(
        SMOLLM2,
        kv_cache_dtype="fp32",
        max_model_len=2048,
        kv_cache_memory_bytes=2 * GIB,
        device="cpu",
    )
    assert two_gib.capacity_tokens == 46_592  # measured with VLLM_CPU_KVCACHE_SPACE=2


def test_fp8_sizes_twice_bf16_as_measured() -> None:
    common: dict[str, Any] = {"max_model_len": 2048, "kv_cache_memory_bytes": GIB, "device": "cpu"}
    bf16 = plan_kv_cache(SMOLLM2, kv_cache_dtype="bfloat16", **common)
    fp8 = plan_kv_cache(SMOLLM2, kv_cache_dtype="fp8", **common)
    assert fp8.capacity_tokens == 2 * bf16.capacity_tokens


def test_capacity_follows_vllm_when_window_is_not_block_aligned() -> None:
    # vLLM logs int(concurrency * max_model_len), not num_blocks * block_size.
    plan = plan_kv_cache(
        SMOLLM2,
        kv_cache_dtype="fp32",
        max_model_len=3000,
        kv_cache_memory_bytes=2 * GIB,
        device="cpu",
    )
    assert plan.num_blocks == 364
    assert plan.blocks_per_request == 24  # ceil(3000 / 128)
    assert plan.capacity_tokens == int(364 / 24 * 3000) == 45_500
    assert plan.block_tokens == 46_592
    assert plan.capacity_tokens < plan.block_tokens


def test_seed_case_long_window_and_balanced() -> None:
    gpu: dict[str, Any] = {
        "gpu_memory_gib": 12,
        "gpu_memory_utilization": 0.88,
        "weights_gib": 5.2,
        "overhead_gib": 1.0,
    }
    a_fp16 = plan_kv_cache(
        QWEN_7B, kv_cache_dtype="fp16", max_model_len=12288, max_num_seqs=2, **gpu
    )
    a_fp8 = plan_kv_cache(QWEN_7B, kv_cache_dtype="fp8", max_model_len=12288, max_num_seqs=2, **gpu)
    # 12288 x 2 tokens: 1.3125 GiB in fp16, 0.65625 GiB in fp8.
    assert a_fp16.seqs_bytes == 2 * 12288 * 57_344 == int(1.3125 * GIB)
    assert a_fp8.seqs_bytes == int(0.65625 * GIB)
    assert a_fp8.kv_cache_memory_bytes == int(12 * 0.88 * GIB) - int(6.2 * GIB)
    assert a_fp8.num_blocks == 2 * a_fp16.num_blocks
    assert a_fp8.fits_max_num_seqs
    assert a_fp16.fits_max_num_seqs
    # Profile B: 8192 x 6 = 49,152 tokens, 1.3125 GiB in fp8: fits with room to spare.
    b = plan_kv_cache(QWEN_7B, kv_cache_dtype="fp8", max_model_len=8192, max_num_seqs=6, **gpu)
    assert b.seqs_bytes == 6 * 8192 * 28_672
    assert b.fits_max_num_seqs
    assert b.recommended_max_num_seqs >= 6
    assert b.recommended_max_num_seqs == (b.num_blocks - 1) // (8192 // 16)


def test_recommendation_is_the_edge_of_what_fits() -> None:
    plan = plan_kv_cache(
        SMOLLM2,
        kv_cache_dtype="fp32",
        max_model_len=2048,
        max_num_seqs=4,
        kv_cache_memory_bytes=GIB,
        device="cpu",
    )
    longest = plan.recommended_max_model_len
    assert longest % plan.block_size == 0
    # The recommended window fits 4 sequences; one block more per sequence does not.
    assert 4 * math.ceil(longest / 128) <= plan.num_blocks - 1
    assert 4 * (math.ceil(longest / 128) + 1) > plan.num_blocks - 1
    fits = plan_kv_cache(
        SMOLLM2,
        kv_cache_dtype="fp32",
        max_model_len=longest,
        max_num_seqs=4,
        kv_cache_memory_bytes=GIB,
        device="cpu",
    )
    assert fits.fits_max_num_seqs
    too_many = plan_kv_cache(
        SMOLLM2,
        kv_cache_dtype="fp32",
        max_model_len=2048,
        max_num_seqs=plan.recommended_max_num_seqs + 1,
        kv_cache_memory_bytes=GIB,
        device="cpu",
    )
    assert too_many.fits_max_num_seqs is False
    # Capped by the model's own longest window.
    assert plan.max_model_len_for(1) == 8192


def test_tensor_parallel_shards_weights_and_cache() -> None:
    settings: dict[str, Any] = {
        "kv_cache_dtype": "fp16",
        "max_model_len": 32768,
        "gpu_memory_gib": 12,
        "gpu_memory_utilization": 0.9,
        "overhead_gib": 1.0,
    }
    fp16_weights = 14.2  # the unquantized 7B does not fit one 12 GiB GPU
    with pytest.raises(ModelDoesNotFitError) as caught:
        plan_kv_cache(QWEN_7B, weights_gib=fp16_weights, **settings)
    assert caught.value.needed_gib == pytest.approx(15.2)
    assert "--tensor-parallel-size" in str(caught.value)
    two = plan_kv_cache(QWEN_7B, weights_gib=fp16_weights, tensor_parallel_size=2, **settings)
    assert two.kv_heads_per_gpu == 2
    assert two.bytes_per_token == 57_344 // 2
    assert two.kv_cache_memory_bytes == int(12 * 0.9 * GIB) - int((7.1 + 1.0) * GIB)


@given(
    memory=st.integers(min_value=GIB // 4, max_value=64 * GIB),
    max_model_len=st.integers(min_value=1, max_value=40_000),
    block=st.sampled_from([16, 32, 128]),
)
def test_invariants(memory: int, max_model_len: int, block: int) -> None:
    blocks = memory // (23_040 * block)
    settings: dict[str, Any] = {
        "kv_cache_dtype": "bf16",
        "max_model_len": max_model_len,
        "kv_cache_memory_bytes": memory,
        "block_size": block,
    }
    if math.ceil(max_model_len / block) > blocks - 1:
        with pytest.raises(KVCacheTooSmallError) as caught:
            plan_kv_cache(SMOLLM2, **settings)
        # The estimate is shorter, and it fits.
        estimate = caught.value.estimated_max_model_len
        assert estimate < max_model_len
        assert math.ceil(estimate / block) <= blocks - 1
        return
    plan = plan_kv_cache(SMOLLM2, **settings)
    assert plan.num_blocks == blocks
    assert plan.num_blocks * plan.bytes_per_block <= memory
    assert memory < (plan.num_blocks + 1) * plan.bytes_per_block
    assert plan.blocks_per_request * block >= max_model_len
    assert plan.max_concurrency >= 1
    assert plan.capacity_tokens <= plan.block_tokens
    assert plan.recommended_max_num_seqs >= 1


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"num_attention_heads": 8, "hidden_size": 512}, "num_hidden_layers"),
        ({"num_hidden_layers": 4, "hidden_size": 512}, "num_attention_heads"),
        ({"num_hidden_layers": 4, "num_attention_heads": 8}, "hidden_size"),
        (
            {"num_hidden_layers": "4", "num_attention_heads": 8, "hidden_size": 512},
            "num_hidden_layers",
        ),
        (
            {"num_hidden_layers": 4, "num_attention_heads": -8, "hidden_size": 512},
            "num_attention_heads",
        ),
        (
            {"num_hidden_layers": True, "num_attention_heads": 8, "hidden_size": 512},
            "num_hidden_layers",
        ),
        (
            {
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "num_key_value_heads": 16,
                "hidden_size": 512,
            },
            "num_key_value_heads",
        ),
        ({"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 4}, "hidden_size"),
        (
            {
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "hidden_size": 512,
                "kv_lora_rank": 512,
            },
            "kv_lora_rank",
        ),
        (
            {
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "hidden_size": 512,
                "sliding_window": 4096,
            },
            "sliding_window",
        ),
        (
            {
                "num_hidden_layers": 2,
                "num_attention_heads": 8,
                "hidden_size": 512,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            "sliding_window",
        ),
        ({"text_config": {"num_attention_heads": 8}}, "num_hidden_layers"),
    ],
)
def test_malformed_configs_name_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelConfigError) as caught:
        kv_cache_bytes_per_token(config, "fp16")
    assert field in caught.value.field
    assert "config" in str(caught.value)


def test_config_must_be_an_object() -> None:
    with pytest.raises(ModelConfigError, match="JSON object"):
        ModelShape.from_config([1, 2])  # type: ignore[arg-type]


def test_unknown_dtypes_list_the_accepted_ones() -> None:
    with pytest.raises(UnsupportedDtypeError, match="fp8") as caught:
        kv_cache_bytes_per_token(QWEN_7B, "int3")
    assert "bfloat16" in caught.value.supported
    with pytest.raises(UnsupportedDtypeError, match="--dtype"):
        kv_cache_bytes_per_token(QWEN_7B, "auto", model_dtype="fp8")
    no_dtype = {k: v for k, v in QWEN_7B.items() if k != "torch_dtype"}
    with pytest.raises(ModelConfigError, match="explicit kv_cache_dtype"):
        kv_cache_bytes_per_token(no_dtype, "auto")


@pytest.mark.parametrize("utilization", [0, -0.5, 1.01, 88, float("nan"), True])
def test_utilization_outside_0_1(utilization: float) -> None:
    with pytest.raises(InvalidSettingError, match=r"\(0, 1\]") as caught:
        plan_kv_cache(
            QWEN_7B,
            kv_cache_dtype="fp8",
            max_model_len=8192,
            gpu_memory_gib=12,
            weights_gib=5.2,
            gpu_memory_utilization=utilization,
        )
    assert caught.value.setting == "gpu_memory_utilization"


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"max_model_len": 0, "kv_cache_memory_bytes": GIB}, "max_model_len"),
        ({"max_model_len": 8192}, "kv_cache_memory_bytes"),
        ({"max_model_len": 8192, "gpu_memory_gib": 12}, "weights_gib"),
        (
            {
                "max_model_len": 8192,
                "gpu_memory_gib": 12,
                "weights_gib": 5,
                "kv_cache_memory_bytes": GIB,
            },
            "gpu_memory_gib",
        ),
        ({"max_model_len": 8192, "kv_cache_memory_bytes": GIB, "max_num_seqs": 0}, "max_num_seqs"),
        ({"max_model_len": 8192, "kv_cache_memory_bytes": GIB, "device": "tpu"}, "device"),
        ({"max_model_len": 8192, "gpu_memory_gib": 12, "weights_gib": -1}, "weights_gib"),
    ],
)
def test_invalid_settings(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(InvalidSettingError) as caught:
        plan_kv_cache(QWEN_7B, kv_cache_dtype="fp8", **kwargs)
    assert caught.value.setting == setting


def test_window_that_cannot_fit_says_what_fits() -> None:
    with pytest.raises(KVCacheTooSmallError) as caught:
        plan_kv_cache(
            SMOLLM2,
            kv_cache_dtype="fp32",
            max_model_len=30_000,
            kv_cache_memory_bytes=GIB,
            device="cpu",
        )
    error = caught.value
    assert error.estimated_max_model_len == 181 * 128  # 182 blocks less the held-back one
    assert error.needed_bytes == math.ceil(30_000 / 128) * 46_080 * 128
    assert "lower --max-model-len to 23168" in str(error)
    # The estimate itself fits.
    plan_kv_cache(
        SMOLLM2,
        kv_cache_dtype="fp32",
        max_model_len=error.estimated_max_model_len,
        kv_cache_memory_bytes=GIB,
        device="cpu",
    )
    with pytest.raises(KVCacheTooSmallError) as tiny:
        plan_kv_cache(
            SMOLLM2,
            kv_cache_dtype="fp32",
            max_model_len=128,
            kv_cache_memory_bytes=46_080 * 128,
            device="cpu",
        )
    assert tiny.value.estimated_max_model_len == 0
    assert "lower --max-model-len" not in str(tiny.value)


def test_errors_are_value_errors() -> None:
    assert issubclass(PlannerError, ValueError)
    with pytest.raises(UnknownProfileError, match="long-window"):
        get_profile("huge")


# ---- config files --------------------------------------------------------------------------


def test_load_config_from_folder_or_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    assert load_model_config(tmp_path) == SMOLLM2
    assert load_model_config(tmp_path / "config.json") == SMOLLM2
    with pytest.raises(ModelConfigError, match=r"No config\.json"):
        load_model_config(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        load_model_config(tmp_path)
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(ModelConfigError, match="JSON object"):
        load_model_config(tmp_path)


def test_checkpoint_size(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="--weights-gib"):
        checkpoint_size_gib(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1024)
    assert checkpoint_size_gib(tmp_path) == 1024 / GIB


# ---- profiles -----------------------------------------------------------------------------


def test_long_window_is_the_seed_profile_a_with_awq_marlin() -> None:
    profile = get_profile("long-window")
    args = profile.vllm_serve_args()
    assert args[0] == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    options = dict(zip(args[1::2], args[2::2], strict=False))
    assert options["--quantization"] == "awq_marlin"
    assert options["--kv-cache-dtype"] == "fp8"
    assert options["--max-model-len"] == "12288"
    assert options["--max-num-seqs"] == "2"
    assert options["--gpu-memory-utilization"] == "0.88"
    assert "--enforce-eager" in args
    assert profile.serve_command() == ["vllm", "serve", *args]
    assert shlex.split(profile.shell_command()) == profile.serve_command()


def test_balanced_is_profile_b() -> None:
    profile = get_profile("balanced")
    assert (profile.max_model_len, profile.max_num_seqs) == (8192, 6)
    assert profile.plan().fits_max_num_seqs


def test_every_profile_fits_its_gpu() -> None:
    for profile in PROFILES.values():
        plan = profile.plan()
        assert plan.fits_max_num_seqs, profile.name
        assert plan.max_model_len <= (profile.model_config["max_position_embeddings"])


def test_shared_pair_stays_within_one_gpu() -> None:
    pair = [get_profile("long-window-shared"), get_profile("summarizer")]
    total = sum(profile.gpu_memory_utilization for profile in pair)
    assert total <= get_profile("long-window").gpu_memory_utilization
    assert pair[0].max_model_len == get_profile("long-window").max_model_len


def test_token_budget_comes_from_the_profile() -> None:
    for profile in PROFILES.values():
        budget = profile.token_budget()
        assert isinstance(budget, TokenBudget)
        assert budget.max_model_len == profile.max_model_len
        assert budget.output_reserve == profile.output_reserve
        assert budget.safety_margin == profile.safety_margin
    long_window = get_profile("long-window").token_budget()
    assert (long_window.output_reserve, long_window.safety_margin) == (3000, 128)


def test_plan_overrides_and_tensor_parallel_rendering() -> None:
    profile = get_profile("long-window")
    assert profile.plan(kv_cache_dtype="fp16").bytes_per_token == 57_344
    explicit = profile.plan(kv_cache_memory_bytes=GIB)
    assert explicit.gpu_memory_gib is None
    assert explicit.kv_cache_memory_bytes == GIB
    tp = profile.with_settings(tensor_parallel_size=2)
    assert "--tensor-parallel-size" in tp.vllm_serve_args()
    assert tp.plan().kv_heads_per_gpu == 2


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_plan_profile_prints_table_and_serve_line() -> None:
    result = CliRunner().invoke(app, ["plan", "long-window", "--serve"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    plan = get_profile("long-window").plan()
    assert f"{plan.capacity_tokens:,} tokens" in result.output
    assert get_profile("long-window").shell_command() in result.output


def test_cli_plan_model_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2))
    args = [
        "plan",
        str(tmp_path),
        "--device",
        "cpu",
        "--kv-cache-gib",
        "1",
        "--dtype",
        "float32",
        "--max-model-len",
        "2048",
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "CPU KV cache size: 23,296 tokens" in result.output


def test_cli_plan_bad_input_exits_2_with_the_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["plan", "long-window", "--gpu-memory-utilization", "1.5"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "(0, 1]" in result.output
    missing = CliRunner().invoke(app, ["plan", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "profile" in missing.output


def test_cli_profiles_list() -> None:
    result = CliRunner().invoke(app, ["profiles", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in PROFILES:
        assert name in result.output
    assert "long-window-shared then summarizer" in result.output


def test_client_env_uses_the_settings_names(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {setting.env for setting in settings.SETTINGS}
    for profile in PROFILES.values():
        env = profile.client_env(base_url="http://host:8000/v1")
        assert set(env) <= names
        for setting in settings.SETTINGS:
            monkeypatch.delenv(setting.env, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        # Read back through the settings, the client gets the profile's server and budget.
        assert TokenBudget.from_env() == profile.token_budget()
        assert settings.MODEL.get() == settings.TOKENIZER.get() == profile.model
        assert settings.MAX_CONCURRENCY.get() == profile.max_num_seqs
        assert settings.API_BASE.get() == "http://host:8000/v1"
    assert settings.API_BASE.env not in get_profile("long-window").client_env()


def test_summarizer_env_gives_the_summarizer_its_own_window() -> None:
    summarizer = get_profile("summarizer")
    env = summarizer.summarizer_env(base_url="http://vllm-summarizer:8000/v1")
    assert set(env) <= {setting.env for setting in settings.SETTINGS}
    assert env[settings.SUMMARIZER_MODEL.env] == summarizer.model
    assert env[settings.SUMMARIZER_TOKENIZER.env] == summarizer.model
    assert env[settings.SUMMARIZER_MAX_MODEL_LEN.env] == str(summarizer.max_model_len)
    assert env[settings.SUMMARIZER_API_BASE.env] == "http://vllm-summarizer:8000/v1"
    # Nothing of the main model's budget is set by the summarizer.
    assert not set(env) & set(get_profile("long-window-shared").client_env())


# ---- layouts and the choice of one for a GPU ------------------------------------------------


@pytest.mark.parametrize("name", list(PROFILES))
def test_min_gpu_memory_is_the_edge_of_what_fits(name: str) -> None:
    profile = get_profile(name)
    least = profile.min_gpu_memory_gib()
    assert profile.plan(gpu_memory_gib=least).fits_max_num_seqs
    below = round(least - 0.1, 1)
    try:
        fits_below = profile.plan(gpu_memory_gib=below).fits_max_num_seqs
    except PlannerError:
        fits_below = False  # too small to start at all
    assert not fits_below


def test_layouts_name_their_servers_in_start_order() -> None:
    assert set(LAYOUTS) == {"solo", "balanced", "summarizer"}
    assert [p.name for p in LAYOUTS["solo"].servers] == ["long-window"]
    assert [p.name for p in LAYOUTS["balanced"].servers] == ["balanced"]
    assert [p.name for p in LAYOUTS["summarizer"].servers] == ["long-window-shared", "summarizer"]
    for layout in LAYOUTS.values():
        assert layout.min_gpu_memory_gib() == max(p.min_gpu_memory_gib() for p in layout.servers)


@pytest.mark.parametrize(
    ("gpu_gib", "concurrency", "expected"),
    [
        (8, 1, "solo"),
        (12, 1, "summarizer"),
        (16, 1, "summarizer"),
        (24, 1, "summarizer"),
        (12, 2, "summarizer"),
        (12, 6, "balanced"),
        (24, 4, "balanced"),
    ],
)
def test_choose_layout_takes_the_first_that_fits(
    gpu_gib: float, concurrency: int, expected: str
) -> None:
    choice = choose_layout(gpu_gib, concurrency=concurrency)
    assert choice.chosen.layout.name == expected
    assert choice.chosen.fits
    assert [fit.layout.name for fit in choice.fits] == list(LAYOUTS)
    order = list(LAYOUTS)
    # Every layout preferred to the chosen one fails, each for a stated reason.
    for fit in choice.fits[: order.index(expected)]:
        assert not fit.fits
        assert fit.problems
    # The reason the two-model layout is out on 8 GiB: its servers need more memory.
    two_model = LAYOUTS["summarizer"]
    if concurrency <= two_model.servers[0].max_num_seqs:
        assert (expected == "summarizer") == (gpu_gib >= two_model.min_gpu_memory_gib())
    for profile, plan in choice.chosen.plans:
        assert plan.gpu_memory_gib == gpu_gib
        assert plan.fits_max_num_seqs, profile.name


def test_nothing_fits_a_small_gpu_with_the_smallest_that_does() -> None:
    with pytest.raises(NoLayoutFitsError) as caught:
        choose_layout(6)
    error = caught.value
    assert isinstance(error, PlannerError)
    smallest = min(layout.min_gpu_memory_gib() for layout in LAYOUTS.values())
    assert error.smallest_gpu == (smallest, "solo")
    assert f"the smallest GPU that fits one is {smallest:g} GiB (solo)" in str(error)
    for name in LAYOUTS:
        assert f"{name} layout:" in str(error)
    assert all(not fit.fits for fit in error.fits)
    # The smallest GPU it names does fit.
    assert choose_layout(smallest).chosen.layout.name == "solo"


def test_no_layout_serves_more_requests_than_any_max_num_seqs() -> None:
    most = max(layout.servers[0].max_num_seqs for layout in LAYOUTS.values())
    with pytest.raises(NoLayoutFitsError, match="lower the concurrency") as caught:
        choose_layout(80, concurrency=most + 1)
    assert caught.value.smallest_gpu is None


def test_layout_fit_rejects_bad_input_and_oversubscribed_gpus() -> None:
    with pytest.raises(InvalidSettingError) as caught:
        LAYOUTS["solo"].fit(12, concurrency=0)
    assert caught.value.setting == "concurrency"
    with pytest.raises(InvalidSettingError):
        LAYOUTS["solo"].fit(0)
    greedy = Layout("greedy", "two 0.88 servers", reasoner="long-window", summarizer="balanced")
    fit = greedy.fit(80)
    assert not fit.fits
    assert any("add up to 1.76 > 1" in problem for problem in fit.problems)


@pytest.mark.parametrize(
    ("gpu_gib", "expected"),
    [("8", "solo"), ("12", "summarizer"), ("16", "summarizer"), ("24", "summarizer")],
)
def test_cli_plan_says_which_layout_to_run(gpu_gib: str, expected: str) -> None:
    result = CliRunner().invoke(app, ["plan", "--gpu-memory-gib", gpu_gib], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"COMPOSE_PROFILES={expected} docker compose -f docker/compose.yaml up -d" in (
        result.output
    )
    choice = choose_layout(float(gpu_gib))
    for profile, plan in choice.chosen.plans:
        # The planner's numbers behind the choice.
        assert f"{plan.capacity_tokens:,} tokens" in result.output
        assert f"{plan.kv_cache_memory_bytes / GIB:.2f} GiB" in result.output, profile.name
    for fit in choice.fits:
        if not fit.fits:
            assert f"{fit.layout.name} does not fit:" in result.output


def test_cli_plan_concurrency_and_serve_lines() -> None:
    result = CliRunner().invoke(
        app,
        ["plan", "--gpu-memory-gib", "12", "--concurrency", "6", "--serve"],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "COMPOSE_PROFILES=balanced" in result.output
    assert get_profile("balanced").shell_command() in result.output


def test_cli_plan_nothing_fits_exits_2_with_the_reason() -> None:
    result = CliRunner().invoke(app, ["plan", "--gpu-memory-gib", "6"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "No layout fits a 6 GiB GPU" in result.output
    assert "smallest GPU" in result.output


def test_cli_plan_single_profile_options_need_a_source() -> None:
    result = CliRunner().invoke(
        app, ["plan", "--gpu-memory-gib", "12", "--max-model-len", "8192"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "--max-model-len" in result.output
    assert "SOURCE" in result.output
    profile_concurrency = CliRunner().invoke(app, ["plan", "long-window", "--concurrency", "2"])
    assert profile_concurrency.exit_code == 2
    assert "--max-num-seqs" in profile_concurrency.output


# ---- replicas: one GPU per vLLM replica behind vllm-router ----------------------------------


def test_cli_plan_replicas_of_a_profile_plans_one_and_the_total() -> None:
    one = CliRunner().invoke(app, ["plan", "long-window"], env={"COLUMNS": "200"})
    three = CliRunner().invoke(
        app, ["plan", "long-window", "--replicas", "3"], env={"COLUMNS": "200"}
    )
    assert one.exit_code == three.exit_code == 0, three.output
    plan = get_profile("long-window").plan()
    assert "(per replica)" in three.output
    assert f"3 x {plan.max_num_seqs} = {3 * plan.max_num_seqs} requests at once" in three.output
    assert f"{3 * plan.capacity_tokens:,} KV-cache tokens" in three.output
    assert f"{plan.capacity_tokens:,}" in one.output


def test_cli_plan_replicas_chooses_a_one_server_layout_per_gpu() -> None:
    # 4 requests over 2 replicas: 2 per GPU, which solo serves (summarizer does not replicate).
    result = CliRunner().invoke(
        app,
        ["plan", "--gpu-memory-gib", "12", "--concurrency", "4", "--replicas", "2"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "2 request(s) at once per replica" in result.output
    assert "COMPOSE_PROFILES=solo-replicas docker compose" in result.output
    assert "summarizer" not in result.output.split("run ")[-1]
    # 12 requests over 2 replicas: 6 per GPU, only balanced serves that many.
    more = CliRunner().invoke(
        app,
        ["plan", "--gpu-memory-gib", "12", "--concurrency", "12", "--replicas", "2"],
        env={"COLUMNS": "200"},
    )
    assert more.exit_code == 0, more.output
    assert "COMPOSE_PROFILES=balanced-replicas" in more.output
    # A replica count other than the committed file's says to render it first.
    four = CliRunner().invoke(
        app,
        ["plan", "--gpu-memory-gib", "12", "--replicas", "4"],
        env={"COLUMNS": "200"},
    )
    assert "profiles render --replicas 4" in four.output


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layouts_main_server_takes_auto_tool_choice(layout: str) -> None:
    """Agents send ``tool_choice="auto"`` (create_agent's default; the read tool of the
    tool-output middleware): vLLM answers 400 without both flags, so every layout's main
    server (the app's ``VLLM_API_BASE``) and ``plan --serve``'s line carry them."""
    args = get_profile(LAYOUTS[layout].reasoner).vllm_serve_args()
    assert "--enable-auto-tool-choice" in args
    assert args[args.index("--tool-call-parser") + 1] == "hermes"  # Qwen2.5's tool calls
