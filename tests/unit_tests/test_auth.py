"""The LangGraph server's key check (langgraph.json's auth): no key, no entry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from langgraph_sdk import Auth

from langchain_vllm_budget import settings
from langchain_vllm_budget.serving.auth import APP_USER, auth, authenticate

REPO = Path(__file__).resolve().parents[2]


def _call(headers: dict[bytes, bytes], authorization: str | None = None) -> str:
    return asyncio.run(authenticate(headers, authorization))


def test_langgraph_json_points_at_the_handler() -> None:
    config = json.loads((REPO / "langgraph.json").read_text())
    path, _, attribute = config["auth"]["path"].partition(":")
    assert (REPO / path).resolve() == (REPO / "langchain_vllm_budget/serving/auth.py").resolve()
    assert attribute == "auth"
    assert isinstance(auth, Auth)
    assert auth._authenticate_handler is authenticate


def test_the_key_lets_in_by_header_or_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.APP_API_KEY.env, "app-key-123")
    assert _call({b"x-api-key": b"app-key-123"}) == APP_USER
    assert _call({}, "Bearer app-key-123") == APP_USER


@pytest.mark.parametrize(
    ("headers", "authorization"),
    [
        ({}, None),
        ({b"x-api-key": b"wrong"}, None),
        ({b"x-api-key": b"app-key-12"}, None),
        ({}, "Bearer wrong"),
        ({}, "Basic YXBwLWtleS0xMjM="),
    ],
)
def test_anything_else_is_refused(
    headers: dict[bytes, bytes], authorization: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.APP_API_KEY.env, "app-key-123")
    with pytest.raises(Auth.exceptions.HTTPException) as refused:
        _call(headers, authorization)
    assert refused.value.status_code == 401
    assert "app-key-123" not in str(refused.value.detail)


def test_a_server_without_a_key_lets_no_one_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.APP_API_KEY.env, raising=False)
    for headers in ({}, {b"x-api-key": b""}, {b"x-api-key": b"anything"}):
        with pytest.raises(Auth.exceptions.HTTPException) as refused:
            _call(headers)
        assert refused.value.status_code == 401
        assert settings.APP_API_KEY.env in str(refused.value.detail)
