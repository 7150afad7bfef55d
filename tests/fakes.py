"""Test doubles shared by the unit tests (LangChain's fake chat models, extended)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage

from langchain_vllm_budget.tokenizers import ApproximateTokenCounter, PromptOptions


class RecordingFakeModel(FakeListChatModel):
    """FakeListChatModel that remembers the prompts it was given."""

    prompts: list[list[BaseMessage]] = []  # noqa: RUF012

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.prompts.append(list(messages))
        return super()._call(messages, *args, **kwargs)


class ThreadRecordingCounter(ApproximateTokenCounter):
    """The approximate counter, remembering the threads it counted on (event-loop checks)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def count_text(self, text: str) -> int:
        self.threads.add(threading.get_ident())
        return super().count_text(text)

    def count_messages(
        self,
        messages: Sequence[BaseMessage],
        tools: Sequence[dict[str, Any]] | None = None,
        options: PromptOptions | None = None,
    ) -> int:
        self.threads.add(threading.get_ident())
        return super().count_messages(messages, tools, options)
