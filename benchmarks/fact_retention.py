"""What survives compression at the package defaults, against a hand-labelled fact set.

``python -m benchmarks.fact_retention`` (or ``python -m benchmarks.run --only fact_retention``).

``benchmarks/data/retention/`` holds twelve realistic outputs (logs, a stack trace, a diff, a
config, tables, a CSV, a ticket, an email thread, a CI report, a query plan, a Terraform plan;
800-5,200 tokens each) and ``facts.json``, the facts an operator acts on in each (94 in all),
labelled by hand before any setting was measured. Each output goes through the two places the
package compresses, at their defaults, with the real Qwen tokenizer (tiny-qwen's):

* **stage output**: :func:`~langchain_vllm_budget.compression.compress_stage_result` with the
  default cap (``VLLM_BUDGET_SUMMARY_MAX_TOKENS``, 250 tokens);
* **tool output**: :class:`~langchain_vllm_budget.middleware.ToolOutputCompressionMiddleware`
  with its defaults (outputs above ``threshold_tokens=1000`` are replaced by a summary of at
  most 250 tokens; smaller ones pass verbatim), through its own ``wrap_tool_call``.

Both use the extractive summary (``summarizer="extractive"``): no model call, so the figures
are the package's own and repeatable. Under the default ``VLLM_BUDGET_COMPRESSION=auto`` a
summarizer model is also called when that summary loses entities; that path is not measured
here.
Retention is scored with :func:`benchmarks.retention.must_keep_retention`.

Results: ``benchmarks/results/fact_retention/`` (``results.json``, ``summary.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.prebuilt import ToolRuntime
from langgraph.store.memory import InMemoryStore

from benchmarks.retention import MustKeep, Retention, must_keep_retention
from benchmarks.section import write_section
from langchain_vllm_budget import ChatVLLM
from langchain_vllm_budget.compression import compress_stage_result
from langchain_vllm_budget.middleware import ToolOutputCompressionMiddleware
from langchain_vllm_budget.serving.local_models import ensure_local_model
from langchain_vllm_budget.settings import SUMMARY_MAX_TOKENS
from langchain_vllm_budget.tokenizers import TransformersTokenCounter

__all__ = ["DATA", "fact_retention_md", "load_outputs", "run_fact_retention"]

DATA = Path(__file__).resolve().parent / "data" / "retention"
_DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "fact_retention"
REQUEST = "Find what went wrong in production this week and what we must act on."


def load_outputs(folder: Path = DATA) -> dict[str, tuple[str, str, list[MustKeep]]]:
    """``{file name: (kind, text, facts)}`` from ``facts.json`` and the output files."""
    labelled = json.loads((folder / "facts.json").read_text())["outputs"]
    return {
        name: (
            entry["kind"],
            (folder / name).read_text(),
            [MustKeep.parse(fact) for fact in entry["facts"]],
        )
        for name, entry in labelled.items()
    }


def _tool_output(middleware: ToolOutputCompressionMiddleware, name: str, text: str) -> str:
    """What the agent sees of ``text`` returned by a tool, through the middleware's own hook."""
    from langchain.agents.middleware.types import ToolCallRequest

    call_id = f"call-{name}"
    runtime = ToolRuntime(
        state={"messages": [HumanMessage(REQUEST)]},
        context=None,
        config={},
        stream_writer=lambda _: None,
        tool_call_id=call_id,
        store=InMemoryStore(),
    )
    request = ToolCallRequest(
        tool_call={"name": "fetch", "args": {"name": name}, "id": call_id, "type": "tool_call"},
        tool=None,
        state=runtime.state,
        runtime=runtime,
    )
    result = middleware.wrap_tool_call(
        request, lambda _: ToolMessage(text, tool_call_id=call_id, name="fetch")
    )
    assert isinstance(result, ToolMessage)
    return result.text


def run_fact_retention() -> dict[str, Any]:
    """Score every labelled output at the default caps, as a stage output and as a tool output."""
    folder = ensure_local_model("tiny-qwen")
    counter = TransformersTokenCounter(folder)
    cap = SUMMARY_MAX_TOKENS.required_default()
    # Counting only: a tokenizer is given, so the (closed) server is never asked.
    model = ChatVLLM(model="tiny-qwen", base_url="http://127.0.0.1:9/v1", tokenizer=str(folder))
    middleware = ToolOutputCompressionMiddleware(model, summarizer="extractive")
    outputs: dict[str, Any] = {}
    totals = {"stage": Retention(0, 0), "tool": Retention(0, 0)}
    for name, (kind, text, facts) in load_outputs().items():
        stage = compress_stage_result(
            text,
            stage_name=name,
            user_request=REQUEST,
            max_tokens=cap,
            tokenizer=counter,
            strategy="extractive",
        )
        tool_text = _tool_output(middleware, name, text)
        scored = {
            "stage": must_keep_retention(text, stage.summary, facts),
            "tool": must_keep_retention(text, tool_text, facts),
        }
        for path, retention in scored.items():
            totals[path] = totals[path] + retention
        outputs[name] = {
            "kind": kind,
            "raw_tokens": counter.count_text(text),
            "stage_summary_tokens": stage.summary_tokens,
            "tool_tokens": counter.count_text(tool_text),
            "tool_compressed": tool_text != text,
            **{path: retention.as_dict() for path, retention in scored.items()},
        }
    return {
        "defaults": {
            "summary_max_tokens": cap,
            "tool_threshold_tokens": middleware.threshold_tokens,
            "summarizer": "extractive (no model call)",
            "tokenizer": "Qwen (tiny-qwen)",
        },
        "outputs": outputs,
        "facts": sum(len(facts) for _, _, facts in load_outputs().values()),
        "totals": {path: retention.as_dict() for path, retention in totals.items()},
    }


def fact_retention_md(result: dict[str, Any]) -> list[str]:
    """The section of ``summary.md``."""
    d = result["defaults"]
    lines = [
        f"### Must-keep facts at the defaults ({len(result['outputs'])} hand-labelled outputs, "
        f"{result['facts']} facts; cap {d['summary_max_tokens']} tokens, tool threshold "
        f"{d['tool_threshold_tokens']}; {d['summarizer']})",
        "",
        "| output | kind | raw tokens | stage: kept | tool: kept | lost (stage) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, row in result["outputs"].items():
        stage, tool = row["stage"], row["tool"]
        verbatim = "" if row["tool_compressed"] else " (verbatim)"
        lines.append(
            f"| {name} | {row['kind']} | {row['raw_tokens']} | "
            f"{stage['kept']}/{stage['total']} | {tool['kept']}/{tool['total']}{verbatim} | "
            + ", ".join(f"`{m}`" for m in stage["missing"])
            + " |"
        )
    totals = result["totals"]
    lines += [
        "",
        f"Kept: stage outputs {totals['stage']['kept']}/{totals['stage']['total']} "
        f"({totals['stage']['rate']:.0%}), tool outputs {totals['tool']['kept']}/"
        f"{totals['tool']['total']} ({totals['tool']['rate']:.0%}).",
    ]
    return lines


def write(result: dict[str, Any], out: Path, command: str) -> list[Path]:
    """Write ``results.json`` and ``summary.md`` into ``out``."""
    return write_section(result, out, command, fact_retention_md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fact_retention", description=__doc__
    )
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result = {**run_fact_retention(), "started": started}
    for path in write(result, args.out, "python -m benchmarks.fact_retention"):
        print(f"[fact_retention] wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
