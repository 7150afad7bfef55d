"""Pipeline requests: the demo request and distinct variants of it, with their must-keep facts.

Concurrent pipelines must not share a request (vLLM's prefix cache would serve the shared
part, and identical greedy outputs would hide the load). :func:`request_variant` makes the
``i``-th variant of :data:`langchain_vllm_budget.pipeline.prompts.DEMO_REQUEST` by replacing
each of its IDs, hosts and
numbers (:data:`_SLOTS`) with another value, and applies the same replacements to the
request's hand-labelled must-keep facts (``benchmarks/data/must_keep.json``, ``requests.demo``).
Variant 0 is the demo request itself.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from benchmarks.retention import MustKeep, load_must_keep
from langchain_vllm_budget.pipeline.prompts import DEMO_REQUEST

__all__ = ["PipelineRequest", "request_variant"]

# Each value of the demo request that a variant changes (a pattern, so that every accepted
# spelling of a fact changes with it), and its replacement.
_SLOTS: tuple[tuple[str, str], ...] = (
    (r"INC-4821", "INC-{n4}"),
    (r"ORD-99812", "ORD-{n5}"),
    (r"ORD-99813", "ORD-{n5b}"),
    (r"db-replica-03", "db-replica-{n2}"),
    (r"(max_connections\s*[=:]\s*)64\b", "\\g<1>{c}"),
    (r"(worker_threads\s*[=:]\s*)8\b", "\\g<1>{w}"),
    (r"(pool_timeout\s*[=:]\s*)30s", "\\g<1>{t}s"),
)


@dataclass(frozen=True)
class PipelineRequest:
    """A request and its must-keep facts.

    Attributes:
        index: The variant number (0: the demo request).
        text: The request.
        must_keep: Its hand-labelled facts, with the variant's values.
    """

    index: int
    text: str
    must_keep: tuple[MustKeep, ...]


def _values(index: int) -> dict[str, str]:
    rng = random.Random(1000 + index)
    order = rng.randint(10000, 99998)
    return {
        "n4": f"{rng.randint(1000, 9999)}",
        "n5": f"{order}",
        "n5b": f"{order + 1}",
        "n2": f"{rng.randint(10, 99)}",
        "c": f"{rng.choice([16, 32, 48, 96, 128])}",
        "w": f"{rng.choice([4, 6, 12, 16])}",
        "t": f"{rng.choice([10, 15, 20, 45, 60])}",
    }


def request_variant(index: int) -> PipelineRequest:
    """The ``index``-th distinct request (0: the demo request) with its must-keep facts.

    Example:
        >>> first, other = request_variant(0), request_variant(3)
        >>> "INC-4821" in first.text, "INC-4821" in other.text
        (True, False)
        >>> all(fact.found_in(other.text) for fact in other.must_keep)
        True
    """
    facts = load_must_keep()["requests"]["demo"]
    if index == 0:
        return PipelineRequest(0, DEMO_REQUEST, tuple(facts))
    values = _values(index)
    replacements = [(re.compile(old), new.format(**values)) for old, new in _SLOTS]

    def substitute(text: str) -> str:
        for pattern, new in replacements:
            text = pattern.sub(new, text)
        return text

    return PipelineRequest(
        index,
        substitute(DEMO_REQUEST),
        tuple(MustKeep(tuple(substitute(s) for s in fact.spellings)) for fact in facts),
    )
