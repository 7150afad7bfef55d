"""The private parts of langchain-openai this package uses, imported in one place.

langchain-openai does not promise these names; a release that moves one fails here, at
import, with the name in the error, and ``tests/unit_tests/test_openai_compat.py`` says which
one moved. Each is reused rather than re-implemented for a reason:

* ``_convert_message_to_dict`` and ``_convert_from_v1_to_chat_completions``: the exact request
  form of a message, so that the prompt counted is the prompt ``ChatOpenAI`` sends;
* ``_get_default_httpx_client`` and ``_get_default_async_httpx_client``: langchain-openai's
  cached HTTP clients (building an SSL context per model would cost ~60 ms).

The ``BaseChatOpenAI`` hooks that ``ChatVLLM`` extends are listed in :data:`HOOKS`.
"""

from __future__ import annotations

from langchain_openai.chat_models._client_utils import (
    _get_default_async_httpx_client,
    _get_default_httpx_client,
)
from langchain_openai.chat_models._compat import _convert_from_v1_to_chat_completions
from langchain_openai.chat_models.base import BaseChatOpenAI, _convert_message_to_dict

__all__ = [
    "HOOKS",
    "BaseChatOpenAI",
    "convert_from_v1_to_chat_completions",
    "convert_message_to_dict",
    "default_async_httpx_client",
    "default_httpx_client",
]

convert_message_to_dict = _convert_message_to_dict
convert_from_v1_to_chat_completions = _convert_from_v1_to_chat_completions
default_httpx_client = _get_default_httpx_client
default_async_httpx_client = _get_default_async_httpx_client

HOOKS = (
    "_generate",
    "_agenerate",
    "_stream",
    "_astream",
    "_get_request_payload",
    "_create_chat_result",
    "_convert_chunk_to_generation_chunk",
    "_resolve_model_profile",
    "_use_responses_api",
    "_get_ls_params",
    "_default_params",
    "_convert_input",
)
"""The private members of ``BaseChatOpenAI`` that ``ChatVLLM`` overrides or calls."""
