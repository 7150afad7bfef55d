"""One configuration story: explicit value > environment > default, one name per setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from langchain_vllm_budget import settings
from langchain_vllm_budget.budget import TokenBudget
from langchain_vllm_budget.chat_models import ChatVLLM


def test_every_setting_has_one_env_name_in_two_namespaces() -> None:
    names = [s.env for s in settings.SETTINGS]
    assert len(names) == len(set(names))
    for setting in settings.SETTINGS:
        assert setting.env.startswith(("VLLM_API_", "VLLM_BUDGET_")), setting.env
        assert setting.description.endswith(".")


def test_the_reference_table_lists_every_setting_with_its_variable_and_default() -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
    table = readme.split("<!-- settings-table -->", 1)[1].strip().split("\n\n", 1)[0]
    rows = [
        [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        for line in table.splitlines()[2:]
    ]
    assert [row[0] for row in rows] == [s.name for s in settings.SETTINGS]
    for row, setting in zip(rows, settings.SETTINGS, strict=True):
        assert row[1].split("`")[0].strip() == setting.env
        for legacy in setting.legacy_env:
            assert f"`{legacy}`" in row[1]
        assert row[2] == ("unset" if setting.default is None else str(setting.default))


def test_explicit_beats_environment_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_BUDGET_SAFETY_MARGIN", raising=False)
    assert settings.SAFETY_MARGIN.get() == 128
    monkeypatch.setenv("VLLM_BUDGET_SAFETY_MARGIN", "64")
    assert settings.SAFETY_MARGIN.get() == 64
    # An explicit value equal to the default still wins over the environment.
    assert settings.SAFETY_MARGIN.get(128) == 128
    assert TokenBudget.from_env(safety_margin=128).safety_margin == 128
    assert TokenBudget.from_env().safety_margin == 64


def test_explicit_model_fields_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_BASE", "http://env-host:8000/v1")
    monkeypatch.setenv("VLLM_BUDGET_MAX_CONCURRENCY", "3")
    from_env = ChatVLLM(model="m")
    assert (from_env.openai_api_base, from_env.max_concurrency) == ("http://env-host:8000/v1", 3)
    explicit = ChatVLLM(model="m", base_url="http://localhost:8000/v1", max_concurrency=None)
    assert (explicit.openai_api_base, explicit.max_concurrency) == (
        "http://localhost:8000/v1",
        None,
    )


def test_seed_variable_names_still_read_with_a_deprecation_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_BUDGET_MAX_MODEL_LEN", raising=False)
    monkeypatch.setenv("LLM_MAX_MODEL_LEN", "12288")
    with pytest.warns(
        DeprecationWarning, match="LLM_MAX_MODEL_LEN is deprecated: set VLLM_BUDGET_MAX_MODEL_LEN"
    ):
        assert settings.MAX_MODEL_LEN.get() == 12288
    # The new name wins over the seed's.
    monkeypatch.setenv("VLLM_BUDGET_MAX_MODEL_LEN", "8192")
    assert settings.MAX_MODEL_LEN.get() == 8192


def test_a_bad_value_names_the_variable_and_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_BUDGET_SUMMARY_MAX_TOKENS", "lots")
    with pytest.raises(
        settings.SettingError,
        match=r"VLLM_BUDGET_SUMMARY_MAX_TOKENS must be a "
        r"whole number .*'lots'",
    ):
        settings.SUMMARY_MAX_TOKENS.get()
