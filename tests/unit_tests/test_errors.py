"""Typed errors and the parsing of vLLM's length errors."""

from __future__ import annotations

import pytest
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelConnectionError,
    ModelNotFoundError,
    ModelTimeoutError,
)

from langchain_vllm_budget.errors import (
    VLLMConnectionError,
    VLLMContextOverflowError,
    VLLMModelNotFoundError,
    VLLMTimeoutError,
    parse_length_error,
)

# Wordings taken from vLLM 0.32 (renderers/params.py, sampling_params.py,
# entrypoints/serve/utils/api_utils.py) and from older vLLM releases.
WORDINGS = [
    (
        "This model's maximum context length is 2048 tokens. However, your prompt contains at "
        "least 2049 input tokens, which exceeds this limit even without any output tokens. "
        "Please reduce the length of the input prompt.",
        (2048, 2049, None, "prompt_tokens"),
    ),
    (
        "This model's maximum context length is 12288 tokens. However, your prompt contains "
        "13000 input tokens, which exceeds this limit even without any output tokens.",
        (12288, 13000, None, "prompt_tokens"),
    ),
    (
        "This model's maximum context length is 2048 tokens. However, your prompt contains "
        "90000 characters (more than 81920 characters, which is the upper bound for 2048 "
        "input tokens). Please reduce the length of the input prompt.",
        (2048, None, None, "prompt_chars"),
    ),
    ("max_tokens must be at least 1, got 0.", (None, None, 0, "max_tokens_zero")),
    (
        "max_tokens=4096 cannot be greater than max_model_len=2048. Please request fewer "
        "output tokens.",
        (2048, None, 4096, "max_tokens_over_window"),
    ),
    (
        "This model's maximum context length is 4096 tokens. However, you requested 5000 "
        "tokens (4000 in the messages, 1000 in the completion). Please reduce the length of "
        "the messages or completion.",
        (4096, 4000, 1000, "requested_total"),
    ),
    (
        "Input length (3000) exceeds model's maximum context length (2048).",
        (2048, 3000, None, "input_length"),
    ),
]


@pytest.mark.parametrize(("message", "expected"), WORDINGS)
def test_parse_every_wording(message, expected) -> None:
    details = parse_length_error(message)
    assert details is not None
    assert (
        details.max_model_len,
        details.input_tokens,
        details.requested_max_tokens,
        details.wording,
    ) == expected


@pytest.mark.parametrize(
    "message",
    [
        "temperature must be non-negative, got -1.",
        "The model `foo` does not exist.",
        '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser',
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
