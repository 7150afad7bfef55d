"""Typed errors for vLLM requests, and parsing of vLLM's length errors.

Every error carries the numbers needed to act on it and says what to change. The overflow
error subclasses langchain-core's :class:`~langchain_core.exceptions.ContextOverflowError`,
so LangChain's recovery paths (fallbacks, middleware) recognise it.

vLLM reports a request that does not fit its window with HTTP 400 in a wording that changed
from release to release; :func:`parse_length_error` turns every one of them (vLLM 0.4.1 to
0.33.0, the table is in ``_length_errors``) into a :class:`LengthErrorDetails`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelTimeoutError,
)

from langchain_vllm_budget._length_errors import read_length_error
from langchain_vllm_budget.budget import shortfall as budget_shortfall

__all__ = [
    "LengthErrorDetails",
    "TokenCountError",
    "VLLMConnectionError",
    "VLLMContextOverflowError",
    "VLLMError",
    "VLLMFixedPromptOverflowError",
    "VLLMInvalidRequestError",
    "VLLMModelNotFoundError",
    "VLLMRequestAbortedError",
    "VLLMServerError",
    "VLLMTimeoutError",
    "parse_length_error",
]

if TYPE_CHECKING:
    from langchain_core.messages import AIMessage

    from langchain_vllm_budget.budget import BudgetPlan

OverflowSource = Literal["budget", "server"]


class VLLMError(ModelError):
    """Base class of the errors raised by this package for vLLM requests."""


class VLLMContextOverflowError(VLLMError, ContextOverflowError):
    """The input does not fit the model's context window.

    Raised before sending (``source="budget"``) when the exact count leaves less than the
    budget's minimum output room, or after vLLM rejected a request for length
    (``source="server"``).

    Attributes:
        input_tokens: Input tokens of the request (the prompt vLLM renders).
        max_model_len: The model's context window, in tokens.
        safety_margin: Tokens kept free between input + output and the window.
        min_output_tokens: The least output room the request needs.
        shortfall: Input tokens to remove so that the request fits.
        requested_max_tokens: The ``max_tokens`` asked for, if any.
        source: ``"budget"`` (checked before sending) or ``"server"`` (vLLM's 400).
        server_message: vLLM's own error message, for ``source="server"``.
        compacted: ``on_overflow="trim"``/``"summarize"`` could not compact the request
            enough: what a compaction keeps (the system prompt, the tools, the newest step)
            is over the limit already.

    Example:
        >>> err = VLLMContextOverflowError(
        ...     input_tokens=12000, max_model_len=12288, safety_margin=128, min_output_tokens=256
        ... )
        >>> err.shortfall
        96
        >>> "remove at least 96 input tokens" in str(err)
        True
    """

    def __init__(
        self,
        *,
        input_tokens: int,
        max_model_len: int,
        safety_margin: int = 0,
        min_output_tokens: int = 1,
        shortfall: int | None = None,
        requested_max_tokens: int | None = None,
        source: OverflowSource = "budget",
        server_message: str | None = None,
        compacted: bool = False,
    ) -> None:
        self.input_tokens = input_tokens
        self.compacted = compacted
        self.max_model_len = max_model_len
        self.safety_margin = safety_margin
        self.min_output_tokens = min_output_tokens
        self.requested_max_tokens = requested_max_tokens
        self.source = source
        self.server_message = server_message
        if shortfall is None:
            shortfall = budget_shortfall(
                input_tokens=input_tokens,
                max_model_len=max_model_len,
                safety_margin=safety_margin,
                needed_output_tokens=min_output_tokens,
            )
        self.shortfall = shortfall
        super().__init__(self._describe())

    @classmethod
    def from_plan(cls, plan: BudgetPlan, *, compacted: bool = False) -> VLLMContextOverflowError:
        """The error for a budget plan that does not fit (``plan.fits`` is false).

        Args:
            plan: The plan, e.g. from ``TokenBudget.plan`` or ``ChatVLLM.get_budget_plan``.
            compacted: The plan is of a request that compaction could not make fit.

        Returns:
            The error, with the plan's numbers (``source="budget"``).

        Example:
            >>> from langchain_vllm_budget.budget import TokenBudget
            >>> plan = TokenBudget(max_model_len=2048, output_reserve=512).plan(2000)
            >>> VLLMContextOverflowError.from_plan(plan).shortfall
            336
        """
        return cls(
            input_tokens=plan.input_tokens,
            max_model_len=plan.max_model_len,
            safety_margin=plan.safety_margin,
            min_output_tokens=plan.needed_output_tokens,
            shortfall=plan.shortfall,
            requested_max_tokens=plan.requested_max_tokens,
            compacted=compacted,
        )

    def _describe(self) -> str:
        where = "vLLM rejected the request" if self.source == "server" else "Input too large"
        text = (
            f"{where}: {self.input_tokens} input tokens + {self.safety_margin} safety margin "
            f"+ {self.min_output_tokens} minimum output tokens exceed the context window of "
            f"{self.max_model_len} tokens by {self.shortfall}; "
        )
        if self.compacted:
            text += (
                "compaction could not bring it under the limit: what it keeps (the system "
                "prompt, the tools, the newest step from the last human message on, and for "
                "'summarize' the summary's cap) is already over it. Shorten the newest "
                "message, or serve the model with a larger --max-model-len."
            )
        else:
            text += (
                f"remove at least {self.shortfall} input tokens, set on_overflow='trim' or "
                "'summarize', or serve the model with a larger --max-model-len."
            )
        if self.requested_max_tokens is not None:
            text += f" (max_tokens requested: {self.requested_max_tokens})"
        if self.server_message:
            text += f" Server said: {self.server_message}"
        return text


class VLLMFixedPromptOverflowError(VLLMError, ContextOverflowError):
    """The system prompt and tool definitions alone leave no room for the conversation.

    Raised by a compaction that cannot fit even the newest message because the fixed part of
    the prompt fills the input limit, and by
    :func:`~langchain_vllm_budget.budget.harness_room` when a harness's own reserve leaves
    nothing. No compaction can help: the fixed part, or one of the reserves it must share
    the input limit with, has to shrink.

    Attributes:
        fixed_tokens: The system prompt and tool definitions, in tokens.
        room: The most input tokens allowed: the first of ``terms`` less the others.
        terms: The named numbers ``room`` is made of, e.g. ``(("max_model_len", 4096),
            ("safety_margin", 128), ("min_output_tokens", 256))``.
        shortfall: Tokens to remove from the fixed part (or to free in the other terms) so
            that at least one token is left for the messages.

    Example:
        >>> err = VLLMFixedPromptOverflowError(
        ...     fixed_tokens=3100, room=2714,
        ...     terms=(("max_input_tokens", 11904), ("max_tokens", 8000), ("headroom", 1190)),
        ... )
        >>> err.shortfall
        387
        >>> "lower max_tokens or headroom" in str(err)
        True
    """

    def __init__(self, *, fixed_tokens: int, room: int, terms: Sequence[tuple[str, int]]) -> None:
        self.fixed_tokens = fixed_tokens
        self.room = room
        self.terms = tuple(terms)
        self.shortfall = fixed_tokens - room + 1
        formula = " - ".join(f"{name} {value}" for name, value in self.terms)
        reserves = " or ".join(name for name, _ in self.terms[1:])
        if fixed_tokens == 0:  # the reserves alone leave nothing (no prompt was counted)
            message = (
                f"The reserves leave no input: {formula} = {room}. Lower {reserves} by at "
                f"least {self.shortfall} tokens, or serve the model with a larger "
                "--max-model-len."
            )
        else:
            message = (
                f"The system prompt and tool definitions alone take {fixed_tokens} input "
                f"tokens, but the input may hold only {room} ({formula}): no room is left "
                f"for the conversation. Remove at least {self.shortfall} tokens from the "
                f"system prompt or the tool definitions, lower {reserves} by as much, or "
                "serve the model with a larger --max-model-len."
            )
        super().__init__(message)


class VLLMModelNotFoundError(VLLMError, ModelNotFoundError):
    """The server does not serve the requested model (HTTP 404).

    Attributes:
        model: The model name that was requested.
        base_url: The server's OpenAI-compatible base URL.
        available: The model names the server does serve, when known.
    """

    def __init__(self, model: str, base_url: str, available: list[str] | None = None) -> None:
        self.model = model
        self.base_url = base_url
        self.available = available or []
        served = ", ".join(self.available) if self.available else "unknown"
        super().__init__(
            f"Model {model!r} is not served at {base_url} (served: {served}). "
            "Set `model` to one of the served names (vLLM's --served-model-name)."
        )


class VLLMConnectionError(VLLMError, ModelConnectionError):
    """The vLLM server could not be reached.

    Attributes:
        base_url: The URL that could not be reached.
        is_retryable: Whether a retry may succeed (LangChain's ``ModelRetryMiddleware``
            reads it): true, but false for a URL that is not a vLLM API root at all.
    """

    def __init__(self, base_url: str, reason: str = "", *, retryable: bool = True) -> None:
        self.base_url = base_url
        self.is_retryable = retryable
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"Cannot connect to the vLLM server at {base_url}{detail}. Start the server "
            "or set `base_url` / VLLM_API_BASE to where it listens."
        )


class VLLMTimeoutError(VLLMError, ModelTimeoutError):
    """A request to the vLLM server timed out.

    Attributes:
        base_url: The server URL.
        timeout: The timeout that expired, in seconds, when known.
    """

    def __init__(self, base_url: str, timeout: float | None = None) -> None:
        self.base_url = base_url
        self.timeout = timeout
        after = f" after {timeout:g} s" if timeout is not None else ""
        super().__init__(
            f"Request to the vLLM server at {base_url} timed out{after}. Raise `timeout`, "
            "lower max_tokens, or check the server's load."
        )


class VLLMServerError(VLLMError):
    """The vLLM server failed while answering (a 5xx, or an error event in a stream).

    vLLM reports a crashed or restarting engine this way, e.g. "EngineCore encountered an
    issue" when its engine process dies during a request.

    Attributes:
        base_url: The server URL.
        status_code: The HTTP status, when the failure came as a response; None for an error
            event inside a stream.
        server_message: What the server said.
    """

    def __init__(self, base_url: str, server_message: str, status_code: int | None = None) -> None:
        self.base_url = base_url
        self.status_code = status_code
        self.server_message = server_message
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(
            f"The vLLM server at {base_url} failed while answering{status}: {server_message}. "
            "Check the server's log; the request can be retried once the server is healthy."
        )


class VLLMRequestAbortedError(VLLMServerError):
    """vLLM aborted the request before it finished (``finish_reason="abort"``).

    vLLM answers a request it aborts, e.g. because the server is shutting down (SIGTERM
    aborts every request in flight) or an operator cancelled it, with an ordinary-looking
    reply whose finish reason is ``"abort"``: the text stops wherever generation stopped.
    Taking that as the model's answer would silently hand a truncated reply on, so it is an
    error; the text generated so far is kept in :attr:`partial`, nothing is lost.

    Attributes:
        partial: The reply as far as it was generated (its text, usage and metadata), when
            the call was not streamed; None when it was (``stream``, ``streaming=True``, or a
            LangGraph ``stream_mode="messages"`` run), where the chunks before the abort were
            already delivered.
    """

    def __init__(self, base_url: str, partial: AIMessage | None = None) -> None:
        self.partial = partial
        super().__init__(
            base_url,
            "it aborted the request before the reply was finished (finish_reason 'abort': "
            "the server is shutting down, or the request was cancelled); the text generated "
            "so far is "
            + ("in the error's `partial`" if partial is not None else "in the chunks streamed"),
        )


class VLLMInvalidRequestError(VLLMError, ModelInvalidRequestError):
    """A request option vLLM does not accept, or that this server was not started for.

    Raised before sending when an option has the wrong shape (e.g. ``chat_template_kwargs``
    that is not a dict, an unknown ``reasoning_effort``), and when vLLM rejects an option its
    launch flags do not enable (e.g. a thinking budget without ``--reasoning-parser``). The
    message says what to change.

    Attributes:
        option: The request option at fault.
        server_message: vLLM's own message, when the server rejected the request.
    """

    def __init__(self, option: str, advice: str, server_message: str | None = None) -> None:
        self.option = option
        self.server_message = server_message
        text = f"{option}: {advice}"
        if server_message:
            text += f" Server said: {server_message}"
        super().__init__(text)


class TokenCountError(VLLMError):
    """Counting tokens failed (the tokenizer or the server's ``/tokenize`` refused)."""


@dataclass(frozen=True)
class LengthErrorDetails:
    """The numbers in one of vLLM's length errors.

    Attributes:
        max_model_len: The window the server enforces, when the message states it.
        input_tokens: The server's count of the prompt, when the message states or bounds it.
        requested_max_tokens: The ``max_tokens`` the server saw, when stated.
        wording: Which wording matched: a name from the wording table
            (``langchain_vllm_budget._length_errors.WORDINGS``), e.g. ``"prompt_tokens"``
            (vLLM 0.32), ``"output_and_prompt_tokens"`` (0.18-0.31), ``"requested_total"``
            (0.4-0.10), ``"max_tokens_over_window"``, ``"max_tokens_zero"``.
        input_tokens_is_lower_bound: ``True`` when ``input_tokens`` is only a lower bound: vLLM
            wrote "at least" (its tokenizer stopped one token past the limit), cut the count
            there without saying so (0.16-0.17), or counted characters instead of tokens.
            ``False`` when it is the server's exact count.
    """

    max_model_len: int | None
    input_tokens: int | None
    requested_max_tokens: int | None
    wording: str
    input_tokens_is_lower_bound: bool = False


def parse_length_error(message: str) -> LengthErrorDetails | None:
    """Parse one of vLLM's length-error messages (every wording from vLLM 0.4.1 to 0.33.0).

    Args:
        message: The error text from the server (the 400 body's message, or the client's
            whole ``Error code: 400 - {...}`` text).

    Returns:
        The numbers found, or ``None`` if the message is not a length error.

    Example:
        >>> parse_length_error(
        ...     "This model's maximum context length is 2048 tokens. However, your prompt "
        ...     "contains at least 2049 input tokens, which exceeds this limit even without "
        ...     "any output tokens. Please reduce the length of the input prompt."
        ... )
        LengthErrorDetails(max_model_len=2048, input_tokens=2049, requested_max_tokens=None, \
wording='prompt_tokens', input_tokens_is_lower_bound=True)
        >>> parse_length_error("max_tokens=4096 cannot be greater than max_model_len=2048.")
        LengthErrorDetails(max_model_len=2048, input_tokens=None, requested_max_tokens=4096, \
wording='max_tokens_over_window', input_tokens_is_lower_bound=False)
        >>> parse_length_error("temperature must be non-negative") is None
        True
    """
    reading = read_length_error(message)
    if reading is None:
        return None
    return LengthErrorDetails(
        max_model_len=reading.window,
        input_tokens=reading.input_tokens,
        requested_max_tokens=reading.output_tokens,
        wording=reading.wording.name,
        input_tokens_is_lower_bound=reading.input_is_lower_bound,
    )
