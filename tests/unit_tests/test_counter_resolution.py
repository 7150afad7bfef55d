"""The ``token_counter="auto"`` chain, offline: tokenizer setting, local root, hub cache."""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Any, Literal

import pytest

from langchain_vllm_budget import ChatVLLM
from langchain_vllm_budget import counter_resolution as resolution
from langchain_vllm_budget.counter_resolution import (
    TOKENIZER_FILE_PATTERNS,
    hub_id_of,
    resolve_token_counter,
)
from langchain_vllm_budget.serving.hub_cache import install_in_hub_cache
from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.tokenizers import ServerTokenCounter, TransformersTokenCounter

REPO = "budget-test/tiny-qwen"


def _no_server(endpoint: Literal["render", "tokenize"]) -> ServerTokenCounter:
    msg = f"the chain asked the server ({endpoint}) although a local tokenizer was there"
    raise AssertionError(msg)


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face home for this test, offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


@pytest.fixture
def cached(hf_home: Path) -> Path:
    """tiny-qwen's tokenizer files (no weights) in that cache, as ``budget-test/tiny-qwen``."""
    return install_in_hub_cache("tiny-qwen", REPO, hf_home, TOKENIZER_FILE_PATTERNS)


def test_a_tokenizer_only_cache_holds_no_weights(cached: Path) -> None:
    names = sorted(p.name for p in cached.iterdir())
    assert "tokenizer.json" in names
    assert "chat_template.jinja" in names
    assert not [n for n in names if n.endswith((".safetensors", ".bin", ".gguf"))]
    assert (cached.parent.parent / "refs" / "main").read_text() == cached.name


def test_a_hub_root_is_counted_with_the_cached_tokenizer(cached: Path) -> None:
    result = resolve_token_counter("auto", tokenizer=None, root=REPO, make_server=_no_server)
    assert isinstance(result.counter, TransformersTokenCounter)
    assert Path(result.counter.source) == cached
    assert any("Hugging Face cache" in step for step in result.steps)
    # The same counts as the model's own folder.
    local = TransformersTokenCounter(ensure_local_model("tiny-qwen"))
    assert result.counter.count_text("p99 latency of web-07 is 83 ms") == local.count_text(
        "p99 latency of web-07 is 83 ms"
    )


def test_a_server_side_snapshot_folder_names_its_hub_model(cached: Path) -> None:
    root = "/srv/hf/hub/models--budget-test--tiny-qwen/snapshots/4f1e2d"
    assert hub_id_of(root) == (REPO, "4f1e2d")
    result = resolve_token_counter("auto", tokenizer=None, root=root, make_server=_no_server)
    assert isinstance(result.counter, TransformersTokenCounter)
    assert Path(result.counter.source) == cached
    assert "server has revision 4f1e2d" in result.steps[-1]


def test_offline_mode_skips_the_download_and_says_so(
    hf_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def download(repo_id: str, revision: str | None = None) -> str:
        raise AssertionError("downloaded although HF_HUB_OFFLINE is set")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resolution, "download_tokenizer", download)
        with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
            resolve_token_counter(
                "transformers",
                tokenizer=None,
                root="unknown-org/unknown-model",
                make_server=_no_server,
            )


def test_online_a_missing_tokenizer_is_downloaded_without_weights(
    hf_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    asked: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        # What a tokenizer-only download leaves in the cache (no hub is reachable here).
        asked.append({"repo_id": repo_id, **kwargs})
        return str(install_in_hub_cache("tiny-qwen", repo_id, hf_home, kwargs["allow_patterns"]))

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    with caplog.at_level(logging.INFO, logger="langchain_vllm_budget.counter_resolution"):
        result = resolve_token_counter("auto", tokenizer=None, root=REPO, make_server=_no_server)
    assert isinstance(result.counter, TransformersTokenCounter)
    (call,) = asked
    assert call["repo_id"] == REPO
    assert call["allow_patterns"] == list(TOKENIZER_FILE_PATTERNS)
    weights = ("model.safetensors", "model-00001-of-00002.safetensors", "pytorch_model.bin")
    assert not [w for w in weights for p in call["allow_patterns"] if fnmatch.fnmatch(w, p)]
    assert not list(Path(result.counter.source).glob("*.safetensors"))
    assert "downloaded budget-test/tiny-qwen's tokenizer files (no weights)" in caplog.text


def test_an_explicit_tokenizer_wins_over_the_root(cached: Path) -> None:
    folder = str(ensure_local_model("tiny-qwen"))
    result = resolve_token_counter(
        "auto", tokenizer=folder, root="unknown-org/unknown-model", make_server=_no_server
    )
    assert isinstance(result.counter, TransformersTokenCounter)
    assert result.counter.source == folder
    assert len(result.steps) == 2  # the explicit tokenizer, found: the root is never looked at


def test_the_servers_root_is_asked_for_only_when_the_tokenizer_is_not_found(hf_home: Path) -> None:
    """The root may be given as how to ask for it: the chain asks only when it gets there,
    so the counter chosen does not depend on whether the server was asked before."""
    folder = str(ensure_local_model("tiny-qwen"))
    asked: list[str] = []

    def root() -> str:
        asked.append("root")
        return folder

    found = resolve_token_counter("auto", tokenizer=folder, root=root, make_server=_no_server)
    assert found.counter.source == folder  # type: ignore[attr-defined]
    assert asked == []
    missing = resolve_token_counter(
        "auto", tokenizer="no-such-org/no-such-model", root=root, make_server=_no_server
    )
    assert asked == ["root"]
    assert isinstance(missing.counter, TransformersTokenCounter)
    assert missing.counter.source == folder


def test_the_tokenizer_setting_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = str(ensure_local_model("tiny-qwen"))
    monkeypatch.setenv("VLLM_BUDGET_TOKENIZER", folder)
    # A closed port: resolving must not need the server when a tokenizer is set.
    model = ChatVLLM(model="m", base_url="http://127.0.0.1:9/v1")
    assert model.tokenizer == folder
    counter = model.resolved_token_counter
    assert isinstance(counter, TransformersTokenCounter)
    assert counter.source == folder
    assert ChatVLLM(model="m", base_url="http://127.0.0.1:9/v1", tokenizer="x").tokenizer == "x"


def test_an_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="Unknown token_counter"):
        resolve_token_counter("fast", tokenizer=None, root=None, make_server=_no_server)
