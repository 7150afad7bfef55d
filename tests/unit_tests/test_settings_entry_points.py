"""Every entry point that the reference's settings table names reads that setting.

The table in ``docs/reference.md`` has a "read by" column; for each setting and each entry
point it names, the variable is set to a distinctive value and the entry point, built with no
explicit value, must carry it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from langchain_vllm_budget import ChatVLLM, TokenBudget, settings
from langchain_vllm_budget.pipeline import Context

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"

VALUES: dict[str, str] = {
    "base_url": "http://127.0.0.1:9/v1",
    "api_key": "sk-entry-point",
    "model": "served-name",
    "tokenizer": "/srv/tokenizers/qwen",
    "max_model_len": "6000",
    "output_reserve": "700",
    "safety_margin": "77",
    "min_output_tokens": "33",
    "thinking_budget": "55",
    "max_concurrency": "3",
    "summarizer_model": "small-summarizer",
    "summarizer_base_url": "http://127.0.0.1:10/v1",
    "summarizer_max_model_len": "4000",
    "summarizer_tokenizer": "/srv/tokenizers/small",
    "summary_max_tokens": "111",
    "handoff_verbatim_share": "0.35",
    "compaction_target": "0.45",
    "rolling_summary_max_tokens": "222",
    "rolling_summary_mode": "llm",
    "compression": "extractive",
    "temperature": "0.3",
    "repetition_penalty": "1.2",
    "session_affinity": "off",
    "session_header": "X-User-ID",
}
"""A distinctive, valid value per setting (a test checks that every setting has one)."""


def _chat_vllm(name: str) -> Any:
    model = ChatVLLM(model="m")
    api_key = model.openai_api_key.get_secret_value() if model.openai_api_key else None
    by_setting: dict[str, Any] = {
        "base_url": model.openai_api_base,
        "api_key": api_key,
        "tokenizer": model.tokenizer,
        "thinking_budget": model.thinking_budget,
        "max_concurrency": model.max_concurrency,
        "summary_max_tokens": model.summary_max_tokens,
        "compaction_target": model.compaction_target,
        "session_affinity": model.session_affinity,
        "session_header": model.session_header,
    }
    if name in {"max_model_len", "output_reserve", "safety_margin", "min_output_tokens"}:
        return getattr(model.budget, name)
    return by_setting[name]


def _token_budget(name: str) -> Any:
    return getattr(TokenBudget.from_env(), name)


def _context(name: str) -> Any:
    return getattr(Context(), name)


ENTRY_POINTS: dict[str, Callable[[str], Any]] = {
    "ChatVLLM": _chat_vllm,
    "TokenBudget": _token_budget,
    "Context": _context,
}
"""How to read a setting's value back from each entry point the table may name."""


def _table() -> list[tuple[str, str, list[str]]]:
    text = REFERENCE.read_text()
    table = text.split("<!-- settings-table -->", 1)[1].strip().split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        readers = [r.strip().strip("`") for r in cells[4].split(",") if r.strip()]
        rows.append((cells[0].strip("`"), cells[1].split("`")[1], readers))
    return rows


def test_every_setting_has_a_test_value_and_every_row_names_known_entry_points() -> None:
    assert set(VALUES) == {s.name for s in settings.SETTINGS}
    for name, _, readers in _table():
        assert readers, f"{name}: the table names no entry point that reads it"
        assert set(readers) <= set(ENTRY_POINTS), f"{name}: unknown entry point in {readers}"


@pytest.mark.parametrize(("name", "env", "readers"), _table(), ids=[row[0] for row in _table()])
def test_each_entry_point_the_table_names_reads_the_setting(
    name: str, env: str, readers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    setting = next(s for s in settings.SETTINGS if s.name == name)
    monkeypatch.setenv(env, VALUES[name])
    expected = setting.kind(VALUES[name])
    for reader in readers:
        assert ENTRY_POINTS[reader](name) == expected, f"{reader} does not read {env}"
