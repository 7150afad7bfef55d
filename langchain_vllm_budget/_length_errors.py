"""The table of every length / ``max_tokens`` error wording of vLLM's OpenAI-compatible server.

Each :class:`_Wording` is one sentence vLLM has sent back with HTTP 400 when a request did not
fit the model's window (chat completions, completions, responses, and the pooling endpoints that
share their checks). It lists the format strings exactly as they appear in vLLM's source (the
implicit string concatenations joined), the releases that used each, and a compiled pattern whose
named groups carry the numbers.

The releases were established by reading the source of vLLM 0.4.1, 0.5.0, 0.5.4, 0.6.0, 0.6.3,
0.7.0, 0.7.3, 0.8.0, 0.8.5, 0.9.0, 0.10.0, 0.10.1.1, 0.10.2, 0.11.0, 0.11.1, 0.11.2, 0.12.0,
0.13.0, 0.14.0, 0.14.1, 0.16.0, 0.17.1, 0.18.0, 0.19.1, 0.20.0, 0.22.0, 0.24.0, 0.26.0, 0.28.0,
0.30.0, 0.31.0, 0.32.0 and 0.33.0 (their source distributions; 0.32.0 as installed). A range
"A-B" means the format is in every one of those releases from A to B and in none outside;
releases that were not read (0.4.0 and 0.15.x have no source distribution) are covered when both
neighbours agree.

Group names: ``window`` (the context window), ``input`` (prompt tokens), ``output`` (the
``max_tokens`` asked for), ``total``, ``limit`` (the largest prompt the server allowed),
``chars`` / ``max_chars`` (the character pre-check) and ``atleast`` (vLLM's own "at least").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__: list[str] = []

InputBound = Literal["exact", "stated", "cut_at_limit", "from_chars"]
"""How exact the input count of a wording is.

``exact``: the server's full count. ``stated``: a lower bound when vLLM writes "at least" (its
tokenizer stopped one token past the limit). ``cut_at_limit``: vLLM cut the count at limit + 1
without saying so, so a count of exactly limit + 1 is a lower bound. ``from_chars``: the server
counted characters only; the bound is derived from them.
"""

_WINDOW = r"This (?:model's )?maximum context length is (?P<window>\d+) tokens"


@dataclass(frozen=True)
class _Format:
    """One format string of a wording, as in vLLM's source."""

    releases: str
    source: str
    text: str


@dataclass(frozen=True)
class _Wording:
    """One length-error sentence of vLLM, its format strings and how to read its numbers."""

    name: str
    releases: str
    formats: tuple[_Format, ...]
    pattern: re.Pattern[str]
    input_bound: InputBound = "exact"

    @property
    def groups(self) -> frozenset[str]:
        """The named groups the pattern yields."""
        return frozenset(self.pattern.groupindex)


def _wording(
    name: str,
    releases: str,
    pattern: str,
    *formats: tuple[str, str, str],
    input_bound: InputBound = "exact",
) -> _Wording:
    return _Wording(
        name=name,
        releases=releases,
        formats=tuple(_Format(*fmt) for fmt in formats),
        pattern=re.compile(pattern),
        input_bound=input_bound,
    )


_SERVING_ENGINE = "vllm/entrypoints/openai/serving_engine.py"
_ENGINE_SERVING = "vllm/entrypoints/openai/engine/serving.py"
_PARAMS = "vllm/renderers/params.py"

