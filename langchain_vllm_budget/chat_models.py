"""ChatVLLM: a LangChain chat model for vLLM that never overflows the context window.

Before each request the prompt is counted exactly (chat template and tool definitions
included), the output room is planned with :class:`~langchain_vllm_budget.budget.TokenBudget`,
and input that does not fit is handled by the ``on_overflow`` policy. The budget applied is
reported in ``response_metadata["budget"]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

import openai
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage, InvalidToolCall
from langchain_core.messages.tool import invalid_tool_call
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env, secret_from_env
from langchain_openai.chat_models._client_utils import (
    _get_default_async_httpx_client,
    _get_default_httpx_client,
)
from langchain_openai.chat_models.base import BaseChatOpenAI
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from typing_extensions import Self

from langchain_vllm_budget import settings
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.compaction import CompactionMemory, Compactor
from langchain_vllm_budget.concurrency import InFlightLimit
from langchain_vllm_budget.errors import (
    VLLMConnectionError,
    VLLMContextOverflowError,
    VLLMModelNotFoundError,
    VLLMServerError,
    VLLMTimeoutError,
    parse_length_error,
)
from langchain_vllm_budget.overflow import (
    BudgetOutcome,
    OverflowPolicy,
    aapply_budget,
    apply_budget,
)
from langchain_vllm_budget.tokenizers import (
    ApproximateTokenCounter,
    ServerTokenCounter,
    TokenCounter,
    TransformersTokenCounter,
    tools_to_openai_dicts,
)

__all__ = ["DEFAULT_API_BASE", "ChatVLLM", "CounterChoice"]

logger = logging.getLogger(__name__)

DEFAULT_API_BASE: str = settings.API_BASE.default  # type: ignore[assignment]

CounterChoice = Literal["auto", "server", "transformers", "approximate"]
"""Which token counter to use; ``"auto"`` prefers a local tokenizer, then the server."""

# vLLM accepts any key when it runs without --api-key, but the OpenAI client insists on one.
_NO_KEY = "EMPTY"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class _ServerInfo:
    """What ``/v1/models`` says about the served model."""

    max_model_len: int | None
    root: str | None
    served: tuple[str, ...]


@dataclass(frozen=True)
class _Prepared:
    """A request after budgeting: the messages and kwargs to send, and the budget report."""

    messages: list[BaseMessage]
    kwargs: dict[str, Any]
    outcome: BudgetOutcome
    counter: TokenCounter
    budget: TokenBudget
    retried: bool = False

    def metadata(self) -> dict[str, Any]:
        plan = self.outcome.plan
        return {
            "input_tokens": plan.input_tokens,
            "original_input_tokens": self.outcome.original_input_tokens,
            "counter": self.counter.name,
            "counter_exact": self.counter.exact,
            "max_model_len": plan.max_model_len,
            "safety_margin": plan.safety_margin,
            "output_reserve": plan.output_reserve,
            "requested_max_tokens": plan.requested_max_tokens,
            "max_tokens": plan.max_tokens,
            "action": self.outcome.action,
            "dropped_messages": self.outcome.dropped_messages,
            "retried": self.retried,
            "compaction": (self.outcome.compaction.as_dict() if self.outcome.compaction else None),
        }


class _ScaledCounter:
    """A counter corrected by the ratio between the server's count and ours."""

    def __init__(self, inner: TokenCounter, ratio: float) -> None:
        self.inner = inner
        self.ratio = ratio
        self.name = inner.name
        self.exact = False

    def count_text(self, text: str) -> int:
        return math.ceil(self.inner.count_text(text) * self.ratio)

    def count_messages(
        self, messages: Sequence[BaseMessage], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        return math.ceil(self.inner.count_messages(messages, tools) * self.ratio)

    async def acount_messages(
        self, messages: Sequence[BaseMessage], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        return math.ceil((await self.inner.acount_messages(messages, tools)) * self.ratio)


_JSON_KINDS: dict[type, str] = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _non_object_arguments_error(name: str, arguments: str | None) -> str | None:
    """Why ``arguments`` cannot be a tool call's args, if they are valid JSON but not an object.

    Empty arguments (a tool without parameters) and invalid JSON return ``None``:
    langchain-openai already handles both.
    """
    if not arguments:
        return None
    try:
        parsed = json.loads(arguments, strict=False)
    except json.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        return None
    kind = _JSON_KINDS.get(type(parsed), type(parsed).__name__)
    return (
        f"Function {name} arguments must be a JSON object (the tool's parameters by name), "
        f"got a JSON {kind}: {arguments}"
    )


def _set_aside_non_object_tool_calls(
    response: dict[str, Any] | openai.BaseModel,
) -> tuple[dict[str, Any] | openai.BaseModel, dict[int, list[InvalidToolCall]]]:
    """Remove the tool calls whose arguments are not a JSON object from ``response``.

    langchain-openai turns each tool call's arguments into ``AIMessage.tool_calls[i]["args"]``,
    which must be a dict: a model that writes a list or a string there would make the whole
    response fail validation. Those calls are taken out (on a copy; the response is returned
    unchanged when there are none) and returned by choice index as invalid tool calls.
    """
    if isinstance(response, openai.BaseModel):
        choices_data = [
            # `parsed` may hold any pydantic model (structured output): not needed here.
            choice.model_dump(exclude={"message": {"parsed"}}, warnings=False)
            for choice in getattr(response, "choices", None) or []
        ]
    elif isinstance(response, dict):
        choices_data = response.get("choices") or []
    else:
        return response, {}
    set_aside: dict[int, list[InvalidToolCall]] = {}
    kept_by_choice: dict[int, list[int]] = {}
    for index, choice in enumerate(choices_data):
        raw_calls = ((choice or {}).get("message") or {}).get("tool_calls") or []
        invalid: list[InvalidToolCall] = []
        kept: list[int] = []
        for position, raw in enumerate(raw_calls):
            function = raw.get("function") or {}
            name = function.get("name") or ""
            arguments = function.get("arguments")
            error = _non_object_arguments_error(name, arguments)
            if error is None:
                kept.append(position)
            else:
                invalid.append(
                    invalid_tool_call(name=name, args=arguments, id=raw.get("id"), error=error)
                )
        if invalid:
            set_aside[index] = invalid
            kept_by_choice[index] = kept
    if not set_aside:
        return response, {}
    cleaned: dict[str, Any] | openai.BaseModel
    if isinstance(response, openai.BaseModel):
        cleaned = response.model_copy(deep=True)
        choices = cleaned.choices  # type: ignore[attr-defined]
        for index, kept in kept_by_choice.items():
            message = choices[index].message
            message.tool_calls = [message.tool_calls[i] for i in kept] or None
    else:
        cleaned = {**response, "choices": list(choices_data)}
        for index, kept in kept_by_choice.items():
            choice = dict(choices_data[index])
            message = dict(choice["message"])
            message["tool_calls"] = [message["tool_calls"][i] for i in kept] or None
            choice["message"] = message
            cleaned["choices"][index] = choice
    return cleaned, set_aside


class ChatVLLM(BaseChatOpenAI):
    """Chat model for a vLLM server, with exact token budgeting.

    Works wherever ``ChatOpenAI`` does (invoke, stream, batch, async, ``bind_tools``,
    ``with_structured_output``, callbacks, serialisation). On top of that, each request:

    1. counts its prompt exactly (``token_counter``: a local transformers tokenizer, the
       server's ``/tokenize``, or, if chosen, a chars/4 approximation);
    2. gets ``max_tokens = min(window - input - safety_margin, output_reserve)`` (a caller's
       ``max_tokens`` is kept, capped to what fits);
    3. if less than ``min_output_tokens`` fits, applies ``on_overflow``: ``"raise"`` a
       :class:`~langchain_vllm_budget.errors.VLLMContextOverflowError` before sending,
       ``"trim"`` the oldest turns, ``"summarize"`` them, or ``"warn"`` and send what fits.

    The window comes from the server's ``/v1/models`` (cached) unless the server does not
    report it. The budget applied is in ``response_metadata["budget"]``.

    ``max_concurrency`` (env ``VLLM_BUDGET_MAX_CONCURRENCY``) caps the requests in flight, e.g. at
    the server's ``--max-num-seqs``. Tool calls whose arguments are valid JSON but not an
    object (small models write lists or strings) come back in ``invalid_tool_calls``.

    Setup:
        ```bash
        vllm serve Qwen/Qwen2.5-7B-Instruct --max-model-len 12288
        export VLLM_API_BASE=http://localhost:8000/v1   # the default
        ```

    Instantiate:
        ```python
        from langchain_vllm_budget import ChatVLLM, TokenBudget

        model = ChatVLLM(
            model="Qwen/Qwen2.5-7B-Instruct",
            budget=TokenBudget(output_reserve=2000),
            on_overflow="trim",
            max_concurrency=8,  # the server's --max-num-seqs
        )
        ```

    Invoke:
        ```python
        msg = model.invoke([("system", "Be brief."), ("human", "Hi!")])
        msg.usage_metadata  # {"input_tokens": 21, "output_tokens": 9, ...}
        msg.response_metadata["budget"]
        # {"input_tokens": 21, "counter": "transformers", "max_model_len": 12288,
        #  "max_tokens": 2000, "action": "none", ...}
        ```

    Stream:
        ```python
        for chunk in model.stream("Tell me a story"):
            print(chunk.text, end="")
        ```
    """

    model_name: str = Field(alias="model")
    """The served model name (vLLM's ``--served-model-name``)."""
    openai_api_key: SecretStr | None = Field(
        alias="api_key", default_factory=secret_from_env(settings.API_KEY.env, default=None)
    )
    """The server's API key (``--api-key``); env ``VLLM_API_KEY``. Optional."""
    openai_api_base: str = Field(
        alias="base_url", default_factory=from_env(settings.API_BASE.env, default=DEFAULT_API_BASE)
    )
    """The server's OpenAI-compatible base URL; env ``VLLM_API_BASE``."""
    stream_usage: bool | None = True
    """Report token usage on streams (vLLM supports ``stream_options.include_usage``)."""
    budget: TokenBudget = Field(default_factory=TokenBudget.from_env)
    """Window, output reserve, safety margin and minimum output (env ``VLLM_BUDGET_*``)."""
    tokenizer: str | None = None
    """A local folder or name of the model's tokenizer, for exact local counting."""
    token_counter: CounterChoice | TokenCounter = "auto"
    """``"auto"`` (local tokenizer if available, else the server), ``"server"``,
    ``"transformers"``, ``"approximate"``, or a :class:`TokenCounter` instance."""
    on_overflow: OverflowPolicy = "raise"
    """What to do with input that does not fit: ``"raise"``, ``"trim"``, ``"summarize"``,
    ``"warn"``."""
    summarizer: BaseChatModel | None = None
    """The model that writes summaries for ``on_overflow="summarize"`` (default: this one)."""
    summary_max_tokens: int = Field(default=400, gt=0)
    """Output limit of a summary written by ``on_overflow="summarize"``."""
    compaction_target: float = Field(
        default_factory=settings.COMPACTION_TARGET.required_factory(),
        gt=0,
        le=1,
    )
    """After ``on_overflow="trim"``/``"summarize"`` compacts, the input fills at most this
    share of the input limit (env ``VLLM_BUDGET_COMPACTION_TARGET``, default 0.6), so the
    following calls only append and hit vLLM's prefix cache. The compaction is remembered
    (shared with the model's copies) and reapplied unchanged until the limit is reached
    again."""
    max_concurrency: int | None = Field(default_factory=settings.MAX_CONCURRENCY.factory(), ge=1)
    """Most requests this model has in flight at once (env ``VLLM_BUDGET_MAX_CONCURRENCY``);
    ``None``: no limit. Set it to the server's ``--max-num-seqs`` so that requests wait
    here instead of in the server's queue. Sync and async calls, ``invoke`` and ``stream``
    share the limit, and so do the model's copies (``bind``, ``bind_tools``,
    ``with_config``, ``with_structured_output``, ``model_copy``). A stream holds its slot
    until it ends; token counting and summarizing do not take one."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    _server_info: _ServerInfo | None = PrivateAttr(default=None)
    _counter: TokenCounter | None = PrivateAttr(default=None)
    _window_warned: bool = PrivateAttr(default=False)
    _in_flight_limit: InFlightLimit | None = PrivateAttr(default=None)
    # Shared by the model's copies (model_copy copies private attributes by reference).
    _compaction_memory: CompactionMemory = PrivateAttr(default_factory=CompactionMemory)

    @property
    def _llm_type(self) -> str:
        return "vllm-chat"

    @property
    def lc_secrets(self) -> dict[str, str]:
        """Constructor arguments that are secrets, and their environment variables."""
        return {"openai_api_key": "VLLM_API_KEY"}

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """The LangChain serialisation namespace: ``["langchain_vllm_budget", "chat_models"]``."""
        return ["langchain_vllm_budget", "chat_models"]

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """ChatVLLM can be serialised with ``langchain_core.load.dumpd``."""
        return True

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "vllm"
        return params

    @model_validator(mode="after")
    def validate_environment(self) -> Self:
        """Build the OpenAI clients for the vLLM server."""
        if self.n is not None and self.n < 1:
            msg = "n must be at least 1."
            raise ValueError(msg)
        if self.n is not None and self.n > 1 and self.streaming:
            msg = "n must be 1 when streaming."
            raise ValueError(msg)
        if isinstance(self.token_counter, str) and self.token_counter not in (
            "auto",
            "server",
            "transformers",
            "approximate",
        ):  # pragma: no cover - pydantic's Literal check runs first
            msg = f"Unknown token_counter {self.token_counter!r}"
            raise ValueError(msg)
        api_key = self.openai_api_key.get_secret_value() if self.openai_api_key else _NO_KEY
        client_params: dict[str, Any] = {
            k: v
            for k, v in {
                "api_key": api_key,
                "base_url": self.openai_api_base,
                "timeout": self.request_timeout,
                "max_retries": self.max_retries,
                "default_headers": self.default_headers,
                "default_query": self.default_query,
            }.items()
            if v is not None
        }
        if not self.client:
            # langchain-openai's cached default clients: building an SSL context per
            # instance would cost ~60 ms.
            http_client = self.http_client or _get_default_httpx_client(
                self.openai_api_base, self.request_timeout
            )
            self.root_client = openai.OpenAI(**client_params, http_client=http_client)
            self.client = self.root_client.chat.completions
        if not self.async_client:
            http_async_client = self.http_async_client or _get_default_async_httpx_client(
                self.openai_api_base, self.request_timeout
            )
            self.root_async_client = openai.AsyncOpenAI(
                **client_params, http_client=http_async_client
            )
            self.async_client = self.root_async_client.chat.completions
        if self.max_concurrency is not None:
            self._in_flight_limit = InFlightLimit(self.max_concurrency)
        return self

    def _request_limit(self) -> InFlightLimit | None:
        """The limit on requests in flight (shared with this model's copies), if any."""
        if self.max_concurrency is None:
            return None
        limit = self._in_flight_limit
        if limit is None or limit.limit != self.max_concurrency:
            # A copy made with another max_concurrency gets a limit of its own.
            with _LIMIT_LOCK:
                limit = self._in_flight_limit
                if limit is None or limit.limit != self.max_concurrency:
                    limit = self._in_flight_limit = InFlightLimit(self.max_concurrency)
        return limit

    # ----------------------------------------------------------------- discovery

    def _translate(self, exc: Exception) -> Exception:
        """Map OpenAI client errors to this package's typed errors."""
        if isinstance(exc, openai.NotFoundError):
            served = list(self._server_info.served) if self._server_info else None
            return VLLMModelNotFoundError(self.model_name, self.openai_api_base, served)
        if isinstance(exc, openai.APITimeoutError):
            timeout = self.request_timeout if isinstance(self.request_timeout, float) else None
            return VLLMTimeoutError(self.openai_api_base, timeout)
        if isinstance(exc, openai.APIConnectionError):
            return VLLMConnectionError(self.openai_api_base, str(exc.__cause__ or exc))
        if isinstance(exc, openai.InternalServerError):
            return VLLMServerError(self.openai_api_base, exc.message, exc.status_code)
        if type(exc) is openai.APIError:
            # A bare APIError is an error event inside a stream: the server failed mid-answer.
            return VLLMServerError(self.openai_api_base, exc.message)
        return exc

    def _read_models(self, data: list[dict[str, Any]]) -> _ServerInfo:
        served = tuple(str(entry.get("id")) for entry in data)
        entry = next((e for e in data if e.get("id") == self.model_name), None)
        if entry is None:
            raise VLLMModelNotFoundError(self.model_name, self.openai_api_base, list(served))
        window = entry.get("max_model_len")
        root = entry.get("root")
        return _ServerInfo(
            max_model_len=int(window) if window else None,
            root=str(root) if root else None,
            served=served,
        )

    def _get_server_info(self) -> _ServerInfo:
        if self._server_info is None:
            try:
                page = self.root_client.models.list()
            except openai.APIError as exc:
                raise self._translate(exc) from exc
            self._server_info = self._read_models([m.model_dump() for m in page.data])
        return self._server_info

    def _effective_budget(self, info: _ServerInfo) -> TokenBudget:
        configured = self.budget.max_model_len
        served = info.max_model_len
        if served is None:
            if configured is None:
                msg = (
                    f"The server at {self.openai_api_base} does not report max_model_len for "
                    f"{self.model_name!r}; set TokenBudget(max_model_len=...) or "
                    "VLLM_BUDGET_MAX_MODEL_LEN."
                )
                raise ValueError(msg)
            return self.budget
        if configured is not None and configured != served and not self._window_warned:
            self._window_warned = True
            logger.warning(
                "Configured max_model_len=%d differs from the server's %d for %r; using %d.",
                configured,
                served,
                self.model_name,
                served,
            )
        return self.budget.with_max_model_len(served)

    def _local_tokenizer_path(self, info: _ServerInfo) -> str | None:
        if self.tokenizer:
            return self.tokenizer
        if info.root and Path(info.root).is_dir():
            root = Path(info.root)
            if any((root / name).is_file() for name in _TOKENIZER_FILES):
                return str(root)
        return None

    def _get_counter(self, info: _ServerInfo) -> TokenCounter:
        if self._counter is not None:
            return self._counter
        choice = self.token_counter
        counter: TokenCounter
        if not isinstance(choice, str):
            counter = choice
        elif choice == "approximate":
            counter = ApproximateTokenCounter()
        elif choice == "server":
            counter = self._server_counter()
        else:
            path = self._local_tokenizer_path(info)
            if path is not None:
                counter = TransformersTokenCounter(path)
            elif choice == "transformers":
                msg = (
                    "token_counter='transformers' needs a tokenizer: set `tokenizer` to the "
                    "model's folder or name (the server's model root is not on this machine)."
                )
                raise ValueError(msg)
            else:
                counter = self._server_counter()
        self._counter = counter
        return counter

    def _server_counter(self) -> ServerTokenCounter:
        timeout = self.request_timeout if isinstance(self.request_timeout, float | int) else 30.0
        return ServerTokenCounter(
            self.openai_api_base, self.model_name, self.openai_api_key, timeout=float(timeout)
        )

    @property
    def resolved_token_counter(self) -> TokenCounter:
        """The counter in use (resolving ``"auto"`` may ask the server for its model root)."""
        if self._counter is None:
            needs_server = self.token_counter in ("auto", "transformers") and not self.tokenizer
            info = self._get_server_info() if needs_server else _ServerInfo(None, None, ())
            return self._get_counter(info)
        return self._counter

    def get_max_model_len(self) -> int:
        """The context window in use: the server's, or the configured one if not reported."""
        window = self._effective_budget(self._get_server_info()).max_model_len
        assert window is not None
        return window

    # ------------------------------------------------------------------ counting

    def get_num_tokens_from_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool] | None = None,
        **kwargs: Any,
    ) -> int:
        """Count the prompt vLLM builds from ``messages`` and ``tools``, exactly.

        Args:
            messages: The conversation.
            tools: Tool definitions (any form ``bind_tools`` accepts).
            **kwargs: Ignored (kept for signature compatibility).

        Returns:
            The prompt's token count: equals the server's ``usage.prompt_tokens`` with an
            exact counter.
        """
        return self.resolved_token_counter.count_messages(messages, tools_to_openai_dicts(tools))

    def get_num_tokens(self, text: str) -> int:
        """Count plain text with the model's tokenizer (no chat template)."""
        return self.resolved_token_counter.count_text(text)

    # ------------------------------------------------------------------ budgeting

    @staticmethod
    def _requested_max_tokens(kwargs: dict[str, Any], default: int | None) -> int | None:
        for key in ("max_tokens", "max_completion_tokens"):
            if kwargs.get(key) is not None:
                return int(kwargs[key])
        return default

    def _compactor(self, counter: TokenCounter, budget: TokenBudget) -> Compactor:
        """The compaction for ``trim``/``summarize``: this model's memory and settings."""
        summarizer = None
        window = None
        if self.on_overflow == "summarize":
            summarizer = self.summarizer or self.model_copy(update={"on_overflow": "raise"})
            if self.summarizer is None and budget.max_model_len is not None:
                window = budget.max_model_len - budget.safety_margin
        return Compactor(
            target=self.compaction_target,
            memory=self._compaction_memory,
            summarizer=summarizer,
            summary_max_tokens=self.summary_max_tokens,
            text_counter=counter if self.summarizer is None else None,
            summarizer_window=window,
        )

    def _prepare(
        self,
        messages: list[BaseMessage],
        kwargs: dict[str, Any],
        *,
        counter: TokenCounter | None = None,
        budget: TokenBudget | None = None,
    ) -> _Prepared:
        info = self._get_server_info()
        budget = budget or self._effective_budget(info)
        counter = counter or self._get_counter(info)
        outcome = apply_budget(messages, **self._budget_args(kwargs, counter, budget))
        return self._prepared(outcome, kwargs, counter, budget)

    def _budget_args(
        self, kwargs: dict[str, Any], counter: TokenCounter, budget: TokenBudget
    ) -> dict[str, Any]:
        """What ``apply_budget`` / ``aapply_budget`` need besides the messages."""
        tools = kwargs.get("tools")
        return {
            "budget": budget,
            "count": lambda msgs: counter.count_messages(msgs, tools),
            "policy": self.on_overflow,
            "requested_max_tokens": self._requested_max_tokens(kwargs, self.max_tokens),
            "compactor": self._compactor(counter, budget),
        }

    @staticmethod
    def _prepared(
        outcome: BudgetOutcome, kwargs: dict[str, Any], counter: TokenCounter, budget: TokenBudget
    ) -> _Prepared:
        send_kwargs = {k: v for k, v in kwargs.items() if k != "max_completion_tokens"}
        send_kwargs["max_tokens"] = outcome.plan.max_tokens
        return _Prepared(outcome.messages, send_kwargs, outcome, counter, budget)

    async def _aprepare(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> _Prepared:
        if self._server_info is None:
            try:
                page = await self.root_async_client.models.list()
            except openai.APIError as exc:
                raise self._translate(exc) from exc
            self._server_info = self._read_models([m.model_dump() for m in page.data])
        info = self._server_info
        budget = self._effective_budget(info)
        counter = self._get_counter(info)
        outcome = await aapply_budget(
            messages,
            **self._budget_args(kwargs, counter, budget),
            # Local counting takes milliseconds: a thread hop would cost more than it saves;
            # a server's /tokenize blocks, so it runs off the event loop.
            offload=not isinstance(counter, TransformersTokenCounter),
        )
        return self._prepared(outcome, kwargs, counter, budget)

    def _after_rejection(
        self,
        exc: openai.BadRequestError,
        prepared: _Prepared,
        messages: list[BaseMessage],
        kwargs: dict[str, Any],
    ) -> _Prepared:
        """Turn vLLM's length 400 into a typed error, or a corrected request to retry once."""
        details = parse_length_error(str(exc.message))
        if details is None:
            raise self._translate(exc) from exc
        plan = prepared.outcome.plan
        window = details.max_model_len or plan.max_model_len
        server_input = details.input_tokens
        if server_input is None and details.wording == "max_tokens_zero":
            server_input = window
        error = VLLMContextOverflowError(
            input_tokens=server_input if server_input is not None else plan.input_tokens,
            max_model_len=window,
            safety_margin=plan.safety_margin,
            min_output_tokens=1,
            requested_max_tokens=plan.max_tokens,
            source="server",
            server_message=str(exc.message),
        )
        if prepared.retried:
            raise error from exc
        budget = prepared.budget
        counter: TokenCounter = prepared.counter
        if window != plan.max_model_len:
            budget = budget.with_max_model_len(window)
        elif not isinstance(prepared.counter, ServerTokenCounter):
            # The server's count in the message is cut at window + 1 ("at least"): ask its
            # /tokenize for the exact count of what was sent, and budget with it from now on.
            counter = self._server_counter()
            tools = prepared.kwargs.get("tools")
            try:
                server_input = counter.count_messages(prepared.messages, tools)
            except Exception:  # the server cannot tokenize: scale by its lower bound
                if server_input is None or plan.input_tokens <= 0:
                    raise error from exc
                counter = _ScaledCounter(prepared.counter, server_input / plan.input_tokens)
            if server_input is not None and server_input <= plan.input_tokens:
                raise error from exc
        else:
            raise error from exc
        logger.warning(
            "vLLM rejected the request for length (our count %d, server %s, window %d); "
            "correcting and retrying once.",
            plan.input_tokens,
            server_input,
            window,
        )
        corrected = self._prepare(messages, kwargs, counter=counter, budget=budget)
        return replace(corrected, retried=True)

    def _annotate(self, result: ChatResult, prepared: _Prepared) -> ChatResult:
        budget = prepared.metadata()
        for generation in result.generations:
            generation.message.response_metadata["budget"] = budget
            if isinstance(generation.message, AIMessage):
                self._log_usage(generation.message, budget)
        return result

    def _log_usage(self, message: AIMessage, budget: dict[str, Any]) -> None:
        usage: dict[str, Any] = dict(message.usage_metadata or {})
        logger.info(
            "vLLM %s: input_tokens=%s (counted %d by %s) output_tokens=%s max_tokens=%d "
            "window=%d action=%s",
            self.model_name,
            usage.get("input_tokens"),
            budget["input_tokens"],
            budget["counter"],
            usage.get("output_tokens"),
            budget["max_tokens"],
            budget["max_model_len"],
            budget["action"],
        )

    # ------------------------------------------------------------------ requests

    def _create_chat_result(
        self,
        response: dict[str, Any] | openai.BaseModel,
        generation_info: dict[str, Any] | None = None,
    ) -> ChatResult:
        """Build the result; tool calls whose arguments are not a JSON object become invalid.

        A small model can write tool-call arguments that are valid JSON but not an object
        (a list, a string). They are reported in ``AIMessage.invalid_tool_calls`` (name, the
        arguments as written, id, and why) instead of failing the whole response, as
        langchain-core already does for streamed tool calls.
        """
        cleaned, set_aside = _set_aside_non_object_tool_calls(response)
        result = super()._create_chat_result(cleaned, generation_info)
        for index, invalid in set_aside.items():
            message = result.generations[index].message
            if isinstance(message, AIMessage):
                message.invalid_tool_calls = [*message.invalid_tool_calls, *invalid]
        return result

    def _slot(self) -> contextlib.AbstractContextManager[None]:
        limit = self._request_limit()
        return limit.slot() if limit is not None else contextlib.nullcontext()

    def _aslot(self) -> contextlib.AbstractAsyncContextManager[None]:
        limit = self._request_limit()
        return limit.aslot() if limit is not None else contextlib.nullcontext()

    def _raise_mapped(self, exc: openai.APIError) -> NoReturn:
        mapped = self._translate(exc)
        if mapped is exc:
            raise exc
        raise mapped from exc

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prepared = self._prepare(messages, kwargs)
        try:
            # The slot covers the request only: re-counting or summarizing after a
            # rejection may itself call the model.
            for attempt in range(2):
                try:
                    with self._slot():
                        result = super()._generate(
                            prepared.messages, stop=stop, run_manager=run_manager, **prepared.kwargs
                        )
                    return self._annotate(result, prepared)
                except openai.BadRequestError as exc:
                    retry = self._after_rejection(exc, prepared, messages, kwargs)
                    if attempt:
                        raise
                    prepared = retry
        except openai.APIError as exc:
            self._raise_mapped(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prepared = await self._aprepare(messages, kwargs)
        try:
            for attempt in range(2):
                try:
                    async with self._aslot():
                        result = await super()._agenerate(
                            prepared.messages, stop=stop, run_manager=run_manager, **prepared.kwargs
                        )
                    return self._annotate(result, prepared)
                except openai.BadRequestError as exc:
                    retry = self._after_rejection(exc, prepared, messages, kwargs)
                    if attempt:
                        raise
                    prepared = retry
        except openai.APIError as exc:
            self._raise_mapped(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prepared = self._prepare(messages, kwargs)
        try:
            for attempt in range(2):
                rejection: openai.BadRequestError | None = None
                with self._slot():
                    chunks = super()._stream(
                        prepared.messages, stop=stop, run_manager=run_manager, **prepared.kwargs
                    )
                    try:
                        first = next(chunks, None)
                    except openai.BadRequestError as exc:
                        rejection = exc
                    else:
                        # The slot is held until the stream ends (or is closed).
                        yield from self._budgeted_chunks(first, chunks, prepared)
                        return
                assert rejection is not None
                retry = self._after_rejection(rejection, prepared, messages, kwargs)
                if attempt:
                    raise rejection
                prepared = retry
        except openai.APIError as exc:
            self._raise_mapped(exc)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        prepared = await self._aprepare(messages, kwargs)
        try:
            for attempt in range(2):
                rejection: openai.BadRequestError | None = None
                async with self._aslot():
                    chunks = super()._astream(
                        prepared.messages, stop=stop, run_manager=run_manager, **prepared.kwargs
                    )
                    try:
                        first = await anext(chunks, None)
                    except openai.BadRequestError as exc:
                        rejection = exc
                    else:
                        budget = prepared.metadata()
                        if first is not None:
                            first.message.response_metadata["budget"] = budget
                            yield first
                            self._log_stream_chunk(first, budget)
                        async for chunk in chunks:
                            yield chunk
                            self._log_stream_chunk(chunk, budget)
                        return
                assert rejection is not None
                retry = self._after_rejection(rejection, prepared, messages, kwargs)
                if attempt:
                    raise rejection
                prepared = retry
        except openai.APIError as exc:
            self._raise_mapped(exc)

    def _budgeted_chunks(
        self,
        first: ChatGenerationChunk | None,
        chunks: Iterator[ChatGenerationChunk],
        prepared: _Prepared,
    ) -> Iterator[ChatGenerationChunk]:
        """The stream with the budget on its first chunk, and usage logged."""
        budget = prepared.metadata()
        if first is not None:
            first.message.response_metadata["budget"] = budget
            yield first
            self._log_stream_chunk(first, budget)
        for chunk in chunks:
            yield chunk
            self._log_stream_chunk(chunk, budget)

    def _log_stream_chunk(self, chunk: ChatGenerationChunk, budget: dict[str, Any]) -> None:
        message = chunk.message
        if isinstance(message, AIMessage) and message.usage_metadata:
            self._log_usage(message, budget)
