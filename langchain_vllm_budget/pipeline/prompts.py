"""System prompts of the pipeline's stages, and the demo request.

The stage prompts ask for short, structured bullet lists that name IDs, paths, parameters and
tools explicitly: small models write weak prose, and structured output is what the later stages
(and the compression guard) can keep.
"""

from __future__ import annotations

__all__ = ["DEMO_REQUEST", "STAGE_SYSTEM_PROMPTS"]

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

DEMO_REQUEST = (
    "Incident INC-4821: the checkout service times out under load. Orders ORD-99812 and "
    "ORD-99813 failed with HTTP 504 on https://api.shop.example.com/v2/orders. Config file "
    "/srv/checkout/config/app.yaml has max_connections=64, pool_timeout=30s, retries=2, "
    "worker_threads=8. Logs in /var/log/checkout/error.log show 'upstream timeout' from host "
    "db-replica-03. Available tools: update_config, restart_service, run_load_test. "
    "Classify the incident, select the tools, plan the fix and execute it. Be thorough: "
    "explain every finding, tool and step in detail."
)
"""The built-in demo request: its stage outputs carry IDs, paths and parameters, and it asks for
detail, so that each stage writes up to its output reserve. Forwarding those raw outputs
would outgrow SmolLM2's 2,048-token window by the last stage (``make demo`` shows the count);
the compressed hand-offs keep every stage prompt near its first size."""
