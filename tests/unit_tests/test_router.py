"""The replica set's bookkeeping: router arguments and the state serve-local keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from langchain_vllm_budget.serving.local_server import LocalServerSpec, ServerState
from langchain_vllm_budget.serving.router import (
    LocalReplicaSet,
    LocalRouter,
    ReplicaSetState,
    RouterSpec,
    router_executable,
)


def test_router_args_name_every_worker_the_policy_and_fast_health_checks() -> None:
    spec = RouterSpec(
        worker_urls=("http://127.0.0.1:1", "http://127.0.0.1:2"),
        policy="round_robin",
        extra_args=("--disable-retries",),
    )
    args = spec.router_args(port=8000, prometheus_port=9000)
    workers = args.index("--worker-urls")
    assert args[workers + 1 : workers + 3] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert args[args.index("--policy") + 1] == "round_robin"
    assert args[args.index("--health-check-interval-secs") + 1] == "2"
    assert args[args.index("--prometheus-host") + 1] == "127.0.0.1"
    assert args[-1] == "--disable-retries"


def test_the_pinned_router_is_installed() -> None:
    assert Path(router_executable()).is_file()


def test_replica_set_state_round_trips_and_stops_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_BUDGET_CACHE", str(tmp_path))
    replica = ServerState(
        "m-replica0", 2**22 + 7, 8001, "127.0.0.1", "/m", "/log", "tools", ("-x",)
    )
    state = ReplicaSetState("m", 2**22 + 9, 8000, "127.0.0.1", "consistent_hash", (replica,), "/r")
    state.save()
    loaded = ReplicaSetState.load("m")
    assert loaded == state
    assert loaded.base_url == "http://127.0.0.1:8000/v1"
    # No such processes: nothing is running, and the state is forgotten.
    assert loaded.stop() == [(2**22 + 9, False), (2**22 + 7, False)]
    assert ReplicaSetState.load("m") is None


def test_each_replica_logs_to_its_own_file() -> None:
    replica_set = LocalReplicaSet(LocalServerSpec(model="/models/m"), replicas=3)
    logs = {server.log_path for server in replica_set.servers}
    assert len(logs) == 3
    with pytest.raises(ValueError, match="at least 1"):
        LocalReplicaSet(LocalServerSpec(model="/models/m"), replicas=0)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_a_router_interrupted_while_it_starts_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    """Ctrl-C or SIGTERM (as SystemExit) while the router waits for a worker: its process
    group, a session of its own, is stopped before the interruption goes on."""
    from langchain_vllm_budget.serving import router as router_module
    from langchain_vllm_budget.serving.local_server import stop_process_group

    sleeper = tmp_path / "vllm-router"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    started: list[int] = []

    def interrupted(self: LocalRouter) -> None:
        assert self.pid is not None
        started.append(self.pid)
        raise interrupt

    monkeypatch.setattr(router_module, "router_executable", lambda: str(sleeper))
    monkeypatch.setattr(LocalRouter, "_wait_ready", interrupted)
    router = LocalRouter(
        RouterSpec(worker_urls=("http://127.0.0.1:9",)), log_path=tmp_path / "router.log"
    )
    with pytest.raises(interrupt):
        router.start()
    assert started
    assert router.pid is None
    assert stop_process_group(started[0]) is False  # nothing left to stop
