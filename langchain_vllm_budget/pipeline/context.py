"""Run-time configuration of the pipeline: the graph's ``context_schema``.

Every field can be passed per run (``graph.invoke(..., context=Context(...))``, or a dict
from the LangGraph API) or set in the environment; an explicit value always wins. The fields
are the package's settings (:mod:`langchain_vllm_budget.settings`, ``VLLM_API_BASE`` and
``VLLM_BUDGET_*``), two sampling settings of the pipeline among them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_vllm_budget import settings
from langchain_vllm_budget.settings import Setting

__all__ = ["Context"]


def _from(setting: Setting[Any]) -> Any:
    """A dataclass field that defaults to ``setting`` (its environment variable, else default)."""
    return field(
        default_factory=setting.factory(),
        metadata={"description": f"{setting.description} Env: {setting.env}."},
    )


@dataclass(frozen=True, kw_only=True)
class Context:
    """The pipeline's run-time configuration.

    Example:
        >>> ctx = Context(base_url="http://127.0.0.1:8000/v1", model="qwen", output_reserve=256)
        >>> ctx.summarizer, ctx.summarizer_url, ctx.output_reserve
        ('qwen', 'http://127.0.0.1:8000/v1', 256)
    """

    base_url: str = _from(settings.API_BASE)
    model: str | None = _from(settings.MODEL)
    summarizer_model: str | None = _from(settings.SUMMARIZER_MODEL)
    summarizer_base_url: str | None = _from(settings.SUMMARIZER_API_BASE)
    summarizer_tokenizer: str | None = _from(settings.SUMMARIZER_TOKENIZER)
    summarizer_max_model_len: int | None = _from(settings.SUMMARIZER_MAX_MODEL_LEN)
    tokenizer: str | None = _from(settings.TOKENIZER)
    max_model_len: int | None = _from(settings.MAX_MODEL_LEN)
    output_reserve: int = _from(settings.OUTPUT_RESERVE)
    safety_margin: int = _from(settings.SAFETY_MARGIN)
    min_output_tokens: int = _from(settings.MIN_OUTPUT_TOKENS)
    summary_max_tokens: int = _from(settings.SUMMARY_MAX_TOKENS)
    handoff_verbatim_share: float = _from(settings.HANDOFF_VERBATIM_SHARE)
    rolling_summary_max_tokens: int = _from(settings.ROLLING_SUMMARY_MAX_TOKENS)
    rolling_summary_mode: str = _from(settings.ROLLING_SUMMARY_MODE)
    compression: str = _from(settings.COMPRESSION)
    temperature: float = _from(settings.TEMPERATURE)
    repetition_penalty: float = _from(settings.REPETITION_PENALTY)

    def __post_init__(self) -> None:
        """Check the values that no model call would check before it is too late."""
        if self.repetition_penalty <= 0:
            msg = (
                "Context.repetition_penalty must be > 0 (1.0 is off); "
                f"got {self.repetition_penalty}."
            )
            raise ValueError(msg)
        if self.temperature < 0:
            msg = f"Context.temperature must be >= 0; got {self.temperature}."
            raise ValueError(msg)

    @property
    def summarizer(self) -> str | None:
        """The summarizer model name (the stage model unless set)."""
        return self.summarizer_model or self.model

    @property
    def summarizer_url(self) -> str:
        """The summarizer's server URL (``base_url`` unless set)."""
        return self.summarizer_base_url or self.base_url
