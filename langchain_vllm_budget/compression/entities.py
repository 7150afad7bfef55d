"""Entities: the details a summary must not lose, and how to find them in a text.

:func:`extract_entities` pulls what a later stage cannot guess: IDs, UUIDs and commits, file
paths, URLs and image/model references, numbers with units and dates, ``key=value``
parameters (also ``key: value`` settings, YAML lines and JSON pairs), CLI flags, environment
variables, and tool/function names. :func:`is_entity_present` checks a summary for one.

Example:
    >>> sorted(extract_entities("Ticket INC-4821: set max_tokens=250 in /etc/app/config.yaml"))
    ['/etc/app/config.yaml', 'INC-4821', 'max_tokens=250']
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Entity",
    "EntityKind",
    "entity_bullets",
    "entity_needle",
    "extract_entities",
    "extract_entity_list",
    "is_entity_present",
    "kind_label",
    "strip_entities",
]

EntityKind = Literal["id", "path", "param", "name", "value"]
"""Entity kinds, in priority order: what is kept first when the cap is tight."""

_KIND_PRIORITY: dict[EntityKind, int] = {"id": 0, "path": 1, "param": 2, "name": 3, "value": 4}
_KIND_LABEL: dict[EntityKind, str] = {
    "id": "IDs",
    "path": "paths",
    "param": "params",
    "name": "names",
    "value": "values",
}

_UNITS = (
    r"(?:ms|us|µs|ns|s|sec|secs|seconds?|mins?|minutes?|h|hrs?|hours?|days?|weeks?|"
    r"[KMGTP]i?B|[KMGTP]i|[KMGT]b|bytes?|tokens?|toks?|tok/s|tokens/s|req/s|rps|qps|ops/s|"
    r"%|x|GHz|MHz|kHz|Hz|°C|USD|EUR)"
)
# counts are prose-like when small ("3 steps"): only two digits or more count as entities
_COUNT_UNITS = (
    r"(?:cores?|vCPUs?|GPUs?|threads?|workers?|replicas?|rows?|requests?|seqs?|sequences?|"
    r"layers?|heads?|steps?|epochs?|chunks?|shards?|nodes?|pods?)"
)

# (kind, pattern); the longest match wins where matches nest.
_PATTERNS: tuple[tuple[EntityKind, re.Pattern[str]], ...] = (
    (
        "id",
        re.compile(
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
        ),
    ),
    (
        "path",
        re.compile(
            r"\b(?:https?|wss?|s3|gs|ftp|file|postgres(?:ql)?|redis|sqlite|mysql|grpc)://"
            r"[^\s<>\"'`)\]}]+[^\s<>\"'`)\]},.;:!?]"
        ),
    ),
    ("path", re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    ("path", re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b")),
    # absolute or home/relative-dot paths: /etc/app.yaml, ~/x, ./run.sh, /v1/chat/completions
    (
        "path",
        re.compile(r"(?<![\w/.:~-])(?:~|\.{1,2})?(?:/[\w.@+-]*[A-Za-z0-9_@+])+/?"),
    ),
    # relative paths with a file extension: src/app/main.py
    ("path", re.compile(r"(?<![\w/.-])(?:[\w.-]+/)+[\w.-]*\w\.[A-Za-z][A-Za-z0-9]{0,7}\b")),
    # host/path references without a scheme, e.g. container images with their tag:
    # registry.example.com/shop/checkout:1.15.0
    (
        "path",
        re.compile(
            r"(?<![\w/.@:-])[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?::\d{1,5})?"
            r"(?:/[\w.%-]+)+(?::[\w.-]*\w)?(?![\w/])"
        ),
    ),
    # model and repository IDs: Qwen/Qwen2.5-7B-Instruct-AWQ, deploy/k8s/overlays/prod-2
    (
        "path",
        re.compile(
            r"(?<![\w/.:@-])(?=[\w./-]{8})(?=[\w.-]*/[\w./-]*\d)[A-Za-z][\w.-]*(?:/[\w.-]*\w)+"
            r"(?![\w/])"
        ),
    ),
    # Windows paths
    ("path", re.compile(r"\b[A-Za-z]:\\(?:[\w .-]+\\)*[\w.-]+")),
    # bare file names with a common extension
    (
        "path",
        re.compile(
            r"(?<![\w/.-])[\w-]+(?:\.[\w-]+)*\.(?:py|pyi|ipynb|ya?ml|json|jsonl|toml|ini|cfg|conf|"
            r"env|md|rst|txt|csv|tsv|parquet|log|sh|bash|sql|db|sqlite|js|ts|tsx|jsx|go|rs|"
            r"java|kt|c|h|cc|cpp|hpp|rb|php|html|css|xml|proto|lock|gguf|safetensors|bin|"
            r"pt|onnx|tar|gz|zip|whl|vllm|dockerfile)\b"
        ),
    ),
    # key=value parameters (quoted values up to 60 characters)
    (
        "param",
        re.compile(
            r"(?<![\w.-])[A-Za-z_][\w.-]*[A-Za-z0-9_]\s?=(?!=)\s?"
            r"(?:\"[^\"\n]{0,60}\"|'[^'\n]{0,60}'|[^\s,;)\]}'\"<>]*[^\s,;)\]}'\"<>.:!?])"
        ),
    ),
    # JSON pairs with a scalar value ("latency_ms": 2800), kept as key=value
    (
        "param",
        re.compile(
            r"\"(?P<key>[A-Za-z_][\w.-]*)\"\s*:\s*(?P<value>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
            r"|true|false|\"[^\"\s]{1,60}\")(?=\s*[,}\]\n])"
        ),
    ),
    # YAML settings on their own line, diff markers allowed (+  replicas: 4)
    (
        "param",
        re.compile(r"(?m)^[ \t+-]*([A-Za-z][\w.-]*:[ \t]?(?:\d[\w.]*|true|false))[ \t]*$"),
    ),
    # snake/kebab key: value with a settings-like value (max_model_len: 12288)
    (
        "param",
        re.compile(
            r"(?<![\w.-])[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)+:\s?"
            r"(?:\d[\w.]*|/[\w./-]+|true|false|null)\b"
        ),
    ),
    # CLI flags, with a numeric/path/identifier value when one follows
    (
        "param",
        re.compile(
            r"(?<![\w-])--[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]"
            r"(?:[= ](?:\d(?:[\w.]*\w)?|/[\w./-]*\w|[A-Za-z][\w.-]*\d(?:[\w.-]*\w)?))?"
        ),
    ),
    # environment variables / constants: LLM_MAX_MODEL_LEN
    ("param", re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")),
    # IDs: words with a separator, at least one letter and one digit (INC-4821, job_7f3a2c)
    (
        "id",
        re.compile(
            r"(?<![\w.-])(?=[\w.-]*\d)(?=[\w.-]*[A-Za-z])[A-Za-z0-9]+(?:[.]?[_-][A-Za-z0-9]+"
            r"|\.[A-Za-z0-9]+)*[_-][A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*(?![\w-])"
        ),
    ),
    # hex hashes (git SHAs, digests): at least 7 characters, letters and digits
    ("id", re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,64}\b")),
    # upper-case codes with digits: RTX3060, ORD9XK2 (5+ characters)
    ("id", re.compile(r"\b(?=[A-Z0-9]*\d)(?=[A-Z0-9]*[A-Z])[A-Z0-9]{5,}\b")),
    # issue / PR references: #1234
    ("id", re.compile(r"(?<![\w&])#\d{2,}\b")),
    # function and tool names: search_tickets(, client.get(, getUser(
    ("name", re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?=\()|\b[A-Za-z_]\w*(?=\(\))")),
    ("name", re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")),
    ("name", re.compile(r"\b[a-z][a-z0-9]*(?:[A-Z][a-z0-9]+)+\b")),
    # code spans without spaces (`resources.limits.memory`); a span with spaces is a command
    # or prose, whose parts the other patterns find
    ("name", re.compile(r"`([^`\s]{2,60})`")),
    # numbers with units: 500 ms, 12GB, 95%, 4x, $12.50
    ("value", re.compile(r"(?<![\w.])\d+(?:[.,]\d+)?\s?" + _UNITS + r"(?![\w/])")),
    ("value", re.compile(r"(?<![\w.])\d{2,}(?:[.,]\d+)?\s?" + _COUNT_UNITS + r"(?![\w/])")),
    ("value", re.compile(r"(?<![\w.])\$\d+(?:[.,]\d+)?\b")),
    # versions: v1.2.3, 0.32.0
    ("value", re.compile(r"(?<![\w.])v?\d+(?:\.\d+){2,}\b")),
    # ISO dates and date-times (2024-05-14, 2024-05-14T14:02:00Z); bare clock times are
    # timeline narrative, not settings, and are left out
    (
        "value",
        re.compile(
            r"(?<![\w.:-])\d{4}-[01]\d-[0-3]\d(?:T[0-2]\d:[0-5]\d(?::[0-5]\d(?:\.\d+)?)?"
            r"(?:Z|[+-][0-2]\d:?[0-5]\d)?)?(?![\w:-])"
        ),
    ),
    # HTTP status codes: HTTP 504
    ("value", re.compile(r"\bHTTP[ /]?[1-5]\d\d\b")),
    # long plain numbers (settings such as 12288) and decimals (0.88)
    (
        "value",
        re.compile(
            r"(?<![\w.,:/-])\d{4,}(?:\.\d+)?(?![\w.]\w|[-/:]\d)|(?<![\w.])\d+\.\d+(?![\w.])"
        ),
    ),
)


def kind_label(kind: EntityKind) -> str:
    """The plural label of a kind, as the summaries' bullets write it (``"IDs"``)."""
    return _KIND_LABEL[kind]


