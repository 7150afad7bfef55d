"""Token counters: one interface, three backends.

vLLM renders chat messages with the model's chat template (tool definitions included) and
tokenizes the result; a budget is only right if it counts that same prompt. Every counter here
takes LangChain messages, converts them to the exact OpenAI dicts langchain-openai sends, and
counts the prompt the server will build from them, with the same request parameters that
shape it (:class:`PromptOptions`: ``chat_template_kwargs`` such as ``enable_thinking``,
``chat_template``, ``add_generation_prompt`` / ``continue_final_message``, ``documents``,
``reasoning_effort``, ``add_special_tokens``):

* :class:`ServerTokenCounter` asks the server: its render endpoint or ``/tokenize`` (exact by
  construction; one HTTP round trip per new request, over one pooled connection).
* :class:`TransformersTokenCounter` applies the model's chat template locally with a
  transformers tokenizer (exact for string-content chat templates; no network, cached).
* :class:`ApproximateTokenCounter` divides characters by four (the classic guess; labelled
  ``exact=False``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import httpx
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import SecretStr

from langchain_vllm_budget._reasoning import with_reasoning
from langchain_vllm_budget.errors import (
    TokenCountError,
    VLLMConnectionError,
    VLLMInvalidRequestError,
    VLLMModelNotFoundError,
    VLLMTimeoutError,
)

__all__ = [
    "REASONING_EFFORTS",
    "ApproximateTokenCounter",
    "AsyncTokenCounter",
    "PromptOptions",
    "ServerTokenCounter",
    "TokenCounter",
    "TransformersTokenCounter",
    "messages_to_openai_dicts",
    "tools_to_openai_dicts",
]


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of text and of the chat prompt vLLM builds from messages.

    Attributes:
        name: The backend: ``"server"``, ``"transformers"`` or ``"approximate"``.
        exact: Whether counts equal the server's ``usage.prompt_tokens``.
    """

    name: str
    exact: bool

    def count_text(self, text: str) -> int:
        """Count plain text: no chat template, no special tokens added."""
        ...

    def count_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: PromptOptions | None = None,
    ) -> int:
        """Count the prompt vLLM renders from ``messages``, ``tools`` and ``options``."""
        ...


@runtime_checkable
class AsyncTokenCounter(TokenCounter, Protocol):
    """A counter that can also count without blocking the event loop (over async HTTP)."""

    async def acount_text(self, text: str) -> int:
        """Async :meth:`TokenCounter.count_text`."""
        ...

    async def acount_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: PromptOptions | None = None,
    ) -> int:
        """Async :meth:`TokenCounter.count_messages`."""
        ...


REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
"""The ``reasoning_effort`` values vLLM's chat completions accept."""

# Request keys that chat_template_kwargs may not hold: vLLM rejects the first two, and the
# others steer transformers' apply_chat_template rather than the template.
_RESERVED_TEMPLATE_KWARGS = frozenset({"chat_template", "tokenize"})
_APPLY_CONTROL_KWARGS = frozenset(
    {
        "conversation",
        "tools",
        "return_dict",
        "return_tensors",
        "padding",
        "truncation",
        "max_length",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    }
)


def _invalid(option: str, advice: str) -> VLLMInvalidRequestError:
    return VLLMInvalidRequestError(option, advice)


