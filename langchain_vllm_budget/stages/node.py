"""The building block: any stage becomes a LangGraph node with a compressed hand-off.

:func:`compressed_stage` wraps a stage (a chat model, or any Runnable or callable: a tool, a
retriever, a chain, an agent, a subgraph) into a node that

1. gives the stage the request and the compressed summaries of the earlier stages of the run
   (:class:`~langchain_vllm_budget.stages.prompt.StageInput`), never their raw outputs; for a
   chat model it builds the prompt and fits it to the window with the degrade order, planning
   the budget once per candidate and sending the call with the plan that fits;
2. stores the stage's raw output in the LangGraph store, per thread and run;
3. hands the output off as it is when it fits a share of the window
   (:func:`~langchain_vllm_budget.compression.spec.verbatim_limit`), else compresses it
   (ranked by the request with :func:`~langchain_vllm_budget.compression.query_summary`, the
   summarizer asked only when that lost an entity the request points at, or always with
   ``compression="llm"``; entities kept, hard cap), and updates the run's rolling summary;
4. writes the summary, the rolling summary and a ledger entry into the state, and logs the
   compression ratio.

Sync and async graphs are both served (``invoke`` / ``ainvoke``, ``stream`` / ``astream``); the
async path never blocks the event loop on counting or HTTP.

Example:
    >>> from langchain_core.language_models.fake_chat_models import FakeListChatModel
    >>> from langgraph.store.memory import InMemoryStore
    >>> from langchain_vllm_budget.budget import TokenBudget
    >>> model = FakeListChatModel(responses=["- ticket INC-7: restart svc-a", "- done"])
    >>> budget = TokenBudget(max_model_len=2048, output_reserve=128, min_output_tokens=32)
    >>> graph = build_stage_graph([
    ...     compressed_stage("triage", model, system_prompt="Triage.", budget=budget),
    ...     compressed_stage("act", model, system_prompt="Act.", budget=budget),
    ... ]).compile(store=InMemoryStore())
    >>> final = graph.invoke({"request": "INC-7 is down"})
    >>> final["summaries"]
    {'triage': '- ticket INC-7: restart svc-a', 'act': '- done'}
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime, get_runtime
from langgraph.store.base import BaseStore

from langchain_vllm_budget import settings
from langchain_vllm_budget.budget import BudgetPlan, TokenBudget
from langchain_vllm_budget.capabilities import budgeted, token_counter_of
from langchain_vllm_budget.compression import (
    CompressionResult,
    CompressionStrategy,
    Query,
    SummarySpec,
    asummarize,
    better_for_query,
    extractive_summary,
    needs_model,
    query_summary,
    render_stage_result,
    summarize,
)
from langchain_vllm_budget.compression.spec import check_verbatim_share, verbatim_limit
from langchain_vllm_budget.stages._usage import ModelCallUsage, track_model_calls
from langchain_vllm_budget.stages.prompt import (
    FittedPrompt,
    PromptBuilder,
    StageInput,
    fit_stage_prompt,
    fold_summary,
    stage_messages,
)
from langchain_vllm_budget.stages.state import (
    StageLedger,
    StagesInput,
    StagesState,
    new_run_update,
)
from langchain_vllm_budget.stages.store import archive_earlier_output, raw_output_namespace
from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "ROLLING_SUMMARY_PROMPT",
    "ModelSpec",
    "RollingSummaryMode",
    "build_stage_graph",
    "compressed_stage",
    "start_run",
]

logger = logging.getLogger(__name__)

ModelSpec = BaseChatModel | Callable[[Runtime[Any]], BaseChatModel]
"""A chat model, or a function that makes one from the run's runtime (its ``context``)."""

RollingSummaryMode = Literal["extractive", "llm"]
"""How the rolling summary absorbs a stage summary once both no longer fit its cap."""

_ROLLING_SUBJECT = "Stage summaries"


ROLLING_SUMMARY_PROMPT = """Merge the stage summaries below into one running summary of the \
pipeline (≤ {max_tokens} tokens).

**Instructions:**
- Keep: decisions, IDs, file paths, URLs, parameters (key=value) and tool names
- Drop: repetition and narrative
- Format: Bullet points, each ≤ 25 tokens

**User Request:** {user_request}

**{stage_name}:**
{result}

Summary:"""
"""Compression prompt of the rolling summary in ``rolling_summary_mode="llm"``."""