@dataclass(frozen=True)
class Entity:
    """A critical detail found in a stage result.

    Attributes:
        text: The entity as it appears in the text.
        kind: Its kind; decides its priority under a tight cap.
        position: Offset of its first occurrence in the text.
    """

    text: str
    kind: EntityKind
    position: int

    @property
    def priority(self) -> int:
        """Lower is kept first: IDs, paths, params, names, values."""
        return _KIND_PRIORITY[self.kind]


# look like IDs but are vocabulary: text encodings
_NOT_ENTITIES = re.compile(r"(?i)utf-?(?:8|16|32)")
_MAX_ID_CHARS = 48  # a UUID has 36; digests (hex) may be longer
_HEX = re.compile(r"[0-9a-fA-F]+")


def _raw_matches(text: str) -> list[tuple[int, int, EntityKind, str]]:
    matches: list[tuple[int, int, EntityKind, str]] = []
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            if "key" in pattern.groupindex:  # a JSON pair, written key=value
                value = f"{match.group('key')}={match.group('value').strip(chr(34))}"
                start, end = match.span()
            else:
                group = 1 if pattern.groups else 0
                value = match.group(group)
                if value is None:
                    continue
                start, end = match.span(group)
            stripped = value.strip()
            if len(stripped) < 2 or _NOT_ENTITIES.fullmatch(stripped):
                continue
            if kind == "id" and len(stripped) > _MAX_ID_CHARS and not _HEX.fullmatch(stripped):
                continue  # a looping model's run-on word, not an ID
            matches.append((start, end, kind, stripped))
    return matches


