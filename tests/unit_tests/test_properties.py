"""Property-based tests: every input yields a plan/response or a typed, explained error.

Hypothesis generates budgets, environment settings, conversations (with tool calls and tool
results), overflow policies, vLLM error texts and API keys. Whatever comes in, the result is
a budget decision that fits the window, or an error of this package's (or pydantic's
validation) type whose message carries the numbers and says what to change; never an
unhandled exception, never a request larger than the window.
"""

# Property tests branch on the outcome (answer or typed error) and check each branch.
# ruff: noqa: PT017

from __future__ import annotations

import os
import re
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.load import dumpd, dumps
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import ValidationError

from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.chat_models import ChatVLLM
from langchain_vllm_budget.compaction import Compactor
from langchain_vllm_budget.compression import SummarySpec
from langchain_vllm_budget.errors import VLLMContextOverflowError, parse_length_error
from langchain_vllm_budget.overflow import apply_budget
from langchain_vllm_budget.tokenizers import ApproximateTokenCounter

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.integers(min_value=-5, max_value=40_000)


def _numbers_in(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"-?\d+", text)}


# --------------------------------------------------------------------------- budgets


@FAST
@given(
    window=sizes,
    reserve=sizes,
    margin=sizes,
    min_output=sizes,
    input_tokens=sizes,
    requested=st.none() | sizes,
)
def test_budget_plans_fit_or_settings_are_rejected(
    window: int,
    reserve: int,
    margin: int,
    min_output: int,
    input_tokens: int,
    requested: int | None,
) -> None:
    try:
        budget = TokenBudget(
            max_model_len=window,
            output_reserve=reserve,
            safety_margin=margin,
            min_output_tokens=min_output,
        )
    except ValidationError as exc:
        # The message names the offending setting(s).
        assert any(
            name in str(exc)
            for name in ("max_model_len", "output_reserve", "safety_margin", "min_output_tokens")
        )
        return
    try:
        plan = budget.plan(input_tokens, requested)
    except ValueError as exc:
        assert input_tokens < 0 or (requested is not None and requested < 1)
        # The message quotes the bad number.
        assert _numbers_in(str(exc)) & {input_tokens, requested}
        return
    # Whatever the input, what is granted never overruns the window.
    assert plan.max_tokens >= 0
    if plan.max_tokens > 0:
        assert plan.input_tokens + plan.max_tokens + plan.safety_margin <= plan.max_model_len
    assert plan.max_tokens <= (requested if requested is not None else reserve)
    needed = min_output if requested is None else min(min_output, requested)
    assert plan.fits == (plan.max_tokens >= needed)
    assert (plan.shortfall == 0) == plan.fits


env_values = (
    st.none()
    | st.sampled_from(["", " ", "abc", "1e3", "-1", "0", "12.5"])
    | st.integers(min_value=-10, max_value=50_000).map(str)
)


@FAST
@given(window=env_values, reserve=env_values, margin=env_values, min_output=env_values)
def test_budget_from_env_settings(
    window: str | None, reserve: str | None, margin: str | None, min_output: str | None
) -> None:
    env = {
        "VLLM_BUDGET_MAX_MODEL_LEN": window,
        "VLLM_BUDGET_OUTPUT_RESERVE": reserve,
        "VLLM_BUDGET_SAFETY_MARGIN": margin,
        "VLLM_BUDGET_MIN_OUTPUT_TOKENS": min_output,
    }
    patched = {k: v for k, v in env.items() if v is not None}
    cleared = [k for k, v in env.items() if v is None]
    with mock.patch.dict(os.environ, patched):
        for key in cleared:
            os.environ.pop(key, None)
        try:
            budget = TokenBudget.from_env()
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            text = str(exc)
            # Either a variable that is not an integer, named with its value, or a setting
            # out of range, named.
            assert re.search(
                r"VLLM_BUDGET_\w+ must be a whole number|max_model_len|output_reserve|"
                r"safety_margin|min_output_tokens",
                text,
            ), text
            return
    for var, value in env.items():
        if value is not None and value.strip():
            field = {
                "VLLM_BUDGET_MAX_MODEL_LEN": "max_model_len",
                "VLLM_BUDGET_OUTPUT_RESERVE": "output_reserve",
                "VLLM_BUDGET_SAFETY_MARGIN": "safety_margin",
                "VLLM_BUDGET_MIN_OUTPUT_TOKENS": "min_output_tokens",
            }[var]
            assert getattr(budget, field) == int(value)


