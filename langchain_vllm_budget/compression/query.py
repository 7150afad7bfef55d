"""What a summary is for: the tool call and the user's request rank what it keeps first.

A 4,000-token log holds hundreds of IDs and numbers and a 250-token summary keeps a few dozen;
which ones is decided by the question. :class:`Query` collects the words of the user's latest
request, of the tool's arguments and of its name. :func:`line_scores` scores every line of a
result by them:

* a query word in the line counts by its weight (request words and argument values 1, the
  tool's name and the argument names 0.3) times its rarity in the result (BM25's inverse
  document frequency over lines: ``service=checkout`` on every line says little, ``qwen-72b``
  on one line says much); words match by stem and by prefix (``len`` matches ``length``) and
  identifiers count by their parts (``max_model_len``, ``PoolTimeoutError``); two capitals
  are an acronym (``EU``), ``401s`` is 401, the words after ``not``/``except`` are no query
  words, and the parts of a name of the request weigh half of the name;
* severity words (error, failed, OOMKilled, critical, ...) count as a light query of their
  own, and as request words when the request asks what went wrong (``why``, ``failed``,
  ``restart``, ``slow``, ...); a warning weighs half an error;
* a number that stands out of its table column (``|`` tables and CSV), of its key's other
  values (``"duration_ms": 5412`` among 1-45) or of its unit's (a p99 of 1,840 ms among
  200-400 ms) counts like a rare query word, and so do the top three values of a measure
  when the request asks for an extreme (``furthest behind``, ``grew the most``);
* a filter in the request (``more than 3 failed payments``, ``older than 1.20``, ``over 48
  hours``) counts like a rare query word on the lines that pass it: versions anywhere on the
  line, other numbers under the column or after the key named by the words that follow the
  number; the filter's number is not itself a query word (``1.20`` must not match
  ``1.20.6``);
* a block's header and its lines share half of the difference with each other (the header
  of a short block with each of its lines, a long block's header with its best line): the
  ``diff --git`` line of a matching hunk, the ``[[routes]]`` table of a matching key, the
  YAML parent of a matching setting; a neighbour shares a tenth, per line of distance.

:func:`focus_entities` are the entities on the lines that score best on their own (without
their block's share), dates left out: what a summary must keep for the request (the
extractive summary is enough when it keeps them all).

Example:
    >>> query = Query.of("Why does the ingest pod restart?", tool="kubectl_describe")
    >>> scores = line_scores(["Image: ingest:3.8", "Reason: OOMKilled", "cpu: 1"], query)
    >>> [round(s, 2) for s in scores]
    [1.08, 1.96, 0.2]
"""

from __future__ import annotations

import collections
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_vllm_budget.compression.entities import Entity, entity_needle, is_entity_present

__all__ = ["Query", "focus_entities", "is_diff", "line_scores"]

_REQUEST_WEIGHT = 1.0
_ARG_VALUE_WEIGHT = 1.0
_NAME_WEIGHT = 0.3  # the tool's name and argument names: "search_logs", "service"
_PART_SHARE = 0.5  # a word of a compound name of the query weighs this share of the name
_SEVERITY_WEIGHT = 0.5
_DIAGNOSTIC_SEVERITY_WEIGHT = 1.0  # "why did it fail?": the error lines are the answer
_PARENT_SHARE = 0.5  # a block's header and its lines share this much of each other's score
_BLOCK_LINES = 8  # a header shares its score with the lines of a block this short
_NEAR_DECAY = 0.1  # a line shares this much of a neighbour's score, per line of distance
_NEAR_LINES = 2
_FOCUS_SHARE = 0.5  # focus lines score over this share of the best line
_FAILED_SHARE = 0.5  # what a line failing the request's filter on numbers keeps of its score
_CONTEXT_SHARE = 0.5  # what a diff's context line keeps of its score: it is not what changed

