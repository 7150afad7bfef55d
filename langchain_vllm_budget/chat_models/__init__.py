"""ChatVLLM: a LangChain chat model for vLLM that never overflows the context window.

``base`` holds the class (its fields and the ``BaseChatOpenAI`` hooks it extends);
``_pipeline`` the one path of every request: count, plan, overflow policy, send, and the
one correction after a length rejection.
"""

from langchain_vllm_budget.chat_models.base import DEFAULT_API_BASE, ChatVLLM, CounterChoice

__all__ = ["DEFAULT_API_BASE", "ChatVLLM", "CounterChoice"]
