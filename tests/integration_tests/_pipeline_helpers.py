"""Shared settings for the pipeline integration tests (real vLLM servers)."""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.store.base import BaseStore

from langchain_vllm_budget.pipeline.context import Context
from langchain_vllm_budget.pipeline.graph import build_pipeline
from tests.integration_tests.conftest import ServedModel

FAST = {
    # stage outputs within the summary cap are kept verbatim and the rolling summary just
    # appends: four short model calls per run, for the tests about persistence and serving
    "output_reserve": 24,
    "min_output_tokens": 16,
    "safety_margin": 32,
    "summary_max_tokens": 64,
    "rolling_summary_max_tokens": 400,
    "temperature": 0.0,
}

REQUEST = "Fix INC-4821: /srv/checkout/app.yaml has pool_timeout=30s and retries=2."


def fast_context(served: ServedModel, **overrides: Any) -> Context:
    values: dict[str, Any] = {
        "base_url": served.base_url,
        "model": served.model,
        "tokenizer": str(served.model_path),
        **FAST,
    }
    values.update(overrides)
    return Context(**values)


def pipeline(checkpointer: BaseCheckpointSaver[Any], store: BaseStore) -> CompiledStateGraph[Any]:
    """The app's pipeline, compiled with the given persistence."""
    return build_pipeline().compile(checkpointer=checkpointer, store=store)