# camelCase and identifier parts, numbers and versions: "PoolTimeoutError" -> pool, timeout,
# error; "max_model_len" -> max, model, len; "2.14.1" stays whole
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+(?:[.:]\d+)*[A-Za-z]*")
_STOPWORDS = frozenset(
    "a about above after again all also an and any are as at be because been before being below "  # noqa: SIM905 - a word list reads best as one string
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
_WARNINGS = frozenset({"warn", "warning"})
_WARNING_SHARE = 0.5  # of a severity word's weight
# a request with one of these asks what went wrong: severity words weigh as request words
_DIAGNOSTIC = re.compile(
    r"(?i)\b(?:why|fail\w*|error\w*|wrong|crash\w*|broke\w*|restart\w*|root cause|"
    r"went down|outage|incident|slow\w*)\b"
)
# "more than 3", "older than 1.20", "over 48 hours", "at least 5": a filter on numbers
_COMPARISON = re.compile(
    r"(?i)\b(?P<word>more|greater|higher|larger|longer|bigger|above|over|exceed\w*|at least|"
    r"less|fewer|lower|smaller|shorter|below|under|at most|older|newer|earlier|later|before|"
    r"after)\s+(?:than\s+)?(?P<number>\d+(?:\.\d+)*)(?![\w.])"
)
_BELOW_WORDS = ("less", "fewer", "lower", "smaller", "shorter", "below", "under", "at most")
_VERSION_WORDS = {"older": "<", "earlier": "<", "before": "<", "newer": ">", "later": ">"}
# points in time: "before 2024" is below it ("older than 3 days" is an age: above)
_EARLIER_WORDS = ("before", "earlier")
_SUFFIXES = ("ing", "ed", "es", "s")
# a number with its unit: "3,960 ms", "2.3%", "latency=87ms"
_UNIT_NUMBER = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s?(ms|s|%|[KMGT]i?B|[KMGT]i?)(?![\w])"
)  # "412G" and "1.8T" as ``df -h`` and ``du -h`` write sizes
_NUMBER_PLURAL = re.compile(r"(?<=\d{3})s$")  # "401s", "1990s"; "30s" may be 30 seconds
# "(not normal card declines)", "except staging", "other than 404s": what the request leaves
# out; its words are no query words (unless the request also uses them outside it). A plain
# "not" states a symptom ("pods not running"), only a bracketed "(not ...)" leaves out.
_NEGATED = re.compile(
    r"(?i)(?:\(not\s+(?P<bracketed>[^()]{1,60})\)|\b(?:except|excluding|other than|"
    r"rather than|apart from)\s+(?P<span>[^,.;:!?()]{1,60}))"
)
# compound names: parts joined by - _ . : / (gpu-3, INC-5512, v3.3.0, /etc/app.yaml)
_COMPOUND = re.compile(r"(?<![\w])[\w@#]*\w(?:[-_.:/]\w+)+")
_MIN_SAMPLE = 8  # numbers needed before one can stand out
_CELL_NUMBER = re.compile(r"^\s*(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s*(?:%|ms|s)?\s*$")


def _stem(word: str) -> str:
    """Lower case without a plural or tense ending: ``failed`` and ``fails`` give ``fail``."""
    word = word.lower()
    if word[:1].isdigit():
        return _NUMBER_PLURAL.sub("", word)  # "401s" are 401 responses, "1990s" 1990
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _words(text: str, *, short: bool = False) -> list[str]:
    """Stems of the words of ``text`` that can carry meaning (no stopwords, no short ones).

    Two capitals are an acronym (``EU``, ``DB``, ``IP``) and count; other two-letter words
    only with ``short`` (a result's words: ``tenant: eu`` answers a request about the EU).
    """
    stems = []
    for word in _WORD.findall(text):
        stem = _stem(word)
        long_enough = len(stem) >= 3 or (len(word) == 2 and (short or word.isupper()))
        if long_enough and stem not in _STOPWORDS and word.lower() not in _STOPWORDS:
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
    if word[:1].isdigit() or term[:1].isdigit() or min(len(word), len(term)) < 3:
        return False  # "de" abbreviates no "deploy"
    return term.startswith(word) or (len(term) >= 4 and word.startswith(term))


