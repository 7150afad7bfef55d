"""Typed errors and the parsing of vLLM's length errors."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelConnectionError,
    ModelNotFoundError,
    ModelTimeoutError,
)

from langchain_vllm_budget._length_errors import WORDINGS
from langchain_vllm_budget.chat_models._error_mapping import ServerTarget, map_openai_error
from langchain_vllm_budget.errors import (
    VLLMConnectionError,
    VLLMContextOverflowError,
    VLLMModelNotFoundError,
    VLLMTimeoutError,
    parse_length_error,
)

_SUGGESTION = "Make sure that `max_model_len` is no smaller than the number of text tokens."

# One case per format string of the wording table: (wording, the format's releases, the value of
# each placeholder expression of vLLM's f-string, expected (window, input, max_tokens, lower
# bound)). The message is rendered from the table's verbatim format string, not retyped.
CASES: list[tuple[str, str, dict[str, object], tuple[int | None, ...]]] = [
    # vLLM 0.32-0.33: "at least" = the renderer stopped counting at window + 1.
    (
        "prompt_tokens",
        "0.32.0-0.33.0",
        {"self.max_total_tokens": 2048, "qualifier": "at least ", "token_count": 2049},
        (2048, 2049, None, True),
    ),
    (
        "prompt_tokens",
        "0.32.0-0.33.0",
        {"self.max_total_tokens": 2048, "qualifier": "", "token_count": 3000},
        (2048, 3000, None, False),
    ),
    # 90000 chars > 81920 = 2048 tokens x 40 chars: at least ceil(90000 / 40) = 2250 tokens.
    (
        "prompt_chars",
        "0.32.0-0.33.0",
        {
            "self.max_total_tokens": 2048,
            "len(text)": 90000,
            "max_input_chars": 81920,
            "max_input_tokens": 2048,
        },
        (2048, 2250, None, True),
    ),
    (
        "output_and_prompt_sum",
        "0.18.0-0.19.1",
        {
            "max_model_len": 4096,
            "max_tokens": 1000,
            "token_num": 3500,
            "token_num + max_tokens": 4500,
        },
        (4096, 3500, 1000, False),
    ),
    (
        "output_and_prompt_tokens",
        "0.18.0-0.31.0",
        {
            "self.max_total_tokens": 32768,
            "self.max_output_tokens": 8192,
            "qualifier": "at least ",
            "token_count": 24577,
            "total": 32769,
        },
        (32768, 24577, 8192, True),
    ),
    (
        "output_and_prompt_tokens",
        "0.18.0-0.31.0",
        {
            "self.max_total_tokens": 32768,
            "self.max_output_tokens": 8192,
            "qualifier": "",
            "token_count": 25000,
            "total": 33192,
        },
        (32768, 25000, 8192, False),
    ),
    # Limit 8192 - 4096 = 4096 tokens x 8 chars: 50000 chars are at least 6250 tokens.
    (
        "output_and_prompt_chars",
        "0.18.0-0.31.0",
        {
            "self.max_total_tokens": 8192,
            "self.max_output_tokens": 4096,
            "len(text)": 50000,
            "max_input_chars": 32768,
            "max_input_tokens": 4096,
        },
        (8192, 6250, 4096, True),
    ),
    # 0.16-0.17 cut the count at limit + 1 = 3073 without saying "at least".
    (
        "passed_tokens",
        "0.16.0-0.17.1",
        {
            "len(tokens)": 3073,
            "self.max_output_tokens": 1024,
            "self.max_total_tokens": 4096,
            "max_input_tokens": 3072,
        },
        (4096, 3073, 1024, True),
    ),
    (
        "passed_tokens",
        "0.16.0-0.17.1",
        {
            "len(tokens)": 3500,
            "self.max_output_tokens": 1024,
            "self.max_total_tokens": 4096,
            "max_input_tokens": 3072,
        },
        (4096, 3500, 1024, False),
    ),
    (
        "passed_chars",
        "0.16.0-0.17.1",
        {
            "len(text)": 20000,
            "self.max_output_tokens": 512,
            "self.max_total_tokens": 2048,
            "max_input_tokens": 1536,
            "max_input_chars": 15360,
        },
        (2048, 2000, 512, True),
    ),
    (
        "max_tokens_too_large",
        "0.10.1.1-0.16.0",
        {"max_tokens": 1000, "self.max_model_len": 2048, "token_num": 1500},
        (2048, 1500, 1000, False),
    ),
    (
        "max_tokens_too_large",
        "0.17.1",
        {"max_tokens": 1000, "max_model_len": 2048, "token_num": 1500},
        (2048, 1500, 1000, False),
    ),
    (
        "request_has",
        "0.10.1.1-0.16.0",
        {"self.max_model_len": 2048, "token_num": 2100},
        (2048, 2100, None, False),
    ),
    (
        "request_has",
        "0.17.1-0.19.1",
        {"max_model_len": 2048, "token_num": 2048},
        (2048, 2048, None, False),
    ),
    (
        "request_has",
        "0.10.2",
        {"max_length": 2048, "len(token_ids)": 2100},
        (2048, 2100, None, False),
    ),
    (
        "request_has",
        "0.11.0-0.14.1",
        {"max_length": 2048, "len(token_ids)": 2100},
        (2048, 2100, None, False),
    ),
    (
        "completion_max_tokens_over_window",
        "0.14.0-0.14.1",
        {"request.max_tokens": 5000, "self.max_model_len": 4096},
        (4096, None, 5000, False),
    ),
    (
        "requested_total",
        "0.4.1-0.6.3",
        {
            "self.max_model_len": 4096,
            "request.max_tokens + token_num": 5000,
            "token_num": 4000,
            "request.max_tokens": 1000,
        },
        (4096, 4000, 1000, False),
    ),
    (
        "requested_total",
        "0.7.0-0.10.0",
        {
            "self.max_model_len": 6048,
            "max_tokens + token_num": 6616,
            "token_num": 568,
            "max_tokens": 6048,
        },
        (6048, 568, 6048, False),
    ),
    (
        "requested_in_messages",
        "0.4.1-0.10.0",
        {"self.max_model_len": 8192, "token_num": 8193},
        (8192, 8193, None, False),
    ),
    (
        "pooling_input",
        "0.5.0-0.6.3",
        {"self.max_model_len": 512, "token_num": 548},
        (512, 548, None, False),
    ),
    (
        "pooling_input",
        "0.7.0-0.16.0",
        {"self.max_model_len": 512, "token_num": 548, "operation": "embedding generation"},
        (512, 548, None, False),
    ),
    (
        "pooling_input",
        "0.17.1-0.18.0",
        {"max_model_len": 512, "token_num": 600, "operation": "score"},
        (512, 600, None, False),
    ),
    (
        "pooling_input",
        "0.19.1",
        {"max_model_len": 512, "token_num": 600, "operation": "classification"},
        (512, 600, None, False),
    ),
    (
        "input_length",
        "0.18.0-0.33.0",
        {"input_length": 3000, "max_model_len": 2048},
        (2048, 3000, None, False),
    ),
    (
        "prompt_total_length",
        "0.6.0-0.8.0",
        {"len(prompt_ids)": 5000, "max_prompt_len": 4096},
        (4096, 5000, None, False),
    ),
    (
        "prompt_length_of",
        "0.7.3-0.8.0",
        {"len(prompt_ids)": 5000, "self.model_config.max_model_len": 4096},
        (4096, 5000, None, False),
    ),
    (
        "decoder_prompt_plus_output",
        "0.11.1-0.33.0",
        {
            "prompt_type": "decoder",
            "prompt_len": 4096,
            "max_prompt_len": 4096,
            "suggestion": _SUGGESTION,
        },
        (4096, 4096, None, False),
    ),
    (
        "decoder_prompt",
        "0.8.5-0.10.2",
        {
            "prompt_type": "decoder",
            "len(prompt_ids)": 5000,
            "max_prompt_len": 4096,
            "suggestion": _SUGGESTION,
        },
        (4096, 5000, None, False),
    ),
    (
        "decoder_prompt",
        "0.11.0-0.33.0",
        {
            "prompt_type": "decoder",
            "prompt_len": 5000,
            "max_prompt_len": 4096,
            "suggestion": _SUGGESTION,
        },
        (4096, 5000, None, False),
    ),
    (
        "responses_prompt_length",
        "0.11.1-0.14.1",
        {"len(engine_prompt['prompt_token_ids'])": 4100, "self.max_model_len": 4096},
        (4096, 4100, None, False),
    ),
    (
        "responses_prompt_length",
        "0.16.0",
        {"prompt_len": 4096, "self.max_model_len": 4096},
        (4096, 4096, None, False),
    ),
    (
        "responses_prompt_length",
        "0.17.1-0.33.0",
        {"prompt_len": 4100, "max_model_len": 4096},
        (4096, 4100, None, False),
    ),
    (
        "max_tokens_over_window",
        "0.16.0-0.19.1",
        {
            "self.max_output_tokens_param": "max_completion_tokens",
            "max_output_tokens": 4096,
            "self.max_total_tokens_param": "max_model_len",
            "max_total_tokens": 2048,
        },
        (2048, None, 4096, False),
    ),
    (
        "max_tokens_over_window",
        "0.20.0-0.30.0",
        {
            "self.max_output_tokens_param": "max_output_tokens",
            "max_output_tokens": 4096,
            "self.max_total_tokens_param": "max_model_len",
            "max_total_tokens": 2048,
        },
        (2048, None, 4096, False),
    ),
    (
        "max_tokens_over_window",
        "0.31.0-0.33.0",
        {
            "self.max_output_tokens_param": "max_tokens",
            "max_output_tokens": 4096,
            "self.max_total_tokens_param": "max_model_len",
            "max_total_tokens": 2048,
        },
        (2048, None, 4096, False),
    ),
    (
        "max_tokens_zero",
        "0.4.1-0.33.0",
        {"self.max_tokens": 0},
        (None, None, 0, False),
    ),
    (
        "max_tokens_zero",
        "0.4.1-0.33.0",
        {"self.max_tokens": -186},
        (None, None, -186, False),
    ),
]


def _format(name: str, releases: str) -> str:
    wording = next(w for w in WORDINGS if w.name == name)
    return next(f.text for f in wording.formats if f.releases == releases)


def _render(template: str, values: dict[str, object]) -> str:
    """Render vLLM's f-string text the way Python would (``{x=}`` prints ``x=<value>``)."""

    def field(match: re.Match[str]) -> str:
        expression = match.group(1)
        if expression.endswith("="):
            return f"{expression}{values[expression[:-1]]!r}"
        return str(values[expression])

    return re.sub(r"\{([^{}]+)\}", field, template)


