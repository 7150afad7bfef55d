"""The graph ``langgraph.json`` serves: the package's pipeline.

The pipeline itself (stages, state, context, prompts) lives in
:mod:`langchain_vllm_budget.pipeline`; build your own graph there or from
:mod:`langchain_vllm_budget.stages`, and point ``langgraph.json`` at it.
"""

from langchain_vllm_budget.pipeline import graph

__all__ = ["graph"]