# --------------------------------------------------------------------------- conversations

text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=400
)


@st.composite
def conversations(draw: st.DrawFn) -> list[BaseMessage]:
    messages: list[BaseMessage] = []
    if draw(st.booleans()):
        messages.append(SystemMessage(draw(text)))
    for turn in range(draw(st.integers(min_value=1, max_value=6))):
        messages.append(HumanMessage(draw(text) or "?"))
        if draw(st.booleans()):
            call_id = f"call_{turn}"
            messages.append(
                AIMessage(
                    "",
                    tool_calls=[
                        {
                            "name": "lookup",
                            "args": {"q": draw(text)},
                            "id": call_id,
                            "type": "tool_call",
                        }
                    ],
                )
            )
            messages.append(ToolMessage(draw(text), tool_call_id=call_id))
        if draw(st.booleans()):
            messages.append(AIMessage(draw(text)))
    return messages


def _tool_pairs_intact(messages: list[BaseMessage]) -> bool:
    calls = {call["id"] for m in messages if isinstance(m, AIMessage) for call in m.tool_calls}
    return all(m.tool_call_id in calls for m in messages if isinstance(m, ToolMessage))


@SLOW
@given(
    messages=conversations(),
    window=st.integers(min_value=64, max_value=2048),
    reserve=st.integers(min_value=1, max_value=512),
    requested=st.none() | st.integers(min_value=1, max_value=600),
    policy=st.sampled_from(["raise", "trim", "summarize", "warn"]),
)
def test_every_policy_fits_the_window_or_raises_typed(
    messages: list[BaseMessage],
    window: int,
    reserve: int,
    requested: int | None,
    policy: str,
) -> None:
    try:
        budget = TokenBudget(
            max_model_len=window,
            output_reserve=reserve,
            safety_margin=8,
            min_output_tokens=min(reserve, 16),
        )
    except ValidationError:
        return
    counter = ApproximateTokenCounter()
    try:
        outcome = apply_budget(
            messages,
            budget=budget,
            count=counter.count_messages,
            policy=policy,  # type: ignore[arg-type]
            requested_max_tokens=requested,
            # the extractive (model-free) summary: deterministic
            compactor=Compactor(summary=SummarySpec(max_tokens=32, counter=counter)),
        )
    except VLLMContextOverflowError as exc:
        assert exc.shortfall > 0 or exc.input_tokens + exc.safety_margin >= window
        assert exc.max_model_len == window
        assert f"{window} tokens" in str(exc)
        if exc.compacted:  # compaction ran: the advice is what to shorten, not to compact
            assert policy in ("trim", "summarize")
            assert "Shorten the newest message" in str(exc)
        else:
            assert "on_overflow" in str(exc)
        return
    plan = outcome.plan
    assert plan.max_tokens >= 1
    assert counter.count_messages(outcome.messages) == plan.input_tokens
    assert plan.input_tokens + plan.max_tokens + plan.safety_margin <= window
    if requested is not None:
        assert plan.max_tokens <= requested
    if policy == "raise":
        assert outcome.action == "none"
        assert outcome.messages == messages
    if outcome.action in ("trimmed", "summarized"):
        assert _tool_pairs_intact(outcome.messages)
        assert any(isinstance(m, HumanMessage) for m in outcome.messages)


# --------------------------------------------------------------------------- errors

