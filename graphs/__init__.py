"""The LangGraph app folder: ``langgraph.json`` serves ``./graphs/graph.py:graph``.

The graph is the package's seed pipeline (:mod:`langchain_vllm_budget.pipeline`);
``python -m graphs`` is the demo run.
"""
