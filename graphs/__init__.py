"""The LangGraph app: the seed's classify -> select -> plan -> execute pipeline.

Served by ``langgraph.json`` (``./graphs/graph.py:graph``); built from the package's
compressed stages (:mod:`langchain_vllm_budget.stages`).
"""
