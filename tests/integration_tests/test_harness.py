"""A harness built on ``create_agent`` past the window: its own budget check always has room.

Harnesses check their requests against ``model.profile["max_input_tokens"]`` less their output
reserve (``max_tokens``) and a headroom of their own (``budget.harness_room``), and compact with
LangChain's ``SummarizationMiddleware`` triggered at a fraction of the same profile, or with
this package's ``ContextCompactionMiddleware`` given that room as its limit. On the real server
(tiny-qwen, 12,288-token window) with a system prompt and tool set of more than 3,000 tokens,
such an agent runs 15 turns past the window: no request over the harness's budget, none over
the window, no error. ChatVLLM's own compaction keeps a request's whole ``max_tokens``, and a
system prompt that alone fills the window is a typed error before anything is sent.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import SummarizationMiddleware, wrap_model_call
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.memory import InMemorySaver

from langchain_vllm_budget import TransformersTokenCounter
from langchain_vllm_budget.budget import harness_room
from langchain_vllm_budget.compaction import is_summary_message
from langchain_vllm_budget.errors import VLLMFixedPromptOverflowError
from langchain_vllm_budget.middleware import ContextCompactionMiddleware
from langchain_vllm_budget.tokenizers import tools_to_openai_dicts
from tests.integration_tests.test_compaction import (
    Recorder,
    _assert_inside_the_window,
    _model,
    _turn_text,
)

pytestmark = pytest.mark.integration

MAX_TOKENS = 64  # the harness's output reserve
HEADROOM = 0.10  # and its headroom, a share of the profile's input limit
TRIGGER = 0.7  # SummarizationMiddleware's trigger, a share of the same limit


def _runbook(counter: TransformersTokenCounter, tokens: int) -> str:
    rules = []
    k = 0
    while counter.count_text("\n".join(rules)) < tokens:
        rules.append(
            f"Rule {k}: before touching service svc-{k:03d}, read /srv/runbooks/svc-{k:03d}.md, "
            f"page the owner team-{k % 17} and keep error_budget={k % 9 + 1}% in mind."
        )
        k += 1
    return "You are the on-call assistant of a platform team.\n" + "\n".join(rules)


def _tools(n: int) -> list[StructuredTool]:
    def make(k: int) -> StructuredTool:
        def run(service: str, window_minutes: int = 30, region: str = "eu-west-1") -> str:
            return f"{service}: ok"

        return StructuredTool.from_function(
            run,
            name=f"ops_tool_{k}",
            description=(
                f"Operations tool {k}: query, restart or drain a service in a region. "
                "Use it only after reading the runbook rule of the service; it returns the "
                "service's state, its last deploys and the open tickets that mention it."
            ),
        )

    return [make(k) for k in range(n)]


@pytest.mark.parametrize("compaction", ["langchain", "package"])
def test_a_harness_with_its_own_headroom_runs_15_turns_past_the_window(
    tiny_qwen, compaction: str
) -> None:
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder)
    model.max_tokens = MAX_TOKENS
    system = _runbook(counter, 2500)
    tools = _tools(8)
    fixed = model.get_num_tokens_from_messages(
        [SystemMessage(system)], tools=tools_to_openai_dicts(tools)
    )
    assert fixed >= 3000, "the system prompt and tool set are at least 3,000 tokens"
    limit = model.profile["max_input_tokens"]
    # the harness's room; it raises VLLMFixedPromptOverflowError if the fixed part filled it
    budget = harness_room(
        max_input_tokens=limit,
        max_tokens=MAX_TOKENS,
        headroom=int(HEADROOM * limit),
        fixed_tokens=fixed,
    )
    assert fixed < budget == limit - MAX_TOKENS - int(HEADROOM * limit)
    sizes: list[int] = []

    @wrap_model_call
    def harness_budget(request: Any, handler: Any) -> Any:
        """What a harness does: refuse a request over its own budget."""
        messages = [request.system_message, *request.messages]
        size = model.get_num_tokens_from_messages(
            messages, tools=tools_to_openai_dicts(request.tools)
        )
        sizes.append(size)
        if size > budget:
            raise RuntimeError(f"harness budget: {size} > {budget} tokens")
        return handler(request)

    agent = create_agent(
        model,
        tools=tools,
        system_prompt=system,
        middleware=[
            SummarizationMiddleware(model, trigger=("fraction", TRIGGER), keep=("fraction", 0.2))
            if compaction == "langchain"
            # the package's compaction, given the harness's room as its limit
            else ContextCompactionMiddleware(
                model, max_input_tokens=budget, policy="summarize", summarizer="extractive"
            ),
            harness_budget,
        ],
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "harness"}, "recursion_limit": 10_000}
    turn_tokens = tiny_qwen.max_model_len // 20
    sent_total = fixed
    past_window = 0
    turn = 0
    while past_window < 15:
        text = _turn_text(turn, turn_tokens, counter)
        sent_total += counter.count_text(text)
        result = agent.invoke({"messages": [HumanMessage(text)]}, config)
        assert isinstance(result["messages"][-1], AIMessage)
        past_window += sent_total > tiny_qwen.max_model_len
        turn += 1
    # 15 turns past the window (the first one crossing it, 14 more), each request within
    # the harness's budget and the server's window: LangChain's summaries kept it there
    assert sent_total > tiny_qwen.max_model_len + 14 * turn_tokens
    assert max(sizes) <= budget
    _assert_inside_the_window(recorder.calls, tiny_qwen.max_model_len)
    if compaction == "langchain":
        assert len(recorder.calls) > turn  # the summaries were written by the same server
    else:
        state = agent.get_state(config).values["messages"]
        assert is_summary_message(state[0])
        # compacted below the target: the package's target leaves the harness its room
        assert model.get_budget().compaction_target(0.6, MAX_TOKENS) <= budget


def test_a_compacted_request_keeps_its_whole_max_tokens(tiny_qwen) -> None:
    """ChatVLLM's own compaction aims within the request's max_tokens and the margin.

    With ``compaction_target=1.0`` the share alone would be the whole input limit (window less
    margin less ``min_output_tokens``, 16 here: 12,144), leaving a 64-token request 16 tokens
    of output; the target is 12,096, which leaves it all 64.
    """
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder, on_overflow="trim", compaction_target=1.0)
    model.max_tokens = MAX_TOKENS
    window = tiny_qwen.max_model_len
    margin = model.get_budget().safety_margin
    history: list[BaseMessage] = [SystemMessage(_runbook(counter, 3000))]
    target = model.get_budget().compaction_target(1.0, MAX_TOKENS)
    assert target + MAX_TOKENS + margin == window
    compacted = []
    turn = 0
    while len(compacted) < 3:
        history.append(HumanMessage(_turn_text(turn, window // 12, counter)))
        reply = model.invoke(history)
        history.append(AIMessage(reply.text))
        report = reply.response_metadata["budget"]["compaction"]
        if report is not None and report["compacted"]:
            compacted.append((len(recorder.calls) - 1, report))
        turn += 1
    for index, report in compacted:
        assert report["target_tokens"] == target
        request, response = recorder.calls[index]
        assert request["max_tokens"] == MAX_TOKENS  # not capped below what was asked
        assert response["usage"]["prompt_tokens"] + MAX_TOKENS + margin <= window


def test_a_system_prompt_that_fills_the_window_is_a_typed_error(tiny_qwen) -> None:
    recorder = Recorder()
    counter = TransformersTokenCounter(tiny_qwen.model_path)
    model = _model(tiny_qwen, recorder, on_overflow="summarize")
    system = SystemMessage(_runbook(counter, tiny_qwen.max_model_len))
    with pytest.raises(VLLMFixedPromptOverflowError) as caught:
        model.invoke([system, HumanMessage("hello"), AIMessage("hi"), HumanMessage("status?")])
    error = caught.value
    assert error.fixed_tokens == model.get_num_tokens_from_messages([system])
    assert error.room == model.get_budget().input_limit(model.max_tokens)
    assert f"Remove at least {error.shortfall} tokens from the system prompt" in str(error)
    assert recorder.calls == []  # refused before sending
