"""The private langchain-openai names the package relies on are still where it imports them.

When this fails after upgrading langchain-openai, the name in the failure moved: update
``langchain_vllm_budget/_openai_compat.py`` (the only module that imports them).
"""

from __future__ import annotations

import importlib

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from langchain_vllm_budget import ChatVLLM

PRIVATE_IMPORTS = (
    ("langchain_openai.chat_models._client_utils", "_get_default_httpx_client"),
    ("langchain_openai.chat_models._client_utils", "_get_default_async_httpx_client"),
    ("langchain_openai.chat_models._compat", "_convert_from_v1_to_chat_completions"),
    ("langchain_openai.chat_models.base", "_convert_message_to_dict"),
)


@pytest.mark.parametrize(("module", "name"), PRIVATE_IMPORTS)
def test_each_private_name_is_still_there(module: str, name: str) -> None:
    found = getattr(importlib.import_module(module), name, None)
    assert callable(found), f"langchain-openai moved {module}.{name}: update _openai_compat.py"


def test_the_compat_module_is_the_only_importer() -> None:
    import pathlib

    package = pathlib.Path(importlib.import_module("langchain_vllm_budget").__file__).parent
    importers = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if any(
            f"import {name}" in path.read_text() or f" {name}," in path.read_text()
            for _, name in PRIVATE_IMPORTS
        )
    }
    assert importers == {"_openai_compat.py"}


def test_the_conversions_still_give_the_chat_completions_form() -> None:
    from langchain_vllm_budget import _openai_compat as compat

    assert compat.convert_message_to_dict(HumanMessage("hi")) == {"role": "user", "content": "hi"}
    converted = compat.convert_from_v1_to_chat_completions(AIMessage("ok"))
    assert compat.convert_message_to_dict(converted) == {"role": "assistant", "content": "ok"}


@pytest.mark.parametrize(
    "hook", importlib.import_module("langchain_vllm_budget._openai_compat").HOOKS
)
def test_the_hooks_chatvllm_extends_are_still_on_base_chat_openai(hook: str) -> None:
    from langchain_vllm_budget._openai_compat import BaseChatOpenAI

    assert hasattr(BaseChatOpenAI, hook), f"BaseChatOpenAI no longer has {hook}"
    assert hasattr(ChatVLLM, hook)
