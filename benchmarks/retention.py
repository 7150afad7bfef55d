"""Retention against hand-labelled must-keep entities (not the package's own extractor).

The package reports retention against the entities *its* extractor found, which is circular
when the benchmark is judging that extractor. ``benchmarks/data/must_keep.json`` lists, per
benchmark output, the facts a reader of the summary must still find, written by reading each
output. Each fact is a list of accepted spellings (``max_model_len: 12288`` or
``max_model_len=12288``); a fact counts as kept when any spelling occurs in the summary
(whitespace-normalised, case-sensitive: IDs are). Only facts present in the raw output are
scored, so a stage that never mentioned a fact is not blamed for dropping it.

Pipeline requests are generated from templates (:data:`REQUEST_TEMPLATES` in
``benchmarks/requests.py``); their must-keep facts are the template's hand-labelled slots
filled with the request's values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MUST_KEEP_PATH",
    "MustKeep",
    "Retention",
    "load_must_keep",
    "must_keep_retention",
    "normalise",
]

MUST_KEEP_PATH = Path(__file__).resolve().parent / "data" / "must_keep.json"

_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Collapse whitespace runs to one space (line breaks and indentation do not matter).

    Example:
        >>> normalise("max_model_len:\\n   12288")
        'max_model_len: 12288'
    """
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class MustKeep:
    """One fact and its accepted spellings.

    Attributes:
        spellings: Accepted spellings; the first is the fact's label.
    """

    spellings: tuple[str, ...]

    @property
    def label(self) -> str:
        """The fact's name in reports (its first spelling)."""
        return self.spellings[0]

    def found_in(self, text: str) -> bool:
        """Whether any spelling occurs in ``text`` (whitespace-normalised)."""
        haystack = normalise(text)
        return any(normalise(s) in haystack for s in self.spellings)

    @classmethod
    def parse(cls, entry: str | Sequence[str]) -> MustKeep:
        """A fact from its JSON form: one spelling, or a list of them."""
        spellings = (entry,) if isinstance(entry, str) else tuple(entry)
        if not spellings or not all(isinstance(s, str) and s.strip() for s in spellings):
            msg = f"A must-keep fact needs one or more non-empty spellings, got {entry!r}."
            raise ValueError(msg)
        return cls(spellings)


@dataclass(frozen=True)
class Retention:
    """How many must-keep facts of a raw output its summary kept.

    Attributes:
        total: Facts present in the raw output.
        kept: Of those, facts present in the summary.
        missing: Labels of the facts the summary lost.
        absent: Labels of facts the raw output never mentioned (not scored).
    """

    total: int
    kept: int
    missing: tuple[str, ...] = field(default=())
    absent: tuple[str, ...] = field(default=())

    @property
    def rate(self) -> float:
        """``kept / total`` (1.0 when the raw output held none)."""
        return self.kept / self.total if self.total else 1.0

    def __add__(self, other: Retention) -> Retention:
        return Retention(
            self.total + other.total,
            self.kept + other.kept,
            self.missing + other.missing,
            self.absent + other.absent,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "total": self.total,
            "kept": self.kept,
            "rate": round(self.rate, 4),
            "missing": list(self.missing),
            "absent": list(self.absent),
        }


def must_keep_retention(raw: str, summary: str, facts: Iterable[MustKeep]) -> Retention:
    """Score ``summary`` against the must-keep facts that ``raw`` contains.

    Args:
        raw: The stage's raw output.
        summary: What was handed to the next stage.
        facts: The hand-labelled facts.

    Returns:
        The retention.

    Example:
        >>> facts = [MustKeep(("INC-7",)), MustKeep(("pool=8", "pool: 8")), MustKeep(("db-3",))]
        >>> r = must_keep_retention("INC-7 set pool: 8 on db-1", "- INC-7", facts)
        >>> r.total, r.kept, r.missing, r.absent
        (2, 1, ('pool=8',), ('db-3',))
    """
    total = kept = 0
    missing: list[str] = []
    absent: list[str] = []
    for fact in facts:
        if not fact.found_in(raw):
            absent.append(fact.label)
            continue
        total += 1
        if fact.found_in(summary):
            kept += 1
        else:
            missing.append(fact.label)
    return Retention(total, kept, tuple(missing), tuple(absent))


def load_must_keep(path: Path = MUST_KEEP_PATH) -> dict[str, dict[str, list[MustKeep]]]:
    """The labelled facts: ``{section: {output name: [facts]}}``.

    Raises:
        ValueError: A fact without spellings.
    """
    data: Mapping[str, Mapping[str, Any]] = json.loads(path.read_text())
    return {
        section: {
            name: [MustKeep.parse(entry) for entry in entries]
            for name, entries in outputs.items()
            if not name.startswith("_")
        }
        for section, outputs in data.items()
        if not section.startswith("_")
    }
