"""Offline behaviour of the local server wrapper: arguments, environment, diagnosis, state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from langchain_vllm_budget.cli import app
from langchain_vllm_budget.serving.local_models import (
    ModelBuildError,
    cache_dir,
    ensure_local_model,
)
from langchain_vllm_budget.serving.local_server import (
    SERVER_SETUPS,
    LocalServerError,
    LocalServerSpec,
    LocalVLLMServer,
    ServerState,
    _diagnose,
    stop_process_group,
)


def test_spec_renders_vllm_serve_arguments() -> None:
    spec = LocalServerSpec(
        model="/m/qwen", max_model_len=12288, max_num_seqs=2, extra_args=("--seed", "1")
    )
    args = spec.vllm_args(port=8123)
    assert args[:2] == ["serve", "/m/qwen"]
    pairs = dict(zip(args[2::2], args[3::2], strict=False))
    assert pairs["--port"] == "8123"
    assert pairs["--max-model-len"] == "12288"
    assert pairs["--max-num-seqs"] == "2"
    assert pairs["--served-model-name"] == "qwen"
    assert "--enforce-eager" in args
    assert args[-2:] == ["--seed", "1"]


def _flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_tools_setup_renders_the_tool_ready_flags() -> None:
    spec = LocalServerSpec(model="/m/smol", setup="tools")
    args = spec.vllm_args(port=8000)
    assert "--enable-auto-tool-choice" in args
    assert _flag_value(args, "--tool-call-parser") == "hermes"
    assert _flag_value(args, "--tool-strict-level") == "parameter"
    config = json.loads(_flag_value(args, "--structured-outputs-config"))
    assert config == {"backend": "xgrammar", "disable_any_whitespace": True}
    assert spec.environment()["VLLM_ENFORCE_STRICT_TOOL_CALLING"] == "1"


def test_setup_flags_come_before_passed_through_arguments() -> None:
    spec = LocalServerSpec(
        model="/m", setup="tool-parser", extra_args=("--tool-call-parser", "llama3_json")
    )
    args = spec.vllm_args(port=8000)
    setup_args = list(SERVER_SETUPS["tool-parser"].args)
    start = args.index(setup_args[0])
    assert args[start:] == [*setup_args, "--tool-call-parser", "llama3_json"]


def test_plain_setup_adds_nothing() -> None:
    plain = LocalServerSpec(model="/m").vllm_args(port=1)
    assert plain == LocalServerSpec(model="/m", setup="plain").vllm_args(port=1)
    assert not any(arg.startswith("--tool") for arg in plain)
    assert "VLLM_ENFORCE_STRICT_TOOL_CALLING" not in SERVER_SETUPS["plain"].env


def test_unknown_setup_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="plain, tool-parser, tools"):
        LocalServerSpec(model="/m", setup="reasoning-everything")


@pytest.mark.parametrize(
    ("arg", "advice"),
    [
        ("--port", "use --port"),
        ("--port=9000", "use --port"),
        ("--max_model_len", "use --max-model-len"),
        ("--served-model-name", "use --name"),
    ],
)
def test_managed_flags_cannot_be_passed_through(arg: str, advice: str) -> None:
    with pytest.raises(ValueError, match=advice):
        LocalServerSpec(model="/m", extra_args=(arg, "1"))


def _text(output: str) -> str:
    """The CLI's output as words, without the error box's borders and line breaks."""
    return " ".join(output.replace("│", " ").split())


def test_cli_rejects_a_managed_flag_after_the_separator() -> None:
    result = CliRunner().invoke(app, ["serve-local", "start", "--", "--port", "9000"])
    assert result.exit_code == 2
    assert "--port is set by the local server itself and cannot be passed through" in _text(
        result.output
    )


def test_cli_rejects_an_unknown_setup_before_building_anything() -> None:
    result = CliRunner().invoke(app, ["serve-local", "start", "--setup", "nope"])
    assert result.exit_code == 2
    assert "Unknown server setup 'nope'" in _text(result.output)


def test_cli_unknown_option_before_the_separator_is_not_passed_through() -> None:
    result = CliRunner().invoke(app, ["serve-local", "start", "--seed", "1"])
    assert result.exit_code == 2
    assert "No such option: --seed" in _text(result.output)


def test_cli_lists_the_setups_with_their_flags() -> None:
    result = CliRunner().invoke(app, ["serve-local", "setups"])
    assert result.exit_code == 0
    for setup in SERVER_SETUPS.values():
        assert f"{setup.name}: " in result.output
    assert "--tool-strict-level parameter" in result.output


def test_spec_environment_is_offline_and_sizes_the_kv_cache() -> None:
    env = LocalServerSpec(model="/m", kv_cache_space_gib=2, env={"X": "y"}).environment()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["X"] == "y"


@pytest.mark.parametrize(
    ("log", "cause"),
    [
        ("OSError: [Errno 98] Address already in use", "port is already in use"),
        ("torch.OutOfMemoryError: CUDA out of memory", "out of memory"),
        ("ValueError: No available memory for the cache blocks", "out of memory"),
        (
            "OSError: /x does not appear to have a file named config.json",
            "model could not be found",
        ),
        ("nothing recognisable", None),
    ],
)
def test_failure_causes_are_named(log: str, cause: str | None) -> None:
    found = _diagnose(log)
    if cause is None:
        assert found is None
    else:
        assert found is not None
        assert cause in found


def test_error_message_carries_cause_log_and_tail(tmp_path: Path) -> None:
    error = LocalServerError("boom", log_path=tmp_path / "x.log", log_tail="line 1\nline 2")
    text = str(error)
    assert "boom" in text
    assert "x.log" in text
    assert "line 2" in text


def test_base_url_before_start_is_an_error() -> None:
    with pytest.raises(LocalServerError, match="not been started"):
        _ = LocalVLLMServer(LocalServerSpec(model="/m")).base_url


def test_state_round_trips_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_BUDGET_CACHE", str(tmp_path))
    state = ServerState(
        name="m",
        pid=123,
        port=8001,
        host="127.0.0.1",
        model="/m",
        log_path="/l",
        setup="tools",
        extra_args=("--seed", "1"),
    )
    path = state.save()
    assert path.parent == cache_dir() / "servers"
    assert ServerState.load("m") == state
    assert state.base_url == "http://127.0.0.1:8001/v1"
    assert ServerState.load("other") is None


def test_stop_process_group_stops_children() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess,sys,time; "
            "subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); time.sleep(60)",
        ],
        start_new_session=True,
    )
    assert stop_process_group(child.pid, timeout=5) is True
    assert child.poll() is not None
    assert stop_process_group(child.pid) is False


def test_unknown_local_model_names_the_known_ones() -> None:
    with pytest.raises(ModelBuildError, match="smollm2-135m-instruct"):
        ensure_local_model("gpt-5")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_a_start_interrupted_while_waiting_leaves_no_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    """Ctrl-C, or SIGTERM turned into SystemExit, while the server loads: its process group
    is stopped before the interruption goes on (its own session outlives this process)."""
    sleeper = tmp_path / "python"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    started: list[int] = []

    def interrupted(self: LocalVLLMServer) -> None:
        assert self._process is not None
        started.append(self._process.pid)
        raise interrupt

    monkeypatch.setattr(LocalVLLMServer, "wait_ready", interrupted)
    server = LocalVLLMServer(
        LocalServerSpec(model="m"), python=str(sleeper), log_path=tmp_path / "server.log"
    )
    with pytest.raises(interrupt), server:
        pass
    assert started
    assert stop_process_group(started[0]) is False  # nothing left to stop