@dataclass(frozen=True)
class Query:
    """The words that say what a summary is for, each with its weight.

    Attributes:
        terms: ``(stem, weight)`` pairs, each stem once (its largest weight).
        names: ``(name, weight)`` pairs of the compound names in the query (``gpu-3``,
            ``INC-5512``, ``/etc/app.yaml``): matched whole, case-insensitively, where their
            parts alone (``gpu``, ``3``) would match every line.
        bounds: The request's filters on numbers (``more than 3 failed payments``,
            ``older than 1.20``); their numbers are not terms (``1.20`` must not match
            ``1.20.6``).
        diagnostic: Whether the request asks what went wrong (``why``, ``failed``, ...):
            severity words then weigh as request words.
        extreme: ``"max"`` when the request asks for the largest numbers (``the most``,
            ``largest``, ``furthest behind``, ``grew``), ``"min"`` for the smallest
            (``the least``, ``lowest``), else ``None``.
    """

    terms: tuple[tuple[str, float], ...] = ()
    names: tuple[tuple[str, float], ...] = ()
    bounds: tuple[Bound, ...] = ()
    diagnostic: bool = False
    extreme: str | None = None

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
            compounds = _COMPOUND.findall(text)
            loose = set(_words(_COMPOUND.sub(" ", text)))
            for stem in _words(text):
                # a part of a name ("refund" in test_partial_refund_updates_balance) says
                # less than the name: it weighs less, unless the text also uses it alone
                part = weight if stem in loose else weight * _PART_SHARE
                weights[stem] = max(weights.get(stem, 0.0), part)
            for name in compounds:
                names[name.lower()] = max(names.get(name.lower(), 0.0), weight)

        add(tool or "", _NAME_WEIGHT)
        for key, value in _flatten(args or {}):
            add(key, _NAME_WEIGHT)
            add(value, _ARG_VALUE_WEIGHT)
        bounds = tuple(
            Bound.of(m.group("word"), m.group("number"), request[m.end("number") :])
            for m in _COMPARISON.finditer(request)
        )
        negated = " ".join(
            m.group("bracketed") or m.group("span") for m in _NEGATED.finditer(request)
        )
        asked = _NEGATED.sub(" ", request)
        add(_COMPARISON.sub(lambda m: m.group("word"), asked), _REQUEST_WEIGHT)
        for stem in set(_words(negated)) - set(_words(asked)):
            weights.pop(stem, None)  # "not card declines": the call's own words go too
        return cls(
            tuple(weights.items()),
            tuple(names.items()),
            bounds,
            diagnostic=_DIAGNOSTIC.search(request) is not None,
            extreme=_extreme(asked),
        )

    def __bool__(self) -> bool:
        return bool(self.terms or self.names or self.bounds)