_WORDINGS = (
    "This model's maximum context length is {w} tokens. However, your prompt contains at "
    "least {i} input tokens, which exceeds this limit even without any output tokens.",
    "This model's maximum context length is {w} tokens. However, you requested {t} tokens "
    "({i} in the messages, {o} in the completion). Please reduce the length.",
    "max_tokens={o} cannot be greater than max_model_len={w}.",
    "'max_tokens must be at least 1, got {o}.'",
)


@FAST
@given(
    wording=st.sampled_from(_WORDINGS),
    window=st.integers(min_value=1, max_value=10**6),
    input_tokens=st.integers(min_value=0, max_value=10**6),
    output=st.integers(min_value=0, max_value=10**6),
    prefix=text,
)
def test_length_errors_parse_their_numbers(
    wording: str, window: int, input_tokens: int, output: int, prefix: str
) -> None:
    message = (
        prefix + " " + wording.format(w=window, i=input_tokens, o=output, t=input_tokens + output)
    )
    details = parse_length_error(message)
    assert details is not None
    if "{w}" in wording:
        assert details.max_model_len == window
    if "{i}" in wording:
        assert details.input_tokens == input_tokens


@FAST
@given(message=text)
def test_any_error_text_parses_or_is_none(message: str) -> None:
    details = parse_length_error(message)
    assert details is None or details.wording


@FAST
@given(
    input_tokens=st.integers(min_value=0, max_value=10**6),
    window=st.integers(min_value=1, max_value=10**6),
    margin=st.integers(min_value=0, max_value=1000),
    min_output=st.integers(min_value=1, max_value=1000),
)
def test_overflow_errors_carry_their_numbers(
    input_tokens: int, window: int, margin: int, min_output: int
) -> None:
    exc = VLLMContextOverflowError(
        input_tokens=input_tokens,
        max_model_len=window,
        safety_margin=margin,
        min_output_tokens=min_output,
    )
    assert exc.shortfall == max(input_tokens + margin + min_output - window, 0)
    numbers = _numbers_in(str(exc))
    assert {input_tokens, window, margin, min_output, exc.shortfall} <= numbers


# --------------------------------------------------------------------------- the model


@FAST
@given(
    policy=st.text(max_size=12),
    counter=st.text(max_size=14),
    reserve=st.integers(min_value=-5, max_value=10_000),
)
def test_chat_model_settings_validate(policy: str, counter: str, reserve: int) -> None:
    try:
        model = ChatVLLM(
            model="m",
            base_url="http://127.0.0.1:9/v1",
            on_overflow=policy,  # type: ignore[arg-type]
            token_counter=counter,  # type: ignore[arg-type]
            budget={"output_reserve": reserve, "min_output_tokens": 1},  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        assert any(name in str(exc) for name in ("on_overflow", "token_counter", "budget"))
        return
    assert model.on_overflow in ("raise", "trim", "summarize", "warn")
    assert model.token_counter in ("auto", "server", "transformers", "approximate")
    assert model.budget.output_reserve == reserve


secrets = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=12, max_size=40).map(
    lambda s: "sk-" + s
)


@FAST
@given(secret=secrets)
def test_api_key_never_in_repr_or_serialised_form(secret: str) -> None:
    # A plain string, as users pass it (pydantic turns it into a SecretStr).
    model = ChatVLLM(model="m", base_url="http://127.0.0.1:9/v1", api_key=secret)  # type: ignore[arg-type]
    assert model.openai_api_key is not None
    assert model.openai_api_key.get_secret_value() == secret
    shown = (repr(model), str(model), dumps(model), str(dumpd(model)), str(model.model_dump()))
    for text_form in shown:
        assert secret not in text_form


@pytest.mark.parametrize("name", ["VLLM_API_KEY"])
def test_api_key_from_env_is_secret(name: str) -> None:
    with mock.patch.dict(os.environ, {name: "sk-env-secret-123456"}):
        model = ChatVLLM(model="m", base_url="http://127.0.0.1:9/v1")
    assert model.openai_api_key is not None
    assert "sk-env-secret-123456" not in repr(model) + dumps(model)
