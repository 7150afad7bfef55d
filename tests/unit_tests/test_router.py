"""The replica set's bookkeeping: router arguments and the state serve-local keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from langchain_vllm_budget.serving.local_server import (
    LocalServerSpec,
    ServerState,
    stop_process_group,
)
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


@pytest.fixture
def sleeping_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[LocalRouter, list[int]]:
    """A router whose executable only sleeps (a session of its own, as the real one), and
    the PIDs of the processes it spawns."""
    from langchain_vllm_budget.serving import router as router_module

    sleeper = tmp_path / "vllm-router"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    spawned: list[int] = []
    popen = router_module.subprocess.Popen

    def recording_popen(*args: Any, **kwargs: Any) -> Any:
        process = popen(*args, **kwargs)
        spawned.append(process.pid)
        return process

    monkeypatch.setattr(router_module, "router_executable", lambda: str(sleeper))
    monkeypatch.setattr(router_module.subprocess, "Popen", recording_popen)
    router = LocalRouter(
        RouterSpec(worker_urls=("http://127.0.0.1:9",)), log_path=tmp_path / "router.log"
    )
    return router, spawned


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_a_router_interrupted_while_it_starts_is_stopped(
    sleeping_router: tuple[LocalRouter, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    interrupt: type[BaseException],
) -> None:
    """Ctrl-C or SIGTERM (as SystemExit) while the router waits for a worker: its process
    group, a session of its own, is stopped before the interruption goes on."""
    router, spawned = sleeping_router

    def interrupted(self: LocalRouter) -> None:
        raise interrupt

    monkeypatch.setattr(LocalRouter, "_wait_ready", interrupted)
    with pytest.raises(interrupt):
        router.start()
    assert spawned
    assert router.pid is None
    assert stop_process_group(spawned[0]) is False  # nothing left to stop


def test_a_router_whose_pid_record_fails_is_stopped(
    sleeping_router: tuple[LocalRouter, list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Everything after the router is spawned is covered: a failure writing its PID record
    for the run's reaper stops it too."""
    router, spawned = sleeping_router
    not_a_folder = tmp_path / "run-dir"
    not_a_folder.write_text("a file, not a folder")
    monkeypatch.setenv("VLLM_BUDGET_RUN_DIR", str(not_a_folder))
    with pytest.raises(NotADirectoryError):
        router.start()
    assert spawned
    assert router.pid is None
    assert stop_process_group(spawned[0]) is False  # nothing left to stop
