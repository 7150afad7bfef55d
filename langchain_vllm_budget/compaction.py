"""Cache-friendly compaction: compact once, with room to spare, then only append.

vLLM reuses the KV cache of the longest prefix a new prompt shares with earlier ones
(automatic prefix caching). A conversation that has outgrown the window and is trimmed or
summarized afresh on every call changes its prefix on every call, so every call recomputes
the whole prompt (and ``summarize`` pays a summarizer call on top). :class:`Compactor`
compacts *once*, down to a target well below the input limit (``compaction_target``, 60 % of
it by default), and remembers what it did, so that the following calls only append to a
byte-identical prefix until the limit is reached again:

* ``"trim"`` drops the oldest turns; the same cut point is applied until the next compaction.
* ``"summarize"`` replaces them with a summary written by the package's loss-checked
  compressor (:func:`~langchain_vllm_budget.compression.summarize`: entities
  kept, hard token cap; with the default ``strategy="auto"`` the summarizer model is called
  only when the extractive summary would lose entities, and never without a summarizer
  model): at most one compressor run per compaction, none on the calls that reuse it.
  Summaries stack: a later compaction keeps the earlier summaries as they are and puts its
  own after them, so the prompt up to them is still the one vLLM has cached and only the
  new summary and the kept turns are prefilled again; once the summaries would take more
  than ``summary_share`` of the compaction target, the next one summarizes them with the
  span into one.
  When the summarizer is the chat model itself (``prefix`` set), its request sends the
  conversation as it was sent, up to the cut, and appends the instruction
  (:class:`~langchain_vllm_budget.compression.prefix.PrefixCall`): vLLM serves the span
  from its prefix cache instead of prefilling it again.

What was done is remembered in a :class:`CompactionMemory`, keyed by a hash of the messages
it replaced (what is sent of them, as langchain-openai sends it), bounded (least recently
used entries go first). Each later call looks up the longest remembered prefix of its
conversation and sends the same compacted prefix again. A graph that keeps its messages in
state (:mod:`langchain_vllm_budget.middleware`) stores the compacted messages instead and
needs the memory only as a bridge.

Guarantees, whatever the policy:

* The system message stays first and unchanged; tool definitions, which chat templates
  render with it, never move.
* A tool call is never separated from its results: cuts fall only before a message that
  is not a :class:`~langchain_core.messages.ToolMessage`.
* Cuts prefer turn boundaries (a human message). When the newest turn alone is larger than
  the target (an agent's long tool loop after one request), the cut falls inside it and the
  turn's human message is kept in front of what remains, so the request is not lost.
* The compacted prompt never exceeds the input limit; when even the newest step does not
  fit, the result says so (``fits=False``) and the caller raises its typed error.

Example:
    >>> from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    >>> from langchain_vllm_budget.tokenizers import ApproximateTokenCounter
    >>> counter = ApproximateTokenCounter()
    >>> chat = [SystemMessage("You track orders.")]
    >>> for i in range(12):
    ...     chat += [HumanMessage(f"Order ORD-{i:03d}: " + "item " * 40), AIMessage("Noted.")]
    >>> compactor = Compactor(target=0.5, memory=CompactionMemory())
    >>> first = compactor.compact(chat, policy="trim", count=counter.count_messages, limit=400)
    >>> first.fits, first.report.compacted, first.tokens <= 200
    (True, True, True)
    >>> chat += [HumanMessage("And ORD-012?")]
    >>> again = compactor.compact(chat, policy="trim", count=counter.count_messages, limit=400)
    >>> again.report.reused, again.messages[: len(first.messages)] == first.messages
    (True, True)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from langchain_core.messages import (
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_vllm_budget import settings
from langchain_vllm_budget.budget import compaction_target
from langchain_vllm_budget.capabilities import call_room_of, token_counter_of
from langchain_vllm_budget.compression import (
    CompressionResult,
    SummarySpec,
    asummarize,
    summarize,
    truncate_to_tokens,
)
from langchain_vllm_budget.compression.prefix import PrefixCall, SummarizerRequest
from langchain_vllm_budget.tokenizers import messages_to_openai_dicts

if TYPE_CHECKING:
    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "SUMMARY_PREFIX",
    "CompactionMemory",
    "CompactionPolicy",
    "CompactionReport",
    "CompactionResult",
    "Compactor",
    "MessageCounter",
    "SummaryRequestKind",
    "is_summary_message",
    "summary_message",
]

CompactionPolicy = Literal["trim", "summarize"]
"""``"trim"`` drops the oldest turns; ``"summarize"`` replaces them with a summary."""

MessageCounter = Callable[[Sequence[BaseMessage]], int]
"""Counts the prompt of a message list exactly (tool definitions included)."""

SummaryRequestKind = Literal["prefix", "fresh"]
"""How the summarizer was asked: ``"prefix"``, the conversation as it was sent with the
instruction appended (served from vLLM's prefix cache); ``"fresh"``, the compression prompt
with the span rendered as text."""

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
"""The first line of a summary message."""

_SOURCE_KEY = "lc_source"
_SOURCE = "compaction"
# LangChain's SummarizationMiddleware marks its summaries "summarization": a summary too.
_SUMMARY_SOURCES = frozenset({_SOURCE, "summarization"})
# Tokens allowed for how a summary's text joins its message (a merge at the boundary).
_SUMMARY_SLACK = 8
# The user's request, as context for the summarizer, is cut to this many tokens.
_REQUEST_TOKENS = 200
_SUBJECT = "earlier conversation"

T = TypeVar("T")


def summary_message(summary: str) -> HumanMessage:
    r"""The message that stands in for summarized turns (marked as a summary).

    Example:
        >>> message = summary_message("- ORD-001 shipped")
        >>> message.text
        'Summary of the earlier conversation:\n- ORD-001 shipped'
        >>> is_summary_message(message)
        True
    """
    return HumanMessage(SUMMARY_PREFIX + summary.strip(), additional_kwargs={_SOURCE_KEY: _SOURCE})


def is_summary_message(message: BaseMessage) -> bool:
    """Whether ``message`` is a summary written by a compaction (or LangChain's middleware)."""
    return (
        isinstance(message, HumanMessage)
        and message.additional_kwargs.get(_SOURCE_KEY) in _SUMMARY_SOURCES
    )


def _is_turn_start(message: BaseMessage) -> bool:
    return isinstance(message, HumanMessage) and not is_summary_message(message)


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One remembered compaction of a conversation (system message excluded).

    Attributes:
        cut: How many of the conversation's first messages it replaces.
        pinned: The index (below ``cut``) of the human message kept in front of the rest.
        summaries: The summary messages that replace them (``"summarize"``), oldest first.
        summary_tokens: Their length in tokens of the text counter.
        retained: How many of ``summaries`` are messages of the conversation itself
            (summaries it started with, kept as they are): sent as they were, not replaced.
    """

    cut: int
    pinned: int | None
    summaries: tuple[BaseMessage, ...] = ()
    summary_tokens: int | None = None
    retained: int = 0


def _fingerprint(message: BaseMessage) -> bytes:
    """What is sent of ``message`` (langchain-openai's request form), as canonical bytes."""
    (sent,) = messages_to_openai_dicts([message])
    return json.dumps(sent, sort_keys=True, ensure_ascii=False, default=str).encode()


def _prefix_keys(conversation: Sequence[BaseMessage]) -> list[str]:
    """``keys[i]`` is a hash of ``conversation[:i]`` (one pass, chained)."""
    digest = hashlib.blake2b(digest_size=16)
    keys = [digest.hexdigest()]
    for message in conversation:
        data = _fingerprint(message)
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
        keys.append(digest.hexdigest())
    return keys


class CompactionMemory:
    """What earlier compactions did, keyed by a hash of the messages they replaced.

    Thread-safe and bounded: past ``max_entries`` the least recently used entry is dropped
    (a dropped entry costs one more compaction, never correctness). An entry holds a cut
    point, an index and the summary messages that replace the messages before it.

    Args:
        max_entries: The most compactions remembered (0 remembers none).

    Raises:
        ValueError: ``max_entries`` is negative.

    Example:
        >>> memory = CompactionMemory(max_entries=2)
        >>> len(memory), memory.max_entries
        (0, 2)
    """

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 0:
            msg = f"max_entries must be >= 0 (0 remembers nothing), got {max_entries}"
            raise ValueError(msg)
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every compaction."""
        with self._lock:
            self._entries.clear()

    def _recall(self, policy: CompactionPolicy, keys: Sequence[str]) -> _Entry | None:
        """The entry for the longest remembered prefix (``keys[i]`` hashes the first ``i``)."""
        with self._lock:
            for cut in range(len(keys) - 1, 0, -1):
                entry = self._entries.get((policy, keys[cut]))
                if entry is not None and entry.cut == cut:
                    self._entries.move_to_end((policy, keys[cut]))
                    return entry
        return None

    def _remember(self, policy: CompactionPolicy, key: str, entry: _Entry) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[(policy, key)] = entry
            self._entries.move_to_end((policy, key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionReport:
    """What a compaction did (for budget metadata, logs and benchmarks).

    Attributes:
        policy: ``"trim"`` or ``"summarize"``.
        compacted: A new compaction was made on this call.
        reused: A remembered compaction was applied as it was (byte-stable prefix).
        replaced: Messages of the input not sent as they were (dropped or summarized).
        pinned: The human message of a turn cut in the middle was kept in front.
        input_limit: The most input tokens allowed.
        target_tokens: What a new compaction aims at (``target`` of the input limit, and
            no more than leaves the request's ``max_tokens``:
            :func:`~langchain_vllm_budget.budget.compaction_target`).
        summary_tokens: Tokens of the summary messages in the prompt (their first line
            included), if any.
        summaries: How many summary messages lead the prompt (stacked summaries: one per
            compaction since the last merge).
        summarizer_calls: Model calls made to write the summary on this call.
        compression: The compressor's report of a summary written on this call
            (:meth:`~langchain_vllm_budget.compression.CompressionResult.to_dict` without the
            summary and entity texts; ``missing`` is the number of entities that did not
            fit).
        summary_request: How the summarizer model was asked on this call (see
            :data:`SummaryRequestKind`); ``None`` when it was not called.
    """

    policy: CompactionPolicy
    compacted: bool
    reused: bool
    replaced: int
    pinned: bool
    input_limit: int
    target_tokens: int
    summary_tokens: int | None = None
    summarizer_calls: int = 0
    compression: dict[str, Any] | None = None
    summary_request: SummaryRequestKind | None = None
    summaries: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The report as a plain dict."""
        return asdict(self)


@dataclass(frozen=True)
class CompactionResult:
    """A compacted message list and its exact count.

    Attributes:
        messages: The messages to send (system message first, unchanged).
        tokens: Their count with the caller's counter.
        fits: Whether ``tokens`` is within the input limit; ``False`` when even the newest
            step does not fit (``messages`` is then the input unchanged, or the compaction
            that still did not fit; either way not to be sent).
        report: What was done.
    """

    messages: list[BaseMessage]
    tokens: int
    fits: bool
    report: CompactionReport


@dataclass
class _View:
    """The conversation as the last remembered compaction left it: ``head + tail``.

    ``head`` is the summary messages and/or the pinned human message; ``tail`` is
    ``conversation[cut:]``.
    """

    conversation: list[BaseMessage]
    entry: _Entry | None
    messages: list[BaseMessage] = field(init=False)
    head_len: int = field(init=False)

    def __post_init__(self) -> None:
        head: list[BaseMessage] = []
        cut = 0
        if self.entry is not None:
            cut = self.entry.cut
            head.extend(self.entry.summaries)
            if self.entry.pinned is not None:
                head.append(self.conversation[self.entry.pinned])
        self.head_len = len(head)
        self.messages = [*head, *self.conversation[cut:]]

    def original(self, index: int) -> int:
        """The conversation index of ``messages[index]`` (a summary has none: never asked)."""
        if index >= self.head_len:
            return (self.entry.cut if self.entry else 0) + index - self.head_len
        assert self.entry is not None
        assert self.entry.pinned is not None
        return self.entry.pinned


@dataclass
class _Pending:
    """A compaction decided (cut and pin chosen) whose summary is still to be written."""

    policy: CompactionPolicy
    system: list[BaseMessage]
    view: _View
    keys: list[str]
    cut: int
    pin: int | None
    count: MessageCounter
    limit: int
    target_tokens: int
    keep: int = 0
    """The summary messages leading the view that stay as they are (stacked summaries)."""
    prefixed: bool = False
    """The summarizer was sent the conversation's prefix (not the fresh prompt)."""

    def span(self) -> list[BaseMessage]:
        """The messages the summary replaces (the pinned one and the kept summaries stay)."""
        window = self.view.messages[self.keep : self.cut]
        return [m for i, m in enumerate(window, start=self.keep) if i != self.pin]

    def request(self) -> str:
        """The newest human request, as context for the summarizer."""
        for message in reversed(self.view.messages):
            if _is_turn_start(message):
                return message.text
        return ""


@dataclass(frozen=True)
class _Choice:
    """Where a compaction cuts.

    Attributes:
        cut: The view index of the first message kept after the summary.
        pin: The view index of the human message kept in front, if any.
        reached: The result gets within the target (else only within the limit).
    """

    cut: int
    pin: int | None
    reached: bool

    def rank(self) -> tuple[bool, bool]:
        """Within the target first, then at a turn boundary (no request pinned)."""
        return self.reached, self.pin is None


def _first(candidates: Sequence[int], ok: Callable[[int], bool]) -> int | None:
    """The first candidate for which ``ok`` holds, when ``ok`` is monotone (binary search)."""
    low, high = 0, len(candidates)
    while low < high:
        mid = (low + high) // 2
        if ok(candidates[mid]):
            high = mid
        else:
            low = mid + 1
    return candidates[low] if low < len(candidates) else None


# --------------------------------------------------------------------------------------------
# The compactor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compactor:
    """Compacts conversations that do not fit, once, and reapplies the same compaction.

    Args:
        target: After a compaction the input fills at most this share of the input limit
            (default ``VLLM_BUDGET_COMPACTION_TARGET``, 0.6). ``1.0`` compacts only just
            enough, into one summary, which means compacting again on the next call: the old
            behaviour (summaries do not stack).
        memory: Where compactions are remembered; ``None`` remembers nothing.
        summary: How a ``"summarize"`` compaction writes its summary (the loss-checked
            compressor's :class:`~langchain_vllm_budget.compression.SummarySpec`): the cap
            (default ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``, in tokens of its counter: the
            summarizer's own, else the approximate one), the strategy (default
            ``VLLM_BUDGET_COMPRESSION``) and the summarizer model (``None``: a model-free
            extractive summary).
        prefix: What the conversation is sent with, when the summarizer model is the chat
            model itself: its summarizer request then sends the conversation as it was
            sent, up to the cut, with the instruction appended, if that fits the
            summarizer's call room (else, and when ``None``, the fresh compression prompt).
        summary_share: The most of the compaction target that the summaries leading the
            prompt may take after a compaction (default 0.5). Below it, a compaction keeps
            the earlier summaries as they are and adds its own after them (the prompt up to
            them stays cached); past it, it summarizes them with the span into one.

    Raises:
        ValueError: ``target`` or ``summary_share`` is not in (0, 1].
    """

    target: float = field(default_factory=settings.COMPACTION_TARGET.required_factory())
    memory: CompactionMemory | None = None
    summary: SummarySpec = field(default_factory=SummarySpec)
    prefix: PrefixCall | None = None
    summary_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.target <= 1.0:
            msg = (
                f"compaction target must be in (0, 1] (a share of the input limit), got "
                f"{self.target}; set compaction_target / VLLM_BUDGET_COMPACTION_TARGET."
            )
            raise ValueError(msg)
        if not 0.0 < self.summary_share <= 1.0:
            msg = (
                f"summary_share must be in (0, 1] (a share of the compaction target), got "
                f"{self.summary_share}"
            )
            raise ValueError(msg)

    # ------------------------------------------------------------------------ public API

    def compact(
        self,
        messages: Sequence[BaseMessage],
        *,
        policy: CompactionPolicy,
        count: MessageCounter,
        limit: int,
        output_limit: int | None = None,
    ) -> CompactionResult:
        """Make ``messages`` fit ``limit`` tokens, reusing a remembered compaction if any.

        Call it when ``messages`` do not fit (a fitting input needs no compaction).

        Args:
            messages: The conversation, system message first if any.
            policy: ``"trim"`` or ``"summarize"``.
            count: Exact prompt counter (tools included).
            limit: The most input tokens allowed.
            output_limit: The most input that leaves the request's own ``max_tokens`` and
                the safety margin (:meth:`~langchain_vllm_budget.budget.TokenBudget.output_limit`);
                a new compaction aims below it too.

        Returns:
            The messages to send and their count; ``fits=False`` when nothing fits.
        """
        step = self._begin(messages, policy, count, limit, output_limit)
        if isinstance(step, CompactionResult):
            return step
        summary = None
        if step.policy == "summarize":
            spec, request, prefix = self._summary_call(step)
            summary = summarize(
                step.span(), spec, subject=_SUBJECT, user_request=request, prefix=prefix
            )
            step.prefixed = prefix is not None
        return self._complete(step, summary)

    async def acompact(
        self,
        messages: Sequence[BaseMessage],
        *,
        policy: CompactionPolicy,
        count: MessageCounter,
        limit: int,
        output_limit: int | None = None,
        offload: bool = True,
    ) -> CompactionResult:
        """Async :meth:`compact`: the same steps; the summarizer is awaited.

        The event loop is never blocked by counting: with ``offload`` every step that counts
        runs in a worker thread, and the compressor runs its own counting in one.

        Args:
            messages: The conversation, system message first if any.
            policy: ``"trim"`` or ``"summarize"``.
            count: Exact prompt counter (tools included).
            limit: The most input tokens allowed.
            output_limit: As in :meth:`compact`.
            offload: Count in a worker thread (for counters that block: a server's
                ``/tokenize``, or long conversations), keeping the event loop free.

        Returns:
            The messages to send and their count; ``fits=False`` when nothing fits.
        """
        step = await _call(offload, self._begin, messages, policy, count, limit, output_limit)
        if isinstance(step, CompactionResult):
            return step
        summary = None
        if step.policy == "summarize":
            spec, request, prefix = await _call(offload, self._summary_call, step)
            summary = await asummarize(
                step.span(), spec, subject=_SUBJECT, user_request=request, prefix=prefix
            )
            step.prefixed = prefix is not None
        return await _call(offload, self._complete, step, summary)

    # ------------------------------------------------------------------------ steps

    def _begin(
        self,
        messages: Sequence[BaseMessage],
        policy: CompactionPolicy,
        count: MessageCounter,
        limit: int,
        output_limit: int | None = None,
    ) -> CompactionResult | _Pending:
        """Reuse a remembered compaction that still fits, or choose a new cut."""
        if policy not in ("trim", "summarize"):
            msg = f"compaction policy must be 'trim' or 'summarize', got {policy!r}"
            raise ValueError(msg)
        system, conversation = _split_system(messages)
        keys = _prefix_keys(conversation)
        entry = self.memory._recall(policy, keys) if self.memory is not None else None
        view = _View(conversation, entry)
        target_tokens = compaction_target(
            input_limit=limit, share=self.target, output_limit=output_limit
        )
        if entry is not None:
            reused = [*system, *view.messages]
            tokens = count(reused)
            if tokens <= limit:
                report = _report(policy, entry, limit, target_tokens, reused=True)
                return CompactionResult(reused, tokens, True, report)
        pending = _Pending(policy, system, view, keys, 0, None, count, limit, target_tokens)
        pending.keep = self._kept_summaries(pending)
        choice = self._choose(pending)
        if pending.keep and (choice is None or choice.rank() != (True, True)):
            # Kept summaries leave less room for the turns: merge them when that does better.
            merged = replace(pending, keep=0)
            other = self._choose(merged)
            if other is not None and (choice is None or other.rank() > choice.rank()):
                pending, choice = merged, other
        if choice is None:
            report = CompactionReport(policy, False, False, 0, False, limit, target_tokens)
            return CompactionResult(list(messages), count(list(messages)), False, report)
        pending.cut, pending.pin = choice.cut, choice.pin
        return pending

    def _kept_summaries(self, step: _Pending) -> int:
        """How many summary messages leading the view a ``"summarize"`` compaction keeps.

        All of them while they and the new summary's cap take at most ``summary_share`` of
        the target; none (they are summarized again, with the span) past it, or when the
        target is the whole limit (compacting just enough, the old behaviour).
        """
        if step.policy != "summarize" or self.target >= 1.0:
            return 0
        view = step.view.messages
        lead = 0
        while lead < len(view) and is_summary_message(view[lead]):
            lead += 1
        if lead == 0:
            return 0
        counter = self._counter()
        new = _tokens(counter, summary_message("").text) + self.summary.max_tokens + _SUMMARY_SLACK
        tokens = sum(_tokens(counter, m.text) for m in view[:lead]) + new
        return lead if tokens <= self.summary_share * step.target_tokens else 0

    def _choose(self, step: _Pending) -> _Choice | None:
        """The cut (an index into the view) and the pinned human message, if any.

        The first turn boundary that gets within the target; else a step inside the newest
        turn, its human message pinned in front; else the smallest cut within the limit.
        """
        view = step.view.messages
        kept = view[: step.keep]
        first = max(step.view.head_len, step.keep) + 1
        summary_room = 0
        placeholder: list[BaseMessage] = []
        if step.policy == "summarize":
            summary_room = self.summary.max_tokens + _SUMMARY_SLACK
            placeholder = [summary_message("")]

        def size(cut: int, pin: int | None) -> int:
            pinned = [view[pin]] if pin is not None else []
            prompt = [*step.system, *kept, *placeholder, *pinned, *view[cut:]]
            return step.count(prompt) + summary_room

        turns = [i for i in range(first, len(view)) if _is_turn_start(view[i])]
        cut = _first(turns, lambda i: size(i, None) <= step.target_tokens)
        if cut is not None:
            return _Choice(cut, None, reached=True)
        last_turn = max((i for i in range(len(view)) if _is_turn_start(view[i])), default=None)
        start = max(first, (last_turn or 0) + 1)
        steps = [i for i in range(start, len(view)) if not isinstance(view[i], ToolMessage)]
        # The turn's request stays: a cut inside the turn keeps its human message in front.
        pin = last_turn
        cut = _first(steps, lambda i: size(i, pin) <= step.target_tokens)
        if cut is not None:
            return _Choice(cut, pin, reached=True)
        # The target is out of reach: keep as little as possible, within the limit.
        fallbacks = [_Choice(steps[-1], pin, reached=False)] if steps else []
        if last_turn is not None and last_turn >= first:
            fallbacks.append(_Choice(last_turn, None, reached=False))
        return next((c for c in fallbacks if size(c.cut, c.pin) <= step.limit), None)

    def _summary_call(self, step: _Pending) -> tuple[SummarySpec, str, SummarizerRequest | None]:
        """The summary's spec (counter resolved), the user's request, and the prefix request.

        The prefix request is made when the summarizer is the chat model and it fits.
        """
        counter = self._counter()
        request = truncate_to_tokens(step.request(), _REQUEST_TOKENS, counter)
        # chunk_tokens None: what one call of the summarizer may hold (budget.py's rule).
        spec = self.summary.with_(counter=counter)
        prefix = None
        model = spec.model
        if self.prefix is not None and model is not None and spec.strategy != "extractive":
            # The messages as they were sent (a remembered summary head included), system
            # message first, up to the cut. Within the summarizer's call room; a model that
            # knows no window is held to the compaction's input limit for the prompt.
            room = call_room_of(model)
            prefix = self.prefix.request(
                [*step.system, *step.view.messages[: step.cut]],
                max_tokens=spec.max_tokens,
                user_request=request,
                stacked=step.keep > 0,
                count=step.count,
                room=room if room is not None else step.limit + spec.max_tokens,
            )
        return spec, request, prefix

    def _counter(self) -> TokenCounter:
        return self.summary.counter or token_counter_of(self.summary.model)

    def _complete(self, step: _Pending, summary: CompressionResult | None) -> CompactionResult:
        """Build the compacted messages, check them against the limit, and remember them."""
        view = step.view.messages
        kept = view[: step.keep]
        text = summary.summary if summary is not None else None
        pinned = [view[step.pin]] if step.pin is not None else []

        def head(summary_text: str | None) -> list[BaseMessage]:
            new = [summary_message(summary_text)] if summary_text is not None else []
            return [*kept, *new]

        def build(summary_text: str | None) -> list[BaseMessage]:
            return [*step.system, *head(summary_text), *pinned, *view[step.cut :]]

        messages = build(text)
        tokens = step.count(messages)
        if tokens > step.limit and text is not None:
            # The summary joined its message with more tokens than allowed for: shorten it.
            room = max(_tokens(self._counter(), text) - (tokens - step.limit), 0)
            text = truncate_to_tokens(text, room, self._counter())
            messages = build(text)
            tokens = step.count(messages)
        original_cut = step.view.original(step.cut)
        summaries = tuple(head(text))
        summary_tokens = None
        if summaries:  # as they read in the prompt, their first line included
            counter = self._counter()
            summary_tokens = sum(_tokens(counter, m.text) for m in summaries)
        # Kept summaries that are the conversation's own messages: those the remembered entry
        # kept (they lead its summaries, as they led the conversation) and those after its
        # head. By position, not identity: a conversation re-sent as new objects (from a
        # checkpoint, or JSON) is the same conversation.
        earlier = step.view.entry.retained if step.view.entry is not None else 0
        retained = min(step.keep, earlier) + max(step.keep - step.view.head_len, 0)
        entry = _Entry(
            cut=original_cut,
            pinned=step.view.original(step.pin) if step.pin is not None else None,
            summaries=summaries,
            summary_tokens=summary_tokens,
            retained=retained,
        )
        fits = tokens <= step.limit
        if fits and self.memory is not None:
            self.memory._remember(step.policy, step.keys[original_cut], entry)
        report = _report(
            step.policy, entry, step.limit, step.target_tokens, reused=False, compression=summary
        )
        if summary is not None and summary.model_calls:
            path: SummaryRequestKind = "prefix" if step.prefixed else "fresh"
            report = replace(report, summary_request=path)
        return CompactionResult(messages, tokens, fits, report)


def _report(
    policy: CompactionPolicy,
    entry: _Entry,
    limit: int,
    target_tokens: int,
    *,
    reused: bool,
    compression: CompressionResult | None = None,
) -> CompactionReport:
    """What a compaction did, made now (``compression``) or reused."""
    details = None
    if compression is not None:
        details = compression.to_dict()
        # the texts stay out of budget metadata (a span can hold thousands of entities)
        details.pop("summary")
        details.pop("entities")
        details["missing"] = len(details["missing"])
    return CompactionReport(
        policy=policy,
        compacted=not reused,
        reused=reused,
        replaced=entry.cut - entry.retained - (1 if entry.pinned is not None else 0),
        pinned=entry.pinned is not None,
        input_limit=limit,
        target_tokens=target_tokens,
        summary_tokens=entry.summary_tokens,
        summarizer_calls=compression.model_calls if compression is not None else 0,
        compression=details,
        summaries=len(entry.summaries),
    )


def _tokens(counter: TokenCounter, text: str) -> int:
    """Tokens of ``text`` (0 for an empty string)."""
    return counter.count_text(text) if text else 0


def _split_system(
    messages: Sequence[BaseMessage],
) -> tuple[list[BaseMessage], list[BaseMessage]]:
    if messages and isinstance(messages[0], SystemMessage):
        return [messages[0]], list(messages[1:])
    return [], list(messages)


async def _call(offload: bool, function: Callable[..., T], *args: Any) -> T:
    """Run a counting step here, or in a worker thread when counting may block."""
    if offload:
        return await asyncio.to_thread(function, *args)
    return function(*args)