def _flag(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(key, f"must be true or false, got {value!r}.")
    return value


@dataclass(frozen=True)
class PromptOptions:
    """The request parameters, besides messages and tools, that change vLLM's prompt.

    vLLM's chat completions hand these to the chat template (see
    ``ChatCompletionRequest.build_chat_params`` in vLLM); a count that leaves them out can be
    off by the tokens they add or remove (Qwen3's ``enable_thinking=False`` adds an empty
    ``<think>`` block to the generation prompt). Build them from a request body with
    :meth:`from_request`.

    Attributes:
        chat_template_kwargs: Template variables, e.g. ``{"enable_thinking": False}``.
        chat_template: A Jinja chat template that replaces the model's own.
        add_generation_prompt: End the prompt with the assistant's turn header (default).
        continue_final_message: Leave the last message open for the model to continue.
        documents: Documents for templates that take them (RAG), ``{"title", "text"}`` dicts.
        reasoning_effort: Passed to the template; unless ``chat_template_kwargs`` sets
            ``enable_thinking``, vLLM sets it to ``reasoning_effort != "none"``.
        add_special_tokens: Add the tokenizer's special tokens (e.g. BOS) on top of the
            template's.

    Example:
        >>> options = PromptOptions.from_request(
        ...     {"chat_template_kwargs": {"enable_thinking": False}, "temperature": 0}
        ... )
        >>> options.template_kwargs()
        {'enable_thinking': False, 'add_generation_prompt': True, 'continue_final_message': False}
        >>> PromptOptions(reasoning_effort="none").template_kwargs()["enable_thinking"]
        False
    """

    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    documents: Sequence[Mapping[str, Any]] | None = None
    reasoning_effort: str | None = None
    add_special_tokens: bool = False

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> PromptOptions:
        """Read the options from a chat-completions request body (``extra_body`` merged in).

        Args:
            body: The request's JSON fields.

        Returns:
            The options; defaults for the fields the body does not set.

        Raises:
            VLLMInvalidRequestError: A field has a shape vLLM would reject (e.g.
                ``chat_template_kwargs`` that is not a dict, an unknown ``reasoning_effort``,
                ``add_generation_prompt`` and ``continue_final_message`` both true).
        """
        kwargs = body.get("chat_template_kwargs")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise _invalid(
                "chat_template_kwargs",
                "must be a dict of template variables by name, e.g. "
                f"extra_body={{'chat_template_kwargs': {{'enable_thinking': False}}}}; "
                f"got {type(kwargs).__name__} {kwargs!r}.",
            )
        if reserved := sorted(_RESERVED_TEMPLATE_KWARGS & kwargs.keys()):
            raise _invalid(
                "chat_template_kwargs",
                f"may not hold {reserved} (vLLM rejects them there); pass chat_template as "
                "its own request field.",
            )
        template = body.get("chat_template")
        if template is not None and not isinstance(template, str):
            raise _invalid("chat_template", f"must be a Jinja template string, got {template!r}.")
        documents = body.get("documents")
        if documents is not None and (
            isinstance(documents, str | bytes | Mapping)
            or not isinstance(documents, Sequence)
            or not all(isinstance(d, Mapping) for d in documents)
        ):
            raise _invalid(
                "documents", "must be a list of dicts such as {'title': ..., 'text': ...}."
            )
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in REASONING_EFFORTS:
            raise _invalid(
                "reasoning_effort",
                f"vLLM accepts one of {sorted(REASONING_EFFORTS)}, got {effort!r}.",
            )
        options = cls(
            chat_template_kwargs=dict(kwargs),
            chat_template=template,
            add_generation_prompt=_flag(body, "add_generation_prompt", True),
            continue_final_message=_flag(body, "continue_final_message", False),
            documents=list(documents) if documents is not None else None,
            reasoning_effort=effort,
            add_special_tokens=_flag(body, "add_special_tokens", False),
        )
        if options.add_generation_prompt and options.continue_final_message:
            raise _invalid(
                "continue_final_message",
                "cannot be true while add_generation_prompt is true (vLLM rejects both); "
                "set add_generation_prompt=False to continue the last message.",
            )
        return options

    def template_kwargs(self) -> dict[str, Any]:
        """The variables the chat template gets, merged as vLLM merges them.

        The request's own fields win over ``chat_template_kwargs``, except where they are
        unset (vLLM's ``merge_kwargs`` skips ``None`` and ``"auto"``).
        """
        extra: dict[str, Any] = {
            "add_generation_prompt": self.add_generation_prompt,
            "continue_final_message": self.continue_final_message,
            "documents": list(self.documents) if self.documents is not None else None,
            "reasoning_effort": self.reasoning_effort,
        }
        if self.reasoning_effort is not None and "enable_thinking" not in self.chat_template_kwargs:
            extra["enable_thinking"] = self.reasoning_effort != "none"
        merged = dict(self.chat_template_kwargs)
        merged.update({k: v for k, v in extra.items() if v is not None and v != "auto"})
        return merged


_DEFAULT_OPTIONS = PromptOptions()


def messages_to_openai_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Convert messages to the chat-completions dicts langchain-openai sends.

    Uses langchain-openai's own converters, so tool calls, tool results and content blocks
    come out exactly as ``ChatOpenAI`` puts them in the request payload; an assistant turn's
    thinking text goes in vLLM's ``reasoning`` field, as ``ChatVLLM`` sends it.

    Args:
        messages: LangChain messages.

    Returns:
        The ``messages`` list of the request payload.

    Example:
        >>> from langchain_core.messages import HumanMessage, SystemMessage
        >>> messages_to_openai_dicts([SystemMessage("Be brief."), HumanMessage("Hi")])
        [{'content': 'Be brief.', 'role': 'system'}, {'content': 'Hi', 'role': 'user'}]
    """
    # Private helpers of langchain-openai: reusing them (rather than re-implementing the
    # conversion) is what keeps our counts equal to what ChatOpenAI actually sends.
    from langchain_vllm_budget._openai_compat import (
        convert_from_v1_to_chat_completions,
        convert_message_to_dict,
    )

    converted = [
        convert_message_to_dict(convert_from_v1_to_chat_completions(m))
        if isinstance(m, AIMessage)
        else convert_message_to_dict(m)
        for m in map(_blank_assistant_text, messages)
    ]
    return with_reasoning(_restore_assistant_text(converted, messages), messages)


def _blank_assistant_text(message: BaseMessage) -> BaseMessage:
    """An assistant turn with non-empty string content emptied, for langchain-openai's converter.

    ``_convert_message_to_dict`` looks for audio blocks with ``for block in message.content``;
    on string content that is a Python loop over every character (about 20 µs per 1,000
    characters: most of the cost of converting a long conversation) that can never find a
    block. The turn is converted with empty content and :func:`_restore_assistant_text` puts
    the text back: the same dict, since empty content only becomes ``None`` when tool calls
    are present, and non-empty content is kept as it is (``tests/unit_tests/test_tokenizers.py``
    checks it against the plain conversion). Other messages are returned as they are.
    """
    if _has_assistant_text(message):
        return message.model_copy(update={"content": ""})
    return message


def _has_assistant_text(message: BaseMessage) -> bool:
    return (
        isinstance(message, AIMessage)
        and isinstance(message.content, str)
        and bool(message.content)
    )


def _restore_assistant_text(
    converted: list[dict[str, Any]], messages: Sequence[BaseMessage]
) -> list[dict[str, Any]]:
    """Put back the text :func:`_blank_assistant_text` emptied (``converted`` is changed)."""
    for payload, message in zip(converted, messages, strict=True):
        if _has_assistant_text(message):
            payload["content"] = message.content
    return converted


def tools_to_openai_dicts(tools: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """Normalise tool definitions to OpenAI ``{"type": "function", ...}`` dicts.

    Args:
        tools: OpenAI tool dicts (as ``bind_tools`` puts in the payload), or anything
            :func:`~langchain_core.utils.function_calling.convert_to_openai_tool` accepts.

    Returns:
        The tools as sent in the request, or ``None`` when there are none.
    """
    if not tools:
        return None
    return [convert_to_openai_tool(tool) for tool in tools]


def _text_of(content: Any) -> str:
    """Flatten OpenAI content (string or list of parts) the way vLLM does for string templates."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = [
        part.get("text", "") if isinstance(part, dict) else str(part)
        for part in content
        if not isinstance(part, dict) or part.get("type", "text") == "text"
    ]
    return "\n".join(texts)


