"""Markdown and plots of the pipeline benchmarks (4: with and without window pressure; 7: many
pipelines on a small KV cache), for :mod:`benchmarks.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["concurrency_md", "pipeline_md", "plot_concurrency", "plot_pipeline"]

_OUTCOME_SHORT = {
    "served": "served",
    "served_adjusted": "max_tokens reduced (reported)",
    "refused_before_sending": "refused before sending",
    "length_400": "length 400",
    "silently_truncated": "SILENTLY TRUNCATED",
    "error": "error",
}


def _kept(must: dict[str, Any]) -> str:
    return f"{must['kept']}/{must['total']}"


def _handoff(s: dict[str, Any]) -> str:
    """The hand-off settings a scenario ran with (the package defaults since they are read)."""
    share = s.get("handoff_verbatim_share")
    verbatim = f"verbatim share {share}, " if share is not None else ""
    return (
        f"summary cap {s['summary_max_tokens']}, {verbatim}rolling cap "
        f"{s['rolling_summary_max_tokens']}"
    )


def _relaxed_md(relaxed: dict[str, Any], model: str, window: int) -> list[str]:
    s = relaxed["settings"]
    lines = [
        f"### 4a. Pipeline without window pressure ({model}, {window}-token window; stage "
        f"outputs up to {s['output_reserve']} tokens, {_handoff(s)})",
        "",
        f"Run order {', '.join(relaxed['order'])}; vLLM's prefix cache "
        + (
            "reset before each run."
            if relaxed["prefix_cache_reset"]
            else "NOT reset (the server refused: start it with VLLM_SERVER_DEV_MODE=1)."
        )
        + " *Engine tokens*: prompt + completion tokens of every call (stage and summarizer), "
        "what vLLM computed; it does not depend on the machine's load.",
        "",
        "| variant | wall s (each run) | median | stage calls s | summarizer calls (s) | "
        "prompt tokens | output tokens | engine tokens | prefix-cache hits | must-keep kept |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, e in relaxed["summary"].items():
        lines.append(
            f"| {variant} | {', '.join(str(x) for x in e['seconds'])} | {e['median_seconds']} | "
            f"{e['stage_call_seconds']} | {e['summarizer_calls']} ({e['summarizer_seconds']}) | "
            f"{e['prompt_tokens']} | {e['output_tokens']} | {e['engine_tokens']} | "
            f"{int(e['prefix_cache_hits']) if e['prefix_cache_hits'] is not None else '-'} | "
            f"{_kept(e['must_keep'])} |"
        )
    g = relaxed["goal"]
    lines += [
        "",
        f"Goal: wall time compressed (auto) / raw = **{g['wall_time_ratio']}** (<= 1.05: "
        f"{'met' if g['wall_time_ratio'] <= 1.05 else 'MISSED'}); prompt tokens "
        f"**{g['prompt_token_ratio']}** of raw forwarding's; hand-labelled must-keep facts "
        f"kept **{g['must_keep_rate']:.0%}**.",
    ]
    by_variant = {r["variant"]: r for r in reversed(relaxed["runs"])}
    raw, auto = by_variant.get("raw forward"), by_variant.get("compressed (auto)")
    llm = by_variant.get("compressed (llm)")
    if raw and auto:
        lines += [
            "",
            "Per stage (first run of each): prompt tokens, and the hand-off each variant made.",
            "",
            "| stage | prompt raw | prompt auto | raw output | summary (auto) | method (auto) | "
            "extracted kept | must-keep kept | method (llm) | summary (llm) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        llm_stages = {x["stage"]: x for x in (llm or {}).get("stages", [])}
        for r, c in zip(raw["stages"], auto["stages"], strict=False):
            other = llm_stages.get(c["stage"], {})
            lines.append(
                f"| {c['stage']} | {r['input_tokens']} | {c['input_tokens']} | "
                f"{c['raw_tokens']} | {c['summary_tokens']} | {c['method']} | "
                f"{c['retention']:.0%} | {_kept(c['must_keep'])} | {other.get('method', '-')} | "
                f"{other.get('summary_tokens', '-')} |"
            )
    return lines


def _pressure_md(pressure: dict[str, Any], model: str) -> list[str]:
    s = pressure["settings"]
    comp, raw = pressure["compressed"], pressure["raw_forward"]
    window = pressure["max_model_len"]
    lines = [
        f"### 4b. Pipeline with the window under pressure ({model}, {window}-token window; "
        f"make demo's window and outputs: stage outputs up to {s['output_reserve']} tokens, "
        f"at least {s['min_output_tokens']}, margin {s['safety_margin']}; {_handoff(s)})",
        "",
        "Compressed pipeline and raw forwarding ran side by side. Raw forwarding goes "
        "through ChatVLLM; where a raw prompt leaves less than the output reserve, the same "
        "prompt also went through plain ChatOpenAI (max_tokens = the reserve) and the seed's "
        "chars/4 client.",
        "",
        "| stage | compressed: prompt | granted | output | summary | raw: prompt | room | "
        "ChatVLLM | plain ChatOpenAI | seed client |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    raw_stages = {x["stage"]: x for x in raw["stages"]}
    for c in comp["stages"]:
        r = raw_stages.get(c["stage"])
        if r is None:
            raw_cells = ["not reached", "", "", "", ""]
        else:
            mine = _OUTCOME_SHORT.get(r["outcome"], r["outcome"])
            if r.get("granted") is not None:
                mine += f": {r['output_tokens']}/{r['granted']} tok"
            probes = r.get("probes", {})

            def cell(name: str, probes: dict[str, Any] = probes) -> str:
                p = probes.get(name)
                if p is None:
                    return "same as ChatVLLM"
                text = _OUTCOME_SHORT.get(p["outcome"], p["outcome"])
                if p.get("completion_tokens") is not None:
                    text += f": {p['completion_tokens']}/{p['sent_max_tokens']} tok"
                return text

            raw_cells = [
                str(r["input_tokens"]),
                str(r["room"]),
                mine,
                cell("ChatOpenAI (plain)"),
                cell("seed client (chars/4)"),
            ]
        lines.append(
            f"| {c['stage']} | {c['input_tokens']} | {c['granted']} | {c['output_tokens']} | "
            f"{c['summary_tokens']} ({c['method']}) | " + " | ".join(raw_cells) + " |"
        )
    g = pressure["growth"]
    lines += [
        "",
        f"Context growth stage 1 -> last: compressed **{g['compressed']}x**, raw forwarding "
        f"**{g['raw_forward']}x** (to {g['raw_forward_last_stage']}). Compressed: every stage "
        f"granted its full reserve: {'yes' if comp['every_stage_full_reserve'] else 'NO'}; "
        f"{comp['summarizer_calls']} summarizer calls; must-keep facts kept "
        f"{_kept(comp['must_keep'])}. Raw forwarding "
        + ("completed" if raw["completed"] else f"stopped at {raw['stopped_at']}")
        + f"; every stage granted its full reserve: "
        f"{'yes' if raw['every_stage_full_reserve'] else 'NO'}.",
    ]
    goal = pressure.get("goal")
    if goal is not None:
        lines += [
            "",
            "Goal: the compressed pipeline grants every stage its full reserve where raw "
            f"forwarding does not: **{'met' if goal['met'] else 'MISSED'}**.",
        ]
    return lines


def pipeline_md(pipe: dict[str, Any]) -> list[str]:
    """Sections 4a and 4b (a scenario that failed says so)."""
    lines: list[str] = []
    for key, title, render in (
        ("relaxed", "4a. Pipeline without window pressure", _relaxed_md),
        ("pressure", "4b. Pipeline with the window under pressure", _pressure_md),
    ):
        section = pipe.get(key)
        if section is None:
            continue
        if lines:
            lines.append("")
        if "error" in section:
            lines += [f"### {title}: FAILED", "", f"`{section['error']}`"]
        elif key == "relaxed":
            lines += render(section, pipe["model"], pipe["max_model_len"])
        else:
            lines += render(section, pipe["model"])
    return lines


def plot_pipeline(pipe: dict[str, Any], path: Path) -> None:
    """Prompt tokens per stage, compressed vs raw, in both scenarios."""
    panels: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = []
    relaxed = {r["variant"]: r for r in reversed(pipe["relaxed"].get("runs", []))}
    if "compressed (auto)" in relaxed and "raw forward" in relaxed:
        panels.append(
            (
                "no window pressure",
                relaxed["compressed (auto)"]["stages"],
                relaxed["raw forward"]["stages"],
            )
        )
    if "compressed" in pipe.get("pressure", {}):
        p = pipe["pressure"]
        panels.append(
            ("window under pressure", p["compressed"]["stages"], p["raw_forward"]["stages"])
        )
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, comp, raw) in zip(axes[0], panels, strict=True):
        ax.plot(
            [s["stage"] for s in comp],
            [s["input_tokens"] for s in comp],
            "o-",
            label="compressed hand-offs (sent)",
        )
        ax.plot(
            [s["stage"] for s in raw],
            [s["input_tokens"] for s in raw],
            "s--",
            label="raw outputs forward",
        )
        if "needed" in (raw[0] if raw else {}):
            ax.plot(
                [s["stage"] for s in raw],
                [s["needed"] for s in raw],
                "x:",
                label="raw + output reserve + margin",
            )
        ax.axhline(pipe["max_model_len"], color="red", linewidth=0.8, label="max_model_len")
        ax.set_ylabel("stage prompt tokens")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle("Context growth per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def concurrency_md(conc: dict[str, Any]) -> list[str]:
    """Section 7."""
    s, plan = conc["settings"], conc["plan"]
    lines = [
        f"### 7. {s['pipelines']} concurrent pipelines on a small KV cache (SmolLM2, "
        f"--max-num-seqs {s['max_num_seqs']}, --num-gpu-blocks-override {s['kv_blocks']}: "
        f"{s['kv_blocks']} blocks of {plan['block_size']} tokens = "
        f"{s['kv_cache_memory_bytes']:,} bytes of KV cache; outputs up to "
        f"{s['scenario']['output_reserve']} tokens)",
        "",
        f"Planner: `{plan['log_line']}`; vLLM logged: "
        + (f"`{conc['logged']}`" if conc.get("logged") else "(not read: server given by URL)")
        + (" (exact)" if conc.get("planner_matches_log") else "")
        + ".",
        "",
        "| mode | finished | failures | wall s | pipelines/min | stage p50 s | stage p95 s | "
        "preemptions | peak KV use | s at full KV | max waiting | mean waiting | prompt tokens "
        "| summarizer calls |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in conc["modes"].items():
        x = m["metrics"]
        lines.append(
            f"| {mode} | {m['finished']}/{m['pipelines']} | {len(m['failures'])} | {m['seconds']} "
            f"| {m['pipelines_per_minute']} | {m['stage_latency_p50_s']} | "
            f"{m['stage_latency_p95_s']} | {int(m['server'].get('vllm:num_preemptions', 0))} | "
            f"{x.get('peak_kv_cache_usage', 0):.0%} | {x.get('seconds_kv_full')} | "
            f"{int(x.get('max_waiting', 0))} | {x.get('mean_waiting')} | {m['prompt_tokens']} | "
            f"{m['calls']['summarizer']['calls']} |"
        )
    g = conc["goal"]
    lines += [
        "",
        f"Throughput compressed / raw: **{conc['throughput_ratio']}x** (>= 1.3 with 0 "
        f"failures: {'met' if g['met'] else 'MISSED'}); median stage latency raw / compressed "
        f"{conc['median_stage_latency_ratio']}x.",
        "",
        "Planner's prediction (from the KV plan and each call's final length, never from "
        "/metrics) against what /metrics showed:",
        "",
        "| mode | usable blocks | peak demand (blocks) | predicts preemption | predicted onset s "
        "| preemptions seen | first preemption s | per stage: longest sequence -> blocks "
        "(pipelines that fit at once) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in conc["modes"].items():
        p = m["prediction"]
        stages = "; ".join(
            f"{st} {v['longest_sequence']} -> {v['blocks']} ({v['fit_at_once']})"
            for st, v in p["per_stage"].items()
        )
        lines.append(
            f"| {mode} | {p['usable_blocks']} | {p['peak_demand_blocks']} | "
            f"{'yes' if p['predicts_preemption'] else 'no'} | {p['predicted_onset_s']} | "
            f"{int(m['metrics'].get('preemptions', 0))} | "
            f"{m['metrics'].get('first_preemption_s')} | {stages} |"
        )
    return lines


def plot_concurrency(conc: dict[str, Any], path: Path) -> None:
    """KV-cache usage, queue depth and preemptions over time, per mode."""
    modes = list(conc["modes"].items())
    fig, axes = plt.subplots(
        len(modes), 1, figsize=(9, 3.2 * len(modes)), sharex=True, squeeze=False
    )
    for ax, (mode, m) in zip(axes[:, 0], modes, strict=True):
        t = [x["t"] for x in m["timeline"]]
        ax.plot(t, [x.get("kv_cache_usage_perc", 0) for x in m["timeline"]], label="KV-cache usage")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("KV usage")
        twin = ax.twinx()
        twin.plot(
            t,
            [x.get("num_requests_waiting", 0) for x in m["timeline"]],
            "g--",
            label="waiting requests",
        )
        base = m["timeline"][0].get("num_preemptions", 0) if m["timeline"] else 0
        twin.plot(
            t,
            [x.get("num_preemptions", 0) - base for x in m["timeline"]],
            "r:",
            label="preemptions (cumulative)",
        )
        twin.set_ylabel("requests")
        twin.set_ylim(bottom=0, top=max(1.0, twin.get_ylim()[1]))
        onset = m["prediction"]["predicted_onset_s"]
        if onset is not None:
            ax.axvline(onset, color="purple", linewidth=0.8, label="planner: demand > cache")
        ax.set_title(f"{mode}: {m['finished']}/{m['pipelines']} pipelines in {m['seconds']} s")
        lines = ax.get_legend_handles_labels()
        other = twin.get_legend_handles_labels()
        ax.legend(lines[0] + other[0], lines[1] + other[1], fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the pipelines started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
