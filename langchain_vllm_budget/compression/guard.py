"""The guard: measure a summary, restore missing entities or fall back, enforce the cap.

A model's summary is checked instead of trusted. An empty summary, one that repeats itself,
one over the cap, or one that kept too few of the entities is replaced by the deterministic
extractive summary; entities missing from an otherwise good summary are restored as compact
bullets. The cap is enforced, never just requested: every :class:`CompressionResult` holds a
summary of at most ``max_tokens`` tokens by the counter.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from langchain_vllm_budget.compression.entities import (
    Entity,
    entity_bullets,
    extract_entity_list,
    is_entity_present,
)
from langchain_vllm_budget.compression.extractive import (
    extractive_text,
    query_extractive_text,
    query_units,
    repetition,
)
from langchain_vllm_budget.compression.query import Query, focus_entities, line_scores
from langchain_vllm_budget.compression.render import render_stage_result

if TYPE_CHECKING:
    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "CompressionJob",
    "CompressionMethod",
    "CompressionResult",
    "better_for_query",
    "clean_llm_summary",
    "extractive_summary",
    "needs_model",
    "query_summary",
]

CompressionMethod = Literal["verbatim", "llm", "llm+restored", "extractive"]
"""How a summary was made: ``verbatim`` (the result already fit the cap), ``llm`` (the model's
summary kept every entity), ``llm+restored`` (missing entities appended) or ``extractive``
(deterministic, no model call or the model's summary rejected)."""

DEFAULT_MIN_RETENTION = 0.5


@dataclass(frozen=True)
class CompressionResult:
    """A compressed stage result and how well it kept what matters.

    Attributes:
        summary: The summary, at most ``max_tokens`` tokens by the counter.
        raw_tokens: Tokens of the rendered stage result.
        summary_tokens: Tokens of the summary.
        ratio: ``raw_tokens / summary_tokens`` (4.0 means four times smaller).
        retention: Share of the extracted entities present in the summary (1.0 if none).
        missing: Entities not in the summary: empty unless the entities alone exceed the cap.
        method: How the summary was made (see :data:`CompressionMethod`).
        entities: The entities extracted from the result, highest priority first.
        max_tokens: The cap.
        restored: Entities the guard appended to the model's summary.
        fallback_reason: Why the model's summary was rejected, if it was.
        chunks: Number of chunks the result was split into for the summarizer's window.
        model_calls: Summarizer calls made (0: verbatim, or extractive without a call).
        tokenizer: Name of the token counter used.
        exact: Whether that counter is exact for the model.
        focus: The entities the request points at (all of them when there was no request):
            what the summary must keep; see :func:`query_summary`.
        query_missing: Those of ``focus`` missing from the summary.
    """

    summary: str
    raw_tokens: int
    summary_tokens: int
    ratio: float
    retention: float
    missing: tuple[str, ...]
    method: CompressionMethod
    entities: tuple[str, ...]
    max_tokens: int
    restored: tuple[str, ...] = ()
    fallback_reason: str | None = None
    chunks: int = 1
    model_calls: int = 0
    tokenizer: str = ""
    exact: bool = False
    focus: tuple[str, ...] = ()
    query_missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for state, ledgers and logs)."""
        data = dataclasses.asdict(self)
        for key in ("missing", "entities", "restored", "focus", "query_missing"):
            data[key] = list(data[key])
        return data


_HEADING = re.compile(r"^\s*(?:#+\s*|\*\*)?summary\s*:?\s*(?:\*\*)?\s*:?\s*$", re.I | re.M)


def clean_llm_summary(text: str) -> str:
    r"""A model's summary without its "Summary:" heading and blank lines.

    Example:
        >>> clean_llm_summary("**Summary:**\n\n- INC-7 fixed")
        '- INC-7 fixed'
    """
    text = _HEADING.sub("", text, count=1)
    text = re.sub(r"^\s*(?:\*\*)?summary(?:\*\*)?\s*:\s*", "", text, count=1, flags=re.I)
    return "\n".join(line.rstrip() for line in text.strip().splitlines() if line.strip())


def _degenerate(
    summary: str,
    summary_tokens: int,
    cap: int,
    entities: Sequence[Entity],
    present: int,
    min_retention: float,
) -> str | None:
    if not summary.strip():
        return "empty summary"
    if summary_tokens > cap:
        return f"over the cap: {summary_tokens} > {cap} tokens"
    repeated = repetition(summary)
    if repeated:
        return repeated
    if entities:
        retention = present / len(entities)
        if retention < min_retention:
            return (
                f"low retention: {present}/{len(entities)} entities kept "
                f"({retention:.0%} < {min_retention:.0%})"
            )
    return None


def _validate(max_tokens: int, min_retention: float) -> None:
    if max_tokens < 1:
        msg = f"max_tokens must be at least 1 (got {max_tokens}): it is the summary's token cap."
        raise ValueError(msg)
    if not 0.0 <= min_retention <= 1.0:
        msg = f"min_retention must be between 0.0 and 1.0 (got {min_retention})."
        raise ValueError(msg)


@dataclass
class CompressionJob:
    """One result to compress: its text, entities, cap and counter.

    Every compression path (extractive, model, sync, async) measures and checks through
    this object, so they share one guard.

    Attributes:
        text: The rendered stage result.
        cap: The hard cap on the summary, in tokens.
        counter: Counts the summary (the model's tokenizer when known).
        min_retention: Below this share of entities kept, a model's summary is rejected.
        entities: The entities extracted from ``text``, highest priority first.
        raw_tokens: Tokens of ``text``.
        query: What the summary is for; when given, the extractive summary ranks by it.
        focus: The entities the query points at (all entities without a query).
    """

    text: str
    cap: int
    counter: TokenCounter
    min_retention: float
    entities: list[Entity]
    raw_tokens: int
    query: Query = dataclasses.field(default_factory=Query)
    focus: list[Entity] = dataclasses.field(default_factory=list)

    @classmethod
    def create(
        cls,
        raw: Any,
        *,
        max_tokens: int,
        counter: TokenCounter,
        min_retention: float = DEFAULT_MIN_RETENTION,
        query: Query | None = None,
    ) -> CompressionJob:
        """Render ``raw``, extract its entities and count it; find what ``query`` points at.

        Raises:
            ValueError: If ``max_tokens`` < 1 or ``min_retention`` is outside [0, 1].
            TypeError: If ``raw`` cannot be rendered as text.
        """
        _validate(max_tokens, min_retention)
        text = render_stage_result(raw, call_ids=False)  # what the summary is written from
        entities = extract_entity_list(text)
        query = query or Query()
        if query:
            lines = query_units(text)
            focus = focus_entities(lines, line_scores(lines, query, near=False), entities)
        else:
            focus = entities
        return cls(
            text=text,
            cap=max_tokens,
            counter=counter,
            min_retention=min_retention,
            entities=entities,
            raw_tokens=counter.count_text(text) if text.strip() else 0,
            query=query,
            focus=focus,
        )

    def early(self) -> CompressionResult | None:
        """The result when no summary is needed: empty input, or input within the cap."""
        if not self.text.strip():
            return self.result("", "verbatim")
        if self.raw_tokens <= self.cap:
            return self.result(self.text.strip(), "verbatim")
        return None

    def extractive(self, reason: str | None = None, chunks: int = 1) -> CompressionResult:
        """The deterministic summary (ranked by the query when there is one)."""
        if self.query:
            summary = query_extractive_text(
                self.text, self.entities, self.cap, self.counter, self.query, focus=self.focus
            )
        else:
            summary, _dropped = extractive_text(self.text, self.entities, self.cap, self.counter)
        return self.result(summary, "extractive", reason=reason, chunks=chunks)

    def result(
        self,
        summary: str,
        method: CompressionMethod,
        *,
        restored: Sequence[str] = (),
        reason: str | None = None,
        chunks: int = 1,
        model_calls: int = 0,
    ) -> CompressionResult:
        """Measure ``summary`` and build the result (the cap is asserted here)."""
        summary_tokens = self.counter.count_text(summary) if summary else 0
        if summary_tokens > self.cap:  # pragma: no cover - every path fits before this
            msg = f"internal error: summary of {summary_tokens} tokens over cap {self.cap}"
            raise AssertionError(msg)
        missing = tuple(e.text for e in self.entities if not is_entity_present(e.text, summary))
        total = len(self.entities)
        retention = 1.0 if total == 0 else (total - len(missing)) / total
        return CompressionResult(
            summary=summary,
            raw_tokens=self.raw_tokens,
            summary_tokens=summary_tokens,
            ratio=round(self.raw_tokens / max(summary_tokens, 1), 3),
            retention=round(retention, 4),
            missing=missing,
            method=method,
            entities=tuple(e.text for e in self.entities),
            max_tokens=self.cap,
            restored=tuple(restored),
            fallback_reason=reason,
            chunks=chunks,
            model_calls=model_calls,
            tokenizer=getattr(self.counter, "name", type(self.counter).__name__),
            exact=bool(getattr(self.counter, "exact", False)),
            focus=tuple(e.text for e in self.focus),
            query_missing=tuple(
                e.text for e in self.focus if not is_entity_present(e.text, summary)
            ),
        )

    def guard(self, llm_summary: str, *, chunks: int, model_calls: int) -> CompressionResult:
        """Check a model's summary: keep it, restore missing entities, or fall back."""
        summary = clean_llm_summary(llm_summary)
        tokens = self.counter.count_text(summary) if summary else 0
        absent = [e for e in self.entities if not is_entity_present(e.text, summary)]
        present = len(self.entities) - len(absent)
        reason = _degenerate(summary, tokens, self.cap, self.entities, present, self.min_retention)
        if reason is None and not absent:
            return self.result(summary, "llm", chunks=chunks, model_calls=model_calls)
        if reason is None:
            restored = "\n".join([summary, *entity_bullets(absent)])
            if self.counter.count_text(restored) <= self.cap:
                return self.result(
                    restored,
                    "llm+restored",
                    restored=[e.text for e in absent],
                    chunks=chunks,
                    model_calls=model_calls,
                )
            reason = (
                f"restoring {len(absent)} missing entities would exceed the cap of {self.cap} "
                "tokens"
            )
        fallback = self.extractive(reason=reason, chunks=chunks)
        return dataclasses.replace(fallback, model_calls=model_calls)


def extractive_summary(
    raw: Any, *, max_tokens: int | None = None, tokenizer: TokenCounter | None = None
) -> CompressionResult:
    """A model-free summary of at most ``max_tokens`` tokens: entities first, then sentences.

    The guard's deterministic fallback, usable on its own where a model call costs too much
    (merging summaries that are already compressed, for one).

    Args:
        raw: The text or value to summarize (rendered with
            :func:`~langchain_vllm_budget.compression.render_stage_result`).
        max_tokens: The hard cap, counted with ``tokenizer`` (default
            ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``).
        tokenizer: Token counter; default
            :class:`~langchain_vllm_budget.tokenizers.ApproximateTokenCounter`.

    Returns:
        The summary (method ``"verbatim"`` when ``raw`` already fits, else ``"extractive"``).

    Raises:
        ValueError: If ``max_tokens`` < 1.

    Example:
        >>> text = "Ticket INC-9 is open. " + "Nothing else happened today. " * 30
        >>> result = extractive_summary(text, max_tokens=20)
        >>> result.method, result.summary_tokens <= 20, result.missing
        ('extractive', True, ())
    """
    if tokenizer is None:
        from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

        tokenizer = ApproximateTokenCounter()
    if max_tokens is None:
        from langchain_vllm_budget import settings

        max_tokens = settings.SUMMARY_MAX_TOKENS.required_factory()()
    job = CompressionJob.create(raw, max_tokens=max_tokens, counter=tokenizer, min_retention=0.0)
    return job.early() or job.extractive()


def query_summary(
    raw: Any, *, query: Query, max_tokens: int, tokenizer: TokenCounter
) -> CompressionResult:
    """The extractive summary ranked by ``query``, with the entities it points at checked.

    Its ``query_missing`` says whether a summarizer model could add something the request
    needs (see :func:`needs_model`).

    Args:
        raw: The result to summarize.
        query: What the summary is for (the tool call and the user's request).
        max_tokens: The hard cap.
        tokenizer: Counts tokens.

    Returns:
        The summary (``"verbatim"`` when ``raw`` fits the cap).
    """
    job = CompressionJob.create(
        raw, max_tokens=max_tokens, counter=tokenizer, min_retention=0.0, query=query
    )
    return job.early() or job.extractive()


def needs_model(first: CompressionResult, strategy: str, *, has_model: bool) -> bool:
    """Whether to ask the summarizer after the query-ranked extractive summary ``first``.

    ``"extractive"`` (or no model) never does, ``"llm"`` always does for a result over the
    cap, and ``"auto"`` only when ``first`` lost an entity the request points at.
    """
    if not has_model or strategy == "extractive" or first.method == "verbatim":
        return False
    return strategy == "llm" or bool(first.query_missing)


def better_for_query(first: CompressionResult, other: CompressionResult) -> CompressionResult:
    """Of the query-ranked summary and the summarizer's, the one keeping more of the focus.

    A tie goes to ``other`` (the model's, guarded); the chosen one carries ``first``'s focus
    and both summaries' model calls.
    """
    kept_first = len(first.focus) - len(first.query_missing)
    query_missing = tuple(e for e in first.focus if not is_entity_present(e, other.summary))
    kept_other = len(first.focus) - len(query_missing)
    if kept_first > kept_other:
        return dataclasses.replace(first, model_calls=other.model_calls)
    return dataclasses.replace(other, focus=first.focus, query_missing=query_missing)