def _tool_call_arguments(arguments: Any) -> Any:
    if not arguments:
        return {}
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return {}
    return arguments


def _conversation_for_template(payload_messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reshape request messages as vLLM hands them to the chat template.

    Mirrors vLLM's ``parse_chat_messages`` for text-only requests and string-content
    templates: content flattened to a string, tool-call arguments parsed to dicts (vLLM's
    ``_postprocess_messages``), empty ``tool_calls`` dropped, an assistant turn's thinking
    under both ``reasoning`` and ``reasoning_content``.
    """
    conversation: list[dict[str, Any]] = []
    for message in payload_messages:
        turn: dict[str, Any] = {"role": message["role"], "content": _text_of(message["content"])}
        if isinstance(message.get("name"), str):
            turn["name"] = message["name"]
        if message["role"] == "assistant" and message.get("tool_calls"):
            turn["tool_calls"] = [
                {
                    **call,
                    "function": {
                        **call["function"],
                        "arguments": _tool_call_arguments(call["function"].get("arguments")),
                    },
                }
                for call in message["tool_calls"]
            ]
        if message["role"] == "assistant" and isinstance(message.get("reasoning"), str):
            turn["reasoning"] = turn["reasoning_content"] = message["reasoning"]
        if message["role"] == "tool" and "tool_call_id" in message:
            turn["tool_call_id"] = message["tool_call_id"]
        conversation.append(turn)
    return conversation


_LOAD_LOCK = threading.Lock()


def _load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer at ``name_or_path``, loaded once per process.

    transformers resolves ``AutoTokenizer`` through lazy module imports that are not
    thread-safe: threads that load their first tokenizer at the same moment (agent threads
    of one process counting their first request) can fail with "cannot import name
    'AutoTokenizer'". One lock serializes the loads; each is cached, so it is taken once.
    """
    with _LOAD_LOCK:
        return _cached_tokenizer(name_or_path)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


# Pre-tokenizers and normalizers that treat the start of the text specially (SentencePiece's
# "prepend a space to the first word"): a segment counted alone would differ from the same
# segment inside the prompt, so prompts are then counted whole.
_POSITION_DEPENDENT = ("Metaspace", "Prepend", "prepend_scheme")
_SEGMENT_CACHE_SIZE = 8192


def _added_token_splitter(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex that splits text at the tokenizer's added tokens, if that is exact.

    A fast (Rust ``tokenizers``) tokenizer cuts its input at added tokens such as
    ``<|im_start|>`` before it normalizes, pre-tokenizes and applies BPE to the text between
    them, so a chat prompt's count is the sum of its segments' counts (each added token is
    one). That holds when no added token strips neighbouring whitespace, matches whole words
    only or is matched after normalization, and nothing depends on a segment's position;
    otherwise this returns ``None`` and prompts are tokenized whole.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    added = getattr(tokenizer, "added_tokens_decoder", None)
    if backend is None or not added:
        return None
    tokens = list(added.values())
    if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in tokens):
        return None
    try:
        config = backend.to_str()
    except Exception:  # an unserialisable backend: no way to check it
        return None
    if any(marker in config for marker in _POSITION_DEPENDENT):
        return None
    contents = sorted({t.content for t in tokens if t.content}, key=len, reverse=True)
    # Longest first: at each position the longest added token wins, as in `tokenizers`.
    return re.compile("(" + "|".join(re.escape(c) for c in contents) + ")")


class TransformersTokenCounter:
    """Exact counts from the model's own tokenizer and chat template, locally.

    The tokenizer is loaded once per path (cached). Counts equal vLLM's for text-only
    requests with chat templates that take string content (Qwen, Llama, SmolLM2, ...).

    The prompt is rendered with the chat template every time (exact by construction), but
    not re-tokenized whole: it is cut at the tokenizer's added tokens (``<|im_start|>``,
    ``<|im_end|>``, ...), which the tokenizer itself never merges across, and the token
    counts of the text between them are cached. A conversation that grows by a turn then
    tokenizes only the new turn. Tokenizers for which segment counts would not add up
    (whitespace-stripping added tokens, SentencePiece's first-word space) are counted whole.

    Args:
        tokenizer: A local folder or hub name for ``AutoTokenizer.from_pretrained``, or a
            loaded tokenizer.

    Example:
        >>> from transformers import PreTrainedTokenizerFast
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> backend = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, "[UNK]"))
        >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> counter = TransformersTokenCounter(PreTrainedTokenizerFast(tokenizer_object=backend))
        >>> counter.count_text("hello world")
        2
    """

    name = "transformers"
    exact = True

    def __init__(self, tokenizer: str | os.PathLike[str] | Any) -> None:
        if isinstance(tokenizer, str | os.PathLike):
            self.source = os.fspath(tokenizer)
            try:
                self.tokenizer = _load_tokenizer(self.source)
            except (OSError, ValueError) as exc:
                msg = (
                    f"Cannot load a tokenizer from {self.source!r}: {exc}. Pass a local model "
                    "folder (with tokenizer files) or use token_counter='server'."
                )
                raise TokenCountError(msg) from exc
        else:
            self.tokenizer = tokenizer
            self.source = str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__))
        self._splitter = _added_token_splitter(self.tokenizer)
        self._added_tokens = frozenset(
            t.content
            for t in (getattr(self.tokenizer, "added_tokens_decoder", None) or {}).values()
        )
        self._segment_counts: OrderedDict[str, int] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def segment_cache_enabled(self) -> bool:
        """Whether prompts are counted segment by segment with cached counts."""
        return self._splitter is not None

    def _encode_lengths(self, texts: list[str]) -> list[int]:
        if len(texts) == 1:
            return [len(self.tokenizer.encode(texts[0], add_special_tokens=False))]
        # One batch call: the fast tokenizer encodes the segments in parallel.
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def count_rendered(self, prompt: str) -> int:
        """Count an already rendered prompt (special tokens in it count as one each).

        Args:
            prompt: Chat-template output.

        Returns:
            Its token count, equal to ``len(tokenizer.encode(prompt, add_special_tokens=False))``.
        """
        if self._splitter is None:
            return len(self.tokenizer.encode(prompt, add_special_tokens=False))
        total = 0
        pending: dict[str, int] = {}
        with self._cache_lock:
            for part in self._splitter.split(prompt):
                if not part:
                    continue
                if part in self._added_tokens:
                    total += 1
                    continue
                cached = self._segment_counts.get(part)
                if cached is None:
                    pending[part] = pending.get(part, 0) + 1
                else:
                    self._segment_counts.move_to_end(part)
                    total += cached
        if pending:
            texts = list(pending)
            lengths = self._encode_lengths(texts)
            with self._cache_lock:
                for text, length in zip(texts, lengths, strict=True):
                    total += length * pending[text]
                    self._segment_counts[text] = length
                while len(self._segment_counts) > _SEGMENT_CACHE_SIZE:
                    self._segment_counts.popitem(last=False)
        return total

    def count_text(self, text: str) -> int:
        """Count plain text: no chat template, no special tokens added.

        Args:
            text: The text.

        Returns:
            Its token count.
        """
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def render(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: PromptOptions | None = None,
    ) -> str:
        """Render the prompt vLLM builds from ``messages``, ``tools`` and ``options``.

        Args:
            messages: The conversation.
            tools: Tool definitions sent with the request.
            options: The request's other prompt-shaping parameters.

        Returns:
            The chat template's output.

        Raises:
            TokenCountError: The chat template cannot render the conversation.
        """
        options = options or _DEFAULT_OPTIONS
        conversation = _conversation_for_template(messages_to_openai_dicts(messages))
        variables = {
            k: v for k, v in options.template_kwargs().items() if k not in _APPLY_CONTROL_KWARGS
        }
        try:
            prompt = self.tokenizer.apply_chat_template(
                conversation,
                tools=tools_to_openai_dicts(tools),
                chat_template=options.chat_template,
                tokenize=False,
                **variables,
            )
        except Exception as exc:  # jinja2 raises its own types from inside templates
            msg = f"The chat template of {self.source!r} cannot render these messages: {exc}"
            raise TokenCountError(msg) from exc
        return str(prompt)

    def count_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: PromptOptions | None = None,
    ) -> int:
        """Count the prompt vLLM renders from ``messages``, ``tools`` and ``options``.

        Args:
            messages: The conversation.
            tools: Tool definitions sent with the request.
            options: The request's other prompt-shaping parameters.

        Returns:
            The prompt's token count (generation prompt included, unless ``options`` say not).

        Raises:
            TokenCountError: The chat template cannot render the conversation.
        """
        prompt = self.render(messages, tools, options)
        if options is not None and options.add_special_tokens:
            return len(self.tokenizer.encode(prompt, add_special_tokens=True))
        # apply_chat_template(tokenize=True) is encode(prompt, add_special_tokens=False).
        return self.count_rendered(prompt)

    def __repr__(self) -> str:
        return f"TransformersTokenCounter({self.source!r})"


