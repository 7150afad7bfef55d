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
