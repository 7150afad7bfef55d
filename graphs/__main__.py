"""``python -m graphs [REQUEST] [OPTIONS]``: ``vllm-budget run`` on this app, demo request default.

Every option of ``vllm-budget run`` applies (``--base-url``, ``--model``, ``--set KEY=VALUE``,
``--thread-id`` ...); without a request the built-in demo request is used. After the run, a
last table sets each stage's prompt (as sent, with compressed hand-offs) beside the prompt that
forwarding the raw outputs would have needed: those are *counted* with the model's tokenizer
from the raw outputs in the store, never sent. It is shown when the run used the default SQLite
file and the tokenizer is known (``--tokenizer``, or the embedded server's model).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from langchain_vllm_budget import settings
from langchain_vllm_budget.cli import app
from langchain_vllm_budget.cli.run import CHECKPOINTER_DSN, DEFAULT_DB_PATH, LOCAL_MODEL
from langchain_vllm_budget.pipeline.graph import STAGES, graph
from langchain_vllm_budget.pipeline.prompts import DEMO_REQUEST, STAGE_SYSTEM_PROMPTS

_SKIP_NOTE = ("--db", "--checkpointer-dsn", "--graph", "--help")


def _option(args: list[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _tokenizer(args: list[str]) -> str | None:
    """The tokenizer the run counted with: ``--tokenizer``, or the embedded server's model."""
    explicit = _option(args, "--tokenizer") or os.environ.get(settings.TOKENIZER.env)
    if explicit:
        return explicit
    if _option(args, "--base-url") or settings.API_BASE.env in os.environ:
        return None
    from langchain_vllm_budget.serving.local_models import ensure_local_model

    return str(ensure_local_model(_option(args, "--model") or LOCAL_MODEL))


def raw_forwarding_table(
    ledger: Mapping[str, Mapping[str, Any]], raw: Mapping[str, str], request: str, counter: Any
) -> Table:
    """Each stage's prompt as sent beside the raw-forwarding prompt (counted, not sent).

    Args:
        ledger: The run's ledger (input tokens, window, reserve, margin per stage).
        raw: The raw output of each stage that ran.
        request: The run's request.
        counter: The model's token counter (``count_messages``).

    Returns:
        Columns: stage, prompt sent, raw-forwarding prompt, that prompt plus the output reserve
        and margin, the window, and whether it would have fit.
    """
    table = Table(
        title="Raw forwarding would have needed (tokens; counted from the stored raw outputs, "
        "not sent)",
        caption="raw prompt: this stage's prompt with every earlier raw output instead of "
        "its summary; needed: + output reserve + safety margin",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    for column in ("stage", "prompt sent", "raw prompt", "needed", "window", "raw fits"):
        table.add_column(column, justify="left" if column in ("stage", "raw fits") else "right")
    from langchain_vllm_budget.stages import StageInput, stage_messages

    for index, stage in enumerate(s for s in STAGES if s in ledger):
        entry = ledger[stage]
        if "input_tokens" not in entry:
            continue
        earlier = tuple((s, raw.get(s, "")) for s in STAGES[:index])
        messages = stage_messages(STAGE_SYSTEM_PROMPTS[stage])(StageInput(stage, request, earlier))
        tokens = counter.count_messages(messages)
        budget: Mapping[str, Any] = entry.get("budget") or {}
        window = int(entry.get("max_model_len") or budget.get("max_model_len") or 0)
        needed = tokens + int(budget.get("output_reserve", 0)) + int(budget.get("safety_margin", 0))
        fits = "yes" if needed <= window else f"[red]no (+{needed - window})[/]"
        table.add_row(
            stage, str(entry["input_tokens"]), str(tokens), str(needed), str(window), fits
        )
    return table


def _show_raw_forwarding(args: list[str], thread_id: str, console: Console) -> None:
    if any(a.split("=", 1)[0] in _SKIP_NOTE for a in args) or CHECKPOINTER_DSN.env in os.environ:
        return
    tokenizer = _tokenizer(args)
    if tokenizer is None or not DEFAULT_DB_PATH.is_file():
        return
    from langchain_vllm_budget.persistence import sqlite_persistence
    from langchain_vllm_budget.tokenizers import TransformersTokenCounter

    with sqlite_persistence(DEFAULT_DB_PATH) as (checkpointer, store):
        app_graph = graph.builder.compile(checkpointer=checkpointer, store=store)
        values = app_graph.get_state({"configurable": {"thread_id": thread_id}}).values
        ledger: dict[str, Any] = values.get("ledger") or {}
        raw: dict[str, str] = {}
        for stage, entry in ledger.items():
            *namespace, key = entry["raw_output"]
            item = store.get(tuple(namespace), key)
            raw[stage] = str(item.value.get("content", "")) if item is not None else ""
    if ledger:
        counter = TransformersTokenCounter(tokenizer)
        console.print(raw_forwarding_table(ledger, raw, str(values.get("request", "")), counter))


def main(argv: list[str]) -> int:
    """Run the app (the demo request by default); return the exit code."""
    args = list(argv)
    if not args or args[0].startswith("-"):
        args = [DEMO_REQUEST, *args]
    thread_id = _option(args, "--thread-id")
    if thread_id is None:
        thread_id = f"thread-{uuid.uuid4().hex[:12]}"
        args += ["--thread-id", thread_id]
    try:
        app(["run", *args], prog_name="python -m graphs")
    except SystemExit as done:  # the command line's own exit: errors are already printed
        if done.code not in (0, None):
            return done.code if isinstance(done.code, int) else 1
    _show_raw_forwarding(args, thread_id, Console() if sys.stdout.isatty() else Console(width=120))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
