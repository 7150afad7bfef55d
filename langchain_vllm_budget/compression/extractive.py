"""Model-free summaries: entity bullets first, then the sentences that carry most entities.

Pure text functions over a token counter: :func:`truncate_to_tokens` cuts text to a token
limit, :func:`extractive_text` builds the deterministic summary that the guard falls back
to (and that :func:`~langchain_vllm_budget.compression.extractive_summary` returns).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from langchain_vllm_budget.compression.entities import (
    Entity,
    entity_bullets,
    entity_needle,
    extract_entity_list,
    is_entity_present,
    strip_entities,
)

if TYPE_CHECKING:
    from langchain_vllm_budget.tokenizers import TokenCounter

__all__ = ["extractive_text", "fit_entities", "repetition", "truncate_to_tokens"]

_BULLET_WORDS = 20  # extractive bullets stay near the seed's "each ≤ 25 tokens"


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


def _short(sentence: str) -> str:
    words = sentence.split()
    if len(words) <= _BULLET_WORDS:
        return sentence
    return " ".join(words[:_BULLET_WORDS]) + " …"


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
