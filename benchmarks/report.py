"""Write the results: one JSON file, a Markdown summary, and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.fact_retention import fact_retention_md
from benchmarks.overflow_sweep import CLIENTS, OUTCOMES
from benchmarks.overhead import COUNTING_GOALS_MS
from benchmarks.remote_counting import remote_counting_md
from benchmarks.replicas import replicas_md
from benchmarks.report_pipeline import (
    concurrency_md,
    pipeline_md,
    plot_concurrency,
    plot_pipeline,
)
from benchmarks.sessions import sessions_md
from benchmarks.token_accuracy import COUNTERS

__all__ = ["write_results"]


def _accuracy_md(acc: dict[str, Any]) -> list[str]:
    lines = [
        f"### 1. Token-count accuracy vs `usage.prompt_tokens` ({acc['model']}, "
        f"{len(acc['cases'])} cases)",
        "",
        "| counter | exact | median abs. error | worst error | "
        + " | ".join(["prose", "code", "chinese", "json_ids", "multi_turn", "tools"])
        + " |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in COUNTERS:
        entry = acc["summary"][name]
        if "exact" not in entry:
            lines.append(f"| {name} | fails on every case: {entry.get('failure', '')} |" + " |" * 8)
            continue
        cats = entry["median_error_pct_by_category"]
        lines.append(
            f"| {name} | {entry['exact']}/{entry['cases']} | {entry['median_abs_error_pct']}% | "
            f"{entry['worst_error_pct']}% | "
            + " | ".join(
                f"{cats.get(c, '')}%"
                for c in ("prose", "code", "chinese", "json_ids", "multi_turn", "tools")
            )
            + " |"
        )
    lines.append("")
    lines.append("Per category: median signed error (negative = undercount = overflow risk).")
    return lines


_OUTCOME_TITLES = {
    "served": "served",
    "served_adjusted": "served, adjusted + reported",
    "refused_before_sending": "refused before sending",
    "length_400": "length 400",
    "silently_truncated": "silently truncated",
    "error": "other error",
}
_OUTCOME_CODES = {
    "served": "ok",
    "served_adjusted": "adj",
    "refused_before_sending": "REF",
    "length_400": "400",
    "silently_truncated": "TRUNC",
    "error": "ERR",
}


def _sweep_md(sweep: dict[str, Any]) -> list[str]:
    lines = [
        f"### 2. Overflow sweep ({sweep['max_model_len']}-token window, input 10%..200%)",
        "",
        "Each request in one column. *Adjusted + reported*: trimmed, summarized or "
        "`max_tokens` reduced, said in `response_metadata['budget']`. *Silently truncated*: "
        "`finish_reason=length` with fewer tokens than asked (vLLM clamped `max_tokens`), "
        "nobody told. *Refused before sending* counts in brackets the requests that plain "
        "ChatOpenAI got answered (vLLM would have served them).",
    ]
    for scenario, clients in sweep["summary"].items():
        lines += [
            "",
            f"**{scenario}**",
            "",
            "| client | " + " | ".join(_OUTCOME_TITLES[o] for o in OUTCOMES) + " |",
            "|---|" + "---|" * len(OUTCOMES),
        ]
        for client in CLIENTS:
            e = clients[client]
            cells = [
                f"{e[o]}/{e['requests']}"
                + (f" ({e['refused_servable']})" if o == "refused_before_sending" else "")
                for o in OUTCOMES
            ]
            lines.append(f"| {client} | " + " | ".join(cells) + " |")
    fractions = [str(f) for f in sweep.get("fractions", [])]
    if fractions:
        lines += [
            "",
            "Per input size (" + ", ".join(f"{c} = {t}" for t, c in _codes()) + "):",
        ]
        for scenario, clients in sweep["summary"].items():
            lines += [
                "",
                f"| {scenario} | " + " | ".join(f"{float(f):.0%}" for f in fractions) + " |",
                "|---|" + "---|" * len(fractions),
            ]
            for client in CLIENTS:
                by = clients[client].get("by_fraction", {})
                lines.append(
                    f"| {client} | "
                    + " | ".join(_OUTCOME_CODES.get(by.get(f, ""), "-") for f in fractions)
                    + " |"
                )
    return lines


def _codes() -> list[tuple[str, str]]:
    return [(_OUTCOME_TITLES[o], _OUTCOME_CODES[o]) for o in OUTCOMES]


_CASE_TITLES = {
    "agent_loop": "agent loop (the conversation grows by one turn per call)",
    "cold": "cold (every message new: nothing cached)",
}


_COUNTING_TITLES = {
    "whole_prompt": "whole prompt tokenized on every call (no segment cache)",
    "grown_by_one_turn": "conversation grown by one turn per call",
    "same_again": "same conversation again",
    "first_count": "first count of a conversation (nothing cached)",
    "raw_encode": "the tokenizer alone: `tokenizer.encode` of the rendered prompt (all new)",
}
_GOAL_TITLES = {"grown_by_one_turn": "agent loop", "first_count": "cold"}


def _overhead_md(over: dict[str, Any]) -> list[str]:
    lines = [
        f"### 3. Budgeting overhead per call (medians; budgeting x{over['repeats']}, "
        f"max_tokens={over['max_tokens']})",
    ]
    for case, sizes in over["cases"].items():
        lines += [
            "",
            f"**{_CASE_TITLES.get(case, case)}**",
            "",
            "| prompt tokens | local tokenizer | % of request | /tokenize | % of request | "
            "request |",
            "|---|---|---|---|---|---|",
        ]
        for size, e in sizes.items():
            lines.append(
                f"| {e['input_tokens']} (~{int(size) // 1000}K) | {e['budget_local_ms']:.1f} ms | "
                f"{e['budget_local_pct_of_request']:.2f}% | {e['budget_tokenize_ms']:.1f} ms | "
                f"{e['budget_tokenize_pct_of_request']:.2f}% | {e['request_ms']:.0f} ms |"
            )
    counting = over.get("counting")
    if counting:
        lines += [
            "",
            f"**counting alone** (local {counting['tokenizer']} tokenizer, count + plan, "
            f"{counting['messages']} messages, {counting['input_tokens']} tokens, median of "
            f"{counting['calls']} calls; every count checked against the whole prompt's)",
            "",
            "| case | median | p90 |",
            "|---|---|---|",
        ]
        for case, entry in counting["cases"].items():
            lines.append(
                f"| {_COUNTING_TITLES.get(case, case)} | {entry['median_ms']:.1f} ms | "
                f"{entry['p90_ms']:.1f} ms |"
            )
        lines += _counting_goals_md(counting)
        lines += _agent_loop_goal_md(over)
    t = over["target"]
    lines.append("")
    for case in over["cases"]:
        met = t[case]
        lines.append(
            f"Target at 12K tokens, local tokenizer, {case}: < 5 ms "
            f"({'met' if met['met_ms'] else 'MISSED'}), < 1% of the request "
            f"({'met' if met['met_pct'] else 'MISSED'})."
        )
    return lines


def _counting_goals_md(counting: dict[str, Any]) -> list[str]:
    """The counting goals, met or MISSED, and the first count's ratio to the raw tokenizer."""
    if "goals" not in counting:  # results of a run from before the goals were measured
        return []
    lines = [""]
    if counting.get("raw_encode_tokens_per_s"):
        lines.append(
            f"Raw tokenizer on this CPU: {counting['raw_encode_tokens_per_s']:,} tokens/s; a "
            f"first count takes {counting['first_count_over_raw_encode']}x the raw tokenizer's "
            "time (render + split + encode of every segment)."
        )
    calls = counting["calls"]
    for g in counting["goals"]:
        where = (
            f"the conversation grows from {counting['messages']} to "
            f"{counting['messages'] + 2 * calls} messages over the {calls} calls"
            if g["case"] == "grown_by_one_turn"
            else "~12K tokens"
        )
        lines.append(
            f"Goal, {_GOAL_TITLES.get(g['case'], g['case'])} ({where}): < {g['below_ms']:g} ms "
            f"median: {g['median_ms']:.1f} ms ({'met' if g['met'] else 'MISSED'})."
        )
    return lines