def extract_entity_list(text: str) -> list[Entity]:
    """The critical entities of ``text``, in priority order (then order of appearance).

    Nested matches keep only the outermost (a path inside a URL, a number inside a
    ``key=value`` parameter), and an entity that is a substring of another is dropped: the
    longer one carries it.

    Args:
        text: Any text.

    Returns:
        Unique entities, highest priority first.

    Example:
        >>> [e.text for e in extract_entity_list("GET https://h.example/v1/jobs/42 took 350 ms")]
        ['https://h.example/v1/jobs/42', '350 ms']
    """
    matches = _raw_matches(text)
    # longest first, so nested matches are recognised and dropped
    matches.sort(key=lambda m: (-(m[1] - m[0]), m[0], _KIND_PRIORITY[m[2]]))
    kept: list[tuple[int, int, EntityKind, str]] = []
    # kept matches by start: one that contains [start, end] starts within `longest` before it
    by_start: list[tuple[int, int]] = []
    longest = matches[0][1] - matches[0][0] if matches else 0
    for start, end, kind, value in matches:
        nearby = by_start[
            bisect.bisect_left(by_start, (start - longest, -1)) : bisect.bisect_right(
                by_start, (start, len(kept))
            )
        ]
        outer = sorted(i for _, i in nearby if kept[i][1] >= end)
        if not outer:
            bisect.insort(by_start, (start, len(kept)))
            kept.append((start, end, kind, value))
            continue
        # a container ranks like the most important entity inside it (ticket_id=INC-7: an ID)
        for i in outer:
            k_start, k_end, k_kind, k_value = kept[i]
            if k_kind == "param" and _KIND_PRIORITY[kind] < _KIND_PRIORITY[k_kind]:
                kept[i] = (k_start, k_end, kind, k_value)
    # one entity per spelling: ``500 ms``/``500ms`` and ``key=1``/``key: 1`` are the same
    first: dict[str, Entity] = {}
    for start, _end, kind, value in sorted(kept, key=lambda m: m[0]):
        first.setdefault(_canonical(value), Entity(text=value, kind=kind, position=start))
    found = list(first.values())
    # carriers[i]: the entities that carry found[i] (a path in a URL, INC-7 in
    # ticket_id=INC-7); "inside" is what presence means, so 800 ms is not inside 2800 ms
    carriers = [
        [j for j in maybe if _carries(found[j].text, found[i].text)]
        for i, maybe in enumerate(_possible_carriers(found))
    ]
    inner: list[list[Entity]] = [[] for _ in found]
    for i, outers in enumerate(carriers):
        for j in outers:
            inner[j].append(found[i])
    unique: list[Entity] = []
    for i, entity in enumerate(found):
        if carriers[i]:  # the longer one carries it: dropped
            continue
        best = min([entity, *inner[i]], key=lambda e: e.priority)
        unique.append(
            entity if entity.kind != "param" else dataclasses.replace(entity, kind=best.kind)
        )
    unique.sort(key=lambda e: (e.priority, e.position))
    return unique


