"""Compression with a summarizer model: the prompt, map-reduce over chunks, the strategy.

:func:`summarize` and :func:`asummarize` (and their keyword forms :func:`compress_stage_result`
and :func:`acompress_stage_result`) share every step: the job
(render, entities, count), the strategy's extractive shortcut, the map-reduce plan (written
once, as a generator of summarizer requests that a sync and an async driver both run; the
async driver sends a round's requests concurrently), and the guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.constants import TAG_NOSTREAM

from langchain_vllm_budget.capabilities import call_room_of, token_counter_of
from langchain_vllm_budget.compression.extractive import truncate_to_tokens
from langchain_vllm_budget.compression.guard import (
    DEFAULT_MIN_RETENTION,
    CompressionJob,
    CompressionResult,
    clean_llm_summary,
)
from langchain_vllm_budget.compression.prefix import PREFIX_SUMMARY_INSTRUCTION, SummarizerRequest
from langchain_vllm_budget.compression.spec import CompressionStrategy, SummarySpec

if TYPE_CHECKING:
    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "COMPRESSION_PROMPT",
    "COMPRESSION_SYSTEM_PROMPT",
    "CompressionStrategy",
    "acompress_stage_result",
    "asummarize",
    "compress_stage_result",
    "is_summarizer_prompt",
    "summarize",
]

COMPRESSION_SYSTEM_PROMPT = (
    "You are a compression agent. Summarize technical data into compact, loss-aware summaries."
)
"""System prompt of the compression call (the seed's)."""

COMPRESSION_PROMPT = """Compress the result below into a compact summary (≤ {max_tokens} tokens).

**Instructions:**
- Preserve: numeric settings, file paths, API params, tool names, entity IDs, and key decisions
- Omit: narrative text, boilerplate, and redundant details
- Format: Bullet points, each ≤ 25 tokens
- Output under "Summary:" heading

**User Request:** {user_request}

**{stage_name} Result:**
{result}

Summary:"""
"""User prompt of the compression call: the seed's instructions, with ``str.format``
placeholders ``{stage_name}``, ``{user_request}``, ``{result}`` and ``{max_tokens}``. What stays
the same between calls (instructions, then the request) comes first and the result last, so
consecutive calls share a prompt prefix that vLLM's prefix cache reuses."""

_INSTRUCTION_START = PREFIX_SUMMARY_INSTRUCTION.split("\n", 1)[0]


def is_summarizer_prompt(messages: Sequence[BaseMessage]) -> bool:
    """Whether ``messages`` are a summarizer request of this package.

    Either the fresh compression prompt (:data:`COMPRESSION_SYSTEM_PROMPT` first) or a
    conversation's prefix with the summary instruction last
    (:data:`~langchain_vllm_budget.compression.PREFIX_SUMMARY_INSTRUCTION`): how a callback
    tells a compaction's summarizer calls from the agent's own.

    Example:
        >>> is_summarizer_prompt([SystemMessage(COMPRESSION_SYSTEM_PROMPT), HumanMessage("x")])
        True
        >>> is_summarizer_prompt([HumanMessage("What failed?")])
        False
    """
    if not messages:
        return False
    first, last = messages[0], messages[-1]
    return (isinstance(first, SystemMessage) and first.text == COMPRESSION_SYSTEM_PROMPT) or (
        last.text.startswith(_INSTRUCTION_START)
    )


_MAX_MERGE_ROUNDS = 3
_CALL_CONFIG: RunnableConfig = {"tags": [TAG_NOSTREAM], "metadata": {"lc_source": "compression"}}
"""Summarizer calls are the package's own, not the agent's answer: LangGraph's ``messages``
stream leaves them out (``nostream``, as LangChain's ``SummarizationMiddleware`` tags its
calls), and traces name their source."""
_PROMPT_MARGIN_TOKENS = 32

Plan = Generator[list[SummarizerRequest], list[str], tuple[str, int]]
"""A map-reduce plan: yields a round of requests, receives their replies, returns
``(summary, chunks)``."""


@dataclass(frozen=True)
class _Prompting:
    """How the summarizer is asked: prompt, subject, request, output limit, its window."""

    template: str
    subject: str
    user_request: str
    cap: int
    window: int | None
    counter: TokenCounter

    @property
    def max_tokens(self) -> int:
        """Tokens asked of the model: the cap itself.

        The seed asked for 400 tokens for a 250-token summary; with the cap enforced, every
        token past it would be thrown away (and on a CPU each one costs time). A reply cut
        at the limit loses its unfinished last line (:func:`_reply_text`).
        """
        return max(16, self.cap)

    def request(self, text: str, subject: str) -> SummarizerRequest:
        """The fresh summarizer request for one piece of text (``subject``: what it is)."""
        return SummarizerRequest(self.messages(text, subject), {"max_tokens": self.max_tokens})

    def messages(self, text: str, subject: str) -> list[BaseMessage]:
        """The compression prompt for one piece of text."""
        prompt = self.template.format(
            stage_name=subject,
            user_request=self.user_request,
            result=text,
            max_tokens=self.cap,
        )
        return [SystemMessage(COMPRESSION_SYSTEM_PROMPT), HumanMessage(prompt)]

    def chunk_budget(self) -> int | None:
        """Largest piece of the result that fits one summarizer call, if the window is known."""
        if self.window is None:
            return None
        overhead = self.counter.count_text(
            "\n".join(m.text for m in self.messages("", self.subject))
        )
        return max(16, self.window - overhead - self.max_tokens - _PROMPT_MARGIN_TOKENS)

    def split(self, text: str, budget: int) -> list[str]:
        """Split ``text`` into pieces of at most ``budget`` tokens, on line boundaries."""
        pieces: list[str] = []
        current: list[str] = []
        for line in text.splitlines():
            while self.counter.count_text(line) > budget:
                head = truncate_to_tokens(line, budget, self.counter) or line[:1]
                if current:
                    pieces.append("\n".join(current))
                    current = []
                pieces.append(head)
                line = line[len(head) :].lstrip()
            candidate = [*current, line]
            if current and self.counter.count_text("\n".join(candidate)) > budget:
                pieces.append("\n".join(current))
                current = [line]
            else:
                current = candidate
        if current and any(part.strip() for part in current):
            pieces.append("\n".join(current))
        return pieces


def _merged(partials: Sequence[str]) -> str:
    return "\n".join(clean_llm_summary(p) for p in partials if p.strip())


def _map_reduce(job: CompressionJob, prompting: _Prompting) -> Plan:
    """One request if the result fits the summarizer's window; else chunk, compress, merge."""
    name = prompting.subject
    budget = prompting.chunk_budget()
    if budget is None or job.raw_tokens <= budget:
        (summary,) = yield [prompting.request(job.text, name)]
        return summary, 1
    pieces = prompting.split(job.text, budget)
    partials = yield [
        prompting.request(piece, f"{name} (part {i}/{len(pieces)})")
        for i, piece in enumerate(pieces, 1)
    ]
    merged = _merged(partials)
    for _ in range(_MAX_MERGE_ROUNDS):
        if job.counter.count_text(merged) <= job.cap:
            break
        if job.counter.count_text(merged) <= budget:
            (reply,) = yield [prompting.request(merged, f"{name} (merged parts)")]
            merged = clean_llm_summary(reply)
            break
        parts = prompting.split(merged, budget)
        merged = _merged(
            (yield [prompting.request(part, f"{name} (merged parts)") for part in parts])
        )
    return merged, len(pieces)


def _single(request: SummarizerRequest) -> Plan:
    """One request that holds the whole span (the conversation's prefix, already fitted)."""
    (summary,) = yield [request]
    return summary, 1


def _plan(compression: _Compression, prefix: SummarizerRequest | None) -> Plan:
    """The prefix request when there is one, else the fresh prompt's map-reduce."""
    if prefix is not None:
        return _single(prefix)
    assert compression.prompting is not None
    return _map_reduce(compression.job, compression.prompting)


def _reply_text(reply: BaseMessage) -> str:
    r"""The reply's text; when it was cut at ``max_tokens``, without its unfinished last line.

    Example:
        >>> from langchain_core.messages import AIMessage
        >>> meta = {"finish_reason": "length"}
        >>> _reply_text(AIMessage("- INC-7 fixed\n- then restar", response_metadata=meta))
        '- INC-7 fixed'
    """
    text = reply.text
    if reply.response_metadata.get("finish_reason") == "length" and "\n" in text.strip():
        return text.strip().rsplit("\n", 1)[0]
    return text


@dataclass(frozen=True)
class _Compression:
    """A compression decided up to the model call: the job and the prompt, or a result."""

    job: CompressionJob
    prompting: _Prompting | None
    done: CompressionResult | None

    def finish(self, summary: str, chunks: int, calls: int) -> CompressionResult:
        """Guard the model's summary; under ``"auto"``, keep the extractive one if it is better."""
        guarded = self.job.guard(summary, chunks=chunks, model_calls=calls)
        if self.done is not None and self.done.retention > guarded.retention:
            return CompressionResult(**{**self.done.__dict__, "model_calls": calls})
        return guarded


def _start(raw: Any, spec: SummarySpec, *, subject: str, user_request: str) -> _Compression:
    model = spec.model
    if model is None and spec.strategy == "llm":
        msg = "strategy='llm' needs a summarizer model: pass model=, or use strategy='auto'."
        raise ValueError(msg)
    counter = spec.counter if spec.counter is not None else token_counter_of(model)
    job = CompressionJob.create(
        raw, max_tokens=spec.max_tokens, counter=counter, min_retention=spec.min_retention
    )
    if (early := job.early()) is not None:
        return _Compression(job, None, early)
    extractive = job.extractive() if spec.strategy != "llm" else None
    if model is None or spec.strategy == "extractive":
        return _Compression(job, None, extractive)
    if extractive is not None and not extractive.missing:
        return _Compression(job, None, extractive)
    prompting = _Prompting(
        template=spec.prompt_template or COMPRESSION_PROMPT,
        subject=subject,
        user_request=user_request,
        cap=spec.max_tokens,
        window=spec.chunk_tokens if spec.chunk_tokens is not None else call_room_of(model),
        counter=counter,
    )
    return _Compression(job, prompting, extractive)


def summarize(
    raw: Any,
    spec: SummarySpec | None = None,
    *,
    subject: str = "result",
    user_request: str = "",
    prefix: SummarizerRequest | None = None,
) -> CompressionResult:
    """Summarize ``raw`` as ``spec`` says: at most ``spec.max_tokens`` tokens, entities kept.

    Args:
        raw: A string, a LangChain message or list of messages (tool messages included), a
            pydantic model, a dataclass, or any JSON-able value.
        spec: The cap, the strategy, the summarizer model and the counter; default: the
            settings' (``VLLM_BUDGET_SUMMARY_MAX_TOKENS``, ``VLLM_BUDGET_COMPRESSION``),
            extractive.
        subject: What ``raw`` is, for the prompt ("earlier conversation", a tool's name, a
            stage's name).
        user_request: The user's request, for the prompt.
        prefix: When the model is called, send this request instead of the fresh prompt:
            the conversation ``raw`` was cut from, as it was sent, and the instruction
            (:meth:`~langchain_vllm_budget.compression.prefix.PrefixCall.request`). Its reply
            is guarded like any other.

    Returns:
        The summary and its measurements. A result that already fits the cap is returned
        verbatim without calling the model.

    Raises:
        ValueError: ``strategy="llm"`` without a model.
        TypeError: If ``raw`` cannot be rendered as text.

    Example:
        >>> from langchain_vllm_budget.tokenizers import ApproximateTokenCounter
        >>> text = "Deploy job-7f3a with replicas=4 to /srv/app. " + "It went fine. " * 40
        >>> spec = SummarySpec(max_tokens=40, counter=ApproximateTokenCounter())
        >>> summarize(text, spec).method
        'extractive'
    """
    spec = spec if spec is not None else SummarySpec()
    compression = _start(raw, spec, subject=subject, user_request=user_request)
    prompting = compression.prompting
    model = spec.model
    if prompting is None or model is None:
        assert compression.done is not None
        return compression.done

    def call(request: SummarizerRequest) -> str:
        return _reply_text(model.invoke(request.messages, _CALL_CONFIG, **request.kwargs))

    summary, chunks, calls = _run(_plan(compression, prefix), call)
    return compression.finish(summary, chunks, calls)


async def asummarize(
    raw: Any,
    spec: SummarySpec | None = None,
    *,
    subject: str = "result",
    user_request: str = "",
    prefix: SummarizerRequest | None = None,
) -> CompressionResult:
    """Async :func:`summarize` (same arguments and guarantees).

    The chunks of a result larger than the summarizer's window are summarized concurrently.
    Counting and the extractive summary run in a worker thread (a counter may ask a
    server's ``/tokenize``): the event loop only awaits the model.

    Args:
        raw: What to summarize (see :func:`summarize`).
        spec: How (see :func:`summarize`).
        subject: What ``raw`` is, for the prompt.
        user_request: The user's request, for the prompt.
        prefix: The prefix request to send instead of the fresh prompt (see
            :func:`summarize`).

    Returns:
        The summary and its measurements.
    """
    spec = spec if spec is not None else SummarySpec()
    compression = await asyncio.to_thread(
        _start, raw, spec, subject=subject, user_request=user_request
    )
    prompting = compression.prompting
    model = spec.model
    if prompting is None or model is None:
        assert compression.done is not None
        return compression.done

    async def call(request: SummarizerRequest) -> str:
        return _reply_text(await model.ainvoke(request.messages, _CALL_CONFIG, **request.kwargs))

    summary, chunks, calls = await _arun(_plan(compression, prefix), call)
    return await asyncio.to_thread(compression.finish, summary, chunks, calls)


def compress_stage_result(
    raw: Any,
    *,
    model: BaseChatModel | None = None,
    stage_name: str = "stage",
    user_request: str = "",
    max_tokens: int | None = None,
    tokenizer: TokenCounter | None = None,
    prompt_template: str | None = None,
    min_retention: float = DEFAULT_MIN_RETENTION,
    chunk_tokens: int | None = None,
    strategy: CompressionStrategy = "auto",
) -> CompressionResult:
    """Compress a result into a summary of at most ``max_tokens`` tokens, keeping entities.

    The keyword form of :func:`summarize` (which takes a :class:`SummarySpec`).

    Args:
        raw: The stage result: a string, a LangChain message or list of messages (tool
            messages included), a pydantic model, a dataclass, or any JSON-able value.
        model: The summarizer: any LangChain chat model (a smaller one is fine); ``None``:
            extractive only.
        stage_name: Name of the stage, for the prompt ("Stage A", "plan").
        user_request: The user's request, for the prompt.
        max_tokens: The hard cap on the summary, counted with ``tokenizer`` (default
            ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``).
        tokenizer: Token counter; default: the model's own counter if it has one (ChatVLLM),
            else :class:`~langchain_vllm_budget.tokenizers.ApproximateTokenCounter`.
        prompt_template: Replaces :data:`COMPRESSION_PROMPT` (same placeholders).
        min_retention: Below this share of entities kept, the model's summary is rejected.
        chunk_tokens: The summarizer's context window in tokens; results larger than one
            call can hold are chunked. Default: the model's window if it knows it.
        strategy: When to call the model (see :data:`CompressionStrategy`); ``"auto"`` calls
            it only when the extractive summary would lose entities.

    Returns:
        The summary and its measurements. A result that already fits the cap is returned
        verbatim without calling the model.

    Raises:
        ValueError: If ``max_tokens`` < 1, ``min_retention`` is outside [0, 1], or the
            strategy is unknown or needs a model that was not given.
        TypeError: If ``raw`` cannot be rendered as text.

    Example:
        >>> from langchain_vllm_budget.tokenizers import ApproximateTokenCounter
        >>> text = "Deploy job-7f3a with replicas=4 to /srv/app. " + "It went fine. " * 40
        >>> result = compress_stage_result(text, max_tokens=40,
        ...                                tokenizer=ApproximateTokenCounter())
        >>> result.method, result.missing, result.model_calls
        ('extractive', (), 0)
    """
    spec = SummarySpec(
        max_tokens=max_tokens if max_tokens is not None else SummarySpec().max_tokens,
        strategy=strategy,
        model=model,
        counter=tokenizer,
        chunk_tokens=chunk_tokens,
        min_retention=min_retention,
        prompt_template=prompt_template,
    )
    return summarize(raw, spec, subject=stage_name, user_request=user_request)


async def acompress_stage_result(
    raw: Any,
    *,
    model: BaseChatModel | None = None,
    stage_name: str = "stage",
    user_request: str = "",
    max_tokens: int | None = None,
    tokenizer: TokenCounter | None = None,
    prompt_template: str | None = None,
    min_retention: float = DEFAULT_MIN_RETENTION,
    chunk_tokens: int | None = None,
    strategy: CompressionStrategy = "auto",
) -> CompressionResult:
    """Async twin of :func:`compress_stage_result` (same arguments and guarantees).

    The chunks of a result larger than the summarizer's window are compressed concurrently.
    Counting and the extractive summary run in a worker thread (a counter may ask a
    server's ``/tokenize``): the event loop only awaits the model.

    Args:
        raw: The stage result (see :func:`compress_stage_result`).
        model: The summarizer chat model; ``None``: extractive only.
        stage_name: Name of the stage, for the prompt.
        user_request: The user's request, for the prompt.
        max_tokens: The hard cap on the summary.
        tokenizer: Token counter (default as in :func:`compress_stage_result`).
        prompt_template: Replaces :data:`COMPRESSION_PROMPT`.
        min_retention: Below this share of entities kept, the model's summary is rejected.
        chunk_tokens: The summarizer's context window in tokens.
        strategy: When to call the model (see :data:`CompressionStrategy`).

    Returns:
        The summary and its measurements.
    """
    spec = SummarySpec(
        max_tokens=max_tokens if max_tokens is not None else SummarySpec().max_tokens,
        strategy=strategy,
        model=model,
        counter=tokenizer,
        chunk_tokens=chunk_tokens,
        min_retention=min_retention,
        prompt_template=prompt_template,
    )
    return await asummarize(raw, spec, subject=stage_name, user_request=user_request)


def _run(plan: Plan, call: Callable[[SummarizerRequest], str]) -> tuple[str, int, int]:
    """Drive a map-reduce plan with a sync call; returns ``(summary, chunks, calls)``."""
    calls = 0
    try:
        requests = next(plan)
        while True:
            calls += len(requests)
            requests = plan.send([call(request) for request in requests])
    except StopIteration as done:
        summary, chunks = done.value
        return summary, chunks, calls


def _advance(plan: Plan, replies: list[str] | None) -> list[SummarizerRequest] | tuple[str, int]:
    """The plan's next round of requests, or its ``(summary, chunks)`` when it is done."""
    try:
        return next(plan) if replies is None else plan.send(replies)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _arun(
    plan: Plan, call: Callable[[SummarizerRequest], Awaitable[str]]
) -> tuple[str, int, int]:
    """Drive a map-reduce plan with an async call, each round's requests concurrently.

    The plan's own steps (splitting and counting) run in a worker thread.
    """
    calls = 0
    step = await asyncio.to_thread(_advance, plan, None)
    while isinstance(step, list):
        calls += len(step)
        replies = await asyncio.gather(*(call(request) for request in step))
        step = await asyncio.to_thread(_advance, plan, list(replies))
    summary, chunks = step
    return summary, chunks, calls
