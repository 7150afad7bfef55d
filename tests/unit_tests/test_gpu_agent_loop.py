"""The GPU agent-loop benchmark's server flags and variants (offline: no GPU, no server)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gpu_agent_loop, gpu_replicas
from benchmarks.agent_loop import CHAT_VARIANTS, DEFAULT_CHAT_VARIANTS
from langchain_vllm_budget.serving.local_server import LocalServerSpec
from langchain_vllm_budget.serving.profiles import get_profile


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_7b_is_served_with_its_profiles_flags_and_a_12gb_cards_kv_cache() -> None:
    profile = get_profile("long-window")
    spec = gpu_agent_loop.profile_spec(
        profile, Path("/ckpt"), memory_share=0.3, server_args=["--enable-prompt-tokens-details"]
    )
    args = spec.vllm_args(port=8001)
    assert spec.model == "/ckpt"
    assert _flag(args, "--served-model-name") == "long-window"
    assert _flag(args, "--max-model-len") == "12288"
    assert _flag(args, "--max-num-seqs") == str(profile.max_num_seqs)
    assert _flag(args, "--kv-cache-dtype") == "fp8"
    assert _flag(args, "--quantization") == "awq_marlin"
    assert _flag(args, "--kv-cache-memory-bytes") == str(profile.plan().kv_cache_memory_bytes)
    assert _flag(args, "--max-num-batched-tokens") == "2048"
    assert _flag(args, "--gpu-memory-utilization") == "0.3"
    assert "--enforce-eager" in args
    assert "--enable-prefix-caching" in args
    assert "--enable-prompt-tokens-details" in args
    assert spec.env["VLLM_SERVER_DEV_MODE"] == "1"


class _Ran:
    """What ``main`` served and ran, in place of the GPU server and the loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.specs: list[LocalServerSpec] = []
        self.variants: list[tuple[str, ...]] = []
        ran = self

        @contextlib.contextmanager
        def server(spec: LocalServerSpec, **kwargs: Any) -> Iterator[Any]:
            ran.specs.append(spec)

            class Server:
                base_url = "http://127.0.0.1:1/v1"

            yield Server()

        def loop(**kwargs: Any) -> dict[str, Any]:
            ran.variants.append(kwargs["variants"])
            return {}

        monkeypatch.setattr(gpu_agent_loop, "LocalVLLMServer", server)
        monkeypatch.setattr(gpu_agent_loop, "run_agent_loop", loop)
        monkeypatch.setattr(gpu_replicas, "ensure_local_model", lambda name: Path("/m") / name)
        monkeypatch.setattr(gpu_agent_loop.metadata, "version", lambda name: "0.0")


def test_tiny_qwen_runs_every_variant_at_the_window_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran = _Ran(monkeypatch)
    gpu_agent_loop.main(["--out", str(tmp_path), "--window", "12288"])
    assert [s.max_model_len for s in ran.specs] == [12288]
    assert ran.variants == [CHAT_VARIANTS]
    gpu_agent_loop.main(["--out", str(tmp_path), "--only", "trim", "--only", "summarize"])
    assert [s.max_model_len for s in ran.specs] == [12288, 4096]
    assert ran.variants[-1] == ("trim", "summarize")


def test_bad_arguments_are_refused_with_what_to_change(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = _Ran(monkeypatch)
    for argv, says in [
        (["--model", "qwen2.5-7b-awq", "--window", "4096"], "--window is tiny-qwen's"),
        (["--window", "512"], "give at least 2048"),
        (["--window", "big"], "'big' is not a number of tokens"),
        (["--work", str(tmp_path)], "tiny-qwen needs none"),
        (["--only", "no such variant"], "invalid choice"),
    ]:
        with pytest.raises(SystemExit) as exited:
            gpu_agent_loop.main(["--out", str(tmp_path), *argv])
        assert exited.value.code == 2
        assert says in capsys.readouterr().err
    assert ran.specs == []
    gpu_agent_loop.main(["--out", str(tmp_path), "--only", "trim", "--only", "trim"])
    assert ran.variants == [("trim",)]


def test_the_7b_checkpoint_goes_with_the_run_unless_work_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran = _Ran(monkeypatch)
    works: list[tuple[Path, bool]] = []

    def seven_b(work: Path, server_args: list[str]) -> tuple[LocalServerSpec, Path, str]:
        works.append((work, work.is_dir()))
        return LocalServerSpec(model=str(work / "ckpt")), work / "ckpt", "the 7B"

    monkeypatch.setattr(gpu_agent_loop, "_seven_b", seven_b)
    gpu_agent_loop.main(["--out", str(tmp_path / "out"), "--model", "qwen2.5-7b-awq"])
    gpu_agent_loop.main(
        ["--out", str(tmp_path / "out"), "--model", "qwen2.5-7b-awq", "--work", str(tmp_path)]
    )
    (temporary, existed), (given, _) = works
    assert existed
    assert not temporary.exists()
    assert given == tmp_path
    assert tmp_path.is_dir()
    assert "summarize, every call (before)" not in ran.variants[0]
    assert ran.variants[0] == DEFAULT_CHAT_VARIANTS
