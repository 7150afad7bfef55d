"""Budget arithmetic: the seed's formula, boundaries, validation and env settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from langchain_vllm_budget.budget import (
    TokenBudget,
    compaction_target,
    harness_room,
    needed_output,
    plan_budget,
)
from langchain_vllm_budget.errors import VLLMContextOverflowError, VLLMFixedPromptOverflowError


def test_seed_formula_caps_at_output_reserve() -> None:
    plan = TokenBudget(max_model_len=12288).plan(1000)
    assert plan.max_tokens == 3000
    assert plan.fits
    assert plan.shortfall == 0
    assert plan.available == 12288 - 1000 - 128


def test_seed_formula_window_limits_output() -> None:
    plan = TokenBudget(max_model_len=12288).plan(10000)
    assert plan.max_tokens == 12288 - 10000 - 128
    assert plan.fits


def test_requested_max_tokens_respected_and_capped() -> None:
    budget = TokenBudget(max_model_len=12288)
    assert budget.plan(1000, requested_max_tokens=100).max_tokens == 100
    assert budget.plan(1000, requested_max_tokens=5000).max_tokens == 5000
    assert budget.plan(10000, requested_max_tokens=5000).max_tokens == 2160


def test_boundary_exactly_min_output_fits() -> None:
    budget = TokenBudget(max_model_len=4096, output_reserve=1000, safety_margin=100)
    edge = 4096 - 100 - 256
    assert budget.plan(edge).fits
    assert budget.plan(edge).max_tokens == 256
    over = budget.plan(edge + 1)
    assert not over.fits
    assert over.shortfall == 1
    assert over.max_tokens == 255


def test_overflow_never_grants_past_the_window() -> None:
    plan = TokenBudget(max_model_len=2048, output_reserve=1000).plan(2048)
    assert not plan.fits
    assert plan.max_tokens == 0
    assert not plan.sendable
    assert plan.shortfall == 128 + 256


def test_small_request_fits_where_min_output_would_not() -> None:
    budget = TokenBudget(max_model_len=2048, output_reserve=1000)
    plan = budget.plan(1800, requested_max_tokens=10)
    assert plan.fits
    assert plan.max_tokens == 10


@given(
    window=st.integers(600, 200_000),
    reserve=st.integers(256, 590),
    margin=st.integers(0, 64),
    input_tokens=st.integers(0, 250_000),
    requested=st.one_of(st.none(), st.integers(1, 300_000)),
)
def test_plan_never_exceeds_window(window, reserve, margin, input_tokens, requested) -> None:
    budget = TokenBudget(max_model_len=window, output_reserve=reserve, safety_margin=margin)
    plan = budget.plan(input_tokens, requested)
    assert plan.max_tokens >= 0
    assert input_tokens + plan.max_tokens + margin <= window or plan.max_tokens == 0
    if plan.fits:
        assert plan.max_tokens >= min(256, requested or 256)
        assert plan.shortfall == 0
    else:
        assert plan.shortfall > 0
        assert not budget.plan(max(input_tokens - plan.shortfall + 1, 0), requested).fits or (
            input_tokens - plan.shortfall + 1 <= 0
        )
        assert budget.plan(input_tokens - plan.shortfall, requested).fits


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"output_reserve": -1}, "output_reserve"),
        ({"safety_margin": -5}, "safety_margin"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"min_output_tokens": 4000}, "min_output_tokens (4000)"),
        ({"max_model_len": 300, "output_reserve": 256, "safety_margin": 64}, "leaves no room"),
    ],
)
def test_invalid_settings_fail_at_construction(kwargs, fragment) -> None:
    with pytest.raises(ValidationError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        TokenBudget(**kwargs)


def test_a_reserve_as_large_as_the_window_is_one_rule_configured_or_discovered() -> None:
    """The defaults (a 3,000-token reserve) on a 2,048-token window: accepted whether the
    window is configured (VLLM_BUDGET_MAX_MODEL_LEN) or read from the server, with the same
    plan: the window caps the output."""
    configured = TokenBudget(max_model_len=2048)
    discovered = TokenBudget().with_max_model_len(2048)
    assert configured == discovered
    plan = configured.plan(100)
    assert plan.fits
    assert plan.max_tokens == 2048 - 100 - configured.safety_margin < configured.output_reserve


def test_plan_needs_a_window() -> None:
    with pytest.raises(ValueError, match="max_model_len is unknown"):
        TokenBudget().plan(10)


def test_plan_rejects_bad_numbers() -> None:
    budget = TokenBudget(max_model_len=4096)
    with pytest.raises(ValueError, match="input_tokens"):
        budget.plan(-1)
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        budget.plan(10, requested_max_tokens=0)


def test_discovered_window_smaller_than_reserve_is_accepted() -> None:
    budget = TokenBudget().with_max_model_len(2048)
    assert budget.max_model_len == 2048
    assert budget.plan(100).max_tokens == 2048 - 100 - 128


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_BUDGET_MAX_MODEL_LEN", "12288")
    monkeypatch.setenv("VLLM_BUDGET_OUTPUT_RESERVE", "2000")
    monkeypatch.setenv("VLLM_BUDGET_SAFETY_MARGIN", "64")
    budget = TokenBudget.from_env()
    assert (budget.max_model_len, budget.output_reserve, budget.safety_margin) == (12288, 2000, 64)
    assert budget.min_output_tokens == 256
    assert TokenBudget.from_env(output_reserve=1000).output_reserve == 1000


def test_from_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "VLLM_BUDGET_MAX_MODEL_LEN",
        "VLLM_BUDGET_OUTPUT_RESERVE",
        "VLLM_BUDGET_SAFETY_MARGIN",
    ):
        monkeypatch.delenv(var, raising=False)
    assert TokenBudget.from_env() == TokenBudget()


def test_from_env_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_BUDGET_OUTPUT_RESERVE", "3k")
    with pytest.raises(ValueError, match="VLLM_BUDGET_OUTPUT_RESERVE must be a whole number"):
        TokenBudget.from_env()


def test_plan_budget_is_pure() -> None:
    args = {
        "input_tokens": 500,
        "max_model_len": 1000,
        "output_reserve": 300,
        "safety_margin": 10,
        "min_output_tokens": 100,
    }
    assert plan_budget(**args) == plan_budget(**args)
    assert plan_budget(**args).as_dict()["max_tokens"] == 300


@pytest.mark.parametrize("requested", [None, 1, 100, 5000])
def test_the_input_limit_is_the_largest_input_that_fits(requested: int | None) -> None:
    budget = TokenBudget(max_model_len=4096, output_reserve=1000, min_output_tokens=200)
    limit = budget.input_limit(requested)
    assert budget.plan(limit, requested).fits
    over = budget.plan(limit + 1, requested)
    assert not over.fits
    assert over.shortfall == 1
    assert over.needed_output_tokens == needed_output(200, requested)


def test_a_call_holds_the_window_less_the_margin() -> None:
    budget = TokenBudget(max_model_len=4096, safety_margin=96)
    assert budget.call_room() == 4000
    assert budget.plan(budget.call_room() - 1).max_tokens == 1
    with pytest.raises(ValueError, match="max_model_len is unknown"):
        TokenBudget(max_model_len=None).call_room()


def test_the_overflow_error_and_the_plan_agree_on_the_shortfall() -> None:
    plan = TokenBudget(max_model_len=2048, output_reserve=512).plan(2000)
    error = VLLMContextOverflowError(
        input_tokens=plan.input_tokens,
        max_model_len=plan.max_model_len,
        safety_margin=plan.safety_margin,
        min_output_tokens=plan.needed_output_tokens,
    )
    assert error.shortfall == plan.shortfall == VLLMContextOverflowError.from_plan(plan).shortfall


# --------------------------------------------------------------------------- the contract
# between profile, max_tokens and the compaction target (docs/compaction.md, "Harnesses with
# their own budget"), over windows from 2,048 to 131,072 tokens.


@st.composite
def budgets(draw: st.DrawFn) -> TokenBudget:
    window = draw(st.integers(2048, 131_072))
    margin = draw(st.integers(0, 512))
    min_output = draw(st.integers(1, 1024))
    reserve = draw(st.integers(min_output, window - 1))
    return TokenBudget(
        max_model_len=window,
        output_reserve=reserve,
        safety_margin=margin,
        min_output_tokens=min_output,
    )


shares = st.floats(0.05, 1.0)


@given(budget=budgets(), share=shares, data=st.data())
def test_a_compaction_target_leaves_the_requests_max_tokens_and_the_margin(
    budget: TokenBudget, share: float, data: st.DataObject
) -> None:
    window = budget.call_room() + budget.safety_margin
    requested = data.draw(st.none() | st.integers(1, 2 * window))
    target = budget.compaction_target(share, requested)
    assert target >= 1
    # never above the input limit: the compacted request fits without the policy acting
    assert target <= max(1, budget.input_limit(requested))
    assert budget.plan(target, requested).fits or budget.input_limit(requested) < 1
    if requested is not None and window - budget.safety_margin - requested >= 1:
        # compacted input + the request's own output reserve + margin <= window
        assert target + requested + budget.safety_margin <= window
        assert budget.plan(target, requested).max_tokens == requested
    elif requested is None:
        assert target + budget.min_output_tokens + budget.safety_margin <= window
    else:  # max_tokens alone fills the window: keep as little as possible
        assert target == 1


@given(
    input_limit=st.integers(1, 131_072),
    share=shares,
    output_limit=st.none() | st.integers(-1000, 131_072),
)
def test_the_target_is_the_share_within_the_output_limit(
    input_limit: int, share: float, output_limit: int | None
) -> None:
    target = compaction_target(input_limit=input_limit, share=share, output_limit=output_limit)
    assert 1 <= target <= max(1, int(input_limit * share))
    if output_limit is not None:
        assert target <= max(1, output_limit)
    if output_limit is None or output_limit >= input_limit * share:
        assert target == max(1, int(input_limit * share))


@given(budget=budgets(), data=st.data())
def test_a_harness_has_room_exactly_when_its_reserve_and_fixed_part_fit(
    budget: TokenBudget, data: st.DataObject
) -> None:
    profile_limit = budget.input_limit()  # profile["max_input_tokens"]
    max_tokens = data.draw(st.integers(1, profile_limit + 10))
    headroom = data.draw(st.integers(0, profile_limit))
    fixed = data.draw(st.integers(0, profile_limit))
    room = profile_limit - max_tokens - headroom
    if fixed < room:
        got = harness_room(
            max_input_tokens=profile_limit,
            max_tokens=max_tokens,
            headroom=headroom,
            fixed_tokens=fixed,
        )
        assert got == room > fixed >= 0
        return
    with pytest.raises(VLLMFixedPromptOverflowError) as caught:
        harness_room(
            max_input_tokens=profile_limit,
            max_tokens=max_tokens,
            headroom=headroom,
            fixed_tokens=fixed,
        )
    error = caught.value
    assert error.room == room
    assert error.fixed_tokens == fixed
    if fixed:
        assert f"Remove at least {error.shortfall} tokens" in str(error)
    assert "ower max_tokens or headroom" in str(error)
    # the advice is exact: that many tokens fewer, and the harness has room
    if fixed - error.shortfall >= 0:
        assert (
            harness_room(
                max_input_tokens=profile_limit,
                max_tokens=max_tokens,
                headroom=headroom,
                fixed_tokens=fixed - error.shortfall,
            )
            == room
        )


@given(budget=budgets(), share=shares, data=st.data())
def test_compacting_to_the_target_leaves_a_harness_room_when_its_reserve_fits(
    budget: TokenBudget, share: float, data: st.DataObject
) -> None:
    profile_limit = budget.input_limit()
    max_tokens = data.draw(st.integers(1, profile_limit))
    reserve_limit = budget.harness_reserve_limit(share, max_tokens)
    headroom = data.draw(st.integers(0, profile_limit))
    target = budget.compaction_target(share, max_tokens)
    if max_tokens + headroom <= reserve_limit:
        room = harness_room(
            max_input_tokens=profile_limit, max_tokens=max_tokens, headroom=headroom
        )
        assert 0 < target <= room
    else:
        assert target > profile_limit - max_tokens - headroom


@pytest.mark.parametrize("window", [2048, 4096, 8192, 12288, 32768, 131_072])
@pytest.mark.parametrize("headroom_share", [0.0, 0.1, 0.25])
@pytest.mark.parametrize("max_tokens", [64, 512, 2048])
def test_the_documented_defaults_leave_a_harness_room(
    window: int, headroom_share: float, max_tokens: int
) -> None:
    # the defaults, with the window discovered from the server (as ChatVLLM gets it)
    budget = TokenBudget(max_model_len=None).with_max_model_len(window)
    profile_limit = budget.input_limit()
    headroom = int(headroom_share * profile_limit)
    if max_tokens + headroom >= profile_limit:
        with pytest.raises(VLLMFixedPromptOverflowError):
            harness_room(max_input_tokens=profile_limit, max_tokens=max_tokens, headroom=headroom)
        return
    room = harness_room(max_input_tokens=profile_limit, max_tokens=max_tokens, headroom=headroom)
    assert room == profile_limit - max_tokens - headroom > 0
    target = budget.compaction_target(0.6, max_tokens)
    fits = max_tokens + headroom <= budget.harness_reserve_limit(0.6, max_tokens)
    assert fits == (target <= room)


def test_the_worked_example_of_the_docs() -> None:
    budget = TokenBudget(max_model_len=12288)
    assert budget.input_limit() == 11904
    assert budget.compaction_target(0.6) == 7142
    assert budget.compaction_target(0.6, 64) == 7257
    assert budget.harness_reserve_limit(0.6, 512) == 4762
    room = harness_room(max_input_tokens=11904, max_tokens=64, headroom=1190)
    assert room == 10650
    assert budget.compaction_target(0.6, 64) <= room


@given(budget=budgets(), data=st.data())
def test_a_fixed_part_that_fills_the_input_limit_is_a_typed_error(
    budget: TokenBudget, data: st.DataObject
) -> None:
    requested = data.draw(st.none() | st.integers(1, 4096))
    limit = budget.input_limit(requested)
    fixed = data.draw(st.integers(0, limit + 100))
    if fixed < limit:
        assert budget.check_fixed_part(fixed, requested) == limit - fixed
        return
    with pytest.raises(VLLMFixedPromptOverflowError) as caught:
        budget.check_fixed_part(fixed, requested)
    assert caught.value.room == limit
    assert caught.value.terms[0] == ("max_model_len", budget.call_room() + budget.safety_margin)
    assert budget.check_fixed_part(fixed - caught.value.shortfall, requested) == 1


def test_the_docs_state_what_the_functions_compute() -> None:
    """Each ``call  # value`` line of the docs' worked example is what the call returns."""
    docs = (Path(__file__).parents[2] / "docs" / "compaction.md").read_text()
    section = docs[docs.index("## Harnesses with their own budget") :]
    block = section[section.index("```python") + len("```python") : section.index("```\n", 10)]
    namespace: dict[str, object] = {}
    checked = 0
    for line in block.strip().splitlines():
        code, _, comment = line.partition("  # ")
        exec(code, namespace)
        value = re.match(r"\d+", comment)
        if value is not None and not code.startswith(("from", "budget =")):
            assert eval(code, namespace) == int(value.group())
            checked += 1
    assert checked == 6


def test_reserves_that_leave_nothing_name_the_reserves_only() -> None:
    with pytest.raises(VLLMFixedPromptOverflowError) as caught:
        harness_room(max_input_tokens=4000, max_tokens=3000, headroom=1000)
    message = str(caught.value)
    assert "The reserves leave no input" in message
    assert "lower max_tokens or headroom by at least 1 tokens" in message.lower()
    assert "system prompt" not in message
