"""The seed's classify -> select -> plan -> execute pipeline, built from compressed stages.

Laid out as LangGraph's app template: :mod:`.graph` (the graph and its models),
:mod:`.state`, :mod:`.context` (the ``context_schema``) and :mod:`.prompts`. It ships in the
package, so ``vllm-budget run "..."`` works from any folder after ``pip install``; the
repository's ``graphs/`` folder serves the same graph through ``langgraph.json``.
"""

from langchain_vllm_budget.pipeline.context import Context
from langchain_vllm_budget.pipeline.graph import STAGES, build_pipeline, graph, make_model
from langchain_vllm_budget.pipeline.prompts import DEMO_REQUEST, STAGE_SYSTEM_PROMPTS
from langchain_vllm_budget.pipeline.state import InputState, State

__all__ = [
    "DEMO_REQUEST",
    "STAGES",
    "STAGE_SYSTEM_PROMPTS",
    "Context",
    "InputState",
    "State",
    "build_pipeline",
    "graph",
    "make_model",
]
