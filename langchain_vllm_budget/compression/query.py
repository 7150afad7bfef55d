"""What a summary is for: the tool call and the user's request rank what it keeps first.

A 4,000-token log holds hundreds of IDs and numbers and a 250-token summary keeps a few dozen;
which ones is decided by the question. :class:`Query` collects the words of the user's latest
request, of the tool's arguments and of its name. :func:`line_scores` scores every line of a
result by them:

* a query word in the line counts by its weight (request words and argument values 1, the
  tool's name and the argument names 0.3) times its rarity in the result (BM25's inverse
  document frequency over lines: ``service=checkout`` on every line says little, ``qwen-72b``
  on one line says much); words match by stem and by prefix (``len`` matches ``length``) and
  identifiers count by their parts (``max_model_len``, ``PoolTimeoutError``);
* severity words (error, failed, OOMKilled, critical, ...) count as a light query of their own;
* a number that stands out of its table column or of its unit's other values (a p99 of
  1,840 ms among 200-400 ms) counts like a rare query word;
* a line near a better line shares half of the difference, halving with each line of distance:
  the rest of a YAML block, a diff hunk or a JSON object whose name matched.

:func:`focus_entities` are the entities on the lines that score best on their own (without
their neighbours' share): what a summary must keep for the request (the extractive summary is
enough when it keeps them all).

Example:
    >>> query = Query.of("Why does the ingest pod restart?", tool="kubectl_describe")
    >>> scores = line_scores(["Image: ingest:3.8", "Reason: OOMKilled", "cpu: 1"], query)
    >>> [round(s, 2) for s in scores]
    [0.98, 0.98, 0.49]
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_vllm_budget.compression.entities import Entity, entity_needle, is_entity_present

__all__ = ["Query", "focus_entities", "line_scores"]

_REQUEST_WEIGHT = 1.0
_ARG_VALUE_WEIGHT = 1.0
_NAME_WEIGHT = 0.3  # the tool's name and argument names: "search_logs", "service"
_SEVERITY_WEIGHT = 0.5
_NEAR_DECAY = 0.5  # a line shares this much of a neighbour's score, per line of distance
_NEAR_LINES = 8
_FOCUS_SHARE = 0.5  # focus lines score over this share of the best line

# camelCase and identifier parts, numbers and versions: "PoolTimeoutError" -> pool, timeout,
# error; "max_model_len" -> max, model, len; "2.14.1" stays whole
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+(?:[.:]\d+)*[A-Za-z]*")
_STOPWORDS = frozenset(
    "a about above after again all also an and any are as at be been before being below "  # noqa: SIM905 - a word list reads best as one string
    "between both but by can could did do does doing done each few for from further get "
    "give had has have having here how i if in into is it its itself just keep kept list me "
    "more most my no nor not now of off on once only or other our out over own please same "
    "she should show so some still such tell than that the their them then there these they "
    "this those through to today too under until up use used uses using very was we were "
    "what when where which while who whom why will with would you your summarize summary "
    "find look check".split()
)
_SEVERITY = (
    "error",
    "fail",
    "failure",
    "exception",
    "fatal",
    "critical",
    "warn",
    "warning",
    "oom",
    "kill",
    "crash",
    "panic",
    "denied",
    "refused",
    "backoff",
    "traceback",
)
_SUFFIXES = ("ing", "ed", "es", "s")
# a number with its unit: "3,960 ms", "2.3%", "latency=87ms"
_UNIT_NUMBER = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s?(ms|s|%|[KMGT]i?B|[KMGT]i)(?![\w])"
)
# compound names: parts joined by - _ . : / (gpu-3, INC-5512, v3.3.0, /etc/app.yaml)
_COMPOUND = re.compile(r"(?<![\w])[\w@#]*\w(?:[-_.:/]\w+)+")
_MIN_SAMPLE = 8  # numbers needed before one can stand out
_CELL_NUMBER = re.compile(r"^\s*(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s*(?:%|ms|s)?\s*$")


def _stem(word: str) -> str:
    """Lower case without a plural or tense ending: ``failed`` and ``fails`` give ``fail``."""
    word = word.lower()
    if word[:1].isdigit():
        return word
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _words(text: str) -> list[str]:
    """Stems of the words of ``text`` that can carry meaning (no stopwords, no short ones)."""
    stems = []
    for word in _WORD.findall(text):
        stem = _stem(word)
        if len(stem) >= 3 and stem not in _STOPWORDS and word.lower() not in _STOPWORDS:
            stems.append(stem)
    return stems


def _matches(word: str, term: str) -> bool:
    """Whether a result's word stands for a query term (same stem, or one abbreviates the other).

    Example:
        >>> _matches("len", "length"), _matches("deploy", "deployment"), _matches("1.20", "1.2")
        (True, True, False)
    """
    if word == term:
        return True
    if word[:1].isdigit() or term[:1].isdigit():
        return False
    return term.startswith(word) or (len(term) >= 4 and word.startswith(term))


@dataclass(frozen=True)
class Query:
    """The words that say what a summary is for, each with its weight.

    Attributes:
        terms: ``(stem, weight)`` pairs, each stem once (its largest weight).
        names: ``(name, weight)`` pairs of the compound names in the query (``gpu-3``,
            ``INC-5512``, ``/etc/app.yaml``): matched whole, case-insensitively, where their
            parts alone (``gpu``, ``3``) would match every line.
    """

    terms: tuple[tuple[str, float], ...] = ()
    names: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(
        cls, request: str = "", *, tool: str | None = None, args: Mapping[str, Any] | None = None
    ) -> Query:
        """The query of a tool call made for a user's request (all parts optional).

        Args:
            request: The user's latest request (or a stage's request).
            tool: The tool's name.
            args: The tool call's arguments (values weigh more than names).

        Returns:
            The query; empty (falsy) when none of the parts has a meaningful word.
        """
        weights: dict[str, float] = {}
        names: dict[str, float] = {}

        def add(text: str, weight: float) -> None:
            for stem in _words(text):
                weights[stem] = max(weights.get(stem, 0.0), weight)
            for name in _COMPOUND.findall(text):
                names[name.lower()] = max(names.get(name.lower(), 0.0), weight)

        add(tool or "", _NAME_WEIGHT)
        for key, value in _flatten(args or {}):
            add(key, _NAME_WEIGHT)
            add(value, _ARG_VALUE_WEIGHT)
        add(request, _REQUEST_WEIGHT)
        return cls(tuple(weights.items()), tuple(names.items()))

    def __bool__(self) -> bool:
        return bool(self.terms or self.names)


def _flatten(args: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    for key, value in args.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}.")
        elif isinstance(value, list | tuple):
            for item in value:
                yield name, str(item)
        else:
            yield name, str(value)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _outliers(values: Sequence[float]) -> tuple[float, float] | None:
    """Tukey's fences of ``values`` (outside them a value stands out), if there are enough."""
    if len(values) < _MIN_SAMPLE:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4)
    spread = q3 - q1
    if spread <= 0:
        return None
    return q1 - 1.5 * spread, q3 + 1.5 * spread


