"""serve-local's record of a replica set: a live one blocks a start, a dead one is forgotten."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from langchain_vllm_budget.cli.serve_local import replica_set_running
from langchain_vllm_budget.serving.local_server import ServerState
from langchain_vllm_budget.serving.router import ReplicaSetState


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _record(router_port: int) -> ReplicaSetState:
    replica = ServerState(
        name="q", pid=999_999, port=_free_port(), host="127.0.0.1", model="m", log_path="x"
    )
    state = ReplicaSetState(
        name="q",
        router_pid=999_998,
        router_port=router_port,
        host="127.0.0.1",
        policy="round_robin",
        replicas=(replica,),
        router_log="r",
    )
    state.save()
    return state


def test_a_dead_replica_set_is_forgotten_and_a_live_one_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_BUDGET_CACHE", str(tmp_path))
    assert not replica_set_running("q")  # nothing recorded
    _record(_free_port())  # a killed run's record: nothing answers
    assert not replica_set_running("q")
    assert ReplicaSetState.load("q") is None  # forgotten
    with socket.socket() as router:
        router.bind(("127.0.0.1", 0))
        router.listen()
        _record(router.getsockname()[1])
        assert replica_set_running("q")  # its router answers
        assert ReplicaSetState.load("q") is not None  # kept


def test_replicas_are_refused_while_one_server_of_the_name_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start --replicas 2`` must not report the single server as if it were the set."""
    from typer.testing import CliRunner

    from langchain_vllm_budget.cli import app, serve_local

    monkeypatch.setenv("VLLM_BUDGET_CACHE", str(tmp_path))
    monkeypatch.setattr(serve_local, "_resolve_model", lambda model: (str(tmp_path), "q"))
    monkeypatch.setattr(serve_local, "_alive", lambda state: True)
    ServerState(
        name="q", pid=999_999, port=_free_port(), host="127.0.0.1", model="m", log_path="x"
    ).save()
    result = CliRunner().invoke(app, ["serve-local", "start", "--model", "q", "--replicas", "2"])
    assert result.exit_code == 1
    assert "already running as one server" in result.output


def test_stop_never_signals_a_recorded_pid_that_no_longer_runs_vllm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reboot or a crash a recorded PID may be another program's (here: a sleeping
    child of this test): ``stop`` forgets the record and leaves that process alone."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from langchain_vllm_budget.cli import app
    from langchain_vllm_budget.serving.local_server import runs_vllm

    monkeypatch.setenv("VLLM_BUDGET_CACHE", str(tmp_path))
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        assert not runs_vllm(other.pid)
        ServerState(
            name="q", pid=other.pid, port=_free_port(), host="127.0.0.1", model="m", log_path="x"
        ).save()
        result = CliRunner().invoke(app, ["serve-local", "stop", "--model", "q"])
        assert result.exit_code == 0
        assert other.poll() is None, "the other program still runs"
        assert ServerState.load("q") is None
        state = _record(_free_port())
        object.__setattr__(state, "router_pid", other.pid)
        assert all(not stopped for _, stopped in state.stop())
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_start_waits_for_the_server_inside_the_signal_handling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while `serve-local start` waits for the server ends it as Ctrl-C does, so the
    server (a session of its own) is stopped instead of left running unrecorded."""
    import signal

    from typer.testing import CliRunner

    from langchain_vllm_budget.cli import app, serve_local
    from langchain_vllm_budget.serving.local_server import LocalServerError, LocalVLLMServer

    seen: list[object] = []

    def start(self: LocalVLLMServer, *, wait: bool = True) -> LocalVLLMServer:
        seen.append(signal.getsignal(signal.SIGTERM))
        raise LocalServerError("stop here")

    monkeypatch.setenv("VLLM_BUDGET_CACHE", str(tmp_path))
    monkeypatch.setattr(serve_local, "_resolve_model", lambda model: (str(tmp_path), "q"))
    monkeypatch.setattr(LocalVLLMServer, "start", start)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(app, ["serve-local", "start", "--model", "q"])
    assert result.exit_code == 1
    assert "stop here" in result.output
    assert seen
    assert seen[0] not in (before, signal.SIG_DFL, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGTERM) is before
