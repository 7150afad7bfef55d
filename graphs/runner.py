"""Run the pipeline from the command line: progress per stage, then the token ledger table.

Used by ``vllm-budget run``. Against ``--base-url`` when given; otherwise it starts the embedded
local vLLM server with SmolLM2-135M-Instruct for the run and stops it afterwards. Runs are
checkpointed (SQLite by default, PostgreSQL with ``--checkpointer-dsn``): rerunning with the
same ``--thread-id`` resumes an interrupted run from its last finished stage.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore
from rich.console import Console
from rich.table import Table

from graphs.context import Context
from graphs.pipeline import STAGES, build_graph, postgres_persistence, sqlite_persistence
from graphs.state import InputState, StageLedger

__all__ = ["DEFAULT_DB_PATH", "ledger_table", "run_pipeline", "totals"]

DEFAULT_DB_PATH = Path(".vllm-budget") / "pipeline.sqlite"
"""Default SQLite file for checkpoints and raw stage outputs."""

_CAPTION = (
    "input if raw: the stage prompt with earlier raw outputs passed forward instead of "
    "summaries; granted: max_tokens the budget gave the stage; kept: entity retention"
)
_LOCAL_MODEL = "smollm2-135m-instruct"
_LOCAL_MAX_MODEL_LEN = 2048


@contextmanager
def _persistence(dsn: str, db_path: Path) -> Iterator[tuple[BaseCheckpointSaver[Any], BaseStore]]:
    if dsn:
        with postgres_persistence(dsn) as pair:
            yield pair
    else:
        with sqlite_persistence(db_path) as pair:
            yield pair


def totals(ledger: dict[str, StageLedger]) -> dict[str, int]:
    """Pipeline totals: prompt tokens as run vs with raw outputs passed forward.

    Example:
        >>> totals({"a": {"input_tokens": 10, "raw_forward_input_tokens": 30,
        ...               "raw_tokens": 50, "summary_tokens": 5}})
        {'input_tokens': 10, 'raw_forward_input_tokens': 30, 'raw_tokens': 50, 'summary_tokens': 5}
    """
    keys = ("input_tokens", "raw_forward_input_tokens", "raw_tokens", "summary_tokens")
    rows = [cast("dict[str, Any]", entry) for entry in ledger.values()]
    return {key: sum(int(row[key]) for row in rows) for key in keys}


def ledger_table(ledger: dict[str, StageLedger]) -> Table:
    """The per-stage ledger as a rich table.

    Args:
        ledger: The ``ledger`` of a finished (or partial) run.

    Returns:
        Columns: stage, input, raw-forward input, output, max_tokens granted, raw, summary,
        ratio, retention, method, degradations.
    """
    table = Table(title="Pipeline token ledger (tokens)", caption=_CAPTION)
    for column in (
        "stage",
        "input",
        "input if raw",
        "output",
        "granted",
        "raw",
        "summary/cap",
        "ratio",
        "kept",
        "method",
        "degraded",
    ):
        table.add_column(column, justify="left" if column in ("stage", "method") else "right")
    for stage in STAGES:
        if stage not in ledger:
            continue
        entry = ledger[stage]
        table.add_row(
            stage,
            str(entry["input_tokens"]),
            str(entry["raw_forward_input_tokens"]),
            str(entry["output_tokens"]),
            str(entry["max_tokens_granted"]),
            str(entry["raw_tokens"]),
            f"{entry['summary_tokens']}/{entry['summary_cap']}",
            f"{entry['ratio']:.2f}x",
            f"{entry['retention']:.0%}",
            entry["method"],
            str(len(entry["degraded"])),
        )
    total = totals(ledger)
    if ledger:
        table.add_section()
        table.add_row(
            "total",
            str(total["input_tokens"]),
            str(total["raw_forward_input_tokens"]),
            "",
            "",
            str(total["raw_tokens"]),
            str(total["summary_tokens"]),
            f"{total['raw_tokens'] / max(total['summary_tokens'], 1):.2f}x",
            "",
            "",
            "",
        )
    return table


def run_pipeline(
    request: str,
    context: Context,
    *,
    thread_id: str | None = None,
    db_path: Path = DEFAULT_DB_PATH,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) the pipeline, printing each finished stage, then the ledger table.

    Args:
        request: The user's request; ignored when resuming a thread that has one.
        context: The run's context. An empty ``base_url`` starts the embedded local server.
        thread_id: The run's thread; reuse it to resume. Default: a new one.
        db_path: SQLite file for checkpoints and raw outputs (when no DSN is set).
        console: Where to print (default: stdout).

    Returns:
        The final state values.
    """
    out = console or Console()
    thread = thread_id or f"run-{uuid.uuid4().hex[:12]}"
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    with ExitStack() as stack:
        if not context.base_url:
            context = stack.enter_context(_local_server(context, out))
        checkpointer, store = stack.enter_context(_persistence(context.checkpointer_dsn, db_path))
        app = build_graph(checkpointer, store)
        snapshot = app.get_state(config)
        resuming = bool(snapshot.next) and bool(snapshot.values.get("request"))
        done = list(snapshot.values.get("summaries", {})) if resuming else []
        out.print(f"[bold]thread[/] {thread}  [bold]server[/] {context.base_url}")
        if resuming:
            out.print(f"resuming after: {', '.join(done) or '(start)'}")
        payload = None if resuming else InputState(request=request)
        for update in app.stream(payload, config, context=context, stream_mode="updates"):
            for stage, values in update.items():
                if stage not in STAGES or not isinstance(values, dict):
                    continue
                entry = values["ledger"][stage]
                out.print(
                    f"[green]✓ {stage}[/]  input {entry['input_tokens']} tok, "
                    f"output {entry['output_tokens']} tok "
                    f"(max_tokens {entry['max_tokens_granted']}), "
                    f"summary {entry['summary_tokens']}/{entry['summary_cap']} tok "
                    f"({entry['ratio']:.2f}x, retention {entry['retention']:.0%}, "
                    f"{entry['method']})"
                )
                for action in entry["degraded"]:
                    out.print(f"    degraded: {action}")
        final = app.get_state(config).values
    out.print(ledger_table(final.get("ledger", {})))
    out.print(f"raw stage outputs: store namespace ('stage_outputs', '{thread}')")
    return dict(final)


@contextmanager
def _local_server(context: Context, out: Console) -> Iterator[Context]:
    from langchain_vllm_budget.local_models import ensure_local_model
    from langchain_vllm_budget.local_server import LocalServerSpec, LocalVLLMServer

    folder = ensure_local_model(_LOCAL_MODEL)
    spec = LocalServerSpec(
        model=str(folder), served_model_name=_LOCAL_MODEL, max_model_len=_LOCAL_MAX_MODEL_LEN
    )
    out.print(f"starting the local vLLM server ({_LOCAL_MODEL}, window {_LOCAL_MAX_MODEL_LEN})…")
    with LocalVLLMServer(spec) as server:
        yield replace(
            context,
            base_url=server.base_url,
            reasoning_model=_LOCAL_MODEL,
            summarizer_model="",
            summarizer_base_url="",
            tokenizer_path=context.tokenizer_path or str(folder),
        )