def _standing_out(lines: Sequence[str]) -> list[bool]:
    """Per line: whether it holds a number outside its table column's or unit's fences."""
    columns: dict[int, list[tuple[int, float]]] = {}
    units: dict[str, list[tuple[int, float]]] = {}
    for i, line in enumerate(lines):
        if line.count("|") >= 2:
            for c, cell in enumerate(line.split("|")):
                match = _CELL_NUMBER.match(cell)
                if match:
                    columns.setdefault(c, []).append((i, _number(match.group(1))))
        for match in _UNIT_NUMBER.finditer(line):
            units.setdefault(match.group(2), []).append((i, _number(match.group(1))))
    out = [False] * len(lines)
    for samples in (*columns.values(), *units.values()):
        fences = _outliers([v for _, v in samples])
        if fences is None:
            continue
        low, high = fences
        for i, value in samples:
            if value < low or value > high:
                out[i] = True
    return out


def line_scores(lines: Sequence[str], query: Query, *, near: bool = True) -> list[float]:
    """How much each line of a result matters for ``query`` (0: not at all).

    Args:
        lines: The result's lines.
        query: What the summary is for.
        near: Whether a line shares the score of a better line near it (its block);
            :func:`focus_entities` asks without, for the lines the query itself points at.

    Returns:
        One score per line.
    """
    terms = dict(query.terms)
    for word in _SEVERITY:
        terms.setdefault(word, _SEVERITY_WEIGHT)
    line_words = [set(_words(line)) for line in lines]
    for name, weight in query.names:
        term = f"={name}"  # a key no stem can take
        terms[term] = weight
        pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", re.I)
        for words, line in zip(line_words, lines, strict=True):
            if pattern.search(line):
                words.add(term)
    matched: dict[str, set[str]] = {}  # a line's word -> the query terms it stands for
    for words in line_words:
        for word in words:
            if word not in matched:
                matched[word] = (
                    {word}
                    if word.startswith("=")
                    else {t for t in terms if not t.startswith("=") and _matches(word, t)}
                )
    hits = [set().union(*(matched[w] for w in words)) if words else set() for words in line_words]
    count = len(lines)
    frequency: dict[str, int] = {}
    for found in hits:
        for term in found:
            frequency[term] = frequency.get(term, 0) + 1
    rare = _idf(count, 1)  # the weight of a word on one line only
    own = [
        sum(terms[t] * _idf(count, frequency[t]) for t in found) + (rare if outlier else 0.0)
        for found, outlier in zip(hits, _standing_out(lines), strict=True)
    ]
    if not near:
        return own
    scores = []
    for i, score in enumerate(own):
        bonus = max(
            (
                max(0.0, own[j] - score) * _NEAR_DECAY ** abs(i - j)
                for j in range(max(0, i - _NEAR_LINES), min(count, i + _NEAR_LINES + 1))
                if j != i
            ),
            default=0.0,
        )
        scores.append(score + bonus)
    return scores


