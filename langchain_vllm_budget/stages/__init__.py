"""Compressed stages: any stage of a LangGraph graph hands off a summary, not its raw output.

The building block of long pipelines that stay inside a small window. A stage (a chat model
call, a tool, a retriever, an agent, a subgraph) becomes a node with
:func:`compressed_stage`: it sees the request and the compressed summaries of the earlier
stages, its raw output goes to the LangGraph store (per thread and run, always retrievable),
and a capped, loss-checked summary and a ledger entry go into the state.
:func:`build_stage_graph` chains stages into a graph whose every new request is a new run.

Example:
    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> from langgraph.store.memory import InMemoryStore
    >>> from langchain_vllm_budget.budget import TokenBudget
    >>> model = FakeListChatModel(responses=["- category: outage, ticket INC-7"])
    >>> lookup = lambda text: {"ticket_id": "INC-7", "owner": "team-payments"}
    >>> graph = build_stage_graph([
    ...     compressed_stage("classify", model, system_prompt="Classify.",
    ...                      budget=TokenBudget(max_model_len=2048, output_reserve=64,
    ...                                         min_output_tokens=16)),
    ...     compressed_stage("lookup", lookup),
    ... ]).compile(store=InMemoryStore())
    >>> final = graph.invoke({"request": "INC-7: checkout is down"})
    >>> print(final["summaries"]["lookup"])
    ticket_id=INC-7
    owner=team-payments
"""

from langchain_vllm_budget.stages.node import (
    ROLLING_SUMMARY_PROMPT,
    ModelSpec,
    RollingSummaryMode,
    build_stage_graph,
    compressed_stage,
    start_run,
)
from langchain_vllm_budget.stages.prompt import (
    FittedPrompt,
    PromptBuilder,
    StageInput,
    StageInputTooLargeError,
    fit_stage_prompt,
    stage_messages,
)
from langchain_vllm_budget.stages.state import (
    StageLedger,
    StagesInput,
    StagesState,
    merge_run_dicts,
    new_run_update,
)
from langchain_vllm_budget.stages.store import (
    RAW_OUTPUT_NAMESPACE,
    get_raw_output,
    raw_output_namespace,
)

__all__ = [
    "RAW_OUTPUT_NAMESPACE",
    "ROLLING_SUMMARY_PROMPT",
    "FittedPrompt",
    "ModelSpec",
    "PromptBuilder",
    "RollingSummaryMode",
    "StageInput",
    "StageInputTooLargeError",
    "StageLedger",
    "StagesInput",
    "StagesState",
    "build_stage_graph",
    "compressed_stage",
    "fit_stage_prompt",
    "get_raw_output",
    "merge_run_dicts",
    "new_run_update",
    "raw_output_namespace",
    "stage_messages",
    "start_run",
]