class ServerTokenCounter:
    """Exact counts from the vLLM server: its render endpoint or ``/tokenize``.

    ``endpoint="render"`` asks ``/v1/chat/completions/render`` (vLLM started with
    ``--enable-scale-out``): the prompt token ids the chat endpoint itself would build from the
    request, every field included. A prompt longer than the window is refused there, so it is
    counted by ``/tokenize`` instead (which has no length limit), as is plain text.
    ``endpoint="tokenize"`` asks ``/tokenize`` only.

    Requests go through one pooled HTTP client shared by every counter (an async one per event
    loop for :meth:`acount_messages`), and counts are cached by request: counting the same
    messages, tools and options again (an agent's middleware, then the model; a plan, then the
    call) makes no second request. :attr:`calls` counts the requests made.

    Args:
        base_url: The server's OpenAI-compatible base URL (``.../v1``) or its root.
        model: The served model name.
        api_key: The server's API key, if it requires one.
        timeout: Seconds to wait for an answer.
        endpoint: ``"render"`` or ``"tokenize"``.
        headers: More headers for every request (a gateway's, as the chat model's
            ``default_headers``).
        params: Query parameters for every request (the chat model's ``default_query``).
        http_client: The HTTP client to send with (the chat model's, with its TLS and proxy
            settings); default: the shared pooled one.
        http_async_client: The async client for :meth:`acount_messages`; default: the
            running event loop's shared one.
    """

    name = "server"
    exact = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        timeout: float = 30.0,
        endpoint: Literal["render", "tokenize"] = "tokenize",
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, object] | None = None,
        http_client: httpx.Client | None = None,
        http_async_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url
        self.server_root = base_url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.timeout = timeout
        self.endpoint = endpoint
        self.calls = 0
        self._headers = dict(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._params = {k: str(v) for k, v in (params or {}).items()}
        self._client = http_client
        self._async_client = http_async_client
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    # -------------------------------------------------------------- HTTP

    def _url(self, path: str) -> str:
        return f"{self.server_root}{path}"

    def _sent(self) -> None:
        with self._lock:
            self.calls += 1

    def _send(self, path: str, body: dict[str, Any]) -> httpx.Response:
        url = self._url(path)
        self._sent()
        try:
            client = self._client or _pooled_client()
            return client.post(
                url, json=body, headers=self._headers, params=self._params, timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise VLLMTimeoutError(url, self.timeout) from exc
        except httpx.TransportError as exc:
            raise VLLMConnectionError(self.server_root, str(exc)) from exc

    async def _asend(self, path: str, body: dict[str, Any]) -> httpx.Response:
        url = self._url(path)
        self._sent()
        try:
            client = self._async_client or _pooled_async_client()
            return await client.post(
                url, json=body, headers=self._headers, params=self._params, timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise VLLMTimeoutError(url, self.timeout) from exc
        except httpx.TransportError as exc:
            raise VLLMConnectionError(self.server_root, str(exc)) from exc

    def _result(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code == 404:
            raise VLLMModelNotFoundError(self.model, self.base_url)
        if response.status_code != 200:
            msg = f"The server's /tokenize answered {response.status_code}: {response.text[:500]}"
            raise TokenCountError(msg)
        result: dict[str, Any] = response.json()
        return result

    def render_status(self) -> int:
        """The HTTP status of a one-message request to the render endpoint (200: served).

        vLLM 0.32 answers 403 unless started with ``--enable-scale-out``; older versions 404.
        """
        body = {"model": self.model, "messages": [{"role": "user", "content": "Hi"}]}
        return self._send(_RENDER_PATH, body).status_code

    # ------------------------------------------------------------ bodies

    def _tokenize_body(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None,
        options: PromptOptions,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages_to_openai_dicts(messages),
            "add_generation_prompt": options.add_generation_prompt,
            "continue_final_message": options.continue_final_message,
            "add_special_tokens": options.add_special_tokens,
        }
        openai_tools = tools_to_openai_dicts(tools)
        if openai_tools:
            body["tools"] = openai_tools
        if options.chat_template is not None:
            body["chat_template"] = options.chat_template
        # /tokenize has no `documents` or `reasoning_effort` field: the chat endpoint merges
        # them into the template variables, so they are sent there.
        variables = {
            k: v
            for k, v in options.template_kwargs().items()
            if k not in ("add_generation_prompt", "continue_final_message")
        }
        if variables:
            body["chat_template_kwargs"] = variables
        return body

    @staticmethod
    def _render_body(tokenize_body: dict[str, Any], options: PromptOptions) -> dict[str, Any]:
        """The chat request itself: the render endpoint takes every chat-completions field."""
        body = {k: v for k, v in tokenize_body.items() if k != "chat_template_kwargs"}
        if options.chat_template_kwargs:
            body["chat_template_kwargs"] = dict(options.chat_template_kwargs)
        if options.documents is not None:
            body["documents"] = list(options.documents)
        if options.reasoning_effort is not None:
            body["reasoning_effort"] = options.reasoning_effort
        return body

    # ------------------------------------------------------------ cache

    def _cached(self, key: bytes) -> int | None:
        with self._lock:
            count = self._counts.get(key)
            if count is not None:
                self._counts.move_to_end(key)
            return count

    def _store(self, key: bytes, count: int) -> int:
        with self._lock:
            self._counts[key] = count
            while len(self._counts) > _SERVER_CACHE_SIZE:
                self._counts.popitem(last=False)
        return count

    # ---------------------------------------------------------- counting

    def _messages_request(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None,
        options: PromptOptions | None,
    ) -> tuple[bytes, dict[str, Any], dict[str, Any] | None]:
        """The cache key, the /tokenize body and (for ``endpoint="render"``) the render body."""
        options = options or _DEFAULT_OPTIONS
        body = self._tokenize_body(messages, tools, options)
        render = self._render_body(body, options) if self.endpoint == "render" else None
        return _digest(body), body, render

    def count_text(self, text: str) -> int:
        """Count plain text with the server's tokenizer (no special tokens added).

        Args:
            text: The text.

        Returns:
            Its token count.
        """
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        key = _digest(body)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return self._store(key, int(self._result(self._send("/tokenize", body))["count"]))

    async def acount_text(self, text: str) -> int:
        """Async :meth:`count_text`, with the event loop's pooled async client."""
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        key = _digest(body)
        cached = self._cached(key)
        if cached is not None:
            return cached
        response = await self._asend("/tokenize", body)
        return self._store(key, int(self._result(response)["count"]))

    def count_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: PromptOptions | None = None,
    ) -> int:
        """Count the prompt the server renders from ``messages``, ``tools`` and ``options``.

        Args:
            messages: The conversation.
            tools: Tool definitions sent with the request.
            options: The request's other prompt-shaping parameters.

        Returns:
            The prompt's token count, as the server computes it.
        """
        key, body, render = self._messages_request(messages, tools, options)
        cached = self._cached(key)
        if cached is not None:
            return cached
        if render is not None:
            rendered = self._send(_RENDER_PATH, render)
            if rendered.status_code == 200:
                return self._store(key, len(rendered.json()["token_ids"]))
            # Refused (a prompt past the window, for one): /tokenize counts any length.
        return self._store(key, int(self._result(self._send("/tokenize", body))["count"]))

    async def acount_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: PromptOptions | None = None,
    ) -> int:
        """Async :meth:`count_messages`, with the event loop's pooled async client."""
        key, body, render = self._messages_request(messages, tools, options)
        cached = self._cached(key)
        if cached is not None:
            return cached
        if render is not None:
            rendered = await self._asend(_RENDER_PATH, render)
            if rendered.status_code == 200:
                return self._store(key, len(rendered.json()["token_ids"]))
        response = await self._asend("/tokenize", body)
        return self._store(key, int(self._result(response)["count"]))

    def __repr__(self) -> str:
        return f"ServerTokenCounter({self.base_url!r}, {self.model!r}, endpoint={self.endpoint!r})"


_RENDER_PATH = "/v1/chat/completions/render"
_SERVER_CACHE_SIZE = 1024
_ASYNC_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)
_CLIENT_LOCK = threading.Lock()


def _digest(body: dict[str, Any]) -> bytes:
    """A short key for a request body (the body of a long conversation is tens of KB)."""
    encoded = json.dumps(body, ensure_ascii=False, sort_keys=True, default=str).encode()
    return hashlib.blake2b(encoded, digest_size=16).digest()


@functools.cache
def _pooled_client() -> httpx.Client:
    """The one HTTP client every server counter shares (keep-alive connections, thread-safe)."""
    return httpx.Client()


def _pooled_async_client() -> httpx.AsyncClient:
    """The running event loop's shared async HTTP client (an async client is bound to a loop)."""
    loop = asyncio.get_running_loop()
    with _CLIENT_LOCK:
        client = _ASYNC_CLIENTS.get(loop)
        if client is None:
            client = _ASYNC_CLIENTS[loop] = httpx.AsyncClient()
    return client


class ApproximateTokenCounter:
    """The four-characters-per-token guess; ``exact=False``.

    Useful only when neither the server nor a tokenizer is reachable. Off by up to -57% on
    JSON full of IDs and on Chinese text with the Qwen tokenizer.

    Args:
        chars_per_token: Characters counted as one token.
        tokens_per_message: Tokens added per message for the template's role markers.

    Example:
        >>> from langchain_core.messages import HumanMessage
        >>> counter = ApproximateTokenCounter()
        >>> counter.count_text("12345678")
        2
        >>> counter.count_messages([HumanMessage("12345678")])
        6
    """

    name = "approximate"
    exact = False

    def __init__(self, chars_per_token: float = 4.0, tokens_per_message: int = 4) -> None:
        if chars_per_token <= 0:
            msg = f"chars_per_token must be positive, got {chars_per_token}"
            raise ValueError(msg)
        self.chars_per_token = chars_per_token
        self.tokens_per_message = tokens_per_message

    def count_text(self, text: str) -> int:
        """Estimate the tokens of ``text`` as ``ceil(len(text) / chars_per_token)``."""
        return math.ceil(len(text) / self.chars_per_token)

    def count_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: PromptOptions | None = None,
    ) -> int:
        """Estimate the prompt: message text, tool calls, tool definitions and documents."""
        total = 0
        for message in _conversation_for_template(messages_to_openai_dicts(messages)):
            text = message["content"]
            if message.get("tool_calls"):
                text += json.dumps(message["tool_calls"], ensure_ascii=False)
            total += self.count_text(text) + self.tokens_per_message
        openai_tools = tools_to_openai_dicts(tools)
        if openai_tools:
            total += self.count_text(json.dumps(openai_tools, ensure_ascii=False))
        if options is not None and options.documents:
            total += self.count_text(json.dumps(list(options.documents), ensure_ascii=False))
        return total

    def __repr__(self) -> str:
        return f"ApproximateTokenCounter(chars_per_token={self.chars_per_token})"
