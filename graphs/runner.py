"""Run the pipeline from the command line: progress per stage, then the token ledger table.

Used by ``vllm-budget run``. Against ``--base-url`` when given; otherwise it starts the embedded
local vLLM server with SmolLM2-135M-Instruct for the run and stops it afterwards. Runs are
checkpointed (SQLite by default, PostgreSQL with ``--checkpointer-dsn``): rerunning with the
same ``--thread-id`` resumes an interrupted run from its last finished stage.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.store.base import BaseStore
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from graphs.context import Context
from graphs.pipeline import (
    STAGES,
    build_graph,
    postgres_persistence,
    raw_output_namespace,
    sqlite_persistence,
)
from graphs.state import InputState, StageLedger

__all__ = [
    "ANSWER_MAX_CHARS",
    "DEFAULT_DB_PATH",
    "budget_table",
    "final_answer",
    "ledger_table",
    "run_pipeline",
    "totals",
]

DEFAULT_DB_PATH = Path(".vllm-budget") / "pipeline.sqlite"
"""Default SQLite file for checkpoints and raw stage outputs."""

_CAPTION = (
    "if raw: the same prompt with the earlier raw outputs instead of their summaries; "
    "granted: max_tokens given; kept: entity retention"
)
ANSWER_MAX_CHARS = 1500
"""The final answer is shown up to this many characters (the full text stays in the store)."""

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
        Columns: stage, input, raw-forward input, output, max_tokens granted, raw, summary /
        cap, ratio, retention, method; then the totals.
    """
    table = Table(
        title="Pipeline token ledger (tokens)",
        caption=_CAPTION,
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    for column in (
        "stage",
        "in",
        "if raw",
        "out",
        "granted",
        "raw",
        "sum/cap",
        "ratio",
        "kept",
        "method",
    ):
        table.add_column(
            column,
            justify="left" if column in ("stage", "method") else "right",
            min_width={"stage": 8, "method": 12}.get(column),
        )
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
        )
    return table


def budget_table(ledger: dict[str, StageLedger]) -> Table:
    """The budget each stage call was sent with.

    Read from the budget the chat model reported (``ChatVLLM``'s
    ``response_metadata["budget"]``, kept in the ledger), with the ledger's own numbers for
    what a model did not report.

    Args:
        ledger: The ``ledger`` of a finished (or partial) run.

    Returns:
        Columns: stage, input tokens, max_tokens granted, window, safety margin, room left
        (window - input - max_tokens), counter, action.
    """
    table = Table(
        title="Budget applied per stage (tokens)",
        caption="granted: max_tokens sent with the stage call; left: window - input - granted",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    for column in ("stage", "input", "granted", "window", "margin", "left", "counter", "action"):
        left = column in ("stage", "counter", "action")
        table.add_column(column, justify="left" if left else "right")
    for stage in STAGES:
        if stage not in ledger:
            continue
        entry = cast("dict[str, Any]", ledger[stage])
        budget: dict[str, Any] = entry.get("budget") or {}
        input_tokens = int(budget.get("input_tokens") or entry["input_tokens"])
        granted = int(budget.get("max_tokens") or entry["max_tokens_granted"])
        window = int(budget.get("max_model_len") or entry.get("max_model_len") or 0)
        margin = budget.get("safety_margin")
        counter = str(budget.get("counter") or entry.get("tokenizer", ""))
        if "counter_exact" in budget:
            counter += " (exact)" if budget["counter_exact"] else " (estimate)"
        table.add_row(
            stage,
            str(input_tokens),
            str(granted),
            str(window or "?"),
            "?" if margin is None else str(margin),
            str(window - input_tokens - granted) if window else "?",
            counter,
            str(budget.get("action") or "-"),
        )
    return table


def final_answer(store: BaseStore, thread_id: str, max_chars: int = ANSWER_MAX_CHARS) -> str | None:
    r"""The last stage's raw output (the pipeline's answer), shortened for the terminal.

    Args:
        store: The store the run wrote raw outputs to.
        thread_id: The run's thread.
        max_chars: Longer answers are cut at a line or word boundary and marked.

    Returns:
        The answer, or ``None`` if the last stage has not run.

    Example:
        >>> from langgraph.store.memory import InMemoryStore
        >>> store = InMemoryStore()
        >>> store.put(("stage_outputs", "t"), "execute", {"content": "1. restart\n2. verify"})
        >>> print(final_answer(store, "t"))
        1. restart
        2. verify
        >>> final_answer(store, "other") is None
        True
    """
    item = store.get(raw_output_namespace(thread_id), STAGES[-1])
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
    # wide enough for the tables when the output is a file or a pipe (rich assumes 80)
    out = console or (Console() if sys.stdout.isatty() else Console(width=120))
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
        answer = final_answer(store, thread)
    ledger = final.get("ledger", {})
    out.print(ledger_table(ledger))
    for stage in STAGES:
        for action in ledger.get(stage, {}).get("degraded", []):
            out.print(f"degraded at {stage}: {action}")
    out.print(budget_table(ledger))
    if answer is not None:
        out.print(
            Panel(
                Text(answer),
                title=f"Answer ({STAGES[-1]} stage, {context.reasoning_model})",
                title_align="left",
                expand=False,
            )
        )
    out.print(f"raw stage outputs: store namespace ('stage_outputs', '{thread}')")
    return dict(final)


@contextmanager
def _local_server(context: Context, out: Console) -> Iterator[Context]:
    from langchain_vllm_budget.serving.local_models import ensure_local_model
    from langchain_vllm_budget.serving.local_server import LocalServerSpec, LocalVLLMServer

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