@dataclass(frozen=True)
class Bound:
    """A filter the request puts on numbers: ``more than 3 failed payments``.

    Attributes:
        op: ``">"`` or ``"<"``.
        value: The threshold, as a version tuple (``1.20`` is ``(1, 20)``).
        version: Whether values compare as versions (``older than 1.20``: ``1.18.3`` passes)
            rather than as numbers.
        subject: The stems of the request's words right after the number (``failed
            payments``), which name the column or key the filter is on.
    """

    op: str
    value: tuple[float, ...]
    version: bool
    subject: tuple[str, ...] = ()

    @classmethod
    def of(cls, word: str, number: str, after: str = "") -> Bound:
        """The filter of a comparison word and its number (``"older"``, ``"1.20"``).

        Args:
            word: The comparison word (``"more"``, ``"older"``, ``"before"``, ...).
            number: Its number; one with two dots or more is a version (``1.20.6``), and so
                is a dotted number after a version word (``older than 1.20``).
            after: The request's text right after the number: its first words, up to the
                end of the clause, name what the filter is on.

        Example:
            >>> Bound.of("older", "1.20").passes("1.18.3"), Bound.of("more", "3").passes("7")
            (True, True)
            >>> Bound.of("above", "1.20.6").passes("1.21.0"), Bound.of("before", "2024").op
            (True, '<')
        """
        word = word.lower()
        version = "." in number and (word in _VERSION_WORDS or number.count(".") >= 2)
        below = word.startswith(_BELOW_WORDS) or word in _EARLIER_WORDS
        op = _VERSION_WORDS[word] if version and word in _VERSION_WORDS else "<" if below else ">"
        clause = re.split(r"[?!.,;:()]", after[:40], maxsplit=1)[0]  # "hours? List them ..."
        subject = tuple(_words(clause)[:2])
        return cls(op, _parts(number, version), version, subject)

    def passes(self, number: str) -> bool:
        """Whether ``number`` passes the filter (a number that does not parse does not)."""
        try:
            value = _parts(number, self.version)
        except ValueError:
            return False
        return value > self.value if self.op == ">" else value < self.value


def _parts(number: str, version: bool) -> tuple[float, ...]:
    if version:
        return tuple(float(p) for p in number.split("."))
    return (float(number.replace(",", "")),)


_MOST = re.compile(
    r"(?i)\b(?:most|largest|biggest|highest|greatest|heaviest|busiest|longest|slowest|worst|"
    r"furthest|farthest|maximum|peak|top|grew|grown|growth|increase[sd]?|jump(?:ed|s)?|"
    r"spike[sd]?|surge[sd]?)\b"
)
_LEAST = re.compile(r"(?i)\b(?:least|lowest|smallest|fewest|shortest|minimum)\b")


_RECENT = re.compile(r"(?i)\bmost\s+recent(?:ly)?\b")  # a time, not a measure


def _extreme(request: str) -> str | None:
    """``"max"`` or ``"min"`` when the request asks for the extremes of its numbers.

    Example:
        >>> _extreme("Which group is furthest behind?"), _extreme("lowest latency"), _extreme("why")
        ('max', 'min', None)
        >>> _extreme("What failed most recently?") is None
        True
    """
    request = _RECENT.sub(" ", request)
    if _MOST.search(request):
        return "max"
    return "min" if _LEAST.search(request) else None


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


def _columns(lines: Sequence[str]) -> list[dict[int, str]]:
    """Per line, its table cells by column (``|`` tables and CSV; ``{}`` for other lines).

    A CSV line is one with at least two commas whose next or previous line has as many.
    """
    commas = [line.count(",") for line in lines]
    cells: list[dict[int, str]] = []
    for i, line in enumerate(lines):
        if line.count("|") >= 2:
            cells.append(dict(enumerate(line.split("|"))))
        elif commas[i] >= 2 and commas[i] in (
            commas[i - 1] if i else -1,
            commas[i + 1] if i + 1 < len(lines) else -1,
        ):
            cells.append(dict(enumerate(line.split(","))))
        else:
            cells.append({})
    return cells


def _headers(lines: Sequence[str], cells: Sequence[dict[int, str]]) -> list[dict[int, str]]:
    """Per line, the header cells of its table (the table's first row; ``{}`` for none).

    A rule line (``-----``, ``|---|---|``) does not end a table.
    """
    headers: list[dict[int, str]] = []
    current: dict[int, str] = {}
    for line, row in zip(lines, cells, strict=True):
        if not row:
            if not _RULE.match(line):
                current = {}
            headers.append({})
        elif not current or len(row) != len(current):
            current = row  # a new table: its first row names the columns
            headers.append({})
        else:
            headers.append(current)
    return headers


_RULE = re.compile(r"^[\s|:+=-]+$")


