"""Token budget: how much output room a request gets, as pure arithmetic.

The rule (the seed's formula, made safe)::

    available  = max_model_len - input_tokens - safety_margin
    max_tokens = min(available, output_reserve)          # no max_tokens asked for
    max_tokens = min(available, requested_max_tokens)    # the caller's, capped to what fits

A request *fits* when ``available`` leaves at least ``min_output_tokens`` (or the smaller
``max_tokens`` the caller asked for). When it does not, the caller's overflow policy decides;
whatever it decides, ``input_tokens + max_tokens`` never exceeds the window.

This module is the only place the rule is written: the output a fitting request needs
(:func:`needed_output`), the largest input that still fits (:meth:`TokenBudget.input_limit`),
the shortfall (:func:`shortfall`) and what one summarizer call may hold
(:meth:`TokenBudget.call_room`). Every other module asks it.

It also holds the contract between ``profile``, ``max_tokens`` and compaction, for agent
harnesses that budget their own requests (docs/compaction.md, "Harnesses with their own
budget")::

    profile["max_input_tokens"] = P = input_limit()      = W - S - min_output_tokens
    harness room                R = harness_room(P, M, H) = P - M - H
    compaction target           t = compaction_target()   = min(share * input_limit(M), W - S - M)
    compaction leaves room      when M + H <= harness_reserve_limit(share, M) = P - t

with W the window, S the safety margin, M the request's ``max_tokens`` and H the harness's
own headroom. A request compacted to the target therefore keeps its whole ``max_tokens`` and
the margin inside the window; a system prompt and tool set that alone leave no room raise
:class:`~langchain_vllm_budget.errors.VLLMFixedPromptOverflowError`, which names what to
lower (:meth:`TokenBudget.check_fixed_part`, :func:`harness_room`).

The worked example of the docs, with the default budget on a 12,288-token window:

    >>> budget = TokenBudget(max_model_len=12288)
    >>> budget.input_limit(), budget.compaction_target(0.6), budget.compaction_target(0.6, 64)
    (11904, 7142, 7257)
    >>> budget.compaction_target(0.6, 8000), budget.harness_reserve_limit(0.6, 512)
    (4160, 4762)
    >>> room = harness_room(max_input_tokens=11904, max_tokens=64, headroom=1190)
    >>> room, budget.compaction_target(0.6, 64) <= room
    (10650, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.load.serializable import Serializable
from pydantic import ConfigDict, Field, model_validator
from typing_extensions import Self

from langchain_vllm_budget import settings

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "BudgetPlan",
    "TokenBudget",
    "compaction_target",
    "harness_room",
    "needed_output",
    "plan_budget",
    "shortfall",
]

_BUDGET_SETTINGS = (
    settings.MAX_MODEL_LEN,
    settings.OUTPUT_RESERVE,
    settings.SAFETY_MARGIN,
    settings.MIN_OUTPUT_TOKENS,
)


@dataclass(frozen=True)
class BudgetPlan:
    """The budget decision for one request.

    Attributes:
        input_tokens: The prompt's token count.
        max_model_len: The context window.
        safety_margin: Tokens kept free.
        output_reserve: The cap on output tokens.
        min_output_tokens: The least output room a fitting request gets.
        requested_max_tokens: The caller's ``max_tokens``, if any.
        available: ``max_model_len - input_tokens - safety_margin`` (may be negative).
        max_tokens: Output tokens to grant: ``min(available, requested_max_tokens or
            output_reserve)``, never below 0. When the request does not fit this is what still fits.
        fits: Whether ``available`` covers the needed output (``min_output_tokens``, or
            the smaller requested ``max_tokens``).
        shortfall: Input tokens to remove so that it fits (0 when it fits).
    """

    input_tokens: int
    max_model_len: int
    safety_margin: int
    output_reserve: int
    min_output_tokens: int
    requested_max_tokens: int | None
    available: int
    max_tokens: int
    fits: bool
    shortfall: int

    @property
    def needed_output_tokens(self) -> int:
        """Output room a fitting request needs: ``min_output_tokens``, or less if asked.

        The smaller of ``min_output_tokens`` and the caller's ``max_tokens``, when given.
        """
        return needed_output(self.min_output_tokens, self.requested_max_tokens)

    @property
    def sendable(self) -> bool:
        """Whether a request with ``max_tokens`` >= 1 fits the window at all."""
        return self.max_tokens >= 1

    def as_dict(self) -> dict[str, Any]:
        """The plan as a plain dict (for metadata and logs)."""
        return asdict(self)


class TokenBudget(Serializable):
    """Budget settings: window, output reserve, safety margin, minimum output.

    Args:
        max_model_len: The context window; ``None`` to discover it from the server.
        output_reserve: The most output tokens a request is granted.
        safety_margin: Tokens kept free between input + output and the window.
        min_output_tokens: The least output room a request needs to count as fitting.

    Raises:
        pydantic.ValidationError: Negative or zero values, ``min_output_tokens`` above
            ``output_reserve``, or a window too small for the reserve and margin.

    Example:
        >>> budget = TokenBudget(max_model_len=12288)
        >>> budget.plan(2000).max_tokens
        3000
        >>> budget.plan(10000).max_tokens
        2160
        >>> budget.plan(2000, requested_max_tokens=500).max_tokens
        500
        >>> budget.plan(6000, requested_max_tokens=8000).max_tokens
        6160
        >>> plan = budget.plan(12100)
        >>> plan.fits, plan.shortfall, plan.max_tokens
        (False, 196, 60)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Budgets serialise with the chat model that holds them."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """The serialisation namespace: ``["langchain_vllm_budget", "budget"]``."""
        return ["langchain_vllm_budget", "budget"]

    max_model_len: int | None = Field(default=settings.MAX_MODEL_LEN.default, gt=0)
    output_reserve: int = Field(default=settings.OUTPUT_RESERVE.required_default(), gt=0)
    safety_margin: int = Field(default=settings.SAFETY_MARGIN.required_default(), ge=0)
    min_output_tokens: int = Field(default=settings.MIN_OUTPUT_TOKENS.required_default(), gt=0)

    @model_validator(mode="after")
    def _check_consistent(self) -> Self:
        if self.min_output_tokens > self.output_reserve:
            msg = (
                f"min_output_tokens ({self.min_output_tokens}) is greater than "
                f"output_reserve ({self.output_reserve}); lower min_output_tokens or raise "
                "output_reserve."
            )
            raise ValueError(msg)
        # An output_reserve as large as the window is accepted, configured or discovered
        # alike (with_max_model_len): the window caps the output (plan).
        if self.max_model_len is not None:
            needed = self.safety_margin + self.min_output_tokens
            if needed >= self.max_model_len:
                msg = (
                    f"safety_margin ({self.safety_margin}) + min_output_tokens "
                    f"({self.min_output_tokens}) = {needed} leaves no room for input in "
                    f"max_model_len ({self.max_model_len}); lower them."
                )
                raise ValueError(msg)
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> TokenBudget:
        """Read the settings from the environment; explicit ``overrides`` win.

        ``VLLM_BUDGET_MAX_MODEL_LEN``, ``VLLM_BUDGET_OUTPUT_RESERVE``,
        ``VLLM_BUDGET_SAFETY_MARGIN`` and ``VLLM_BUDGET_MIN_OUTPUT_TOKENS`` (see
        :mod:`langchain_vllm_budget.settings`); unset variables keep the defaults.

        Args:
            **overrides: Field values that take precedence over the environment.

        Returns:
            The budget.

        Raises:
            SettingError: A variable is not a whole number.
        """
        values: dict[str, Any] = {
            setting.name: setting.from_environment()
            for setting in _BUDGET_SETTINGS
            if setting.name not in overrides
        }
        values.update(overrides)
        return cls(**{key: value for key, value in values.items() if value is not None})

    def with_max_model_len(self, max_model_len: int) -> TokenBudget:
        """This budget with the window set (e.g. the one discovered from the server).

        A window smaller than ``output_reserve`` is accepted, as at construction: the window
        then caps the output, as :meth:`plan` does anyway.

        Args:
            max_model_len: The context window.

        Returns:
            A copy with ``max_model_len`` set.
        """
        if max_model_len <= 0:
            msg = f"max_model_len must be positive, got {max_model_len}"
            raise ValueError(msg)
        return self.model_copy(update={"max_model_len": max_model_len})

    def _window(self) -> int:
        if self.max_model_len is None:
            msg = (
                "max_model_len is unknown: set TokenBudget(max_model_len=...) / "
                "VLLM_BUDGET_MAX_MODEL_LEN, or let ChatVLLM discover it from the server."
            )
            raise ValueError(msg)
        return self.max_model_len

    def input_limit(self, requested_max_tokens: int | None = None) -> int:
        """The most input tokens that still leave the needed output room.

        ``max_model_len - safety_margin - needed_output``: the largest prompt that is sent
        without an overflow policy acting (and ``profile["max_input_tokens"]`` of ChatVLLM).

        Args:
            requested_max_tokens: The caller's ``max_tokens``, if any (it may lower the
                output room needed).

        Returns:
            The limit (may be zero or negative for a window too small).

        Raises:
            ValueError: ``max_model_len`` is not known yet.

        Example:
            >>> TokenBudget(max_model_len=12288).input_limit()
            11904
        """
        needed = needed_output(self.min_output_tokens, requested_max_tokens)
        return self._window() - self.safety_margin - needed

    def call_room(self) -> int:
        """What one call may hold, input and output together: the window less the margin.

        A summarizer call is planned within it: its prompt, plus the ``max_tokens`` it asks
        for, plus nothing else.

        Raises:
            ValueError: ``max_model_len`` is not known yet.

        Example:
            >>> TokenBudget(max_model_len=12288).call_room()
            12160
        """
        return self._window() - self.safety_margin

    def output_limit(self, requested_max_tokens: int | None) -> int | None:
        """The most input that leaves the caller's whole ``max_tokens`` and the margin.

        ``max_model_len - safety_margin - requested_max_tokens``; ``None`` when the caller
        asked for no limit (the request then gets what remains, at least
        ``min_output_tokens``: :meth:`input_limit` already keeps that).

        Args:
            requested_max_tokens: The caller's ``max_tokens``, if any.

        Returns:
            The limit (zero or negative when ``max_tokens`` alone fills the window), or
            ``None``.

        Raises:
            ValueError: ``max_model_len`` is not known yet.

        Example:
            >>> TokenBudget(max_model_len=12288).output_limit(2000)
            10160
        """
        if requested_max_tokens is None:
            return None
        return self._window() - self.safety_margin - requested_max_tokens

    def compaction_target(self, share: float, requested_max_tokens: int | None = None) -> int:
        """What a compaction of a request asking ``requested_max_tokens`` aims at, in tokens.

        :func:`compaction_target` of this budget's :meth:`input_limit` and
        :meth:`output_limit`: the compacted input, the request's ``max_tokens`` and the
        safety margin fit the window together.

        Args:
            share: The compaction target, a share of the input limit (``compaction_target``
                / ``VLLM_BUDGET_COMPACTION_TARGET``).
            requested_max_tokens: The caller's ``max_tokens``, if any.

        Returns:
            The target (at least 1).

        Raises:
            ValueError: ``max_model_len`` is not known yet.

        Example:
            >>> budget = TokenBudget(max_model_len=12288)
            >>> budget.compaction_target(0.6), budget.compaction_target(0.6, 8000)
            (7142, 4160)
        """
        return compaction_target(
            input_limit=self.input_limit(requested_max_tokens),
            share=share,
            output_limit=self.output_limit(requested_max_tokens),
        )

    def harness_reserve_limit(self, share: float, max_tokens: int) -> int:
        """The most a harness may reserve (``max_tokens`` + headroom) and still have room.

        A harness that checks its requests against ``profile["max_input_tokens"]`` (``P``,
        :meth:`input_limit`) less its ``max_tokens`` ``M`` and a headroom ``H`` accepts a
        request compacted to :meth:`compaction_target` when ``M + H`` is at most
        ``P - compaction_target(share, M)``.

        Args:
            share: The compaction target, a share of the input limit.
            max_tokens: The harness's ``max_tokens`` (its output reserve).

        Returns:
            The largest ``M + H`` that leaves the harness room after a compaction.

        Raises:
            ValueError: ``max_model_len`` is not known yet.

        Example:
            >>> budget = TokenBudget(max_model_len=12288)
            >>> budget.harness_reserve_limit(0.6, max_tokens=512)
            4762
            >>> budget.harness_reserve_limit(0.6, max_tokens=64)
            4647
        """
        return self.input_limit() - self.compaction_target(share, max_tokens)

    def check_fixed_part(self, fixed_tokens: int, requested_max_tokens: int | None = None) -> int:
        """The input left for messages after the system prompt and tools.

        Args:
            fixed_tokens: The count of the system prompt and tool definitions alone.
            requested_max_tokens: The caller's ``max_tokens``, if any.

        Returns:
            ``input_limit(requested_max_tokens) - fixed_tokens`` (at least 1).

        Raises:
            VLLMFixedPromptOverflowError: The fixed part alone leaves no room.
            ValueError: ``max_model_len`` is not known yet.

        Example:
            >>> TokenBudget(max_model_len=4096).check_fixed_part(3000)
            712
            >>> TokenBudget(max_model_len=4096).check_fixed_part(3800)
            Traceback (most recent call last):
            ...
            langchain_vllm_budget.errors.VLLMFixedPromptOverflowError: The system prompt and \