def _numbers(message: str) -> tuple[int | None, ...] | None:
    details = parse_length_error(message)
    if details is None:
        return None
    return (
        details.max_model_len,
        details.input_tokens,
        details.requested_max_tokens,
        details.input_tokens_is_lower_bound,
    )


@pytest.mark.parametrize(
    ("name", "releases", "values", "expected"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)],
)
def test_every_vllm_format_parses(name, releases, values, expected) -> None:
    message = _render(_format(name, releases), values)
    assert "{" not in message
    details = parse_length_error(message)
    assert details is not None
    assert details.wording == name
    assert _numbers(message) == expected


def test_every_format_of_the_table_has_a_case() -> None:
    in_table = {(w.name, f.releases) for w in WORDINGS for f in w.formats}
    assert in_table == {(c[0], c[1]) for c in CASES}
    assert all(w.formats for w in WORDINGS if w.name != "context_length_only")


def test_wording_names_are_unique_and_dated() -> None:
    names = [w.name for w in WORDINGS]
    assert len(names) == len(set(names))
    for wording in WORDINGS:
        assert wording.releases
        for fmt in wording.formats:
            assert fmt.source.startswith("vllm/")


@pytest.mark.parametrize(
    "wrap",
    [
        # vLLM's validation errors append the parameter (0.14+).
        lambda m: f"{m} (parameter=input_tokens, value=24577)",
        # The openai client's BadRequestError text, with the body as a Python dict.
        lambda m: f"Error code: 400 - {{'error': {{'message': {m!r}, 'code': 400}}}}",
        # Escaped quotes and a log line wrapped over two lines.
        lambda m: m.replace("'", "\\'").replace(" However,", "\n   However,"),
    ],
)
def test_wrapped_messages_parse(wrap) -> None:
    message = _render(_format("output_and_prompt_tokens", "0.18.0-0.31.0"), CASES[4][2])
    assert _numbers(wrap(message)) == (32768, 24577, 8192, True)