def start_run(state: Any) -> dict[str, Any]:
    """The first node of a staged graph: a new request starts a new run.

    It gives the run a fresh ``run_id`` (raw outputs are stored under it) and empties the
    summaries, ledger, folded stages and rolling summary of any earlier run on the thread.
    Resuming an interrupted run does not pass through it again.
    """
    return new_run_update()


def _field(state: Any, key: str, default: Any) -> Any:
    if isinstance(state, Mapping):
        return state.get(key, default)
    return getattr(state, key, default)


def _resolve(spec: ModelSpec | None, runtime: Runtime[Any]) -> BaseChatModel | None:
    if spec is None or isinstance(spec, BaseChatModel):
        return spec
    return spec(runtime)


def _counter_of(model: BaseChatModel | None, configured: TokenCounter | None) -> TokenCounter:
    return configured if configured is not None else token_counter_of(model)


def _thread_id(runtime: Runtime[Any]) -> str:
    info = runtime.execution_info
    thread = info.thread_id if info is not None else None
    if not thread:
        thread = get_config().get("configurable", {}).get("thread_id")
    return str(thread) if thread else ""


@dataclass(frozen=True)
class _Handoff:
    """How a stage's output is handed off, resolved for one run."""

    summary_max_tokens: int
    handoff_verbatim_share: float
    rolling_summary_max_tokens: int
    rolling_summary_mode: RollingSummaryMode
    compression: CompressionStrategy


@dataclass(frozen=True)
class _Call:
    """One execution of a stage: where it stores, what it sees, and its models."""

    handoff: _Handoff
    store: BaseStore
    namespace: tuple[str, ...]
    stage_input: StageInput
    model: BaseChatModel | None
    summarizer: BaseChatModel | None
    counter: TokenCounter
    rolling_summaries: Mapping[str, str]
    previous_rolling: str
    rolling_covers: Mapping[str, int]
    """The runs of the earlier stages the rolling summary will cover (``_finish`` adds this
    stage's run, known once its output is stored)."""
    started: float


@dataclass(frozen=True)
class _Output:
    """What the stage produced: the raw text, and for a model stage its reply and plan."""

    text: str
    reply: BaseMessage | None = None
    fitted: FittedPrompt | None = None
    summarized: str | None = None
    """The text the summary is written from, when not ``text`` (without tool-call IDs)."""

    @property
    def summary_source(self) -> str:
        return self.text if self.summarized is None else self.summarized

    def window(self, budget: TokenBudget | None) -> int | None:
        """The stage model's window: the one its call was planned against, else the budget's."""
        if self.fitted is not None:
            return self.fitted.plan.max_model_len
        return budget.max_model_len if budget is not None else None


def _attempts(ledger: Mapping[str, Any]) -> dict[str, int]:
    """How many times each finished stage has run in this run (a loop runs one again)."""
    return {name: int((entry or {}).get("attempt", 1)) for name, entry in ledger.items()}


def _covered(entry: Mapping[str, Any], earlier: Sequence[str]) -> dict[str, int]:
    """The runs of stages a rolling summary covers, by its writer's ledger ``entry``.

    A stage counts as covered only in the run of it the summary was written after: a stage
    run again since (a loop) is not. A ledger written before runs were recorded (stage names
    alone, or no ``rolling_covers``: every earlier stage) covers first runs: every later run
    was made after it.
    """
    covers = entry.get("rolling_covers")
    if isinstance(covers, Mapping):
        return {str(name): int(run) for name, run in covers.items()}
    return dict.fromkeys(earlier if covers is None else covers, 1)