def _idf(lines: int, frequency: int) -> float:
    """BM25's inverse document frequency of a word found on ``frequency`` of ``lines`` lines."""
    return math.log(1 + (lines - frequency + 0.5) / (frequency + 0.5))


def focus_entities(
    lines: Sequence[str], scores: Sequence[float], entities: Sequence[Entity]
) -> list[Entity]:
    r"""The entities on the best lines (over half the top score): what must be kept.

    Example:
        >>> from langchain_vllm_budget.compression.entities import extract_entity_list
        >>> lines = ["job ck-7 failed: pool_size=20", "job ck-8 ok"]
        >>> entities = extract_entity_list("\n".join(lines))
        >>> [e.text for e in focus_entities(lines, [2.0, 0.1], entities)]
        ['ck-7', 'pool_size=20']
    """
    best = max(scores, default=0.0)
    if best <= 0:
        return []
    top = [line for line, score in zip(lines, scores, strict=True) if score > _FOCUS_SHARE * best]
    return [e for e in entities if any(_on_line(e, line) for line in top)]


def _on_line(entity: Entity, line: str) -> bool:
    return entity_needle(entity.text) in re.sub(r"\s+", "", line) and is_entity_present(
        entity.text, line
    )


def entity_scores(
    lines: Sequence[str], scores: Sequence[float], entities: Sequence[Entity]
) -> dict[str, float]:
    """Each entity's score: that of the best line it is on (0 when on no scoring line)."""
    squashed = [re.sub(r"\s+", "", line) for line in lines]
    result: dict[str, float] = {}
    for entity in entities:
        needle = entity_needle(entity.text)
        result[entity.text] = max(
            (
                score
                for line, flat, score in zip(lines, squashed, scores, strict=True)
                if score > 0 and needle in flat and is_entity_present(entity.text, line)
            ),
            default=0.0,
        )
    return result
