"""Run-time configuration of the pipeline (the graph's ``context_schema``).

Every field can be passed per run (``graph.ainvoke(..., context=Context(...))``, or a dict from
the LangGraph API) or set in the environment as ``VLLM_BUDGET_<FIELD>`` (upper case), e.g.
``VLLM_BUDGET_BASE_URL`` or ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

__all__ = ["ENV_PREFIX", "ROLLING_SUMMARY_MODES", "Context"]

ENV_PREFIX = "VLLM_BUDGET_"
ROLLING_SUMMARY_MODES = ("extractive", "llm")
"""Values of :attr:`Context.rolling_summary_mode`."""


@dataclass(frozen=True, kw_only=True)
class Context:
    """The pipeline's run-time configuration.

    Example:
        >>> ctx = Context(base_url="http://127.0.0.1:8000/v1", reasoning_model="qwen")
        >>> ctx.summarizer, ctx.summarizer_url
        ('qwen', 'http://127.0.0.1:8000/v1')
    """

    base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={"description": "OpenAI-compatible URL of the vLLM server (ending in /v1)."},
    )
    reasoning_model: str = field(
        default="smollm2-135m-instruct",
        metadata={"description": "Served model name for the stage calls."},
    )
    summarizer_model: str = field(
        default="",
        metadata={
            "description": "Served model name for compression (a smaller model); "
            "empty: the reasoning model."
        },
    )
    summarizer_base_url: str = field(
        default="",
        metadata={"description": "Server of the summarizer model; empty: base_url."},
    )
    tokenizer_path: str = field(
        default="",
        metadata={
            "description": "Local tokenizer folder for exact counting without a round trip; "
            "empty: the server's /tokenize."
        },
    )
    max_model_len: int = field(
        default=0,
        metadata={"description": "Context window in tokens; 0: discovered from the server."},
    )
    stage_max_tokens: int = field(
        default=384,
        metadata={"description": "Output reserve of a stage call (its max_tokens at most)."},
    )
    min_stage_output_tokens: int = field(
        default=64,
        metadata={
            "description": "Least output room a stage needs; below it the stage input "
            "is degraded (older summaries folded, then trimmed)."
        },
    )
    safety_margin: int = field(
        default=32, metadata={"description": "Tokens kept free in every request."}
    )
    summary_max_tokens: int = field(
        default=250, metadata={"description": "Hard cap on each stage summary (tokens)."}
    )
    rolling_summary_max_tokens: int = field(
        default=160, metadata={"description": "Hard cap on the rolling summary (tokens)."}
    )
    rolling_summary_mode: str = field(
        default="extractive",
        metadata={
            "description": "How the rolling summary absorbs a stage summary once both no "
            "longer fit its cap: 'extractive' (no model call: entities first, then the "
            "sentences carrying most of them) or 'llm' (a guarded summarizer call)."
        },
    )
    temperature: float = field(
        default=0.2, metadata={"description": "Sampling temperature of the stage calls."}
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={
            "description": "vLLM's repetition_penalty for the stage calls (1.0: off; "
            "small models such as SmolLM2-135M loop less with about 1.05)."
        },
    )
    checkpointer_dsn: str = field(
        default="",
        metadata={
            "description": "PostgreSQL DSN for checkpoints and the store (vllm-budget run); "
            "empty: SQLite."
        },
    )

    def __post_init__(self) -> None:
        """Fill fields left at their default from ``VLLM_BUDGET_<FIELD>`` variables."""
        hints = get_type_hints(type(self))
        for f in fields(self):
            env_value = os.environ.get(ENV_PREFIX + f.name.upper())
            if env_value is None or getattr(self, f.name) != f.default:
                continue
            object.__setattr__(self, f.name, _convert(f.name, env_value, hints[f.name]))
        self._check()

    def _check(self) -> None:
        for name in ("stage_max_tokens", "min_stage_output_tokens", "summary_max_tokens"):
            if getattr(self, name) < 1:
                msg = f"Context.{name} must be at least 1 token (got {getattr(self, name)})."
                raise ValueError(msg)
        if self.rolling_summary_max_tokens < 1:
            msg = (
                "Context.rolling_summary_max_tokens must be at least 1 token "
                f"(got {self.rolling_summary_max_tokens})."
            )
            raise ValueError(msg)
        if self.min_stage_output_tokens > self.stage_max_tokens:
            msg = (
                f"Context.min_stage_output_tokens ({self.min_stage_output_tokens}) is above "
                f"stage_max_tokens ({self.stage_max_tokens}): lower it or raise stage_max_tokens."
            )
            raise ValueError(msg)
        if self.rolling_summary_mode not in ROLLING_SUMMARY_MODES:
            msg = (
                f"Context.rolling_summary_mode must be one of {', '.join(ROLLING_SUMMARY_MODES)} "
                f"(got {self.rolling_summary_mode!r})."
            )
            raise ValueError(msg)
        if self.repetition_penalty <= 0:
            msg = (
                "Context.repetition_penalty must be > 0 (1.0 is off); "
                f"got {self.repetition_penalty}."
            )
            raise ValueError(msg)
        if self.max_model_len < 0 or self.safety_margin < 0:
            msg = (
                "Context.max_model_len and safety_margin must be >= 0 "
                f"(got {self.max_model_len} and {self.safety_margin})."
            )
            raise ValueError(msg)

    @property
    def summarizer(self) -> str:
        """The summarizer model name (the reasoning model unless set)."""
        return self.summarizer_model or self.reasoning_model

    @property
    def summarizer_url(self) -> str:
        """The summarizer's server URL (``base_url`` unless set)."""
        return self.summarizer_base_url or self.base_url


def _convert(name: str, value: str, target: Any) -> Any:
    try:
        if target is int:
            return int(value)
        if target is float:
            return float(value)
    except ValueError:
        msg = f"{ENV_PREFIX}{name.upper()} must be a {target.__name__}, got {value!r}"
        raise ValueError(msg) from None
    return value