def extract_entities(text: str) -> set[str]:
    """The critical entities of a stage result: what a summary must not lose.

    IDs, UUIDs and commits, file paths, URLs and image/model references, numbers with units
    and dates, ``key=value`` parameters (also ``key: value`` settings, YAML lines and JSON
    pairs, written ``key=value``), CLI flags, environment variables, and tool/function names.
    Plain words, markdown, bare small numbers and clock times are never entities. No entity
    is carried by another (a path inside a URL), and a parameter has one spelling.

    Args:
        text: Any text (render structured values first with :func:`render_stage_result`).

    Returns:
        The entities as they appear in ``text`` (JSON pairs as ``key=value``).

    Example:
        >>> sorted(extract_entities("Run `search_tickets` with limit=20; the cache is 4 GiB."))
        ['4 GiB', 'limit=20', 'search_tickets']
        >>> extract_entities("The plan looks good and the team agreed to ship it.")
        set()
    """
    return {entity.text for entity in extract_entity_list(text)}


_KEY_VALUE = re.compile(r"^([A-Za-z_][\w.-]*)\s?[=:]\s?(.+)$")


def _split_key_value(entity: str) -> tuple[str, str] | None:
    """``(key, value)`` of a ``key=value`` / ``key: value`` entity (not URLs or flags)."""
    if entity.startswith(("http", "/", "-")) or "://" in entity:
        return None
    match = _KEY_VALUE.match(entity)
    if match is None:
        return None
    return match.group(1), match.group(2).strip("\"'")


def _canonical(entity: str) -> str:
    """The entity without whitespace, ``key: value`` written as ``key=value``."""
    key_value = _split_key_value(entity)
    if key_value is not None:
        entity = f"{key_value[0]}={key_value[1]}"
    return re.sub(r"\s+", "", entity)


def entity_needle(entity: str) -> str:
    """What ``entity`` being in a text implies is in that text with its whitespace removed.

    A fast first test before :func:`is_entity_present`: when the needle is not in the
    whitespace-free text, the entity is not present.

    Example:
        >>> entity_needle("500 ms"), entity_needle("max_tokens: 250")
        ('500ms', 'max_tokens')
    """
    key_value = _split_key_value(entity)
    pieces = [key_value[0], re.sub(r"\s+", "", key_value[1])] if key_value else [entity]
    return re.sub(r"\s+", "", max(pieces, key=len))


def _possible_carriers(found: Sequence[Entity]) -> list[list[int]]:
    """For each entity, the other entities that may carry it (a superset, found fast).

    An entity present in another's text has its :func:`entity_needle` inside the other's
    whitespace-free text. One search through all the entities' texts joined finds those
    others, instead of a regex per pair: a conversation's thousands of IDs stay linear, not
    quadratic.
    """
    squashed = [re.sub(r"\s+", "", entity.text) for entity in found]
    joined = "\n".join(squashed)
    starts = list(itertools.accumulate((len(text) + 1 for text in squashed), initial=0))
    possible: list[list[int]] = []
    for i, entity in enumerate(found):
        needle = entity_needle(entity.text)
        if not needle:
            possible.append([j for j in range(len(found)) if j != i])
            continue
        hits: list[int] = []
        at = joined.find(needle)
        while at != -1:
            j = bisect.bisect_right(starts, at) - 1
            if j != i:
                hits.append(j)
            at = joined.find(needle, starts[j + 1])
        possible.append(hits)
    return possible


