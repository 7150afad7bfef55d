"""Shared settings for the pipeline integration tests (real vLLM servers)."""

from __future__ import annotations

from typing import Any

from graphs import Context
from tests.integration_tests.conftest import ServedModel

FAST = {
    # stage outputs within the summary cap are kept verbatim and the rolling summary just
    # appends: four short model calls per run, for the tests about persistence and serving
    "stage_max_tokens": 24,
    "min_stage_output_tokens": 16,
    "summary_max_tokens": 64,
    "rolling_summary_max_tokens": 400,
    "temperature": 0.0,
}

REQUEST = "Fix INC-4821: /srv/checkout/app.yaml has pool_timeout=30s and retries=2."


def fast_context(served: ServedModel, **overrides: Any) -> Context:
    values: dict[str, Any] = {
        "base_url": served.base_url,
        "reasoning_model": served.model,
        "tokenizer_path": str(served.model_path),
        **FAST,
    }
    values.update(overrides)
    return Context(**values)