# Order matters only where one pattern is a prefix of another: the stricter comes first.
WORDINGS: tuple[_Wording, ...] = (
    # vLLM 0.32-0.33: the renderer rejects the prompt alone; max_tokens is clamped, not refused.
    _wording(
        "prompt_tokens",
        "0.32.0-0.33.0",
        _WINDOW + r"\. However, your prompt contains (?P<atleast>at least )?(?P<input>\d+) "
        r"input tokens",
        (
            "0.32.0-0.33.0",
            _PARAMS,
            "This model's maximum context length is {self.max_total_tokens} tokens. However, "
            "your prompt contains {qualifier}{token_count} input tokens, which exceeds this "
            "limit even without any output tokens. Please reduce the length of the input prompt.",
        ),
        input_bound="stated",
    ),
    _wording(
        "prompt_chars",
        "0.32.0-0.33.0",
        _WINDOW + r"\. However, your prompt contains (?P<chars>\d+) characters \(more than "
        r"(?P<max_chars>\d+) characters, which is the upper bound for (?P<limit>\d+) input tokens",
        (
            "0.32.0-0.33.0",
            _PARAMS,
            "This model's maximum context length is {self.max_total_tokens} tokens. However, "
            "your prompt contains {len(text)} characters (more than {max_input_chars} "
            "characters, which is the upper bound for {max_input_tokens} input tokens). "
            "Please reduce the length of the input prompt.",
        ),
        input_bound="from_chars",
    ),
    # vLLM 0.18-0.19: the chat/completions serving layer, before the renderer took over.
    _wording(
        "output_and_prompt_sum",
        "0.18.0-0.19.1",
        _WINDOW + r"\. However, you requested (?P<output>\d+) output tokens and your prompt "
        r"contains (?P<input>\d+) input tokens, for a total of (?P<total>\d+) tokens "
        r"\(\d+ \+ \d+ = \d+ > \d+\)",
        (
            "0.18.0-0.19.1",
            _ENGINE_SERVING,
            "This model's maximum context length is {max_model_len} tokens. However, you "
            "requested {max_tokens} output tokens and your prompt contains {token_num} input "
            "tokens, for a total of {token_num + max_tokens} tokens ({token_num} + {max_tokens} "
            "= {token_num + max_tokens} > {max_model_len}). Please reduce the length of the "
            "input prompt or the number of requested output tokens.",
        ),
    ),
    # vLLM 0.18-0.31: the renderer checks prompt + max_tokens; the count stops at limit + 1.
    _wording(
        "output_and_prompt_tokens",
        "0.18.0-0.31.0",
        _WINDOW + r"\. However, you requested (?P<output>\d+) output tokens and your prompt "
        r"contains (?P<atleast>at least )?(?P<input>\d+) input tokens, for a total of "
        r"(?:at least )?(?P<total>\d+) tokens",
        (
            "0.18.0-0.31.0",
            _PARAMS,
            "This model's maximum context length is {self.max_total_tokens} tokens. However, "
            "you requested {self.max_output_tokens} output tokens and your prompt contains "
            "{qualifier}{token_count} input tokens, for a total of {qualifier}{total} tokens. "
            "Please reduce the length of the input prompt or the number of requested output "
            "tokens.",
        ),
        input_bound="stated",
    ),
    _wording(
        "output_and_prompt_chars",
        "0.18.0-0.31.0",
        _WINDOW + r"\. However, you requested (?P<output>\d+) output tokens and your prompt "
        r"contains (?P<chars>\d+) characters \(more than (?P<max_chars>\d+) characters, which "
        r"is the upper bound for (?P<limit>\d+) input tokens",
        (
            "0.18.0-0.31.0",
            _PARAMS,
            "This model's maximum context length is {self.max_total_tokens} tokens. However, "
            "you requested {self.max_output_tokens} output tokens and your prompt contains "
            "{len(text)} characters (more than {max_input_chars} characters, which is the upper "
            "bound for {max_input_tokens} input tokens). Please reduce the length of the input "
            "prompt or the number of requested output tokens.",
        ),
        input_bound="from_chars",
    ),
    # vLLM 0.16-0.17: the first renderer; it cuts the count at limit + 1 without saying so.
    _wording(
        "passed_tokens",
        "0.16.0-0.17.1",
        r"You passed (?P<input>\d+) input tokens and requested (?P<output>\d+) output tokens\. "
        r"However, the model's context length is only (?P<window>\d+) tokens, resulting in a "
        r"maximum input length of (?P<limit>\d+) tokens",
        (
            "0.16.0-0.17.1",
            _PARAMS,
            "You passed {len(tokens)} input tokens and requested {self.max_output_tokens} "
            "output tokens. However, the model's context length is only {self.max_total_tokens} "
            "tokens, resulting in a maximum input length of {max_input_tokens} tokens. Please "
            "reduce the length of the input prompt.",
        ),
        input_bound="cut_at_limit",
    ),
    _wording(
        "passed_chars",
        "0.16.0-0.17.1",
        r"You passed (?P<chars>\d+) input characters and requested (?P<output>\d+) output "
        r"tokens\. However, the model's context length is only (?P<window>\d+) tokens, "
        r"resulting in a maximum input length of (?P<limit>\d+) tokens \(at most "
        r"(?P<max_chars>\d+) characters\)",
        (
            "0.16.0-0.17.1",
            _PARAMS,
            "You passed {len(text)} input characters and requested {self.max_output_tokens} "
            "output tokens. However, the model's context length is only {self.max_total_tokens} "
            "tokens, resulting in a maximum input length of {max_input_tokens} tokens (at most "
            "{max_input_chars} characters). Please reduce the length of the input prompt.",
        ),
        input_bound="from_chars",
    ),
    # vLLM 0.10.1-0.17: prompt fits, prompt + max_tokens does not.
    _wording(
        "max_tokens_too_large",
        "0.10.1.1-0.17.1",
        r"'max_tokens' or 'max_completion_tokens' is too large: (?P<output>\d+)\. This model's "
        r"maximum context length is (?P<window>\d+) tokens and your request has (?P<input>\d+) "
        r"input tokens",
        (
            "0.10.1.1-0.16.0",
            _SERVING_ENGINE + ", " + _ENGINE_SERVING,
            "'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
            "maximum context length is {self.max_model_len} tokens and your request has "
            "{token_num} input tokens ({max_tokens} > {self.max_model_len} - {token_num}).",
        ),
        (
            "0.17.1",
            _ENGINE_SERVING,
            "'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
            "maximum context length is {max_model_len} tokens and your request has {token_num} "
            "input tokens ({max_tokens} > {max_model_len} - {token_num}).",
        ),
    ),
    # vLLM 0.10.1-0.19: the prompt alone reaches the window. On /v1/completions of 0.10.2-0.15
    # the renderer's "maximum context length" is the window minus max_tokens (vLLM #33418).
    _wording(
        "request_has",
        "0.10.1.1-0.19.1",
        _WINDOW + r"\. However, your request has (?P<input>\d+) input tokens",
        (
            "0.10.1.1-0.16.0",
            _SERVING_ENGINE + ", " + _ENGINE_SERVING,
            "This model's maximum context length is {self.max_model_len} tokens. However, your "
            "request has {token_num} input tokens. Please reduce the length of the input "
            "messages.",
        ),
        (
            "0.17.1-0.19.1",
            _ENGINE_SERVING,
            "This model's maximum context length is {max_model_len} tokens. However, your "
            "request has {token_num} input tokens. Please reduce the length of the input "
            "messages.",
        ),
        (
            "0.10.2",
            "vllm/entrypoints/renderer.py",
            "This maximum context length is {max_length} tokens. However, your request has "
            "{len(token_ids)} input tokens. Please reduce the length of the input messages.",
        ),
        (
            "0.11.0-0.14.1",
            "vllm/entrypoints/renderer.py",
            "This model's maximum context length is {max_length} tokens. However, your request "
            "has {len(token_ids)} input tokens. Please reduce the length of the input messages.",
        ),
    ),
    # vLLM 0.14: /v1/completions only.
    _wording(
        "completion_max_tokens_over_window",
        "0.14.0-0.14.1",
        r"'max_tokens' \((?P<output>\d+)\) cannot be greater than the model's maximum context "
        r"length \((?P<window>\d+)\)",
        (
            "0.14.0-0.14.1",
            "vllm/entrypoints/openai/serving_completion.py",
            "'max_tokens' ({request.max_tokens}) cannot be greater than the model's maximum "
            "context length ({self.max_model_len}).",
        ),
    ),
    # vLLM 0.4-0.10: the original serving-layer checks.
    _wording(
        "requested_total",
        "0.4.1-0.10.0",
        _WINDOW + r"\. However, you requested (?P<total>\d+) tokens \((?P<input>\d+) in the "
        r"messages, (?P<output>\d+) in the completion\)",
        (
            "0.4.1-0.6.3",
            _SERVING_ENGINE,
            "This model's maximum context length is {self.max_model_len} tokens. However, you "
            "requested {request.max_tokens + token_num} tokens ({token_num} in the messages, "
            "{request.max_tokens} in the completion). Please reduce the length of the messages "
            "or completion.",
        ),
        (
            "0.7.0-0.10.0",
            _SERVING_ENGINE,
            "This model's maximum context length is {self.max_model_len} tokens. However, you "
            "requested {max_tokens + token_num} tokens ({token_num} in the messages, "
            "{max_tokens} in the completion). Please reduce the length of the messages or "
            "completion.",
        ),
    ),
    _wording(
        "requested_in_messages",
        "0.4.1-0.10.0",
        _WINDOW + r"\. However, you requested (?P<input>\d+) tokens in the messages\b",
        (
            "0.4.1-0.10.0",
            _SERVING_ENGINE,
            "This model's maximum context length is {self.max_model_len} tokens. However, you "
            "requested {token_num} tokens in the messages, Please reduce the length of the "
            "messages.",
        ),
    ),
    # Pooling endpoints (embeddings, score, classify): the same serving layer.
    _wording(
        "pooling_input",
        "0.5.0-0.19.1",
        _WINDOW + r"\. However, you requested (?P<input>\d+) tokens in the input for ",
        (
            "0.5.0-0.6.3",
            _SERVING_ENGINE,
            "This model's maximum context length is {self.max_model_len} tokens. However, you "
            "requested {token_num} tokens in the input for embedding generation. Please reduce "
            "the length of the input.",
        ),
        (
            "0.7.0-0.16.0",
            _SERVING_ENGINE + ", " + _ENGINE_SERVING,
            "This model's maximum context length is {self.max_model_len} tokens. However, you "
            "requested {token_num} tokens in the input for {operation}. Please reduce the "
            "length of the input.",
        ),
        (
            "0.17.1-0.18.0",
            _ENGINE_SERVING,
            "This model's maximum context length is {max_model_len} tokens. However, you "
            "requested {token_num} tokens in the input for {operation}. Please reduce the "
            "length of the input.",
        ),
        (
            "0.19.1",
            _ENGINE_SERVING,
            "This model's maximum context length is {max_model_len} tokens. However, you "
            "requested {token_num} tokens in the input for {operation}. Please reduce the "
            "length of the input prompt.",
        ),
    ),
    # vLLM 0.18-0.33: get_max_tokens(), reached when the renderer let the prompt through.
    _wording(
        "input_length",
        "0.18.0-0.33.0",
        r"Input length \((?P<input>\d+)\) exceeds model's maximum context length "
        r"\((?P<window>\d+)\)",
        (
            "0.18.0-0.33.0",
            "vllm/entrypoints/utils.py, vllm/entrypoints/serve/utils/api_utils.py",
            "Input length ({input_length}) exceeds model's maximum context length "
            "({max_model_len}).",
        ),
    ),
    # The engine's own input check (decoder prompts; an encoder prompt's limit is not the window).
    _wording(
        "prompt_total_length",
        "0.6.0-0.8.0",
        r"The prompt \(total length (?P<input>\d+)\) is too long to fit into the model "
        r"\(context length (?P<window>\d+)\)",
        (
            "0.6.0-0.8.0",
            "vllm/engine/llm_engine.py, vllm/v1/engine/processor.py",
            "The prompt (total length {len(prompt_ids)}) is too long to fit into the model "
            "(context length {max_prompt_len}). Make sure that `max_model_len` is no smaller "
            "than the number of text tokens plus multimodal tokens. For image inputs, the "
            "number of image tokens depends on the number of images, and possibly their aspect "
            "ratios as well.",
        ),
    ),
    _wording(
        "prompt_length_of",
        "0.7.3-0.8.0",
        r"Prompt length of (?P<input>\d+) is longer than the maximum model length of "
        r"(?P<window>\d+)",
        (
            "0.7.3-0.8.0",
            "vllm/v1/engine/processor.py",
            "Prompt length of {len(prompt_ids)} is longer than the maximum model length of "
            "{self.model_config.max_model_len}.",
        ),
    ),
    _wording(
        "decoder_prompt_plus_output",
        "0.11.1-0.33.0",
        r"The decoder prompt \(length (?P<input>\d+)\) plus the number of requested output "
        r"tokens \(at least 1\) is longer than the maximum model length of (?P<window>\d+)",
        (
            "0.11.1-0.33.0",
            "vllm/v1/engine/processor.py, vllm/v1/engine/input_processor.py",
            "The {prompt_type} prompt (length {prompt_len}) plus the number of requested output "
            "tokens (at least 1) is longer than the maximum model length of {max_prompt_len}. "
            "{suggestion}",
        ),
    ),
    _wording(
        "decoder_prompt",
        "0.8.5-0.33.0",
        r"The decoder prompt \(length (?P<input>\d+)\) is longer than the maximum model length "
        r"of (?P<window>\d+)",
        (
            "0.8.5-0.10.2",
            "vllm/engine/llm_engine.py, vllm/v1/engine/processor.py",
            "The {prompt_type} prompt (length {len(prompt_ids)}) is longer than the maximum "
            "model length of {max_prompt_len}. {suggestion}",
        ),
        (
            "0.11.0-0.33.0",
            "vllm/v1/engine/processor.py, vllm/v1/engine/input_processor.py",
            "The {prompt_type} prompt (length {prompt_len}) is longer than the maximum model "
            "length of {max_prompt_len}. {suggestion}",
        ),
    ),
    # /v1/responses.
    _wording(
        "responses_prompt_length",
        "0.11.1-0.33.0",
        r"The engine prompt length (?P<input>\d+) exceeds the max_model_len (?P<window>\d+)",
        (
            "0.11.1-0.14.1",
            "vllm/entrypoints/openai/serving_responses.py",
            "The engine prompt length {len(engine_prompt['prompt_token_ids'])} exceeds the "
            "max_model_len {self.max_model_len}. Please reduce prompt.",
        ),
        (
            "0.16.0",
            "vllm/entrypoints/openai/responses/serving.py",
            "The engine prompt length {prompt_len} exceeds the max_model_len "
            "{self.max_model_len}. Please reduce prompt.",
        ),
        (
            "0.17.1-0.33.0",
            "vllm/entrypoints/openai/responses/serving.py",
            "The engine prompt length {prompt_len} exceeds the max_model_len {max_model_len}. "
            "Please reduce prompt.",
        ),
    ),
    # max_tokens (max_completion_tokens, Responses' max_output_tokens) larger than the window.
    _wording(
        "max_tokens_over_window",
        "0.16.0-0.33.0",
        r"\b(?:max_tokens|max_completion_tokens|max_output_tokens)=(?P<output>\d+) ?cannot be "
        r"greater than max_model_len=(?:max_total_tokens=)?(?P<window>\d+)",
        (
            "0.16.0-0.19.1",
            _PARAMS,
            "{self.max_output_tokens_param}={max_output_tokens}cannot be greater than "
            "{self.max_total_tokens_param}={max_total_tokens=}. Please request fewer output "
            "tokens.",
        ),
        (
            "0.20.0-0.30.0",
            _PARAMS,
            "{self.max_output_tokens_param}={max_output_tokens} cannot be greater than "
            "{self.max_total_tokens_param}={max_total_tokens=}. Please request fewer output "
            "tokens.",
        ),
        (
            "0.31.0-0.33.0",
            _PARAMS,
            "{self.max_output_tokens_param}={max_output_tokens} cannot be greater than "
            "{self.max_total_tokens_param}={max_total_tokens}. Please request fewer output "
            "tokens.",
        ),
    ),
    # The sampling parameters' own check: a max_tokens of 0 (or less) reached the engine.
    _wording(
        "max_tokens_zero",
        "0.4.1-0.33.0",
        r"max_tokens must be at least 1, got (?P<output>-?\d+)",
        (
            "0.4.1-0.33.0",
            "vllm/sampling_params.py",
            "max_tokens must be at least 1, got {self.max_tokens}.",
        ),
    ),
    # Any other "maximum context length is N tokens" (a release or fork not in this table).
    _wording(
        "context_length_only",
        "fallback",
        r"maximum context length is (?P<window>\d+) tokens",
    ),
)


