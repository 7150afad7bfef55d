"""LangChain v1 agent middleware: context compaction in state, tool-output compression.

Needs the ``agents`` extra (``pip install 'langchain-vllm-budget[agents]'``: LangChain v1's
``create_agent``). Two middlewares for ``create_agent(..., middleware=[...])``:

* :class:`ContextCompactionMiddleware` compacts the agent's messages *in the graph state*
  when the next model call would not fit (counted exactly with the model's counter, the
  system prompt and tools included): once, down to a target below the input limit, so that
  the compaction is checkpointed and the following calls only append (vLLM's prefix cache
  keeps hitting). ``"summarize"`` writes the summary with the package's loss-checked
  compressor; ``"trim"`` drops the oldest turns.
* :class:`ToolOutputCompressionMiddleware` replaces a tool result larger than a threshold by
  a loss-checked, hard-capped summary, stores the raw result in the LangGraph store (keyed
  by tool-call id) and gives the agent a ``read_tool_output`` tool to read it back.
"""

from __future__ import annotations

try:
    import langchain.agents.middleware  # noqa: F401
except ImportError as exc:  # pragma: no cover - the agents extra is part of the test install
    msg = (
        "langchain_vllm_budget.middleware needs LangChain v1 agents (create_agent): install "
        "the agents extra, `pip install 'langchain-vllm-budget[agents]'` (langchain>=1.0)."
    )
    raise ImportError(msg) from exc

from langchain_vllm_budget.middleware.compaction import ContextCompactionMiddleware
from langchain_vllm_budget.middleware.tool_outputs import (
    DEFAULT_NAMESPACE,
    ToolOutputCompressionMiddleware,
    load_tool_output,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "ContextCompactionMiddleware",
    "ToolOutputCompressionMiddleware",
    "load_tool_output",
]
