"""Write the results: one JSON file, a Markdown summary, and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.overflow_sweep import CLIENTS
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


def _sweep_md(sweep: dict[str, Any]) -> list[str]:
    lines = [
        f"### 2. Overflow sweep ({sweep['max_model_len']}-token window, input 10%..200%)",
        "",
        "Failures = length 400s reaching the caller + silently truncated answers.",
        "",
        "| client | " + " | ".join(sweep["summary"]) + " |",
        "|---|" + "---|" * len(sweep["summary"]),
    ]
    for client in CLIENTS:
        cells = []
        for scenario in sweep["summary"].values():
            e = scenario[client]
            cells.append(
                f"{e['failures']}/{e['requests']} ({e['rejected_400']} x 400, "
                f"{e['truncated_silently']} truncated)"
            )
        lines.append(f"| {client} | " + " | ".join(cells) + " |")
    return lines


_CASE_TITLES = {
    "agent_loop": "agent loop (the conversation grows by one turn per call)",
    "cold": "cold (every message new: nothing cached)",
}


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


def _compression_md(comp: dict[str, Any]) -> list[str]:
    total = comp["summary"]
    lines = [
        f"### 5. Stage-result compression ({comp['model']} summarizer, cap {comp['cap']} "
        f"tokens, {comp['repeats']} run(s) per output)",
        "",
        "| output | raw tokens | entities | summary tokens (max) | ratio (min) | "
        "retention (min) | method | median s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in comp["rows"]:
        lines.append(
            f"| {r['output']} | {r['raw_tokens']} | {r['entities']} | "
            f"{r['summary_tokens_max']} | {r['ratio_min']:.2f}x | {r['retention_min']:.0%} | "
            f"{', '.join(r['methods'])} | {r['median_seconds']} |"
        )
    n = total["compressions"]
    lines += [
        "",
        f"Under the cap: {total['under_cap']}/{n}; ratio >= 4x: {total['ratio_at_least_goal']}/"
        f"{n}; 100% entity retention: {total['full_retention']}/{n}; methods "
        f"{total['methods']}; median {total['median_seconds']} s per compression.",
    ]
    return lines


def _pipeline_md(pipe: dict[str, Any]) -> list[str]:
    comp, raw = pipe["compressed"], pipe["raw_forward"]
    lines = [
        f"### 4. Pipeline: compressed hand-offs vs raw outputs forward ({pipe['model']}, "
        f"{pipe['max_model_len']}-token window, settings {pipe['settings']})",
        "",
        "| stage | prompt (compressed) | prompt (raw forward) | raw output | summary | ratio | "
        "retention | method | s (compressed) | s (raw) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, r in zip(comp["stages"], raw["stages"], strict=False):
        raw_prompt = f"{r['input_tokens']}" + (" (overflow)" if r["overflow"] else "")
        lines.append(
            f"| {c['stage']} | {c['input_tokens']} | {raw_prompt} | {c['raw_tokens']} | "
            f"{c['summary_tokens']} | {c['ratio']:.2f}x | {c['retention']:.0%} | {c['method']} | "
            f"{c['seconds']} | {r['seconds']} |"
        )
    lines += [
        "",
        f"Total prompt tokens: compressed {comp['total_prompt_tokens']}, raw forward "
        f"{raw['total_prompt_tokens']}; context growth stage 1 -> 4: compressed "
        f"{comp['context_growth']}x, raw {raw['context_growth']}x; wall time: compressed "
        f"{comp['seconds']} s, raw {raw['seconds']} s.",
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


def _plot_pipeline(pipe: dict[str, Any], path: Path) -> None:
    comp, raw = pipe["compressed"]["stages"], pipe["raw_forward"]["stages"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        [s["stage"] for s in comp],
        [s["input_tokens"] for s in comp],
        "o-",
        label="compressed summaries",
    )
    ax.plot(
        [s["stage"] for s in raw],
        [s["input_tokens"] for s in raw],
        "s--",
        label="raw outputs forward",
    )
    ax.axhline(pipe["max_model_len"], color="red", linewidth=0.8, label="max_model_len")
    ax.set_ylabel("stage prompt tokens")
    ax.set_title("Context growth per stage")
    ax.legend()
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
    sections = (
        ("accuracy", _accuracy_md, _plot_accuracy, "accuracy.png"),
        ("overflow", _sweep_md, None, None),
        ("overhead", _overhead_md, _plot_overhead, "overhead.png"),
        ("pipeline", _pipeline_md, _plot_pipeline, "pipeline.png"),
        ("compression", _compression_md, None, None),
        ("planner", _planner_md, None, None),
    )
    for key, to_md, plot, png in sections:
        section = results.get(key)
        if section is None:
            continue
        if "error" in section:
            lines += [f"### {key}: FAILED", "", f"`{section['error']}`", ""]
            continue
        lines += to_md(section)
        if plot is not None and png is not None:
            plot(section, out_dir / png)
            written.append(out_dir / png)
            lines += ["", f"![{key}]({png})"]
        lines.append("")
    summary = out_dir / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    written.append(summary)
    return written