def _fold_digests(
    earlier: Sequence[str], digests: Mapping[str, str], ledger: Mapping[str, Any]
) -> dict[str, str]:
    """The rolling summaries that may stand in for a fold of the summaries up to theirs.

    Folding stage X puts the rolling summary after X in place of X and every stage folded
    before it; after parallel branches (or a loop over them) that summary may miss a branch,
    or a later run of one (its ledger's ``rolling_covers``), and then the fold appends X's
    summary instead.
    """
    attempts = _attempts(ledger)
    usable: dict[str, str] = {}
    for position, name in enumerate(earlier):
        if name not in digests:
            continue
        covers = _covered(ledger.get(name) or {}, earlier[: position + 1])
        if all(covers.get(n) == attempts.get(n, 1) for n in earlier[:position]):
            usable[name] = digests[name]
    return usable


def _previous_rolling(
    rolling: str,
    summaries: Mapping[str, str],
    digests: Mapping[str, str],
    ledger: Mapping[str, Any],
    stage: str,
) -> tuple[str, dict[str, int]]:
    """The rolling summary this stage extends, and the runs of earlier stages it will cover.

    In a straight line the state's rolling summary covers every earlier stage. After stages
    ran in parallel branches it is one branch's (the last write of the step): the summaries
    of the finished stages it does not cover, or covers in an earlier run than their latest
    (by the ledger's ``rolling_covers`` of the stage that wrote it), are added to it, so no
    branch and no rerun is left out of the digest.
    """
    attempts = _attempts(ledger)
    earlier = [name for name in summaries if name != stage]
    writer = next(
        (n for n in reversed(list(digests)) if digests[n] == rolling and n in ledger), None
    )
    if writer is None:  # the first stage of the run (or a state without a ledger)
        return rolling, {name: attempts.get(name, 1) for name in earlier}
    covered = _covered(ledger[writer], earlier)
    missing = [name for name in earlier if covered.get(name) != attempts.get(name, 1)]
    previous = functools.reduce(
        lambda text, name: fold_summary(text, name, summaries[name]), missing, rolling
    )
    covers = {**covered, **{name: attempts.get(name, 1) for name in missing}}
    covers.pop(stage, None)  # this stage's new run is added when it is known (_finish)
    return previous, covers


def _rendered(raw: Any) -> _Output:
    """A runnable stage's result: kept whole, summarized without tool-call IDs."""
    kept = render_stage_result(raw)
    summarized = render_stage_result(raw, call_ids=False)
    return _Output(kept, summarized=summarized if summarized != kept else None)