def test_unknown_wording_with_a_window_still_gives_the_window() -> None:
    details = parse_length_error(
        "This model's maximum context length is 8192 tokens. Your messages are too long."
    )
    assert details is not None
    assert details.wording == "context_length_only"
    assert (details.max_model_len, details.input_tokens) == (8192, None)


@pytest.mark.parametrize(
    "message",
    [
        "temperature must be non-negative, got -1.",
        "The model `foo` does not exist.",
        '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser',
        "tool_choice must be one of 'none', 'auto', 'required' or a named tool.",
        "n must be at least 1, got 0.",
        "min_tokens must be less than or equal to max_tokens=10, got 20.",
        "truncate_prompt_tokens=5000 cannot be greater than max_model_len = 4096. Please "
        "request a smaller truncation size.",
        # An encoder prompt's limit is the encoder cache, not the context window.
        "The encoder prompt (length 5000) is longer than the maximum model length of 1500.",
        # vLLM 0.4-0.10's scheduler only logs this; the request ends with finish_reason=length.
        "Input prompt (3000 tokens) is too long and exceeds limit of 2048",
    ],
)
def test_other_errors_are_not_length_errors(message) -> None:
    assert parse_length_error(message) is None


def test_overflow_error_numbers_and_message() -> None:
    err = VLLMContextOverflowError(
        input_tokens=12100, max_model_len=12288, safety_margin=128, min_output_tokens=256
    )
    assert isinstance(err, ContextOverflowError)
    assert err.shortfall == 196
    text = str(err)
    for number in ("12100", "12288", "128", "256", "196"):
        assert number in text
    assert "on_overflow" in text
    assert err.source == "budget"


