"""Prompts of the pipeline stages and of the rolling summary.

The stage prompts ask for short, structured bullet lists that name IDs, paths, parameters and
tools explicitly: small models write weak prose, and structured output is what the later stages
(and the compression guard) can keep.
"""

from __future__ import annotations

__all__ = [
    "DEMO_REQUEST",
    "EARLIER_STAGES_HEADER",
    "ROLLING_SUMMARY_HEADER",
    "ROLLING_SUMMARY_PROMPT",
    "STAGE_SYSTEM_PROMPTS",
    "STAGE_USER_PROMPT",
]

_COMMON = (
    "Answer with short bullet points only. Copy every ticket ID, order ID, host, file path, "
    "URL, parameter (key=value) and tool name exactly as written."
)

STAGE_SYSTEM_PROMPTS: dict[str, str] = {
    "classify": (
        "You are stage A (classify) of an operations pipeline. Classify the request: "
        "category, priority (P1-P4), affected service, affected IDs and files. " + _COMMON
    ),
    "select": (
        "You are stage B (select) of an operations pipeline. Select the tools and resources "
        "needed: for each, the tool name, the file path or URL it acts on, and the parameters "
        "to change (key=value). " + _COMMON
    ),
    "plan": (
        "You are stage C (plan) of an operations pipeline. Write a numbered plan. Each step "
        "names one tool, its target path or URL and its parameters as key=value. " + _COMMON
    ),
    "execute": (
        "You are stage D (execute) of an operations pipeline. For each plan step, write the "
        "command to run (tool name with key=value arguments), the target, and the expected "
        "result. End with a one-line verdict. " + _COMMON
    ),
}
"""System prompt of each stage, by stage name."""

STAGE_USER_PROMPT = """Request:
{request}
{context}
Write the {stage} result now."""
"""User prompt of a stage: the request, then the compressed context (may be empty)."""

ROLLING_SUMMARY_HEADER = "Folded earlier stages (rolling summary):"
"""Header of the rolling summary of the stages folded out of a prompt."""
EARLIER_STAGES_HEADER = "Earlier stages (compressed summaries):"
"""Header of the compressed summaries of the earlier stages still in the prompt."""

ROLLING_SUMMARY_PROMPT = """Merge the following {stage_name} into one running summary of the \
pipeline (≤ {max_tokens} tokens).

**User Request:** {user_request}

**Stage summaries so far:**
{result}

**Instructions:**
- Keep: decisions, IDs, file paths, URLs, parameters (key=value) and tool names
- Drop: repetition and narrative
- Format: Bullet points, each ≤ 25 tokens

Summary:"""
"""Compression prompt for the rolling summary (``compress_stage_result`` placeholders)."""

DEMO_REQUEST = (
    "Incident INC-4821: the checkout service times out under load. Orders ORD-99812 and "
    "ORD-99813 failed with HTTP 504 on https://api.shop.example.com/v2/orders. Config file "
    "/srv/checkout/config/app.yaml has max_connections=64, pool_timeout=30s, retries=2, "
    "worker_threads=8. Logs in /var/log/checkout/error.log show 'upstream timeout' from host "
    "db-replica-03. Available tools: update_config, restart_service, run_load_test. "
    "Classify the incident, select the tools, plan the fix and execute it."
)
"""The built-in demo request: its stage outputs carry IDs, paths and parameters."""
