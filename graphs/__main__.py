"""``python -m graphs [REQUEST] [OPTIONS]``: ``vllm-budget run`` on this app, demo request default.

Every option of ``vllm-budget run`` applies (``--base-url``, ``--model``, ``--set KEY=VALUE``,
``--thread-id`` ...); without a request the built-in demo request is used.
"""

import sys

from graphs.prompts import DEMO_REQUEST
from langchain_vllm_budget.cli import app

args = sys.argv[1:]
if not args or args[0].startswith("-"):
    args = [DEMO_REQUEST, *args]
app(["run", *args], prog_name="python -m graphs")
