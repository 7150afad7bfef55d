"""Several embedded vLLM replicas behind a real ``vllm-router``, on loopback.

``vllm-router`` (vLLM's router, a Rust binary shipped as a PyPI wheel) forwards the
OpenAI-compatible API (``/v1/models``, ``/tokenize`` and the completions) to its workers and
picks one per request by ``--policy``. :class:`LocalRouter` runs it in a child process group
on a free port of 127.0.0.1; :class:`LocalReplicaSet` starts N
:class:`~langchain_vllm_budget.serving.local_server.LocalVLLMServer` replicas of one spec and a
router in front of them, and stops all of them by their own PIDs.

Example:
    >>> spec = RouterSpec(worker_urls=("http://127.0.0.1:8001", "http://127.0.0.1:8002"))
    >>> spec.router_args(port=8000, prometheus_port=9000)[:6]
    ['--host', '127.0.0.1', '--port', '8000', '--policy', 'consistent_hash']
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from langchain_vllm_budget.serving.local_models import cache_dir
from langchain_vllm_budget.serving.local_server import (
    LocalServerError,
    LocalServerSpec,
    LocalVLLMServer,
    ServerState,
    find_free_port,
    runs_vllm,
    stop_process_group,
)

__all__ = [
    "DEFAULT_POLICY",
    "ROUTER_POLICIES",
    "LocalReplicaSet",
    "LocalRouter",
    "ReplicaSetState",
    "RouterPolicy",
    "RouterSpec",
    "router_executable",
]

logger = logging.getLogger(__name__)

RouterPolicy = Literal["consistent_hash", "round_robin", "cache_aware", "power_of_two", "random"]
ROUTER_POLICIES: tuple[RouterPolicy, ...] = (
    "consistent_hash",
    "round_robin",
    "cache_aware",
    "power_of_two",
    "random",
)
"""The ``--policy`` values offered here (``vllm-router`` has a few more, passed through)."""
DEFAULT_POLICY: RouterPolicy = "consistent_hash"
"""Keeps each session key (``X-Session-ID``, which ChatVLLM sends per thread) on one replica."""


def router_executable() -> str:
    """The ``vllm-router`` next to this Python, else the one on ``PATH``.

    Raises:
        LocalServerError: ``vllm-router`` is not installed.
    """
    beside = Path(sys.executable).parent / "vllm-router"
    found = str(beside) if beside.is_file() else shutil.which("vllm-router")
    if found is None:
        raise LocalServerError(
            "vllm-router is not installed in this Python: run scripts/bootstrap.sh "
            "(it installs the pinned vllm-router wheel)"
        )
    return found


@dataclass(frozen=True)
class RouterSpec:
    """The arguments of one ``vllm-router`` run.

    Attributes:
        worker_urls: The replicas' server roots (``http://127.0.0.1:8001``, no ``/v1``).
        policy: ``--policy``.
        host: Interface to bind; loopback by default.
        health_check_interval_s: ``--health-check-interval-secs``: how soon a dead replica is
            noticed (the router's default, 60 s, is long for a development setup).
        health_failure_threshold: ``--health-failure-threshold``.
        extra_args: More ``vllm-router`` arguments, passed through unchanged.
    """

    worker_urls: tuple[str, ...]
    policy: str = DEFAULT_POLICY
    host: str = "127.0.0.1"
    health_check_interval_s: int = 2
    health_failure_threshold: int = 1
    extra_args: tuple[str, ...] = ()

    def router_args(self, *, port: int, prometheus_port: int) -> list[str]:
        """Render the ``vllm-router`` arguments."""
        return [
            "--host",
            self.host,
            "--port",
            str(port),
            "--policy",
            self.policy,
            "--worker-urls",
            *self.worker_urls,
            "--prometheus-host",
            self.host,
            "--prometheus-port",
            str(prometheus_port),
            "--health-check-interval-secs",
            str(self.health_check_interval_s),
            "--health-failure-threshold",
            str(self.health_failure_threshold),
            *self.extra_args,
        ]


class LocalRouter:
    """``vllm-router`` in a child process group on loopback.

    Args:
        spec: What to route.
        port: Port to bind; default: a free one.
        log_path: The router's log; default: the cache's ``logs/router.log``.
        startup_timeout: Seconds to wait until it answers ``/v1/models`` through a worker.
    """

    def __init__(
        self,
        spec: RouterSpec,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.spec = spec
        self.port = port
        self.log_path = log_path or cache_dir() / "logs" / "router.log"
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        """The router's URL without ``/v1``."""
        if self.port is None:
            raise LocalServerError("the router has not been started")
        return f"http://{self.spec.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root through the router."""
        return f"{self.root}/v1"

    @property
    def pid(self) -> int | None:
        """PID of the router process (and its process group), if started."""
        return self._process.pid if self._process else None

    def start(self) -> LocalRouter:
        """Start the router and wait until a request reaches a worker through it.

        Raises:
            LocalServerError: It exited or was not ready in time (it is stopped first).
        """
        if self._process is not None:
            raise LocalServerError("this router is already started; stop it first")
        self.port = self.port or find_free_port(self.spec.host)
        command = [
            router_executable(),
            *self.spec.router_args(port=self.port, prometheus_port=find_free_port(self.spec.host)),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            run_dir = os.environ.get("VLLM_BUDGET_RUN_DIR")
            if run_dir:  # the same reaper as the vLLM servers (scripts/with-run-dir.sh)
                pid = self._process.pid
                Path(run_dir, f"router-{pid}.pid").write_text(str(pid))
            self._wait_ready()
        except BaseException:  # Ctrl-C or SIGTERM while it starts: leave nothing behind
            self.stop()
            raise
        logger.info("Started vllm-router (pid %s) on port %s", self._process.pid, self.port)
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                code = self._process.poll()
                if code is not None:
                    self._fail(f"vllm-router exited with code {code} while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/models").status_code == 200:
                        return
                time.sleep(0.5)
        self._fail(f"vllm-router did not answer /v1/models within {self.startup_timeout:.0f} s")

    def _fail(self, what: str) -> None:
        self.stop()
        try:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            tail = ""
        raise LocalServerError(what, log_path=self.log_path, log_tail=tail)

    def stop(self) -> None:
        """Stop the router's process group; safe to call more than once."""
        if self._process is None:
            return
        pid = self._process.pid
        stop_process_group(pid, timeout=10.0)
        self._process = None
        run_dir = os.environ.get("VLLM_BUDGET_RUN_DIR")
        if run_dir:  # the reaper's record: a record that cannot be removed is stale, no more
            with contextlib.suppress(OSError):
                Path(run_dir, f"router-{pid}.pid").unlink(missing_ok=True)

    def detach(self) -> int:
        """Leave the router running after this object is gone; return its PID."""
        if self._process is None:
            raise LocalServerError("the router is not running")
        pid = self._process.pid
        self._process = None
        return pid


@dataclass(frozen=True)
class ReplicaSetState:
    """What ``serve-local`` records about replicas behind a router, to stop them later."""

    name: str
    router_pid: int
    router_port: int
    host: str
    policy: str
    replicas: tuple[ServerState, ...]
    router_log: str

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root through the router."""
        return f"http://{self.host}:{self.router_port}/v1"

    @classmethod
    def path_for(cls, name: str) -> Path:
        """The state file of the replica set called ``name``."""
        return cache_dir() / "servers" / f"{name}.replicas.json"

    def save(self) -> Path:
        """Write the state file and return its path."""
        path = self.path_for(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, name: str) -> ReplicaSetState | None:
        """Read a state file, or return None if there is none."""
        path = cls.path_for(name)
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        replicas = tuple(ServerState.from_dict(r) for r in values.pop("replicas"))
        return cls(**values, replicas=replicas)

    def stop(self) -> list[tuple[int, bool]]:
        """Stop the router, then every replica, each by its own PID; forget the set.

        Returns:
            (pid, whether it was running) for the router and each replica.
        """
        # A recorded PID is signalled only while it still runs vLLM or the router: after a
        # reboot or a crash, the system may have given it to another program.
        router = runs_vllm(self.router_pid) and stop_process_group(self.router_pid, timeout=10.0)
        stopped = [(self.router_pid, router)]
        stopped += [(r.pid, runs_vllm(r.pid) and stop_process_group(r.pid)) for r in self.replicas]
        self.path_for(self.name).unlink(missing_ok=True)
        return stopped


class LocalReplicaSet:
    """N embedded vLLM replicas of one spec and ``vllm-router`` in front, on loopback.

    The replicas start together (each in its own process group, each with its own log) and
    the router once every replica answers ``/health``. Use it as a context manager (all
    stopped on exit, even on error) or call :meth:`start` and :meth:`stop`.

    Args:
        spec: What each replica serves (all replicas serve the same model name).
        replicas: How many replicas.
        policy: The router's ``--policy``.
        router_args: More ``vllm-router`` arguments.
        router_port: The router's port on loopback; default: a free one.
        startup_timeout: Seconds each replica may take to become ready.
    """

    def __init__(
        self,
        spec: LocalServerSpec,
        *,
        replicas: int = 2,
        policy: str = DEFAULT_POLICY,
        router_args: tuple[str, ...] = (),
        router_port: int | None = None,
        startup_timeout: float = 600.0,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.spec = spec
        self.policy = policy
        self.router_args = router_args
        self.router_port = router_port
        logs = cache_dir() / "logs"
        self.servers = [
            LocalVLLMServer(
                spec,
                log_path=logs / f"{spec.name}-replica{i}.log",
                startup_timeout=startup_timeout,
            )
            for i in range(replicas)
        ]
        self.router: LocalRouter | None = None
        self._router_log = logs / f"{spec.name}-router.log"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root through the router."""
        if self.router is None:
            raise LocalServerError("the replica set has not been started")
        return self.router.base_url

    @property
    def replica_roots(self) -> list[str]:
        """Each replica's server root (``/metrics``, ``/health``), in start order."""
        return [server.base_url.removesuffix("/v1") for server in self.servers]

    def start(self) -> LocalReplicaSet:
        """Start the replicas and the router; on any failure stop all of them and raise.

        Raises:
            LocalServerError: A replica or the router did not start.
        """
        try:
            for server in self.servers:
                server.start(wait=False)
            for server in self.servers:
                server.wait_ready()
            spec = RouterSpec(
                worker_urls=tuple(self.replica_roots),
                policy=self.policy,
                extra_args=self.router_args,
            )
            self.router = LocalRouter(
                spec, port=self.router_port, log_path=self._router_log
            ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the router and every replica; safe to call more than once."""
        if self.router is not None:
            self.router.stop()
        for server in self.servers:
            server.stop()

    def detach(self, name: str) -> ReplicaSetState:
        """Leave everything running after this object is gone; save and return its state."""
        if self.router is None or self.router.port is None:
            raise LocalServerError("the replica set is not running")
        replicas = tuple(
            replace(server.state(), name=f"{name}-replica{i}")
            for i, server in enumerate(self.servers)
        )
        state = ReplicaSetState(
            name=name,
            router_pid=self.router.detach(),
            router_port=self.router.port,
            host=self.spec.host,
            policy=self.policy,
            replicas=replicas,
            router_log=str(self._router_log),
        )
        # The set's state file records every replica; the replicas' processes are left
        # running (a Popen object dropped does not stop its process).
        self.servers = []
        self.router = None
        state.save()
        return state

    def __enter__(self) -> LocalReplicaSet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