def test_overflow_error_from_server_keeps_its_message() -> None:
    err = VLLMContextOverflowError(
        input_tokens=2049,
        max_model_len=2048,
        min_output_tokens=1,
        source="server",
        server_message="max context 2048",
    )
    assert err.shortfall == 2
    assert "vLLM rejected" in str(err)
    assert "max context 2048" in str(err)


def test_other_typed_errors() -> None:
    not_found = VLLMModelNotFoundError("qwen", "http://h/v1", ["tiny-qwen"])
    assert isinstance(not_found, ModelNotFoundError)
    assert "tiny-qwen" in str(not_found)
    assert "served-model-name" in str(not_found)
    conn = VLLMConnectionError("http://h/v1", "refused")
    assert isinstance(conn, ModelConnectionError)
    assert conn.is_retryable
    assert "VLLM_API_BASE" in str(conn)
    timeout = VLLMTimeoutError("http://h/v1", 2.5)
    assert isinstance(timeout, ModelTimeoutError)
    assert "2.5 s" in str(timeout)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, "No available workers (all circuits open or unhealthy)"),
        (503, "Error code: 503"),
        (500, "Request failed: error sending request for url (http://127.0.0.1:9/v1/chat)"),
    ],
)
def test_a_router_with_no_replica_left_is_a_connection_error(status: int, body: str) -> None:
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    failure = openai.InternalServerError(
        body, response=httpx.Response(status, request=request), body=None
    )
    mapped = map_openai_error(failure, ServerTarget("http://127.0.0.1:9/v1", "m"))
    assert isinstance(mapped, VLLMConnectionError)
    assert "no replica reachable" in str(mapped)
    engine_failure = openai.InternalServerError(
        "EngineCore encountered an issue.",
        response=httpx.Response(500, request=request),
        body=None,
    )
    assert not isinstance(
        map_openai_error(engine_failure, ServerTarget("http://127.0.0.1:9/v1", "m")),
        VLLMConnectionError,
    )
