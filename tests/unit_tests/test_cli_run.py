"""`vllm-budget run` offline: loading graphs, context values, tables, the answer."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from langgraph.store.memory import InMemoryStore
from rich.console import Console

from langchain_vllm_budget.cli._signals import stopped_on_termination
from langchain_vllm_budget.cli.run import (
    _context,
    _local_server,
    _parse_sets,
    budget_table,
    final_answer,
    ledger_table,
    load_graph,
    run_graph,
)
from langchain_vllm_budget.pipeline.context import Context

REPO = Path(__file__).resolve().parents[2]

LEDGER: dict[str, dict[str, Any]] = {
    "classify": {
        "input_tokens": 300,
        "output_tokens": 90,
        "max_tokens": 200,
        "max_model_len": 2048,
        "raw_tokens": 90,
        "summary_tokens": 60,
        "summary_cap": 64,
        "ratio": 1.5,
        "retention": 1.0,
        "method": "extractive",
        "summarizer_calls": 0,
        "counter": "transformers",
        "degraded": [],
        "budget": {"safety_margin": 32, "counter": "transformers", "counter_exact": True},
        "raw_output": ["stage_outputs", "t", "r", "classify"],
    },
    "lookup": {
        "raw_tokens": 400,
        "summary_tokens": 64,
        "summary_cap": 64,
        "ratio": 6.25,
        "retention": 0.9,
        "method": "llm+restored",
        "summarizer_calls": 1,
        "counter": "transformers",
        "raw_output": ["stage_outputs", "t", "r", "lookup"],
    },
}


def _text(table: Any) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_ledger_table_lists_every_stage_and_the_totals() -> None:
    rows = {r.split()[0]: r.split() for r in _text(ledger_table(LEDGER)).splitlines() if r.strip()}
    assert rows["classify"][1:] == [
        "300",
        "90",
        "200",
        "90",
        "60/64",
        "1.50x",
        "100%",
        "extractive",
        "0",
    ]
    assert rows["lookup"][1:4] == ["-", "-", "-"]  # not a model stage
    assert rows["total"][1:] == ["300", "490", "124", "3.95x", "1"]


def test_budget_table_shows_the_plan_of_model_stages_only() -> None:
    rows = {r.split()[0]: r.split() for r in _text(budget_table(LEDGER)).splitlines() if r.strip()}
    assert rows["classify"][1:8] == ["300", "200", "2048", "32", "1548", "transformers", "(exact)"]
    assert "lookup" not in rows


def test_final_answer_is_the_last_stage_output_shortened() -> None:
    store = InMemoryStore()
    text = "\n".join(f"{i}. step with /srv/{i}.yaml" for i in range(100))
    store.put(("stage_outputs", "t", "r"), "lookup", {"content": text})
    assert final_answer(store, LEDGER, max_chars=100_000) == text
    short = final_answer(store, LEDGER, max_chars=300)
    assert short is not None
    assert short.endswith("more characters in the store)")
    assert text.startswith(short.split("\n…")[0])
    assert final_answer(store, {}) is None


def test_load_graph_from_langgraph_json_and_from_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    by_id = load_graph("pipeline")
    assert by_id.name == "pipeline"
    assert load_graph("") is by_id  # the first graph of langgraph.json
    assert load_graph("graphs/graph.py:graph") is by_id
    with pytest.raises(typer.BadParameter, match=r"no graph 'nope' \(graphs: pipeline\)"):
        load_graph("nope")
    with pytest.raises(typer.BadParameter, match="is not a compiled LangGraph graph"):
        load_graph("graphs/graph.py:__all__")


def test_load_graph_without_langgraph_json_runs_the_packaged_pipeline(tmp_path: Path) -> None:
    from langchain_vllm_budget.pipeline import graph

    assert load_graph("", config_file=tmp_path / "langgraph.json") is graph
    with pytest.raises(typer.BadParameter, match=r"pass --graph path/to/file.py:attribute"):
        load_graph("pipeline", config_file=tmp_path / "langgraph.json")


def test_context_values_are_typed_by_the_schema_and_checked() -> None:
    ctx = _context(Context, {"output_reserve": "256", "temperature": "0.5", "model": "m"})
    assert (ctx.output_reserve, ctx.temperature, ctx.model) == (256, 0.5, "m")
    with pytest.raises(typer.BadParameter, match=r"has no field reasoning_model; its fields:"):
        _context(Context, {"reasoning_model": "m"})
    with pytest.raises(typer.BadParameter, match="output_reserve must be a int"):
        _context(Context, {"output_reserve": "lots"})
    assert _parse_sets(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(typer.BadParameter, match="--set takes KEY=VALUE"):
        _parse_sets(["oops"])


def test_no_request_and_nothing_to_resume_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    compiled = load_graph("pipeline")
    with pytest.raises(typer.BadParameter, match="has no interrupted run to resume"):
        run_graph(
            compiled,
            None,
            {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
            thread_id="fresh",
            db=tmp_path / "runs.sqlite",
            console=Console(file=(tmp_path / "out.txt").open("w")),
        )


def test_no_server_and_no_local_model_support_says_to_pass_the_servers_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain ``[cli]`` install has no torch to build the embedded model: the run says to
    point it at a server, instead of failing with an import error."""
    from langchain_vllm_budget.serving import local_models

    def no_torch(name: str) -> Path:
        raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr(local_models, "ensure_local_model", no_torch)
    out = Console(file=(tmp_path / "out.txt").open("w"))
    with (
        pytest.raises(typer.BadParameter, match="pass --base-url") as caught,
        _local_server({}, out),
    ):
        pass
    assert "No module named 'torch'" in str(caught.value)


def test_a_terminated_run_unwinds_so_its_embedded_server_is_stopped() -> None:
    """SIGTERM (kill, timeout, a CI cancel) and SIGHUP (a closed terminal) become SystemExit
    inside the run, so its context managers stop what they started; handlers come back."""
    before = signal.getsignal(signal.SIGTERM)
    stopped: list[str] = []

    @contextlib.contextmanager
    def server(name: str) -> Iterator[None]:
        try:
            yield
        finally:
            stopped.append(name)

    def run(signum: int) -> None:
        with stopped_on_termination(), server(signal.Signals(signum).name):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises before this returns

    for signum in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(SystemExit) as caught:
            run(signum)
        assert caught.value.code == 128 + signum
    assert stopped == ["SIGTERM", "SIGHUP"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_run_under_nohup_keeps_ignoring_sighup() -> None:
    """``nohup vllm-budget run ...``: SIGHUP is ignored on purpose and stays ignored."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stopped_on_termination():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: the run goes on
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_run_starts_the_embedded_server_inside_the_signal_handling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_graph starts the embedded server inside the SIGTERM/SIGHUP handling."""
    from langchain_vllm_budget.cli import run as cli_run

    seen: list[Any] = []

    @contextlib.contextmanager
    def fake_server(values: dict[str, Any], out: Console) -> Iterator[dict[str, Any]]:
        seen.append(signal.getsignal(signal.SIGTERM))
        raise typer.BadParameter("stop here")
        yield values  # pragma: no cover

    monkeypatch.setattr(cli_run, "_local_server", fake_server)
    monkeypatch.delenv("VLLM_API_BASE", raising=False)
    monkeypatch.chdir(REPO)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.BadParameter, match="stop here"):
        run_graph(
            load_graph("pipeline"),
            "a request",
            {},
            thread_id="t",
            db=tmp_path / "runs.sqlite",
            console=Console(file=(tmp_path / "out.txt").open("w")),
        )
    assert seen
    assert seen[0] not in (before, signal.SIG_DFL, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGTERM) is before
