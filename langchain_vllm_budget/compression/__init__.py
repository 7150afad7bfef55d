"""Loss-aware compression of stage results under a hard token cap.

A stage of a multi-stage pipeline (or a tool of an agent) produces a result; the next step
should see a short summary instead. :func:`compress_stage_result` makes that summary and
checks it instead of trusting it (:func:`summarize` takes the same choices as one frozen
:class:`SummarySpec`):

1. **Entities** (:mod:`~langchain_vllm_budget.compression.entities`): IDs, UUIDs, file paths,
   URLs, numbers with units, ``key=value`` parameters, CLI flags and tool/function names.
2. **Extractive first** (:mod:`~langchain_vllm_budget.compression.extractive`): a
   deterministic summary, entity bullets then the sentences that carry most entities. With
   the default ``strategy="auto"`` it is the answer when it keeps every entity, and no model
   is called. Given a request (:class:`~langchain_vllm_budget.compression.query.Query`: the
   tool call and the user's request), :func:`query_summary` ranks lines and entities by it
   and the model is needed only when an entity the request points at was lost.
3. **A summarizer model** (:mod:`~langchain_vllm_budget.compression.llm`) otherwise, with the
   seed's instructions, map-reduced over chunks when the result exceeds its window; or, for a
   compaction whose summarizer is the chat model itself, the conversation's own prefix and an
   instruction (:mod:`~langchain_vllm_budget.compression.prefix`), served from vLLM's prefix
   cache.
4. **The guard** (:mod:`~langchain_vllm_budget.compression.guard`): entities missing from the
   model's summary are restored; an empty, repetitive, over-the-cap or low-retention summary
   is replaced by the extractive one; the cap is enforced (counted, never just requested),
   and entities that cannot fit are reported in ``missing``.

Example:
    >>> sorted(extract_entities("Ticket INC-4821: set max_tokens=250 in /etc/app/config.yaml"))
    ['/etc/app/config.yaml', 'INC-4821', 'max_tokens=250']
"""

from langchain_vllm_budget.compression.entities import (
    Entity,
    EntityKind,
    extract_entities,
    extract_entity_list,
    is_entity_present,
)
from langchain_vllm_budget.compression.extractive import truncate_to_tokens
from langchain_vllm_budget.compression.guard import (
    CompressionMethod,
    CompressionResult,
    better_for_query,
    extractive_summary,
    needs_model,
    query_summary,
)
from langchain_vllm_budget.compression.llm import (
    COMPRESSION_PROMPT,
    COMPRESSION_SYSTEM_PROMPT,
    acompress_stage_result,
    asummarize,
    compress_stage_result,
    is_summarizer_prompt,
    summarize,
)
from langchain_vllm_budget.compression.prefix import (
    PREFIX_SUMMARY_INSTRUCTION,
    PrefixCall,
    SummarizerRequest,
)
from langchain_vllm_budget.compression.query import Query
from langchain_vllm_budget.compression.render import render_stage_result
from langchain_vllm_budget.compression.spec import CompressionStrategy, SummarySpec

__all__ = [
    "COMPRESSION_PROMPT",
    "COMPRESSION_SYSTEM_PROMPT",
    "PREFIX_SUMMARY_INSTRUCTION",
    "CompressionMethod",
    "CompressionResult",
    "CompressionStrategy",
    "Entity",
    "EntityKind",
    "PrefixCall",
    "Query",
    "SummarizerRequest",
    "SummarySpec",
    "acompress_stage_result",
    "asummarize",
    "better_for_query",
    "compress_stage_result",
    "extract_entities",
    "extract_entity_list",
    "extractive_summary",
    "is_entity_present",
    "is_summarizer_prompt",
    "needs_model",
    "query_summary",
    "render_stage_result",
    "summarize",
    "truncate_to_tokens",
]
