"""How a summary is written: one frozen spec shared by every caller of the compressor.

The chat model's ``on_overflow="summarize"``, the compaction middleware, the tool-output
middleware and the stages all write summaries with the same compressor. What they choose
(the hard cap, when a model is called, which model, how text is counted) is one typed value,
:class:`SummarySpec`, checked once when it is made; the settings ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``
and ``VLLM_BUDGET_COMPRESSION`` are its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

from langchain_vllm_budget import settings
from langchain_vllm_budget.compression.guard import DEFAULT_MIN_RETENTION
from langchain_vllm_budget.compression.guard import _validate as check_cap

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "STRATEGIES",
    "CompressionStrategy",
    "SummarySpec",
    "check_verbatim_share",
    "verbatim_limit",
]

CompressionStrategy = Literal["auto", "llm", "extractive"]
"""When to call the summarizer model:

* ``"auto"``: only when it can add something. The extractive summary is built first (no model
  call); if it keeps every entity within the cap it is the result. Otherwise the model is
  asked, its summary guarded, and the one that keeps more entities wins.
* ``"llm"``: always ask the model for results over the cap (the seed's behaviour), guarded.
* ``"extractive"``: never call a model.
"""

STRATEGIES: tuple[CompressionStrategy, ...] = ("auto", "llm", "extractive")


def _default_strategy() -> CompressionStrategy:
    return cast("CompressionStrategy", settings.COMPRESSION.get())


@dataclass(frozen=True)
class SummarySpec:
    """How a summary is written (checked once, when the spec is made).

    Attributes:
        max_tokens: The hard cap on the summary, counted with ``counter`` (default
            ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``).
        strategy: When the model is called (default ``VLLM_BUDGET_COMPRESSION``; see
            :data:`CompressionStrategy`). Without a model the summary is extractive.
        model: The summarizer chat model; ``None``: extractive only.
        counter: Counts the summary; default: the model's own counter (a ChatVLLM's),
            else the approximate one.
        chunk_tokens: What one summarizer call may hold; larger inputs are summarized in
            chunks. Default: the model's window less its safety margin, if it knows it.
        min_retention: Below this share of entities kept, a model's summary is rejected.
        prompt_template: Replaces the compression prompt (same placeholders).

    Raises:
        ValueError: ``max_tokens`` < 1, an unknown ``strategy``, or ``min_retention``
            outside [0, 1].

    Example:
        >>> SummarySpec(max_tokens=120, strategy="extractive").max_tokens
        120
        >>> SummarySpec(strategy="sometimes")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: compression strategy must be 'auto', 'llm' or 'extractive', got 'sometimes'...
    """

    max_tokens: int = field(default_factory=settings.SUMMARY_MAX_TOKENS.required_factory())
    strategy: CompressionStrategy = field(default_factory=_default_strategy)
    model: BaseChatModel | None = None
    counter: TokenCounter | None = None
    chunk_tokens: int | None = None
    min_retention: float = DEFAULT_MIN_RETENTION
    prompt_template: str | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            msg = (
                f"compression strategy must be 'auto', 'llm' or 'extractive', got "
                f"{self.strategy!r}; set strategy= or VLLM_BUDGET_COMPRESSION."
            )
            raise ValueError(msg)
        check_cap(self.max_tokens, self.min_retention)

    @classmethod
    def from_settings(
        cls,
        *,
        max_tokens: int | None = None,
        strategy: CompressionStrategy | None = None,
        model: BaseChatModel | None = None,
    ) -> SummarySpec:
        """A spec with the given values; the ones left ``None`` come from the settings.

        Example:
            >>> SummarySpec.from_settings(max_tokens=None).max_tokens
            250
        """
        return cls(
            max_tokens=settings.SUMMARY_MAX_TOKENS.required_factory()()
            if max_tokens is None
            else max_tokens,
            strategy=_default_strategy() if strategy is None else strategy,
            model=model,
        )

    @property
    def effective_strategy(self) -> CompressionStrategy:
        """The strategy applied: ``"extractive"`` when there is no model."""
        return self.strategy if self.model is not None else "extractive"

    def with_(self, **changes: Any) -> SummarySpec:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)


def check_verbatim_share(share: float) -> None:
    """Check a hand-off's verbatim share (see :func:`verbatim_limit`).

    Raises:
        ValueError: ``share`` outside [0, 1).
    """
    if not 0.0 <= share < 1.0:
        msg = (
            f"handoff_verbatim_share must be at least 0 and below 1 (a share of the window), "
            f"got {share}; set it or VLLM_BUDGET_HANDOFF_VERBATIM_SHARE."
        )
        raise ValueError(msg)


def verbatim_limit(max_tokens: int, max_model_len: int | None, share: float) -> int:
    """The most tokens of a stage output that are handed off as they are, uncompressed.

    The rule of every stage hand-off: an output that fits ``share`` of the stage model's
    window costs the later stages less than compressing it would (no summarizer call, nothing
    lost), so it passes verbatim; a longer one is compressed to ``max_tokens``. The limit is
    never below the cap (an output within the cap is never compressed), and without a known
    window it is the cap.

    Args:
        max_tokens: The summary cap (``summary_max_tokens``).
        max_model_len: The stage model's window; ``None``: unknown.
        share: ``handoff_verbatim_share`` (0: compress every output over the cap).

    Returns:
        The limit in tokens.

    Raises:
        ValueError: ``share`` outside [0, 1).

    Example:
        >>> verbatim_limit(250, 2048, 0.2), verbatim_limit(250, 32768, 0.2)
        (409, 6553)
        >>> verbatim_limit(250, 1024, 0.2), verbatim_limit(250, None, 0.2)
        (250, 250)
        >>> verbatim_limit(48, 2048, 0.0)
        48
    """
    check_verbatim_share(share)
    if max_model_len is None:
        return max_tokens
    return max(max_tokens, int(max_model_len * share))