def _carries(outer: str, inner: str) -> bool:
    """Whether ``outer`` being present in a text implies that ``inner`` is."""
    return outer != inner and is_entity_present(inner, outer)


def _bounded(pattern: str, text: str) -> str:
    before = r"(?<![A-Za-z0-9])" if text[:1].isalnum() else ""
    after = r"(?![A-Za-z0-9])" if text[-1:].isalnum() else ""
    return before + pattern + after


@functools.lru_cache(maxsize=4096)
def _entity_regex(entity: str) -> re.Pattern[str]:
    key_value = _split_key_value(entity)
    if key_value:
        key, value = key_value
        body = re.escape(key) + r"\s*[\"']?\s*[=:]\s*[\"']?\s*" + _loose(value)
        return re.compile(_bounded(body, entity))
    return re.compile(_bounded(_loose(entity), entity))


@functools.lru_cache(maxsize=4096)
def _grouped_regex(key: str, value: str) -> re.Pattern[str]:
    """``key: v1, v2, value`` on one line: a grouped bullet of one key's values."""
    return re.compile(
        _bounded(re.escape(key), key) + r"\s*[=:][^\n]*?" + _bounded(_loose(value), value)
    )


def _loose(text: str) -> str:
    """Regex for ``text`` where any run of whitespace may be absent or different."""
    pieces = re.split(r"\s+", text)
    return r"\s*".join(re.escape(piece) for piece in pieces)


def strip_entities(text: str, entities: Iterable[str]) -> str:
    """``text`` with every occurrence of ``entities`` replaced by a space.

    Example:
        >>> strip_entities("IDs: INC-7, INC-8", ["INC-7", "INC-8"])
        'IDs:  ,  '
    """
    for entity in entities:
        text = _entity_regex(entity).sub(" ", text)
    return text


def is_entity_present(entity: str, text: str) -> bool:
    """Whether ``entity`` appears in ``text``.

    Whitespace may differ (``500 ms`` matches ``500ms``), a ``key=value`` parameter also
    matches ``key: value``, and an alphanumeric edge must not run on into a longer word
    (``INC-1`` is not found in ``INC-12``).

    Args:
        entity: An entity from :func:`extract_entities`.
        text: The text to search, usually a summary.

    Returns:
        True if the entity is there.

    Example:
        >>> is_entity_present("max_tokens=250", "- max_tokens: 250 (granted)")
        True
        >>> is_entity_present("INC-1", "closed INC-12")
        False
        >>> is_entity_present("retries=3", "- retries: 1, 2, 3")
        True
    """
    if _entity_regex(entity).search(text) is not None:
        return True
    key_value = _split_key_value(entity)
    return key_value is not None and _grouped_regex(*key_value).search(text) is not None


def entity_bullets(entities: Sequence[Entity]) -> list[str]:
    """Compact bullets: one per kind; a key with several values gets its own line.

    Example:
        >>> entity_bullets(extract_entity_list("INC-7: retries=2, then retries=3, mode=fast"))
        ['- IDs: INC-7', '- params: mode=fast', '- retries: 2, 3']
    """
    by_key: dict[str, list[tuple[Entity, str]]] = {}
    for entity in entities:
        key_value = _split_key_value(entity.text) if entity.kind in ("param", "id") else None
        if key_value is not None:
            by_key.setdefault(key_value[0], []).append((entity, key_value[1]))
    groups: dict[EntityKind, list[str]] = {}
    for entity in entities:
        key_value = _split_key_value(entity.text) if entity.kind in ("param", "id") else None
        if key_value is None or len(by_key[key_value[0]]) == 1:
            text = entity.text if key_value is None else f"{key_value[0]}={key_value[1]}"
            groups.setdefault(entity.kind, []).append(text)
    lines = [
        f"- {_KIND_LABEL[kind]}: {', '.join(groups[kind])}"
        for kind in sorted(groups, key=lambda k: _KIND_PRIORITY[k])
    ]
    lines.extend(
        f"- {key}: {', '.join(value for _, value in pairs)}"
        for key, pairs in by_key.items()
        if len(pairs) > 1
    )
    return lines