tool definitions alone take 3800 input tokens, but the input may hold only 3712 \
(max_model_len 4096 - safety_margin 128 - min_output_tokens 256): ...
        """
        needed = needed_output(self.min_output_tokens, requested_max_tokens)
        output_name = (
            "min_output_tokens"
            if requested_max_tokens is None or needed == self.min_output_tokens
            else "max_tokens"
        )
        terms = (
            ("max_model_len", self._window()),
            ("safety_margin", self.safety_margin),
            (output_name, needed),
        )
        return _room_after(fixed_tokens, terms)

    def plan(self, input_tokens: int, requested_max_tokens: int | None = None) -> BudgetPlan:
        """Decide the output room for a prompt of ``input_tokens`` tokens.

        Args:
            input_tokens: The exact prompt count.
            requested_max_tokens: The caller's ``max_tokens``; respected, capped to what fits.

        Returns:
            The plan.

        Raises:
            ValueError: ``max_model_len`` is not known yet, or the numbers are negative.
        """
        window = self._window()
        if input_tokens < 0:
            msg = f"input_tokens must be >= 0, got {input_tokens}"
            raise ValueError(msg)
        if requested_max_tokens is not None and requested_max_tokens < 1:
            msg = f"max_tokens must be at least 1, got {requested_max_tokens}"
            raise ValueError(msg)
        return plan_budget(
            input_tokens=input_tokens,
            max_model_len=window,
            output_reserve=self.output_reserve,
            safety_margin=self.safety_margin,
            min_output_tokens=self.min_output_tokens,
            requested_max_tokens=requested_max_tokens,
        )


def plan_budget(
    *,
    input_tokens: int,
    max_model_len: int,
    output_reserve: int,
    safety_margin: int,
    min_output_tokens: int,
    requested_max_tokens: int | None = None,
) -> BudgetPlan:
    """The budget arithmetic, as a pure function (see :meth:`TokenBudget.plan`).

    Example:
        >>> plan_budget(input_tokens=1900, max_model_len=2048, output_reserve=3000,
        ...             safety_margin=128, min_output_tokens=256)
        ... # doctest: +ELLIPSIS
        BudgetPlan(input_tokens=1900, ..., available=20, max_tokens=20, fits=False, shortfall=236)
    """
    available = max_model_len - input_tokens - safety_margin
    cap = output_reserve if requested_max_tokens is None else requested_max_tokens
    needed = needed_output(min_output_tokens, requested_max_tokens)
    return BudgetPlan(
        input_tokens=input_tokens,
        max_model_len=max_model_len,
        safety_margin=safety_margin,
        output_reserve=output_reserve,
        min_output_tokens=min_output_tokens,
        requested_max_tokens=requested_max_tokens,
        available=available,
        max_tokens=max(0, min(available, cap)),
        fits=available >= needed,
        shortfall=shortfall(
            input_tokens=input_tokens,
            max_model_len=max_model_len,
            safety_margin=safety_margin,
            needed_output_tokens=needed,
        ),
    )


def needed_output(min_output_tokens: int, requested_max_tokens: int | None = None) -> int:
    """Output room a fitting request needs: ``min_output_tokens``, or less when asked.

    Example:
        >>> needed_output(256), needed_output(256, requested_max_tokens=100)
        (256, 100)
    """
    if requested_max_tokens is None:
        return min_output_tokens
    return min(min_output_tokens, requested_max_tokens)


def shortfall(
    *, input_tokens: int, max_model_len: int, safety_margin: int, needed_output_tokens: int
) -> int:
    """Input tokens to remove so that a request fits (0 when it fits).

    Example:
        >>> shortfall(input_tokens=12000, max_model_len=12288, safety_margin=128,
        ...           needed_output_tokens=256)
        96
    """
    return max(0, input_tokens + safety_margin + needed_output_tokens - max_model_len)


def compaction_target(*, input_limit: int, share: float, output_limit: int | None = None) -> int:
    """What a compaction aims at, in tokens: ``share`` of the input limit, within ``output_limit``.

    ``min(int(share * input_limit), output_limit)``, at least 1. ``output_limit`` is the most
    input that leaves the request's own ``max_tokens`` and the safety margin inside the
    window (:meth:`TokenBudget.output_limit`; ``None``: no ``max_tokens`` asked for): a
    request compacted to the target keeps all of its ``max_tokens``. A ``max_tokens`` that
    alone fills the window gives a target of 1 (the compaction keeps as little as it can).

    Args:
        input_limit: The most input tokens allowed (:meth:`TokenBudget.input_limit`, or a
            profile's ``max_input_tokens``).
        share: The target share of ``input_limit``, in (0, 1].
        output_limit: The most input that leaves the request's output reserve, if known.

    Returns:
        The target.

    Example:
        >>> compaction_target(input_limit=11904, share=0.6)
        7142
        >>> compaction_target(input_limit=3712, share=0.6, output_limit=4096 - 128 - 3000)
        968
    """
    aim = int(input_limit * share)
    if output_limit is not None:
        aim = min(aim, output_limit)
    return max(1, aim)


def harness_room(
    *, max_input_tokens: int, max_tokens: int, headroom: int, fixed_tokens: int = 0
) -> int:
    """The input a harness allows itself: ``R = max_input_tokens - max_tokens - headroom``.

    A harness built on ``create_agent`` that checks each request against the model's
    ``profile["max_input_tokens"]`` less its own output reserve (``max_tokens``) and a
    headroom accepts requests of at most ``R`` tokens, system prompt and tools included.

    Args:
        max_input_tokens: The model's ``profile["max_input_tokens"]``.
        max_tokens: The harness's output reserve.
        headroom: The harness's own headroom, in tokens.
        fixed_tokens: The system prompt and tool definitions, when known.

    Returns:
        ``R``, greater than ``fixed_tokens`` (so greater than 0).

    Raises:
        VLLMFixedPromptOverflowError: ``R`` leaves no room beyond ``fixed_tokens`` (with
            ``fixed_tokens=0``: ``max_tokens + headroom`` do not fit ``max_input_tokens``).

    Example:
        >>> harness_room(max_input_tokens=11904, max_tokens=64, headroom=1190)
        10650
        >>> harness_room(max_input_tokens=11904, max_tokens=8000, headroom=1190,
        ...              fixed_tokens=3100)
        Traceback (most recent call last):
        ...
        langchain_vllm_budget.errors.VLLMFixedPromptOverflowError: The system prompt and \
tool definitions alone take 3100 input tokens, but the input may hold only 2714 \
(max_input_tokens 11904 - max_tokens 8000 - headroom 1190): ...
    """
    terms = (
        ("max_input_tokens", max_input_tokens),
        ("max_tokens", max_tokens),
        ("headroom", headroom),
    )
    return _room_after(fixed_tokens, terms) + fixed_tokens


def _room_after(fixed_tokens: int, terms: Sequence[tuple[str, int]]) -> int:
    """``terms[0]`` less the other terms and ``fixed_tokens``; the typed error when < 1."""
    room = terms[0][1] - sum(value for _, value in terms[1:])
    if fixed_tokens >= room:
        # Imported here: errors.py computes its shortfall with this module.
        from langchain_vllm_budget.errors import VLLMFixedPromptOverflowError

        raise VLLMFixedPromptOverflowError(fixed_tokens=fixed_tokens, room=room, terms=terms)
    return room - fixed_tokens