def is_diff(lines: Sequence[str]) -> bool:
    """Whether ``lines`` are a unified diff (a ``diff --git`` line, or ``---``/``+++``/``@@``).

    Example:
        >>> is_diff(["--- a/x", "+++ b/x", "@@ -1 +1 @@", "-a", "+b"]), is_diff(["--- a note"])
        (True, False)
    """
    if any(line.startswith("diff --git ") for line in lines):
        return True
    starts = {line[:4] for line in lines}
    return {"--- ", "+++ ", "@@ -"} <= starts


def _unchanged(lines: Sequence[str]) -> list[int]:
    """The context lines of a unified diff's hunks (neither added nor removed)."""
    if not is_diff(lines):
        return []
    out: list[int] = []
    hunk = False
    for i, line in enumerate(lines):
        if line.startswith("@@ "):
            hunk = True
        elif line.startswith("diff --git "):
            hunk = False
        elif hunk and line.startswith(" "):
            out.append(i)
    return out


def _table_rows(
    cells: Sequence[dict[int, str]], headers: Sequence[dict[int, str]]
) -> dict[int, list[int]]:
    """Each table's header line and the lines of its rows (from :func:`_headers`)."""
    header_at = {id(row): i for i, row in enumerate(cells) if row}
    tables: dict[int, list[int]] = {}
    for i, header in enumerate(headers):
        if header:
            tables.setdefault(header_at[id(header)], []).append(i)
    return tables


# a key and its numeric value: "replicas": 11, latency_ms=87, hours_in_status: 49
_KEY_NUMBER = re.compile(
    r"(?P<key>[A-Za-z_][\w.-]*)[\"']?\s*[:=]\s*[\"']?(?P<value>\d+(?:\.\d+)?)(?![\w.])"
)
_VERSION = re.compile(r"(?<![\w.])v?(\d+(?:\.\d+)+)(?![\w.]*\d)")


# a Prometheus sample: kafka_consumergroup_lag{group="x",partition="7"} 184213
_METRIC_SAMPLE = re.compile(
    r"^(?P<metric>[A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s+(?P<value>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"(?:\s+\d+)?\s*$"
)
_EXTREMES = 3  # "which grew the most": the top three of a group count, not only the top one
# keys that count or stamp rather than measure: an id's or a time's largest value is no answer
_LABEL_KEY = re.compile(
    r"(?i)^key (?:\w*[._])?(?:id|\w*_id|ts|timestamp|date|created\w*|updated\w*|\w*_at|"
    r"seq|pid|port|line)$"
)


def _standing_out(
    lines: Sequence[str],
    cells: Sequence[dict[int, str]],
    extreme: str | None = None,
    subject: Sequence[str] = (),
) -> list[bool]:
    """Per line: whether it holds a number outside its group's fences (or at its extreme).

    A group is a table column, a key (``duration_ms``), a unit (``ms``, ``G``) or a
    Prometheus metric. When the request asks for an extreme (``extreme`` is ``"max"`` for
    ``the most``, ``largest``, ``furthest behind``, ``grew``; ``"min"`` for ``the least``,
    ``lowest``), the top (or bottom) three values of each measure stand out as well: of the
    groups named like a word of the request (``subject``: ``lag``) when there are such, a
    group being a measure when most of its values differ (partition numbers repeat).
    """
    samples: dict[str, list[tuple[int, float]]] = {}
    for i, line in enumerate(lines):
        for c, cell in cells[i].items():
            match = _CELL_NUMBER.match(cell)
            if match:
                samples.setdefault(f"column {c}", []).append((i, _number(match.group(1))))
        for match in _UNIT_NUMBER.finditer(line):
            samples.setdefault(f"unit {match.group(2)}", []).append((i, _number(match.group(1))))
        for match in _KEY_NUMBER.finditer(line):
            samples.setdefault(f"key {match.group('key')}", []).append(
                (i, _number(match.group("value")))
            )
        sample = _METRIC_SAMPLE.match(line.strip())
        if sample:
            samples.setdefault(f"metric {sample.group('metric')}", []).append(
                (i, float(sample.group("value")))
            )
    out = [False] * len(lines)
    for found in samples.values():
        fences = _outliers([v for _, v in found])
        if fences is None:
            continue
        low, high = fences
        for i, value in found:
            if value < low or value > high:
                out[i] = True
    if extreme is None:
        return out
    # a measure, not a label: most values distinct (partition numbers repeat, lags do not)
    measures = {
        name: found
        for name, found in samples.items()
        if len(found) >= _MIN_SAMPLE
        and len({v for _, v in found}) * 2 >= len(found)
        and not _LABEL_KEY.search(name)
    }
    asked = {name: found for name, found in measures.items() if _about(name, subject)}
    for found in (asked or measures).values():
        ordered = sorted({v for _, v in found}, reverse=extreme == "max")
        for i, value in found:
            if value in ordered[:_EXTREMES]:
                out[i] = True
    return out