@dataclass(frozen=True)
class _Reading:
    """The numbers read from one message."""

    wording: _Wording
    window: int | None
    input_tokens: int | None
    output_tokens: int | None
    input_is_lower_bound: bool


def _normalise(message: str) -> str:
    """Undo what carrying the message did to it: escaped quotes, wrapped lines."""
    return " ".join(message.replace("\\'", "'").split())


def read_length_error(message: str) -> _Reading | None:
    """Match ``message`` against :data:`WORDINGS` and read its numbers.

    Args:
        message: A 400's error text, alone or inside the client's ``Error code: 400 - {...}``.

    Returns:
        The first wording that matches and its numbers, or ``None``.
    """
    text = _normalise(message)
    for wording in WORDINGS:
        match = wording.pattern.search(text)
        if match is not None:
            return _read(wording, match)
    return None


def _read(wording: _Wording, match: re.Match[str]) -> _Reading:
    groups = match.groupdict()
    stated = groups.pop("atleast", None) is not None
    found = {name: int(value) for name, value in groups.items() if value is not None}
    input_tokens = found.get("input")
    lower_bound = False
    if wording.input_bound == "stated":
        lower_bound = stated
    elif wording.input_bound == "cut_at_limit":
        lower_bound = input_tokens == found["limit"] + 1
    elif wording.input_bound == "from_chars":
        # More characters than the limit's worth: at least limit + 1 tokens, and at least
        # chars / max_chars_per_token (vLLM's max_chars = limit * max_chars_per_token).
        limit, chars, max_chars = found["limit"], found["chars"], found["max_chars"]
        from_chars = -(-chars * limit // max_chars) if max_chars > 0 else 0
        input_tokens = max(limit + 1, from_chars)
        lower_bound = True
    return _Reading(
        wording=wording,
        window=found.get("window"),
        input_tokens=input_tokens,
        output_tokens=found.get("output"),
        input_is_lower_bound=lower_bound,
    )
