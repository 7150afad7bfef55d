"""Record every chat-model call of a run: which stage, stage call or summarizer, time, tokens.

:class:`CallRecorder` is a LangChain callback handler: pass it in the run's config
(``{"callbacks": [recorder]}``) and the calls made inside the run (the stage calls and the
compression calls of :func:`~langchain_vllm_budget.compression.compress_stage_result`, which
inherit the run's callbacks) are recorded with the LangGraph node that made them.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from langchain_vllm_budget.compression import is_summarizer_prompt

__all__ = ["CallRecord", "CallRecorder", "percentile"]


@dataclass(frozen=True)
class CallRecord:
    """One chat-model call.

    Attributes:
        stage: The LangGraph node (or the ``stage`` metadata of a plain call).
        kind: ``"stage"`` or ``"summarizer"`` (a compression prompt).
        pipeline: The ``pipeline`` metadata of the run, if any.
        started: ``time.perf_counter()`` at the start.
        seconds: Duration.
        prompt_tokens: ``usage.prompt_tokens``.
        completion_tokens: ``usage.completion_tokens``.
        finish_reason: The server's finish reason.
        error: The exception type, when the call failed.
    """

    stage: str
    kind: str
    pipeline: str | None
    started: float
    seconds: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None


class CallRecorder(BaseCallbackHandler):
    """Collects a :class:`CallRecord` per chat-model call (thread- and task-safe)."""

    run_inline = True  # record on the event loop itself: the clock must not wait for a thread

    def __init__(self) -> None:
        self.records: list[CallRecord] = []
        self._open: dict[UUID, tuple[str, str, str | None, float]] = {}
        self._lock = threading.Lock()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        meta = metadata or {}
        stage = str(meta.get("langgraph_node") or meta.get("stage") or "?")
        kind = "summarizer" if messages and is_summarizer_prompt(messages[0]) else "stage"
        pipeline = meta.get("pipeline")
        with self._lock:
            self._open[run_id] = (stage, kind, pipeline, time.perf_counter())

    def _close(self, run_id: UUID, **fields: Any) -> None:
        with self._lock:
            opened = self._open.pop(run_id, None)
        if opened is None:
            return
        stage, kind, pipeline, started = opened
        record = CallRecord(stage, kind, pipeline, started, time.perf_counter() - started, **fields)
        with self._lock:
            self.records.append(record)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        generation = response.generations[0][0] if response.generations else None
        message = getattr(generation, "message", None)
        usage = getattr(message, "usage_metadata", None) or {}
        self._close(
            run_id,
            prompt_tokens=int(usage.get("input_tokens", 0)),
            completion_tokens=int(usage.get("output_tokens", 0)),
            finish_reason=(
                message.response_metadata.get("finish_reason") if message is not None else None
            ),
        )

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error=type(error).__name__)

    def totals(self, records: Sequence[CallRecord] | None = None) -> dict[str, Any]:
        """Calls, seconds and tokens of the stage calls and of the summarizer calls."""
        chosen = self.records if records is None else records
        out: dict[str, Any] = {}
        for kind in ("stage", "summarizer"):
            mine = [r for r in chosen if r.kind == kind]
            out[kind] = {
                "calls": len(mine),
                "seconds": round(sum(r.seconds for r in mine), 2),
                "prompt_tokens": sum(r.prompt_tokens for r in mine),
                "completion_tokens": sum(r.completion_tokens for r in mine),
            }
        out["engine_tokens"] = sum(r.prompt_tokens + r.completion_tokens for r in chosen)
        return out


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (inclusive method; the value itself for one sample).

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50), percentile([2.0], 95)
        (3.0, 2.0)
    """
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return float(cuts[int(pct) - 1])