def _about(name: str, subject: Sequence[str]) -> bool:
    """Whether a column or key name is what a filter is about (shares a word with it)."""
    return any(_matches(word, term) for word in _words(name) for term in subject)


def _passing(
    lines: Sequence[str],
    cells: Sequence[dict[int, str]],
    headers: Sequence[dict[int, str]],
    bounds: Sequence[Bound],
) -> list[bool | None]:
    """Per line: whether it passes one of the request's filters on numbers.

    A version filter (``older than 1.20``) looks at every version on the line; a number
    filter (``more than 3 failed payments``) at the numbers under a column, or after a key,
    named like the words that follow the number in the request.

    Returns:
        Per line ``True`` (a value passes), ``False`` (it has values the filters are about,
        and none passes) or ``None`` (no such value: the filters say nothing of it).
    """
    out: list[bool | None] = [None] * len(lines)

    def seen(i: int, passed: bool) -> None:
        out[i] = bool(out[i]) or passed

    for bound in bounds:
        for i, line in enumerate(lines):
            if bound.version:
                for m in _VERSION.finditer(line):
                    seen(i, bound.passes(m.group(1)))
                continue
            for c, cell in cells[i].items():
                match = _CELL_NUMBER.match(cell)
                name = headers[i].get(c, "")
                if match and name and _about(name, bound.subject):
                    seen(i, bound.passes(match.group(1)))
            for match in _KEY_NUMBER.finditer(line):
                if _about(match.group("key"), bound.subject):
                    seen(i, bound.passes(match.group("value")))
    return out


# a section starts at a diff's file, a TOML/INI table, a markdown heading, or a banner
# (pytest's "_____ test_refund _____", "===== FAILURES =====")
_SECTION = re.compile(
    r"^(?:diff --git |\[\[?[^\]]+\]\]?\s*$|#{1,6} |([_=*#-])\1{2,} \S.* ([_=*#-])\2{2,}\s*$)"
)


def _parents(lines: Sequence[str]) -> list[int]:
    """Per line, the line it belongs under (``-1``: none).

    A more-indented line belongs under the last less-indented one (a YAML key, a JSON
    object, a ``kubectl describe`` section); a line at the margin belongs under the last
    section header (``diff --git``, a TOML or INI ``[table]``, a markdown heading).
    """
    parents: list[int] = []
    stack: list[tuple[int, int]] = []  # (indent, line) of the open blocks
    section = -1
    for i, line in enumerate(lines):
        if not line.strip():
            parents.append(-1)
            continue
        if _SECTION.match(line):
            section, stack = i, []
            parents.append(-1)
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents.append(stack[-1][1] if stack else section)
        stack.append((indent, i))
    return parents