@dataclass(frozen=True)
class CompressedStage:
    """A stage and how its output is handed off (see :func:`compressed_stage`)."""

    name: str
    runnable: Runnable[Any, Any] | None
    model: ModelSpec | None
    prompt: PromptBuilder
    stage_input: Callable[[StageInput], Any]
    summarizer: ModelSpec | None
    summary_max_tokens: int | None
    handoff_verbatim_share: float | None
    rolling_summary_max_tokens: int | None
    rolling_summary_mode: RollingSummaryMode | None
    compression: CompressionStrategy | None
    counter: TokenCounter | None
    budget: TokenBudget | None
    request_key: str

    # ------------------------------------------------------------------ shared steps

    def _begin(self, state: Any) -> _Call:
        runtime: Runtime[Any] = get_runtime()
        request = str(_field(state, self.request_key, "") or "").strip()
        if not request:
            msg = (
                f"Stage {self.name!r} needs a non-empty {self.request_key!r} in the state, "
                f"e.g. {{'{self.request_key}': 'Fix INC-1'}}."
            )
            raise ValueError(msg)
        run_id = str(_field(state, "run_id", "") or "")
        if not run_id:
            msg = (
                f"Stage {self.name!r} found no run_id in the state: make start_run the first "
                "node of the graph (build_stage_graph does), so that every request is a run."
            )
            raise ValueError(msg)
        store = runtime.store
        if store is None:
            msg = (
                f"Stage {self.name!r} needs a store for raw outputs: compile the graph with "
                "store=... (e.g. InMemoryStore(), SqliteStore) or run it under `langgraph dev`."
            )
            raise RuntimeError(msg)
        thread_id = _thread_id(runtime)
        summaries: dict[str, str] = dict(_field(state, "summaries", {}) or {})
        folded: dict[str, str] = dict(_field(state, "folded", {}) or {})
        digests: dict[str, str] = dict(_field(state, "rolling_summaries", {}) or {})
        earlier = [name for name in summaries if name != self.name]
        ledger: Mapping[str, Any] = _field(state, "ledger", {}) or {}
        usable = _fold_digests(earlier, digests, ledger)
        digest = ""
        for name in (n for n in earlier if n in folded):  # as fit_stage_prompt folds them
            digest = usable.get(name) or fold_summary(digest, name, summaries[name])
        rolling = str(_field(state, "rolling_summary", "") or "")
        previous, covers = _previous_rolling(rolling, summaries, digests, ledger, self.name)
        model = _resolve(self.model, runtime)
        return _Call(
            handoff=self._handoff(runtime.context),
            store=store,
            namespace=raw_output_namespace(thread_id, run_id),
            stage_input=StageInput(
                stage=self.name,
                request=request,
                summaries=tuple((n, summaries[n]) for n in earlier if n not in folded),
                rolling_summary=digest,
                thread_id=thread_id,
                run_id=run_id,
            ),
            model=model,
            summarizer=_resolve(self.summarizer, runtime),
            counter=_counter_of(model, self.counter),
            rolling_summaries=usable,
            previous_rolling=previous,
            rolling_covers=covers,
            started=time.perf_counter(),
        )

    def _handoff(self, context: Any) -> _Handoff:
        """Explicit settings, else the run's context fields of the same names, else defaults."""

        def pick(name: str, default: Any) -> Any:
            explicit = getattr(self, name)
            if explicit is not None:
                return explicit
            value = getattr(context, name, None)
            return value if value is not None else default

        handoff = _Handoff(
            summary_max_tokens=int(pick("summary_max_tokens", settings.SUMMARY_MAX_TOKENS.get())),
            handoff_verbatim_share=float(
                pick("handoff_verbatim_share", settings.HANDOFF_VERBATIM_SHARE.get())
            ),
            rolling_summary_max_tokens=int(
                pick("rolling_summary_max_tokens", settings.ROLLING_SUMMARY_MAX_TOKENS.get())
            ),
            rolling_summary_mode=pick("rolling_summary_mode", settings.ROLLING_SUMMARY_MODE.get()),
            compression=pick("compression", settings.COMPRESSION.get()),
        )
        _check_handoff(self.name, handoff)
        return handoff

    def _plan(self, model: BaseChatModel, counter: TokenCounter) -> Callable[..., BudgetPlan]:
        found = budgeted(model)
        if found is not None:
            return found.get_budget_plan
        budget = self.budget
        if budget is None or budget.max_model_len is None:
            msg = (
                f"Stage {self.name!r}: {type(model).__name__} does not plan its own budget; "
                "pass budget=TokenBudget(max_model_len=...) to compressed_stage (ChatVLLM "
                "plans with the server's window)."
            )
            raise ValueError(msg)
        return lambda messages: budget.plan(counter.count_messages(messages))

    def _fit(self, call: _Call) -> FittedPrompt:
        assert call.model is not None
        return fit_stage_prompt(
            call.stage_input,
            self.prompt,
            plan=self._plan(call.model, call.counter),
            counter=call.counter,
            rolling_summaries=call.rolling_summaries,
        )

    @staticmethod
    def _call_kwargs(model: BaseChatModel, plan: BudgetPlan) -> dict[str, Any]:
        """Send the plan itself to a model that takes one (ChatVLLM), else its max_tokens."""
        if budgeted(model) is not None:
            return {"budget_plan": plan}
        return {"max_tokens": plan.max_tokens}

    def _raw_record(self, call: _Call, text: str) -> dict[str, Any]:
        return {
            "stage": self.name,
            "run_id": call.stage_input.run_id,
            "request": call.stage_input.request,
            "content": text,
            "tokens": call.counter.count_text(text) if text else 0,
        }

    def _merged_rolling(self, call: _Call, summary: str) -> str | None:
        """Previous rolling summary + this summary, if they fit its cap as they are."""
        merged = self._rolling_input(call, summary)
        if call.counter.count_text(merged) <= call.handoff.rolling_summary_max_tokens:
            return merged
        if call.handoff.rolling_summary_mode == "extractive" or call.summarizer is None:
            return extractive_summary(
                merged, max_tokens=call.handoff.rolling_summary_max_tokens, tokenizer=call.counter
            ).summary
        return None

    def _rolling_input(self, call: _Call, summary: str) -> str:
        """The previous rolling summary and this stage's summary, as one text."""
        return fold_summary(call.previous_rolling, self.name, summary)

    def _verbatim_limit(self, call: _Call, output: _Output) -> int:
        """The most tokens of this output handed off verbatim (:func:`verbatim_limit`)."""
        return verbatim_limit(
            call.handoff.summary_max_tokens,
            output.window(self.budget),
            call.handoff.handoff_verbatim_share,
        )

    def _first(self, call: _Call, output: _Output, tokens: int) -> CompressionResult:
        """The output as it is within the verbatim limit, else the query-ranked summary.

        ``tokens`` is the output's length, counted once for its raw record.
        """
        limit = self._verbatim_limit(call, output)
        fits = limit > call.handoff.summary_max_tokens and tokens <= limit
        return query_summary(
            output.summary_source,
            query=Query.of(call.stage_input.request),
            max_tokens=limit if fits else call.handoff.summary_max_tokens,
            tokenizer=call.counter,
        )

    def _needs_model(self, call: _Call, first: CompressionResult) -> bool:
        return needs_model(first, call.handoff.compression, has_model=call.summarizer is not None)

    @staticmethod
    def _rolling_spec(call: _Call) -> SummarySpec:
        """How the rolling summary is rewritten by the model (``rolling_summary_mode="llm"``)."""
        return SummarySpec(
            max_tokens=call.handoff.rolling_summary_max_tokens,
            strategy="llm",
            model=call.summarizer,
            counter=call.counter,
            prompt_template=ROLLING_SUMMARY_PROMPT,
        )

    @staticmethod
    def _summary_spec(call: _Call) -> SummarySpec:
        """How the stage's output is summarized."""
        return SummarySpec(
            max_tokens=call.handoff.summary_max_tokens,
            strategy=call.handoff.compression,
            model=call.summarizer,
            counter=call.counter,
        )

    def _finish(
        self,
        call: _Call,
        output: _Output,
        summary: CompressionResult,
        rolling: str,
        usage: ModelCallUsage,
        attempt: int,
    ) -> dict[str, Any]:
        """The state update: summaries, rolling summary and ledger of this run of the stage.

        ``attempt`` is the run's number as the store numbers its raw outputs (a run that failed
        after storing its output counts), so ``get_raw_output(..., attempt=)`` finds it.
        """
        counter = call.counter
        entry: StageLedger = {
            "stage": self.name,
            "run_id": call.stage_input.run_id,
            "raw_output": [*call.namespace, self.name],
            "raw_tokens": summary.raw_tokens,
            "summary_tokens": summary.summary_tokens,
            "summary_cap": call.handoff.summary_max_tokens,
            "verbatim_limit": self._verbatim_limit(call, output),
            "ratio": summary.ratio,
            "retention": summary.retention,
            "entities": len(summary.entities),
            "missing": list(summary.missing),
            "method": summary.method,
            "fallback_reason": summary.fallback_reason,
            "rolling_summary_tokens": counter.count_text(rolling) if rolling else 0,
            "rolling_covers": {**call.rolling_covers, self.name: attempt},
            "attempt": attempt,
            "counter": counter.name,
            "summarizer_calls": usage.calls,
            "summarizer_input_tokens": usage.input_tokens,
            "summarizer_output_tokens": usage.output_tokens,
            "seconds": round(time.perf_counter() - call.started, 3),
        }
        folded: list[str] = []
        if output.fitted is not None and output.reply is not None:
            plan = output.fitted.plan
            usage_meta: Mapping[str, Any] = (
                output.reply.usage_metadata if isinstance(output.reply, AIMessage) else None
            ) or {}
            reported = output.reply.response_metadata.get("budget")
            entry.update(
                {
                    "input_tokens": plan.input_tokens,
                    "output_tokens": int(
                        usage_meta.get("output_tokens") or counter.count_text(output.text)
                    ),
                    "max_tokens": plan.max_tokens,
                    "max_model_len": plan.max_model_len,
                    "degraded": list(output.fitted.degraded),
                    "folded_summary_tokens": (
                        counter.count_text(output.fitted.stage_input.rolling_summary)
                        if output.fitted.stage_input.rolling_summary
                        else 0
                    ),
                    "budget": {
                        **_plain(reported if isinstance(reported, dict) else plan.as_dict()),
                        # the plan was counted here, with the stage's counter
                        "counter": entry["counter"],
                        "counter_exact": counter.exact,
                    },
                }
            )
            folded = output.fitted.folded
        logger.info(
            "stage %s: %d -> %d tokens (%.2fx), %d/%d entities kept, %s, %d summarizer calls",
            self.name,
            summary.raw_tokens,
            summary.summary_tokens,
            summary.ratio,
            len(summary.entities) - len(summary.missing),
            len(summary.entities),
            summary.method,
            usage.calls,
        )
        return {
            "summaries": {self.name: summary.summary},
            "rolling_summary": rolling,
            "rolling_summaries": {self.name: rolling},
            "ledger": {self.name: entry},
            "folded": {name: self.name for name in folded},
        }

    # ------------------------------------------------------------------ sync and async

    def invoke(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        """Run the stage, store its raw output, compress it, and return the state update."""
        call = self._begin(state)
        if call.model is not None:
            fitted = self._fit(call)
            reply = call.model.invoke(
                fitted.messages, config, **self._call_kwargs(call.model, fitted.plan)
            )
            output = _Output(reply.text, reply, fitted)
        else:
            assert self.runnable is not None
            raw = self.runnable.invoke(self.stage_input(call.stage_input), config)
            output = _rendered(raw)
        record = self._raw_record(call, output.text)
        earlier = call.store.get(call.namespace, self.name)
        if earlier is not None:  # run again in this run (a loop): keep the earlier output
            archived, record = archive_earlier_output(self.name, earlier.value, record)
            call.store.put(call.namespace, archived, earlier.value)
        call.store.put(call.namespace, self.name, record)
        with track_model_calls(call.counter) as usage:
            request = call.stage_input.request
            summary = self._first(call, output, record["tokens"])
            if self._needs_model(call, summary):
                other = summarize(
                    output.summary_source,
                    self._summary_spec(call),
                    subject=self.name,
                    user_request=request,
                )
                summary = better_for_query(summary, other)
            rolling = self._merged_rolling(call, summary.summary)
            if rolling is None:
                merged = summarize(
                    self._rolling_input(call, summary.summary),
                    self._rolling_spec(call),
                    subject=_ROLLING_SUBJECT,
                    user_request=request,
                )
                rolling = merged.summary
        attempt = int(record.get("attempt", 1))
        return self._finish(call, output, summary, rolling, usage, attempt)

    async def ainvoke(self, state: Any, config: RunnableConfig) -> dict[str, Any]:
        """Async :meth:`invoke`: counting runs in a thread, model calls are awaited."""
        call = await asyncio.to_thread(self._begin, state)
        if call.model is not None:
            fitted = await asyncio.to_thread(self._fit, call)
            reply = await call.model.ainvoke(
                fitted.messages, config, **self._call_kwargs(call.model, fitted.plan)
            )
            output = _Output(reply.text, reply, fitted)
        else:
            assert self.runnable is not None
            raw = await self.runnable.ainvoke(self.stage_input(call.stage_input), config)
            output = _rendered(raw)
        # The record and the ledger count tokens (a server counter is sync HTTP): in threads.
        record = await asyncio.to_thread(self._raw_record, call, output.text)
        earlier = await call.store.aget(call.namespace, self.name)
        if earlier is not None:  # run again in this run (a loop): keep the earlier output
            archived, record = archive_earlier_output(self.name, earlier.value, record)
            await call.store.aput(call.namespace, archived, earlier.value)
        await call.store.aput(call.namespace, self.name, record)
        with track_model_calls(call.counter) as usage:
            request = call.stage_input.request
            summary = await asyncio.to_thread(self._first, call, output, record["tokens"])
            if self._needs_model(call, summary):
                other = await asummarize(
                    output.summary_source,
                    self._summary_spec(call),
                    subject=self.name,
                    user_request=request,
                )
                summary = await asyncio.to_thread(better_for_query, summary, other)
            rolling = await asyncio.to_thread(self._merged_rolling, call, summary.summary)
            if rolling is None:
                merged = await asummarize(
                    self._rolling_input(call, summary.summary),
                    self._rolling_spec(call),
                    subject=_ROLLING_SUBJECT,
                    user_request=request,
                )
                rolling = merged.summary
        attempt = int(record.get("attempt", 1))
        return await asyncio.to_thread(self._finish, call, output, summary, rolling, usage, attempt)


def _check_handoff(name: str, handoff: _Handoff) -> None:
    if handoff.summary_max_tokens < 1 or handoff.rolling_summary_max_tokens < 1:
        msg = (
            f"Stage {name!r}: summary_max_tokens ({handoff.summary_max_tokens}) and "
            f"rolling_summary_max_tokens ({handoff.rolling_summary_max_tokens}) must be at "
            "least 1 token."
        )
        raise ValueError(msg)
    try:
        check_verbatim_share(handoff.handoff_verbatim_share)
    except ValueError as exc:
        msg = f"Stage {name!r}: {exc}"
        raise ValueError(msg) from exc
    if handoff.rolling_summary_mode not in ("extractive", "llm"):
        msg = (
            f"Stage {name!r}: rolling_summary_mode must be 'extractive' or 'llm', got "
            f"{handoff.rolling_summary_mode!r}."
        )
        raise ValueError(msg)
    try:
        SummarySpec(max_tokens=handoff.summary_max_tokens, strategy=handoff.compression)
    except ValueError as exc:
        msg = f"Stage {name!r}: {exc}"
        raise ValueError(msg) from exc


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar entries of a budget report (JSON-able for checkpoints)."""
    return {
        str(key): value
        for key, value in values.items()
        if value is None or isinstance(value, (str, int, float, bool))
    }


def compressed_stage(
    name: str,
    stage: Runnable[Any, Any] | Callable[..., Any] | BaseChatModel | None = None,
    *,
    model: ModelSpec | None = None,
    system_prompt: str | None = None,
    prompt: PromptBuilder | None = None,
    stage_input: Callable[[StageInput], Any] | None = None,
    summarizer: ModelSpec | None = None,
    summary_max_tokens: int | None = None,
    handoff_verbatim_share: float | None = None,
    rolling_summary_max_tokens: int | None = None,
    rolling_summary_mode: RollingSummaryMode | None = None,
    compression: CompressionStrategy | None = None,
    counter: TokenCounter | None = None,
    budget: TokenBudget | None = None,
    request_key: str = "request",
) -> Runnable[Any, dict[str, Any]]:
    """Make any stage a LangGraph node that hands off a compressed, loss-checked summary.

    The node reads ``request``, ``run_id``, ``summaries``, ``folded``, ``rolling_summary``
    and ``rolling_summaries`` from the state (:class:`~langchain_vllm_budget.stages.StagesState`
    or a state with those keys) and writes ``summaries[name]``, ``ledger[name]`` and the
    rolling summary; the raw output goes to the store.

    Args:
        name: The stage's name: the node name and the key of its summary and ledger entry.
        stage: What the stage runs. A chat model (or ``model=``) gets a prompt built from the
            request and the earlier summaries, fitted to the window. Any other Runnable or
            callable gets ``stage_input(StageInput)`` (default: the request and the context
            as one text) and may return anything :func:`render_stage_result` renders.
        model: The stage's chat model, or a function of the runtime that makes it (to read
            ``runtime.context``); instead of ``stage``.
        system_prompt: The model stage's instructions.
        prompt: Builds the model stage's messages from a ``StageInput`` (default:
            ``system_prompt``, then the request and the compressed context).
        stage_input: Turns a ``StageInput`` into a non-model stage's input.
        summarizer: The summarizer model (or a function of the runtime); ``None``: the
            extractive summary only.
        summary_max_tokens: The hard cap on the summary (default: env
            ``VLLM_BUDGET_SUMMARY_MAX_TOKENS``, else 250).
        handoff_verbatim_share: An output of at most this share of the stage model's window
            is handed off verbatim, uncompressed; a longer one is compressed to
            ``summary_max_tokens`` (default: env ``VLLM_BUDGET_HANDOFF_VERBATIM_SHARE``, else
            0.2; 0: compress every output over the cap). The window is the one the stage's
            call was planned against, else ``budget``'s; unknown, the cap is the limit.
        rolling_summary_max_tokens: The hard cap on the run's rolling summary (default: env
            ``VLLM_BUDGET_ROLLING_SUMMARY_MAX_TOKENS``, else 400).
        rolling_summary_mode: ``"extractive"`` (the default) merges the rolling summary
            without a model call; ``"llm"`` asks the summarizer (guarded).
        compression: When the summarizer is called (default ``"auto"``, see
            :data:`~langchain_vllm_budget.compression.CompressionStrategy`).

            These five hand-off settings may also come from the run's context: a setting
            left ``None`` here is read from the ``context_schema`` field of the same name,
            when the context has one, so one graph serves runs with different caps.
        counter: Counts summaries and prompts (default: the model's own exact counter).
        budget: The budget of a model that does not plan its own (anything but ChatVLLM).
        request_key: The state key that holds the user's request.

    Returns:
        The node (sync and async), named ``name``.

    Raises:
        ValueError: Neither or both of ``stage`` and ``model``, or a bad setting.
    """
    if isinstance(stage, BaseChatModel):
        stage, model = None, stage if model is None else model
    if (stage is None) == (model is None):
        msg = (
            f"compressed_stage({name!r}) needs exactly one of `stage` (a Runnable or callable) "
            "and `model` (a chat model or a function of the runtime that makes one)."
        )
        raise ValueError(msg)
    _check_handoff(
        name,
        _Handoff(
            summary_max_tokens=summary_max_tokens or 1,
            handoff_verbatim_share=handoff_verbatim_share or 0.0,
            rolling_summary_max_tokens=rolling_summary_max_tokens or 1,
            rolling_summary_mode=rolling_summary_mode or "extractive",
            compression=compression or "auto",
        ),
    )
    runnable: Runnable[Any, Any] | None = None
    if stage is not None:
        runnable = stage if isinstance(stage, Runnable) else RunnableLambda(stage)
    node = CompressedStage(
        name=name,
        runnable=runnable,
        model=model,
        prompt=prompt or stage_messages(system_prompt),
        stage_input=stage_input or StageInput.as_text,
        summarizer=summarizer,
        summary_max_tokens=summary_max_tokens,
        handoff_verbatim_share=handoff_verbatim_share,
        rolling_summary_max_tokens=rolling_summary_max_tokens,
        rolling_summary_mode=rolling_summary_mode,
        compression=compression,
        counter=counter,
        budget=budget,
        request_key=request_key,
    )
    return RunnableLambda(node.invoke, afunc=node.ainvoke, name=name)


def build_stage_graph(
    stages: Sequence[Runnable[Any, Any]],
    *,
    state_schema: type[Any] = StagesState,
    context_schema: type[Any] | None = None,
    input_schema: type[Any] = StagesInput,
) -> StateGraph[Any, Any, Any, Any]:
    """A linear graph of compressed stages: ``START -> start_run -> stage 1 -> ... -> END``.

    Args:
        stages: Nodes made by :func:`compressed_stage`, in order.
        state_schema: The graph's state (:class:`StagesState` or a subclass).
        context_schema: The run-time context (``runtime.context``) the stages' model
            functions read.
        input_schema: What a run starts from (default: ``{"request": ...}``).

    Returns:
        The uncompiled graph: compile it with a checkpointer and a store.

    Raises:
        ValueError: No stages, or two with one name.
    """
    names = [stage.get_name() for stage in stages]
    if not names or len(set(names)) != len(names):
        msg = f"build_stage_graph needs stages with distinct names, got {names}."
        raise ValueError(msg)
    builder: StateGraph[Any, Any, Any, Any] = StateGraph(
        state_schema, context_schema=context_schema, input_schema=input_schema
    )
    builder.add_node("start_run", start_run)
    builder.add_edge(START, "start_run")
    previous = "start_run"
    for name, stage in zip(names, stages, strict=True):
        builder.add_node(name, stage)
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder
