"""Model-free summaries: entity bullets first, then the sentences that carry most entities.

Pure text functions over a token counter: :func:`truncate_to_tokens` cuts text to a token
limit, :func:`extractive_text` builds the deterministic summary that the guard falls back
to (and that :func:`~langchain_vllm_budget.compression.extractive_summary` returns).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from langchain_vllm_budget.compression.entities import (
    Entity,
    EntityKind,
    entity_bullets,
    entity_needle,
    extract_entity_list,
    is_entity_present,
    kind_label,
    strip_entities,
)
from langchain_vllm_budget.compression.query import (
    Query,
    entity_scores,
    focus_entities,
    is_diff,
    line_scores,
)

if TYPE_CHECKING:
    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = [
    "extractive_text",
    "fit_entities",
    "json_records",
    "left_out_line",
    "query_extractive_text",
    "repetition",
    "truncate_to_tokens",
]

_BULLET_WORDS = 20  # extractive bullets stay near the seed's "each ≤ 25 tokens"
_LINE_WORDS = 24  # a quoted line of a tool result keeps its context (key, unit, neighbours)
_VALUE_WORDS = 40  # a JSON record's text value is cut to this many words
_RECORD_WORDS = 60  # a JSON record is quoted whole up to this many words
_BASE_VALUE = 0.1  # what an entity on no scoring line is worth
# what an entity of each kind is worth to a reader, in the degrade order
_KIND_WEIGHT: dict[EntityKind, float] = {
    "id": 1.0,
    "path": 0.8,
    "param": 0.8,
    "name": 0.6,
    "value": 0.2,
}
_FOCUS_SHARE = 0.5  # lines scoring at least this share of the best are quoted first
_LEFT_OUT = "- left out (less related to the request; full output stored): "


def truncate_to_tokens(
    text: str, max_tokens: int, counter: TokenCounter, *, keep: Literal["head", "tail"] = "head"
) -> str:
    """The longest head (or tail) of ``text`` within ``max_tokens`` tokens, cut at a space.

    Binary search on characters, counting with ``counter`` (exact for any tokenizer, unlike
    a characters-per-token guess).

    Args:
        text: The text.
        max_tokens: The token limit (0 gives ``""``).
        counter: The token counter.
        keep: ``"head"`` keeps the beginning, ``"tail"`` the end.

    Returns:
        ``text`` itself when it fits, else the longest part that does.

    Example:
        >>> from langchain_vllm_budget.tokenizers import ApproximateTokenCounter
        >>> truncate_to_tokens("alpha beta gamma delta", 3, ApproximateTokenCounter())
        'alpha beta'
        >>> truncate_to_tokens("alpha beta gamma delta", 3, ApproximateTokenCounter(), keep="tail")
        'gamma delta'
    """
    if counter.count_text(text) <= max_tokens:
        return text

    def part(n: int) -> str:
        return text[:n] if keep == "head" else text[len(text) - n :]

    low, high = 0, len(text)
    while low < high:  # largest length that fits
        mid = (low + high + 1) // 2
        if counter.count_text(part(mid)) <= max_tokens:
            low = mid
        else:
            high = mid - 1
    piece = part(low)
    if keep == "head":
        space = piece.rfind(" ")
        if space > len(piece) // 2:
            piece = piece[:space]
        return piece.rstrip()
    space = piece.find(" ")
    if 0 <= space < len(piece) // 2:
        piece = piece[space + 1 :]
    return piece.lstrip()


def fit_entities(
    entities: Sequence[Entity], cap: int, counter: TokenCounter, prefix: Sequence[str] = ()
) -> tuple[list[Entity], list[Entity]]:
    """Keep entities in priority order while ``prefix`` + their bullets fit ``cap``."""

    def size(chosen: Sequence[Entity]) -> int:
        return counter.count_text("\n".join([*prefix, *entity_bullets(chosen)]))

    if size(entities) <= cap:
        return list(entities), []
    kept: list[Entity] = []
    dropped: list[Entity] = []
    for entity in entities:
        if size([*kept, entity]) <= cap:
            kept.append(entity)
        else:
            dropped.append(entity)
    return kept, dropped


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\[(])")
_TAG = re.compile(r"\[[\w +-]+\]:?")  # a bare section tag such as "[plan]"
_BLOCK_START = re.compile(r"^\s*(?:[-*•+>#|]|\d+[.)]\s|```|\[)")


def _paragraphs(text: str) -> list[str]:
    """Logical lines: a wrapped paragraph or list item joined back into one line."""
    blocks: list[str] = []
    joinable = False
    for line in text.splitlines():
        if not line.strip():
            joinable = False
            continue
        if joinable and not _BLOCK_START.match(line):
            blocks[-1] = f"{blocks[-1]} {line.strip()}"
            continue
        blocks.append(line.strip())
        joinable = not line.lstrip().startswith(("#", "```", "|"))
    return blocks


def _sentences(text: str) -> list[tuple[int, str]]:
    r"""Distinct, non-repetitive sentences of ``text`` with their order.

    Example:
        >>> _sentences("- Restart the\n  service now. Then check it.\n## Notes\n## INC-7")
        [(0, 'Restart the service now.'), (1, 'Then check it.'), (2, 'INC-7')]
    """
    found: list[tuple[int, str]] = []
    seen: set[str] = set()
    for line in _paragraphs(text):
        if line.startswith("#") and not extract_entity_list(line):
            continue  # a bare heading says little
        stripped = re.sub(r"^(?:[-*•+>#`|]+|\d+[.)])\s*", "", line).strip()
        stripped = re.sub(r"^\*\*([^*]+)\*\*\s*", r"\1 ", stripped).strip()
        if not stripped:
            continue
        for piece in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\[(])", stripped):
            piece = piece.strip()
            key = " ".join(piece.lower().split())
            if len(piece) <= 2 or key in seen or repetition(piece) or _TAG.fullmatch(piece):
                continue
            seen.add(key)
            found.append((len(found), piece))
    return found


def _only_entities(sentence: str, entities: Sequence[Entity]) -> bool:
    """Whether ``sentence`` holds nothing but entities and at most two label words."""
    rest = strip_entities(sentence, (entity.text for entity in entities))
    return len(re.findall(r"[A-Za-z]{2,}", rest)) <= 2 and rest != sentence


def _short(sentence: str, words_max: int = _BULLET_WORDS) -> str:
    words = sentence.split()
    if len(words) <= words_max:
        return sentence
    return " ".join(words[:words_max]) + " …"


def extractive_text(
    text: str, entities: Sequence[Entity], cap: int, counter: TokenCounter
) -> tuple[str, list[Entity]]:
    """Deterministic summary: entity bullets first, then the most informative sentences."""
    kept, dropped = fit_entities(entities, cap, counter)
    entity_lines = entity_bullets(kept)
    # a sentence that is only a list of kept entities ("IDs: INC-1, INC-2") repeats a bullet
    sentences = [s for s in _sentences(text) if not _only_entities(s[1], kept)]
    needles = [(entity_needle(e.text), e.text) for e in entities]

    def carried(sentence: str) -> int:
        squashed = re.sub(r"\s+", "", sentence)
        return sum(
            1 for needle, e in needles if needle in squashed and is_entity_present(e, sentence)
        )

    scored = sorted(sentences, key=lambda s: (-carried(s[1]), s[0]))
    chosen: list[tuple[int, str]] = []
    for position, sentence in scored:
        candidate = sorted([*chosen, (position, _short(sentence))])
        lines = [f"- {s}" for _, s in candidate] + entity_lines
        if counter.count_text("\n".join(lines)) <= cap:
            chosen = candidate
    summary = "\n".join([f"- {s}" for _, s in chosen] + entity_lines)
    return truncate_to_tokens(summary, cap, counter), dropped


def left_out_line(entities: Sequence[Entity], summary: str) -> str:
    """What the summary lost, by kind, in the degrade order (``""`` when it lost nothing).

    Example:
        >>> from langchain_vllm_budget.compression.entities import extract_entity_list
        >>> left_out_line(extract_entity_list("INC-1 INC-2 /a/b.py took 5 ms"), "- INC-1")
        '- left out (less related to the request; full output stored): 1 IDs, 1 paths, 1 values'
    """
    lost: dict[EntityKind, int] = {}
    for entity in entities:
        if not is_entity_present(entity.text, summary):
            lost[entity.kind] = lost.get(entity.kind, 0) + 1
    if not lost:
        return ""
    kinds = sorted(lost, key=lambda k: Entity("", k, 0).priority)
    return _LEFT_OUT + ", ".join(f"{lost[k]} {kind_label(k)}" for k in kinds)


def query_extractive_text(
    text: str,
    entities: Sequence[Entity],
    cap: int,
    counter: TokenCounter,
    query: Query,
    *,
    focus: Sequence[Entity] | None = None,
) -> str:
    """Deterministic summary ranked by ``query``: the lines and entities it points at first.

    The degrade order: first the lines that score at least half the best (quoted whole, up
    to 24 words; a short indented block is one line, see :func:`query_units`) in half the
    room; then the entities the request points at that those lines did not carry (the
    guard's focus), as bullets; then, by value per token, the other lines (their score for
    each entity they carry) and entities (their line's score times their kind's weight: IDs,
    paths and parameters, names, values); bare headers and brackets are never quoted alone.
    The last line counts what was left out, by kind.

    Args:
        text: The result.
        entities: Its entities (highest priority first).
        cap: The summary's token cap.
        counter: Counts tokens.
        query: What the summary is for (a
            :class:`~langchain_vllm_budget.compression.query.Query`).
        focus: The entities the request points at, when the caller has them already (the
            guard's :attr:`CompressionJob.focus`); found here otherwise.

    Returns:
        The summary, at most ``cap`` tokens.
    """
    lines, words = _units(text)
    scores = line_scores(lines, query)
    by_entity = entity_scores(lines, scores, entities)
    reserve = counter.count_text(left_out_line(entities, ""))
    room = cap - reserve
    chosen: dict[int, str] = {}
    bullets: list[Entity] = []
    seen: set[str] = set()

    def render(picked: Mapping[int, str], extra: Sequence[Entity]) -> str:
        quoted = [f"- {picked[i]}" for i in sorted(picked)]
        shown = "\n".join(quoted)
        return "\n".join(
            quoted + entity_bullets([e for e in extra if not is_entity_present(e.text, shown)])
        )

    def fits(summary: str) -> bool:
        return counter.count_text(summary) <= room

    best = max(scores, default=0.0)
    ranked = sorted(
        (i for i, score in enumerate(scores) if score > 0 and lines[i].strip()),
        key=lambda i: (-scores[i], i),
    )
    summary = ""

    def quote(i: int, limit: int, *, cut: bool = False) -> bool:
        nonlocal summary
        line = _quoted(lines[i], words)
        if line.lower() in seen or not _says_something(line):
            return False
        candidate = render({**chosen, i: line}, bullets)
        if cut and counter.count_text(candidate) > limit:
            # the best line, longer than the room: its head, where a record keeps its ID
            head_room = limit - counter.count_text(render(chosen, bullets) + "\n- …") - 1
            if head_room <= 0:
                return False
            head = truncate_to_tokens(line, head_room, counter)
            if not _says_something(head):
                return False
            line = f"{head} …"
            candidate = render({**chosen, i: line}, bullets)
        if counter.count_text(candidate) > limit:
            return False
        seen.add(line.lower())
        chosen[i], summary = line, candidate
        return True

    def bullet(entity: Entity) -> None:
        nonlocal summary
        if not is_entity_present(entity.text, summary):
            candidate = render(chosen, [*bullets, entity])
            if fits(candidate):
                bullets.append(entity)
                summary = candidate

    # 1. the best lines, quoted (their context: keys, units, what failed), in half the room
    #    (the best one in all of it: a long log record is still the answer); then what the
    #    request points at (the guard's focus) that they did not carry, as bullets: a summary
    #    that keeps all of it needs no summarizer model
    for i in ranked:
        if scores[i] >= _FOCUS_SHARE * best:
            quote(i, room // 2 if chosen else room, cut=not chosen)
    if focus is None:
        focus = focus_entities(lines, line_scores(lines, query, near=False), entities)
    for focused in focus:
        bullet(focused)
    # 2. then what keeps most per token: a bullet is worth its entity's score times its
    #    kind's weight (IDs most, values least), a line its score for each entity it carries
    #    (and once more for its words)
    on_line = [sum(_KIND_WEIGHT[e.kind] for e in entities if _on(e, lines[i])) for i in ranked]
    items: list[tuple[float, int, Entity | None]] = [
        (scores[i] * (1 + carried) / max(counter.count_text(_quoted(lines[i], words)), 1), i, None)
        for i, carried in zip(ranked, on_line, strict=True)
    ]
    items += [
        (
            (by_entity[e.text] + _BASE_VALUE)
            * _KIND_WEIGHT[e.kind]
            / (counter.count_text(e.text) + 1),
            e.position,
            e,
        )
        for e in entities
    ]
    for _value, i, entity in sorted(items, key=lambda x: (-x[0], x[1])):
        if entity is None:
            quote(i, room)
        else:
            bullet(entity)
    left_out = left_out_line(entities, summary)
    return truncate_to_tokens("\n".join(p for p in (summary, left_out) if p), cap, counter)


def _quoted(line: str, words: int) -> str:
    """A line as a summary quotes it: whitespace runs as one space, at most ``words`` words."""
    return _short(" ".join(line.split()), words)


def _says_something(line: str) -> bool:
    """Whether a line is worth quoting alone: not a bare header, bracket or rule.

    Example:
        >>> [_says_something(x) for x in ("Events:", "},", "-----", "Reason: OOMKilled")]
        [False, False, False, True]
    """
    return len(re.findall(r"\w+", line)) >= 2


def query_units(text: str) -> list[str]:
    r"""The pieces a query ranks: lines, small indented blocks joined, long lines cut.

    A line with more-indented lines under it (a YAML or ``kubectl describe`` block, a JSON
    object, a traceback frame) is one unit with them when the block is short (at most 24
    words): ``Limits:`` alone says nothing, ``Limits: memory: 2Gi cpu: 1`` does, and a
    quoted unit keeps its key with its value. A long line (a paragraph) is cut into its
    sentences.

    Example:
        >>> [len(u.split()) for u in query_units("a: 1\n" + "Word " * 30 + "end. Next one.")]
        [2, 31, 2]
        >>> query_units("Limits:\n  memory: 2Gi\n  cpu: 1\nRequests:")
        ['Limits: memory: 2Gi cpu: 1', 'Requests:']
    """
    return _units(text)[0]


def _units(text: str) -> tuple[list[str], int]:
    """:func:`query_units`, and how many words a quote of one may hold (records: more)."""
    records = json_records(text)
    if records is not None:
        return records, _RECORD_WORDS
    lines = text.splitlines()
    logged = _json_lines(lines)
    if logged is not None:
        return logged, _RECORD_WORDS
    if is_diff(lines):
        # a diff's lines are what changed, one each (their indentation follows the sign);
        # ``index``, ``---`` and ``+++`` lines repeat the ``diff --git`` line above them
        return [line for line in lines if not _DIFF_REPEATS.match(line)], _LINE_WORDS
    units: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        end = _block_end(lines, i)
        block = lines[i:end]
        if end > i + 1 and sum(len(b.split()) for b in block) <= _LINE_WORDS:
            indent = line[: len(line) - len(line.lstrip())]
            units.append(indent + " ".join(b.strip() for b in block))
            i = end
            continue
        if len(line.split()) > _LINE_WORDS:
            units.extend(_SENTENCE_END.split(line.strip()))
        else:
            units.append(line)
        i += 1
    return units, _LINE_WORDS


_DIFF_REPEATS = re.compile(r"^(?:index [0-9a-f]+\.\.|--- (?:a/|/dev/null)|\+\+\+ (?:b/|/dev/null))")


def json_records(text: str) -> list[str] | None:
    r"""A JSON result as records, one line each (``None`` when ``text`` is not JSON).

    An API's JSON spreads one record over a dozen pretty-printed lines, and the line with
    its ID holds none of the words that say what it is about (``"key": "IDP-2417"`` sits
    four lines above ``"summary": "SSO login times out"``). So each object of a list of
    objects is one record, its nested objects flattened into it by their own keys (an
    alert's ``labels``, a span's ``attributes``); the scalars of the objects around such
    lists make one record each. A record reads ``key: value; key: value``, a long text
    value cut to its first words (the whole output is stored).

    Example:
        >>> json_records('{"total": 2, "issues": [{"key": "A-1", "labels": {"team": "sre"}},'
        ...              ' {"key": "A-2", "tags": ["x", "y"]}]}')
        ['total: 2', 'key: A-1; team: sre', 'key: A-2; tags: x, y']
        >>> json_records("not json") is None
        True
    """
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    records: list[str] = []
    try:
        _walk(json.loads(stripped, parse_float=_Verbatim), records)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to walk
        return None
    return [r for r in records if r]


def _json_lines(lines: Sequence[str]) -> list[str] | None:
    """A JSON-lines result (a structured log), each object line as its record, else ``None``.

    ``{"ts": ..., "level": "error", "order_id": "ord_7H3K", ...}`` reads
    ``ts: ...; level: error; order_id: ord_7H3K``: the same fields in fewer tokens, so a
    summary quotes more of the lines the request points at. Other lines stay as they are.
    """
    objects: dict[int, list[str]] = {}
    filled = [i for i, line in enumerate(lines) if line.strip()]
    for i in filled:
        stripped = lines[i].strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            with contextlib.suppress(ValueError, RecursionError):
                value = json.loads(stripped, parse_float=_Verbatim)
                if isinstance(value, dict):
                    record: list[str] = []
                    _walk(value, record)
                    objects[i] = record
    if not filled or len(objects) * 5 < len(filled) * 4:  # under 80 %: not a JSON log
        return None
    return ["; ".join(objects[i]) if i in objects else lines[i] for i in filled]


def _walk(value: Any, records: list[str], owner: str = "", *, item: bool = False) -> None:
    """Append the records of a JSON value (see :func:`json_records`), in document order.

    A record that is an item of a list (``item``) passes its first field (``key: flag-7``)
    down as ``owner``: each record of a list nested in it starts with that field, so a
    flag's rules still say which flag they are. The envelope around the lists passes none.
    """
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            records.append(_joined(owner, _scalar_list(value)))
            return
        for element in value:
            _walk(element, records, owner, item=True)
        return
    if not isinstance(value, dict):
        records.append(_joined(owner, _scalar(value)))
        return
    fields: list[str] = []
    nested: list[Any] = []
    _fields(value, fields, nested)
    if fields:
        records.append(_joined(owner, "; ".join(fields)))
    inner = fields[0] if item and fields else owner
    for child in nested:
        _walk(child, records, inner)


def _joined(owner: str, record: str) -> str:
    return f"{owner}; {record}" if owner and record else record


def _fields(value: dict[str, Any], fields: list[str], nested: list[Any]) -> None:
    """Collect an object's ``key: value`` fields (nested objects inline), lists of objects apart."""
    for key, item in value.items():
        if isinstance(item, dict):
            _fields(item, fields, nested)
        elif isinstance(item, list) and any(isinstance(v, dict | list) for v in item):
            nested.append(item)
        elif isinstance(item, list):
            fields.append(f"{key}: {_scalar_list(item)}")
        else:
            fields.append(f"{key}: {_scalar(item)}")


class _Verbatim(str):
    """A JSON number with a fraction or exponent, as the tool wrote it (``86.40``, not 86.4)."""

    __slots__ = ()


def _scalar(value: Any) -> str:
    # null, true and false as the tool wrote them
    text = json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    return _quoted(text, _VALUE_WORDS)


def _scalar_list(values: list[Any]) -> str:
    return ", ".join(_scalar(v) for v in values)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block_end(lines: Sequence[str], start: int) -> int:
    """The index after the lines indented under ``lines[start]`` (``start + 1``: none)."""
    if not lines[start].strip():
        return start + 1
    indent = _indent(lines[start])
    end = start + 1
    while end < len(lines) and lines[end].strip() and _indent(lines[end]) > indent:
        end += 1
    return end


def _on(entity: Entity, line: str) -> bool:
    return entity_needle(entity.text) in re.sub(r"\s+", "", line) and is_entity_present(
        entity.text, line
    )


def repetition(summary: str) -> str | None:
    """Why ``summary`` looks like a looping model's output, or ``None``.

    Example:
        >>> repetition("ok ok ok ok")
        "repetition: 'ok' 4 times in a row"
    """
    lines = [line.strip().lower() for line in summary.splitlines() if line.strip()]
    if lines:
        most = max(lines.count(line) for line in set(lines))
        if most >= 3:
            return f"repetition: a line repeated {most} times"
    words = summary.lower().split()
    run = 1
    for previous, word in itertools.pairwise(words):
        run = run + 1 if word == previous else 1
        if run >= 4:
            return f"repetition: {word!r} {run} times in a row"
    if len(words) >= 12:
        trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
        distinct = len(set(trigrams)) / len(trigrams)
        if distinct < 0.5:
            return f"repetition: only {distinct:.0%} of word trigrams are distinct"
    return None