def _agent_loop_goal_md(over: dict[str, Any]) -> list[str]:
    """The agent-loop goal at ~12K tokens: ChatVLLM's whole budgeting step per call."""
    sizes = over["cases"].get("agent_loop") or {}
    if "12000" not in sizes:
        return []
    entry = sizes["12000"]
    limit = COUNTING_GOALS_MS["grown_by_one_turn"]
    met = entry["budget_local_ms"] < limit
    return [
        f"Goal, agent loop at {entry['input_tokens']:,} tokens (ChatVLLM's budgeting per call, "
        f"table above): < {limit:g} ms median: {entry['budget_local_ms']:.1f} ms "
        f"({'met' if met else 'MISSED'})."
    ]


def _compression_md(comp: dict[str, Any]) -> list[str]:
    total = comp["summary"]
    lines = [
        f"### 5. Stage-result compression ({comp['model']} summarizer, cap {comp['cap']} "
        f"tokens, {comp['repeats']} run(s) per output)",
        "",
        "| output | raw tokens | entities | summary tokens (max) | ratio (min) | "
        "extracted kept (min) | must-keep kept (min) | method | model calls | median s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comp["rows"]:
        must = f"{r['must_keep_min']}/{r['must_keep_total']}"
        if r["must_keep_missing"]:
            must += " (lost: " + ", ".join(f"`{m}`" for m in r["must_keep_missing"]) + ")"
        lines.append(
            f"| {r['output']} | {r['raw_tokens']} | {r['entities']} | "
            f"{r['summary_tokens_max']} | {r['ratio_min']:.2f}x | {r['retention_min']:.0%} | "
            f"{must} | {', '.join(r['methods'])} | {r['model_calls']} | "
            f"{r['median_seconds']} |"
        )
    n = total["compressions"]
    lines += [
        "",
        f"Under the cap: {total['under_cap']}/{n}; ratio >= 4x: {total['ratio_at_least_goal']}/"
        f"{n}; every extracted entity kept: {total['full_retention']}/{n}; every hand-labelled "
        f"must-keep fact kept: {total['full_must_keep']}/{n} ({total['must_keep_rate']:.1%} of "
        f"the facts); methods {total['methods']}; {total['model_calls']} summarizer calls; "
        f"median {total['median_seconds']} s per compression.",
    ]
    return lines


def _planner_md(plan: dict[str, Any]) -> list[str]:
    lines = [
        f"### 6. KV-cache planner vs vLLM's startup log ({plan['exact']}/{plan['total']} exact)",
        "",
        "| configuration | bytes/token | predicted tokens | logged tokens | predicted x | "
        "logged x |",
        "|---|---|---|---|---|---|",
    ]
    for r in plan["rows"]:
        lines.append(
            f"| {r['config']} | {r['bytes_per_token']} | {r['predicted_capacity_tokens']:,} | "
            f"{r['logged_capacity_tokens'] or 'not logged'} | {r['predicted_max_concurrency']} | "
            f"{r['logged_max_concurrency']} |"
        )
    return lines


def _plot_accuracy(acc: dict[str, Any], path: Path) -> None:
    categories = ["prose", "code", "chinese", "json_ids", "multi_turn", "tools"]
    names = [n for n in COUNTERS if "median_error_pct_by_category" in acc["summary"][n]]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        cats = acc["summary"][name]["median_error_pct_by_category"]
        ax.bar(
            [c + i * width for c in range(len(categories))],
            [cats.get(cat, 0.0) for cat in categories],
            width,
            label=name,
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([c + width * (len(names) - 1) / 2 for c in range(len(categories))], categories)
    ax.set_ylabel("median error vs usage.prompt_tokens (%)")
    ax.set_title(f"Token-count error by content ({acc['model']}); below 0 = undercount")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_overhead(over: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, len(over["cases"]), figsize=(11, 4), sharey=True)
    for ax, (case, sizes) in zip(axes, over["cases"].items(), strict=True):
        entries = list(sizes.values())
        x = [e["input_tokens"] for e in entries]
        ax.plot(x, [e["budget_local_ms"] for e in entries], "o-", label="budgeting, local")
        ax.plot(x, [e["budget_tokenize_ms"] for e in entries], "s-", label="budgeting, /tokenize")
        ax.plot(x, [e["request_ms"] for e in entries], "^--", label="the request itself")
        ax.axhline(5.0, color="grey", linewidth=0.8, linestyle=":", label="5 ms")
        ax.set_yscale("log")
        ax.set_xlabel("prompt tokens")
        ax.set_title(_CASE_TITLES.get(case, case), fontsize=9)
    axes[0].set_ylabel("median ms (log scale)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Budgeting time vs request latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _provenance(section: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Which run produced a section, when it is not the run in the header."""
    command, started = section.get("command"), section.get("started")
    if command is None or (command, started) == (meta.get("command"), meta.get("started")):
        return []
    return ["", f"_From an earlier run: {started}, `{command}`._", ""]


def write_results(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``results.json``, ``summary.md`` and the plots into ``out_dir``.

    Returns:
        The files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json"]
    written[0].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {meta['started']} on {meta['machine']}; vLLM {meta['vllm']}; "
        f"{'quick' if meta['quick'] else 'full'} run, {meta['seconds']:.0f} s. "
        f"Command: `{meta['command']}`. Load average (1/5/15 min) at the start "
        f"{meta.get('load_average_start')}, at the end {meta.get('load_average_end')} "
        "(other work on the same cores slows the timings, not the counts).",
        "",
    ]
    if meta.get("kept_from_earlier"):
        lines += [
            "Kept from earlier runs (each says which): "
            + ", ".join(meta["kept_from_earlier"])
            + ".",
            "",
        ]
    sections = (
        ("accuracy", _accuracy_md, _plot_accuracy, "accuracy.png"),
        ("overflow", _sweep_md, None, None),
        ("overhead", _overhead_md, _plot_overhead, "overhead.png"),
        ("pipeline", pipeline_md, plot_pipeline, "pipeline.png"),
        ("compression", _compression_md, None, None),
        ("planner", _planner_md, None, None),
        ("concurrency", concurrency_md, plot_concurrency, "concurrency.png"),
        ("sessions", sessions_md, None, None),
        ("remote_counting", remote_counting_md, None, None),
        ("fact_retention", fact_retention_md, None, None),
        ("replicas", replicas_md, None, None),
    )
    for key, to_md, plot, png in sections:
        section = results.get(key)
        if section is None:
            continue
        if "error" in section:
            lines += [f"### {key}: FAILED", "", f"`{section['error']}`", ""]
            lines += _provenance(section, meta)
            continue
        lines += to_md(section)
        lines += _provenance(section, meta)
        if plot is not None and png is not None:
            (out_dir / png).unlink(missing_ok=True)  # a plot left from an earlier run
            plot(section, out_dir / png)
            if (out_dir / png).is_file():  # nothing to plot: no image
                written.append(out_dir / png)
                lines += ["", f"![{key}]({png})"]
        lines.append("")
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    written.append(summary)
    return written
