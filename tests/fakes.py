"""Test doubles shared by the unit tests (LangChain's fake chat models, extended)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage


class RecordingFakeModel(FakeListChatModel):
    """FakeListChatModel that remembers the prompts it was given."""

    prompts: list[list[BaseMessage]] = []  # noqa: RUF012

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.prompts.append(list(messages))
        return super()._call(messages, *args, **kwargs)