def line_scores(lines: Sequence[str], query: Query, *, near: bool = True) -> list[float]:
    """How much each line of a result matters for ``query`` (0: not at all).

    Args:
        lines: The result's lines.
        query: What the summary is for.
        near: Whether a line shares the score of a better line it belongs with (its block's
            header and lines, and, less, its neighbours); :func:`focus_entities` asks
            without, for the lines the query itself points at.

    Returns:
        One score per line.
    """
    terms = dict(query.terms)
    request_terms = [t for t, weight in query.terms if weight >= _REQUEST_WEIGHT]
    severity = _DIAGNOSTIC_SEVERITY_WEIGHT if query.diagnostic else _SEVERITY_WEIGHT
    for word in _SEVERITY:
        # a warning is the lesser severity: "why did it fail?" is answered by the errors
        weight = severity * _WARNING_SHARE if word in _WARNINGS else severity
        terms[word] = max(terms.get(word, 0.0), weight)
    line_words = [set(_words(line, short=True)) for line in lines]
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
    cells = _columns(lines)
    headers = _headers(lines, cells)
    passing = _passing(lines, cells, headers, query.bounds)
    if any(passing):
        terms["<filter>"] = _REQUEST_WEIGHT
        for found, passed in zip(hits, passing, strict=True):
            if passed:
                found.add("<filter>")
    frequency: dict[str, int] = {}
    for found in hits:
        for term in found:
            frequency[term] = frequency.get(term, 0) + 1
    rare = _idf(count, 1)  # the weight of a word on one line only
    own = [
        sum(terms[t] * _idf(count, frequency[t]) for t in found) + (rare if outlier else 0.0)
        for found, outlier in zip(
            hits, _standing_out(lines, cells, query.extreme, request_terms), strict=True
        )
    ]
    if any(passing):
        # the request asked for the lines that pass ("orders stuck more than 48 hours"): a
        # line whose value fails is not what it asked for, whatever else it matches
        own = [
            score * _FAILED_SHARE if passed is False else score
            for score, passed in zip(own, passing, strict=True)
        ]
    for i in _unchanged(lines):
        own[i] *= _CONTEXT_SHARE
    for header, rows in _table_rows(cells, headers).items():
        # a header naming the columns the request asks for says the table is relevant, not
        # which row is: it is worth its best row (and is quoted with it, as its context)
        own[header] = min(own[header], max(own[r] for r in rows))
    if not near:
        return own
    shared = list(own)
    parents = _parents(lines)
    children = collections.Counter(parents)
    for i, parent in enumerate(parents):
        if parent < 0:
            continue
        # a short block's lines share its header's score (a long block's are records of
        # their own: the spans of a trace); a header shares its best line's
        if children[parent] <= _BLOCK_LINES:
            shared[i] = max(shared[i], own[i] + _PARENT_SHARE * max(0.0, own[parent] - own[i]))
        shared[parent] = max(
            shared[parent], own[parent] + _PARENT_SHARE * max(0.0, own[i] - own[parent])
        )
    scores = []
    for i, score in enumerate(shared):
        bonus = max(
            (
                max(0.0, own[j] - own[i]) * _NEAR_DECAY ** abs(i - j)
                for j in range(max(0, i - _NEAR_LINES), min(count, i + _NEAR_LINES + 1))
                if j != i
            ),
            default=0.0,
        )
        scores.append(max(score, own[i] + bonus))
    return scores


def _idf(lines: int, frequency: int) -> float:
    """BM25's inverse document frequency of a word found on ``frequency`` of ``lines`` lines."""
    return math.log(1 + (lines - frequency + 0.5) / (frequency + 0.5))


def focus_entities(
    lines: Sequence[str], scores: Sequence[float], entities: Sequence[Entity]
) -> list[Entity]:
    r"""The entities on the best lines (over half the top score): what must be kept.

    Dates and date-times are left out: on a log line they stamp it, and a summary that
    lost one has not lost what the request asked for.

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
    return [
        e for e in entities if not _DATE.match(e.text) and any(_on_line(e, line) for line in top)
    ]


# a date or date-time: a log line's stamp says when, not what the request asked about
_DATE = re.compile(r"^\d{4}-[01]\d-[0-3]\d(?:[T ][\d:.]+(?:Z|[+-][\d:]+)?)?$")


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
