"""ChatVLLM: a LangChain chat model for vLLM that never overflows the context window.

Before each request the prompt is counted exactly (chat template, tool definitions and every
request parameter that changes the rendered prompt), the output room is planned once with
:class:`~langchain_vllm_budget.budget.TokenBudget`, and input that does not fit is handled by
the ``on_overflow`` policy. The plan applied is reported in ``response_metadata["budget"]``.
:meth:`ChatVLLM.get_budget_plan` makes the same plan without sending, and a call given
``budget_plan=`` sends with that plan without counting again.

This module holds the class: its fields and the hooks of ``BaseChatOpenAI`` it extends. The
request pipeline (request, count, plan, policy, send, the retry after a length 400) is
:mod:`~langchain_vllm_budget.chat_models._pipeline`; the package's other private modules are
server discovery (``_discovery``), the profile (``_profile``), error mapping
(``_error_mapping``) and the repair of tool calls with non-object arguments (``_tool_calls``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, cast

import openai
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    BaseRunManager,
    CallbackManagerForLLMRun,
)
from langchain_core.exceptions import ModelError
from langchain_core.language_models import (
    BaseChatModel,
    LangSmithParams,
    LanguageModelInput,
    ModelProfile,
)
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env, secret_from_env
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator
from typing_extensions import Self

from langchain_vllm_budget import settings
from langchain_vllm_budget._openai_compat import (
    BaseChatOpenAI,
    default_async_httpx_client,
    default_httpx_client,
)
from langchain_vllm_budget._reasoning import REASONING_KEY, reasoning_in, with_reasoning
from langchain_vllm_budget.budget import BudgetPlan, TokenBudget
from langchain_vllm_budget.chat_models import _pipeline
from langchain_vllm_budget.chat_models._discovery import UNKNOWN_SERVER, ServerDiscovery, ServerInfo
from langchain_vllm_budget.chat_models._error_mapping import (
    ABORTED,
    ServerTarget,
    mapped_openai_errors,
)
from langchain_vllm_budget.chat_models._profile import (
    ServerProfileAttribute,
    check_profile,
    configured_profile,
    server_profile,
)
from langchain_vllm_budget.chat_models._tool_calls import set_aside_non_object_tool_calls
from langchain_vllm_budget.compaction import CompactionMemory
from langchain_vllm_budget.concurrency import InFlightLimit
from langchain_vllm_budget.counter_resolution import resolve_token_counter
from langchain_vllm_budget.errors import (
    VLLMError,
    VLLMInvalidRequestError,
    VLLMRequestAbortedError,
)
from langchain_vllm_budget.overflow import (
    OverflowPolicy,
)
from langchain_vllm_budget.routing import (
    SessionAffinity,
    SessionCookieJars,
    SessionRouting,
    call_headers,
)
from langchain_vllm_budget.tokenizers import (
    PromptOptions,
    ServerTokenCounter,
    TokenCounter,
    _blank_assistant_text,
    _restore_assistant_text,
    tools_to_openai_dicts,
)

__all__ = ["DEFAULT_API_BASE", "ChatVLLM", "CounterChoice"]

logger = logging.getLogger(__name__)

DEFAULT_API_BASE: str = settings.API_BASE.default  # type: ignore[assignment]

CounterChoice = Literal["auto", "server", "transformers", "approximate"]
"""Which token counter to use; ``"auto"`` prefers a local tokenizer, then the server."""

_PROVIDER = "vllm"
# vLLM accepts any key when it runs without --api-key, but the OpenAI client insists on one.
_NO_KEY = "EMPTY"
_LIMIT_LOCK = threading.Lock()

# A conversation and a tool to probe what the chat template renders (for the profile).
_PROBE = [HumanMessage("Hi")]
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "probe", "description": "", "parameters": {"type": "object"}},
}


class ChatVLLM(BaseChatOpenAI):
    """Chat model for a vLLM server, with exact token budgeting.

    Works wherever ``ChatOpenAI`` does (invoke, stream, batch, async, ``bind_tools``,
    ``with_structured_output``, callbacks, serialisation) and with LangChain's agents and
    their middleware. On top of that, each request:

    1. counts its prompt exactly (``token_counter``: a local transformers tokenizer, the
       server's ``/tokenize``, or, if chosen, a chars/4 approximation), with everything the
       request sends that changes the rendered prompt: tools, ``chat_template_kwargs`` (e.g.
       Qwen3's ``enable_thinking``), ``chat_template``, ``add_generation_prompt`` /
       ``continue_final_message``, ``documents``, ``reasoning_effort``;
    2. gets ``max_tokens = min(window - input - safety_margin, output_reserve)`` (a caller's
       ``max_tokens`` is kept, capped to what fits);
    3. if less than ``min_output_tokens`` fits, applies ``on_overflow``: ``"raise"`` a
       :class:`~langchain_vllm_budget.errors.VLLMContextOverflowError` before sending,
       ``"trim"`` the oldest turns, ``"summarize"`` them, or ``"warn"`` and send what fits.

    The window comes from the server's ``/v1/models`` (asked once) unless the server does
    not report it. The plan applied is in ``response_metadata["budget"]``;
    :meth:`get_budget_plan` returns the same plan without sending, and ``budget_plan=``
    (on ``invoke``/``stream``/``ainvoke``/``astream`` or ``bind``) sends with it.

    ``profile`` carries the server's facts once it has been asked (``max_input_tokens`` is
    the largest prompt sent without the overflow policy acting, so LangChain's fractional
    triggers fire first). Reading it never raises on a down server and never blocks an event
    loop: until then it is the configured profile (``await aget_profile()`` fills it in
    async code).
    Reasoning models served with ``--reasoning-parser`` keep their thinking text in
    ``additional_kwargs["reasoning_content"]`` (and the standard ``reasoning`` content
    block); ``thinking_budget`` caps it so that the answer keeps its room in ``max_tokens``.

    ``max_concurrency`` (env ``VLLM_BUDGET_MAX_CONCURRENCY``) caps the requests in flight, e.g.
    at the server's ``--max-num-seqs``. Tool calls whose arguments are valid JSON but not an
    object (small models write lists or strings) come back in ``invalid_tool_calls``.

    Setup:
        ```bash
        vllm serve Qwen/Qwen3-8B --max-model-len 12288 --reasoning-parser qwen3
        export VLLM_API_BASE=http://localhost:8000/v1   # the default
        ```

    Instantiate:
        ```python
        from langchain_vllm_budget import ChatVLLM, TokenBudget

        model = ChatVLLM(
            model="Qwen/Qwen3-8B",
            budget=TokenBudget(output_reserve=2000),
            on_overflow="trim",
            max_concurrency=8,  # the server's --max-num-seqs
            thinking_budget=1200,  # the answer keeps the rest of max_tokens
        )
        ```

    Invoke:
        ```python
        msg = model.invoke([("system", "Be brief."), ("human", "Hi!")])
        msg.usage_metadata  # {"input_tokens": 21, "output_tokens": 9, ...}
        msg.additional_kwargs["reasoning_content"]  # the thinking text
        msg.response_metadata["budget"]
        # {"input_tokens": 21, "counter": "transformers", "max_model_len": 12288,
        #  "max_tokens": 2000, "thinking_token_budget": 1200, "action": "none", ...}
        ```

    Plan first, send later:
        ```python
        plan = model.get_budget_plan(messages)  # counts once; nothing is sent
        if plan.fits:
            msg = model.invoke(messages, budget_plan=plan)  # no second count
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
    tokenizer: str | None = Field(default_factory=settings.TOKENIZER.factory())
    """A local folder or hub id of the model's tokenizer, for exact local counting (env
    ``VLLM_BUDGET_TOKENIZER``); a hub id is read from the Hugging Face cache, else its
    tokenizer files are downloaded unless ``HF_HUB_OFFLINE`` is set."""
    token_counter: CounterChoice | TokenCounter = "auto"
    """``"auto"`` (a local tokenizer if one is found, else the server: see
    :mod:`~langchain_vllm_budget.counter_resolution`), ``"server"``,
    ``"transformers"``, ``"approximate"``, or a :class:`TokenCounter` instance."""
    on_overflow: OverflowPolicy = "raise"
    """What to do with input that does not fit: ``"raise"``, ``"trim"``, ``"summarize"``,
    ``"warn"``."""
    summarizer: BaseChatModel | None = None
    """The model that writes summaries for ``on_overflow="summarize"`` (default: this one)."""
    summary_max_tokens: int = Field(
        default_factory=settings.SUMMARY_MAX_TOKENS.required_factory(), gt=0
    )
    """The hard cap on a summary written by ``on_overflow="summarize"`` (env
    ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``, as for every compaction)."""
    thinking_budget: int | None = Field(default_factory=settings.THINKING_BUDGET.factory(), ge=0)
    """Most thinking tokens per request of a reasoning model (env
    ``VLLM_BUDGET_THINKING_BUDGET``); ``None``: no limit. Sent as vLLM's
    ``thinking_token_budget``, capped to ``max_tokens - min_output_tokens`` so that the
    answer after the thinking keeps its room (thinking tokens count against ``max_tokens``).
    Needs a server started with ``--reasoning-parser``. A call's
    ``extra_body={"thinking_token_budget": n}`` wins."""
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

    # --- session affinity for replicas behind a router (langchain_vllm_budget.routing) ---
    session_affinity: SessionAffinity = Field(
        default_factory=settings.SESSION_AFFINITY.required_factory()  # type: ignore[arg-type]
    )
    """``"thread"`` (env ``VLLM_BUDGET_SESSION_AFFINITY``, the default): every request of a
    LangGraph run with a ``thread_id`` (a checkpointer's thread) carries a session key
    derived from it, so a router (``vllm-router --policy
    consistent_hash``) keeps the thread on the replica that holds its prefix cache; a run
    without one sends none; ``"off"``: no key is sent. A session header the user set
    (``default_headers``, the model's or the call's ``extra_headers``) is left as it is."""
    session_header: str = Field(default_factory=settings.SESSION_HEADER.required_factory())
    """The header that carries the session key (env ``VLLM_BUDGET_SESSION_HEADER``)."""
    session_id: str | None = None
    """A fixed session key for every request of this model (wins over the thread's)."""
    session_cookies: bool = False
    """Keep one cookie jar per session key (for routers that pin sessions by a cookie); the
    model then builds its own HTTP clients unless ``http_client``/``http_async_client`` are
    given."""

    @model_validator(mode="before")
    @classmethod
    def _session_cookie_clients(cls, values: Any) -> Any:
        if not isinstance(values, dict) or not values.get("session_cookies"):
            return values
        header = settings.SESSION_HEADER.get(values.get("session_header"))
        jars = SessionCookieJars(header or settings.SESSION_HEADER.required_default())
        return {
            "http_client": jars.client(),
            "http_async_client": jars.async_client(),
            **values,
        }

    def _extra_headers(
        self, run_manager: BaseRunManager | None, kwargs: Mapping[str, Any]
    ) -> dict[str, str]:
        """The ``extra_headers`` a call with ``kwargs`` sends.

        Its own (else the model's), with the thread's session key beside them
        (:func:`~langchain_vllm_budget.routing.call_headers`).
        """
        routing = SessionRouting(self.session_affinity, self.session_header, self.session_id)
        return call_headers(
            routing.headers(run_manager.metadata if run_manager is not None else None),
            # A call's extra_headers=None sends none of the model's, as in langchain-openai.
            call=(kwargs["extra_headers"] or {}) if "extra_headers" in kwargs else None,
            model=self.model_kwargs.get("extra_headers"),
            client=self.default_headers,
        )

    # --- end of session affinity ---

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    _discovery: ServerDiscovery = PrivateAttr(default_factory=ServerDiscovery)
    _counter: TokenCounter | None = PrivateAttr(default=None)
    _capabilities: tuple[bool | None, bool | None] | None = PrivateAttr(default=None)
    _window_warned: bool = PrivateAttr(default=False)
    _in_flight_limit: InFlightLimit | None = PrivateAttr(default=None)
    _profile_ready: bool = PrivateAttr(default=False)
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
        params["ls_provider"] = _PROVIDER
        return params

    def _resolve_model_profile(self) -> ModelProfile | None:
        # OpenAI's model data does not describe a vLLM server: the profile is read from the
        # server on first use (see ServerProfileAttribute).
        return None

    def _use_responses_api(self, payload: dict[str, Any]) -> bool:
        # vLLM serves chat completions; the budget is planned for them.
        return False

    @model_validator(mode="after")
    def validate_environment(self) -> Self:
        """Check the settings and build the OpenAI clients for the vLLM server."""
        if self.n is not None and self.n < 1:
            msg = "n must be at least 1."
            raise ValueError(msg)
        if self.n is not None and self.n > 1 and self.streaming:
            msg = "n must be 1 when streaming."
            raise ValueError(msg)
        if self.use_responses_api:
            msg = (
                "ChatVLLM budgets vLLM's chat completions; leave use_responses_api unset (or "
                "use ChatOpenAI for vLLM's /v1/responses)."
            )
            raise VLLMInvalidRequestError("use_responses_api", msg)
        check_profile(self.__dict__.get("profile"))
        # The model's own request fields are checked once here, as each call checks its own.
        _pipeline.read_request(self, [], {})
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
            http_client = self.http_client or default_httpx_client(
                self.openai_api_base, self.request_timeout
            )
            self.root_client = openai.OpenAI(**client_params, http_client=http_client)
            self.client = self.root_client.chat.completions
        if not self.async_client:
            http_async_client = self.http_async_client or default_async_httpx_client(
                self.openai_api_base, self.request_timeout
            )
            self.root_async_client = openai.AsyncOpenAI(
                **client_params, http_client=http_async_client
            )
            self.async_client = self.root_async_client.chat.completions
        if self.max_concurrency is not None:
            self._in_flight_limit = InFlightLimit(self.max_concurrency)
        # From now on, reading `profile` may ask the server (never while building the model).
        self._profile_ready = True
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

    def _slot(self) -> contextlib.AbstractContextManager[None]:
        limit = self._request_limit()
        return limit.slot() if limit is not None else contextlib.nullcontext()

    def _aslot(self) -> contextlib.AbstractAsyncContextManager[None]:
        limit = self._request_limit()
        return limit.aslot() if limit is not None else contextlib.nullcontext()

    # ----------------------------------------------------------------- the server

    def _mapped_errors(self) -> contextlib.AbstractContextManager[None]:
        """OpenAI client errors in the block become this package's typed errors."""
        info = self._discovery.cached(self.root_client, self.model_name)
        timeout = self.request_timeout if isinstance(self.request_timeout, float | int) else None
        target = ServerTarget(
            base_url=self.openai_api_base,
            model=self.model_name,
            timeout=float(timeout) if timeout is not None else None,
            served=info.served if info is not None else None,
        )
        return mapped_openai_errors(target)

    def _server_info(self) -> ServerInfo:
        with self._mapped_errors():
            return self._discovery.get(self.root_client, self.model_name)

    async def _aserver_info(self) -> ServerInfo:
        with self._mapped_errors():
            return await self._discovery.aget(self.root_async_client, self.model_name)

    def _effective_budget(self, info: ServerInfo) -> TokenBudget:
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

    def get_budget(self) -> TokenBudget:
        """The budget in use: ``budget`` with the server's window (asked once).

        The configured ``max_model_len`` is kept when the server does not report one.
        """
        return self._effective_budget(self._server_info())

    def get_max_model_len(self) -> int:
        """The context window in use: the server's, or the configured one if not reported."""
        window = self.get_budget().max_model_len
        assert window is not None
        return window

    def _current_profile(self, *, ask: bool) -> ModelProfile:
        """The profile from what is known now; ``ask``: the server may be asked (sync code).

        Never raises for a server that cannot be reached or does not report its window:
        the configured profile (:func:`configured_profile`) stands in until a discovery
        succeeds. Never asks the server, nor loads a tokenizer, when ``ask`` is false.
        """
        info = self._discovery.cached(self.root_client, self.model_name)
        try:
            if info is None and ask:
                info = self._server_info()
            if info is None:
                return configured_profile(self.budget)
            budget = self._effective_budget(info)
        except (ModelError, ValueError) as exc:  # this package's errors and LangChain's
            logger.debug("profile of %r without server facts: %s", self.model_name, exc)
            return configured_profile(self.budget)
        if self._capabilities is None and ask:
            try:
                self._capabilities = self._probe_capabilities(self._get_counter(info))
            except (VLLMError, ValueError) as exc:  # no counter: capabilities stay unknown
                logger.debug("capabilities of %r unknown: %s", self.model_name, exc)
                self._capabilities = (None, None)
        assert budget.max_model_len is not None
        tool_calling, reasoning_output = self._capabilities or (None, None)
        return server_profile(
            max_model_len=budget.max_model_len,
            budget=budget,
            tool_calling=tool_calling,
            reasoning_output=reasoning_output,
        )

    async def aget_profile(self) -> ModelProfile | None:
        """The profile with the server's facts, asked without blocking the event loop.

        In async code ``model.profile`` does not ask the server (that would block the event
        loop): it holds the server's facts once a call or this method has asked. Await it
        before building something that needs ``max_input_tokens`` (``SummarizationMiddleware``
        with a fractional trigger) when ``budget.max_model_len`` is not set.

        Returns:
            ``profile=`` when one was given, else the server's profile (or the configured
            one when the server cannot be reached).
        """
        given = self.__dict__.get("profile")
        if isinstance(given, Mapping):
            return cast("ModelProfile", given)
        return await asyncio.to_thread(self._current_profile, ask=True)

    @staticmethod
    def _probe_capabilities(counter: TokenCounter) -> tuple[bool | None, bool | None]:
        """Whether the chat template renders tools, and has a thinking switch (exact counters).

        A template that ignores tool definitions gives the model no way to call tools; one
        whose prompt changes with ``enable_thinking`` belongs to a model that thinks (vLLM
        sets that variable for ``reasoning_effort``). Unknown: ``None``.
        """
        if not counter.exact:
            return None, None
        try:
            plain = counter.count_messages(_PROBE)
            tools = counter.count_messages(_PROBE, [_PROBE_TOOL]) != plain
            off, on = (
                counter.count_messages(
                    _PROBE, None, PromptOptions(chat_template_kwargs={"enable_thinking": flag})
                )
                for flag in (False, True)
            )
        except VLLMError:
            return None, None
        return tools, (True if off != on else None)

    def _get_counter(self, info: ServerInfo) -> TokenCounter:
        if self._counter is not None:
            return self._counter
        choice = self.token_counter
        if isinstance(choice, str):  # "auto" and the others: resolved in counter_resolution
            # The server is asked for its root only if the explicit tokenizer is not found.
            root = info.root if info is not UNKNOWN_SERVER else self._server_root
            choice = resolve_token_counter(
                choice, tokenizer=self.tokenizer, root=root, make_server=self._server_counter
            ).counter
        self._counter = choice
        return self._counter

    async def _aget_counter(self, info: ServerInfo) -> TokenCounter:
        if self._counter is not None:
            return self._counter
        # Loading a tokenizer reads files: off the event loop.
        return await asyncio.to_thread(self._get_counter, info)

    def _server_counter(
        self, endpoint: Literal["render", "tokenize"] = "tokenize"
    ) -> ServerTokenCounter:
        timeout = self.request_timeout if isinstance(self.request_timeout, float | int) else 30.0
        return ServerTokenCounter(
            self.openai_api_base,
            self.model_name,
            self.openai_api_key,
            timeout=float(timeout),
            endpoint=endpoint,
            headers=self.default_headers,
            params=self.default_query,
            http_client=self.http_client,
            http_async_client=self.http_async_client,
        )

    def _server_root(self) -> str | None:
        return self._server_info().root

    def get_token_counter(self) -> TokenCounter:
        """The counter in use (resolving ``"auto"`` may ask the server for its model root)."""
        if self._counter is None:
            return self._get_counter(UNKNOWN_SERVER)
        return self._counter

    @property
    def resolved_token_counter(self) -> TokenCounter:
        """The counter in use: :meth:`get_token_counter`."""
        return self.get_token_counter()

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
            **kwargs: Request fields as a call would pass them (e.g. ``extra_body``); the
                model's own fields (its ``extra_body``, ``reasoning_effort``) apply too.

        Returns:
            The prompt's token count: equals the server's ``usage.prompt_tokens`` with an
            exact counter.
        """
        openai_tools = tools_to_openai_dicts(tools)
        call = {**kwargs, "tools": openai_tools} if openai_tools else kwargs
        request = _pipeline.read_request(self, messages, call)
        return request.count(self.resolved_token_counter, request.messages)

    def get_num_tokens(self, text: str) -> int:
        """Count plain text with the model's tokenizer (no chat template)."""
        return self.resolved_token_counter.count_text(text)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        tools: list[Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Return a runnable whose output follows ``schema``; ``json_schema`` by default.

        As in ``ChatOpenAI``, the default method is ``json_schema``: the schema goes to vLLM
        as ``response_format`` and vLLM decodes the answer under it, so even a small model
        returns schema-valid JSON. ``function_calling`` (a forced tool call) needs a server
        with a tool parser; ``json_mode`` only asks for some JSON object. Every argument is
        ``BaseChatOpenAI.with_structured_output``'s.
        """
        return super().with_structured_output(
            schema, method=method, include_raw=include_raw, strict=strict, tools=tools, **kwargs
        )

    # ------------------------------------------------------------------ budgeting

    def get_budget_plan(self, messages: LanguageModelInput, **kwargs: Any) -> BudgetPlan:
        """Plan the budget of a call without sending it: one exact count, no overflow policy.

        Counts the prompt once, with everything the call would send that changes it (the
        model's bound tools and request fields, and ``kwargs``), and plans its output room
        with the model's budget and the server's window. Send with the plan by passing it
        back: ``model.invoke(messages, budget_plan=plan)`` counts nothing again.

        Args:
            messages: The call's input (messages, a string, or anything ``invoke`` takes).
            **kwargs: The keyword arguments the call will be made with (``tools``,
                ``max_tokens``, ``extra_body``, ...); for a bound model, its ``kwargs``.

        Returns:
            The plan; ``plan.fits`` says whether the prompt leaves the output room needed,
            ``plan.shortfall`` how many input tokens to remove otherwise.
        """
        request = _pipeline.read_request(self, self._convert_input(messages).to_messages(), kwargs)
        return _pipeline.plan_call(self, request)

    async def aget_budget_plan(self, messages: LanguageModelInput, **kwargs: Any) -> BudgetPlan:
        """Async :meth:`get_budget_plan`: the server is asked without blocking the event loop."""
        request = _pipeline.read_request(self, self._convert_input(messages).to_messages(), kwargs)
        return await _pipeline.aplan_call(self, request)

    def get_requested_max_tokens(self, **kwargs: Any) -> int | None:
        """The output limit a call with ``kwargs`` asks for, as vLLM will read it.

        The call's fields over the model's own (``max_tokens``, ``model_kwargs``,
        ``extra_body``), ``extra_body``'s over the others, ``max_completion_tokens`` before
        ``max_tokens``. Counts nothing and asks no server.

        Args:
            **kwargs: The call's keyword arguments (an agent's ``model_settings``).

        Returns:
            The requested output limit, or ``None`` when none is set.

        Raises:
            VLLMInvalidRequestError: The limit is not a whole number of tokens, at least 1.

        Example:
            >>> llm = ChatVLLM(model="m", base_url="http://127.0.0.1:9/v1", max_tokens=64)
            >>> llm.get_requested_max_tokens(), llm.get_requested_max_tokens(
            ...     extra_body={"max_completion_tokens": 32}
            ... )
            (64, 32)
        """
        return _pipeline.read_request(self, [], kwargs).requested_max_tokens

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        generate = super()._generate
        headers = self._extra_headers(run_manager, kwargs)
        (result,) = _pipeline.run(
            self,
            messages,
            kwargs,
            lambda p: _pipeline.once(
                lambda: generate(
                    p.messages, stop=stop, run_manager=run_manager, **p.send_kwargs(headers)
                )
            ),
        )
        return result

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        agenerate = super()._agenerate
        headers = self._extra_headers(run_manager, kwargs)
        results = _pipeline.arun(
            self,
            messages,
            kwargs,
            lambda p: _pipeline.aonce(
                agenerate(p.messages, stop=stop, run_manager=run_manager, **p.send_kwargs(headers))
            ),
        )
        (result,) = [r async for r in results]
        return result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stream = super()._stream
        headers = self._extra_headers(run_manager, kwargs)
        yield from _pipeline.run(
            self,
            messages,
            kwargs,
            lambda p: stream(
                p.messages, stop=stop, run_manager=run_manager, **p.send_kwargs(headers)
            ),
        )

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        astream = super()._astream
        headers = self._extra_headers(run_manager, kwargs)
        async for chunk in _pipeline.arun(
            self,
            messages,
            kwargs,
            lambda p: astream(
                p.messages, stop=stop, run_manager=run_manager, **p.send_kwargs(headers)
            ),
        ):
            yield chunk

    # ------------------------------------------------------- request and response format

    def _get_request_payload(
        self,
        input_: LanguageModelInput,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The payload, with each assistant turn's thinking in vLLM's ``reasoning`` field.

        The planned output limit is sent as ``max_tokens`` alone: a ``max_completion_tokens``
        from ``model_kwargs`` would otherwise reach vLLM beside it, and vLLM reads it first.
        The messages are converted by langchain-openai, with assistant text set aside while it
        converts (:func:`~langchain_vllm_budget.tokenizers._blank_assistant_text`: the same
        dicts without a Python loop over every character; this runs on the event loop in
        ``ainvoke``, ~2 ms for a 12K-token conversation otherwise).
        """
        messages = self._convert_input(input_).to_messages()
        blanked = [_blank_assistant_text(m) for m in messages]
        payload = super()._get_request_payload(blanked, stop=stop, **kwargs)
        if "messages" not in payload:  # pragma: no cover - ChatVLLM never uses the Responses API
            return super()._get_request_payload(input_, stop=stop, **kwargs)
        restored = _restore_assistant_text(payload["messages"], messages)
        payload["messages"] = with_reasoning(restored, messages)
        if "max_tokens" in kwargs:  # the planned limit, alone: vLLM reads the other one first
            payload.pop("max_completion_tokens", None)
            payload["max_tokens"] = kwargs["max_tokens"]
        return payload

    def _create_chat_result(
        self,
        response: dict[str, Any] | openai.BaseModel,
        generation_info: dict[str, Any] | None = None,
    ) -> ChatResult:
        """Build the result: provider ``vllm``, thinking text kept, non-object tool calls invalid.

        A small model can write tool-call arguments that are valid JSON but not an object
        (a list, a string). They are reported in ``AIMessage.invalid_tool_calls`` (name, the
        arguments as written, id, and why) instead of failing the whole response, as
        langchain-core already does for streamed tool calls.

        Raises:
            VLLMRequestAbortedError: vLLM aborted the request (``finish_reason="abort"``,
                e.g. the server is shutting down); the reply so far is the error's
                ``partial``.
        """
        cleaned, set_aside = set_aside_non_object_tool_calls(response)
        result = super()._create_chat_result(cleaned, generation_info)
        if result.llm_output is not None:
            result.llm_output["model_provider"] = _PROVIDER
        raw = response if isinstance(response, dict) else response.model_dump(warnings=False)
        choices = raw.get("choices") or []
        for index, generation in enumerate(result.generations):
            message = generation.message
            message.response_metadata["model_provider"] = _PROVIDER
            if not isinstance(message, AIMessage):
                continue
            choice = choices[index] if index < len(choices) else {}
            thinking = reasoning_in((choice or {}).get("message"))
            if thinking is not None:
                message.additional_kwargs[REASONING_KEY] = thinking
            if index in set_aside:
                message.invalid_tool_calls = [*message.invalid_tool_calls, *set_aside[index]]
            if (choice or {}).get("finish_reason") == ABORTED:
                raise VLLMRequestAbortedError(self.openai_api_base, partial=message)
        return result

    def _convert_chunk_to_generation_chunk(
        self,
        chunk: dict[str, Any],
        default_chunk_class: type,
        base_generation_info: dict[str, Any] | None,
    ) -> ChatGenerationChunk | None:
        """A stream chunk: provider ``vllm``, and the thinking text of its delta kept.

        Raises:
            VLLMRequestAbortedError: vLLM aborted the request (``finish_reason="abort"``);
                the chunks before this one were what it generated.
        """
        choices = chunk.get("choices") or chunk.get("chunk", {}).get("choices") or []
        if choices and choices[0].get("finish_reason") == ABORTED:
            raise VLLMRequestAbortedError(self.openai_api_base)
        generation = super()._convert_chunk_to_generation_chunk(
            chunk, default_chunk_class, base_generation_info
        )
        if generation is None:
            return None
        message = generation.message
        message.response_metadata["model_provider"] = _PROVIDER
        thinking = reasoning_in(choices[0].get("delta")) if choices else None
        if thinking is not None and isinstance(message, AIMessage):
            message.additional_kwargs[REASONING_KEY] = thinking
        return generation


# `profile` is a pydantic field of BaseChatModel; this descriptor (installed after pydantic
# built the class) makes reading it ask the server once when no profile was given.
ChatVLLM.profile = ServerProfileAttribute()  # type: ignore[assignment]
