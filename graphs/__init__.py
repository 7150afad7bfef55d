"""LangGraph pipeline: classify → select → plan → execute with loss-aware stage summaries.

Each stage sees the user's request and the compressed summaries of earlier stages (and, once
older ones are folded out to fit the window, the rolling summary of those), never their raw
outputs; raw outputs go to the LangGraph store. ``graphs.pipeline.graph``
is what ``langgraph.json`` serves; :func:`graphs.pipeline.build_graph` adds a checkpointer and a
store for use from Python and the ``vllm-budget run`` command.
"""

from graphs.context import Context
from graphs.pipeline import STAGES, build_graph, graph
from graphs.state import InputState, StageLedger, State

__all__ = ["STAGES", "Context", "InputState", "StageLedger", "State", "build_graph", "graph"]
