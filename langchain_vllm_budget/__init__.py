"""Budget-aware LangChain chat model, server profiles and stage compression for vLLM."""

from langchain_vllm_budget.budget import BudgetPlan, TokenBudget
from langchain_vllm_budget.chat_models import ChatVLLM
from langchain_vllm_budget.errors import (
    TokenCountError,
    VLLMConnectionError,
    VLLMContextOverflowError,
    VLLMError,
    VLLMFixedPromptOverflowError,
    VLLMInvalidRequestError,
    VLLMModelNotFoundError,
    VLLMRequestAbortedError,
    VLLMServerError,
    VLLMTimeoutError,
)
from langchain_vllm_budget.tokenizers import (
    ApproximateTokenCounter,
    PromptOptions,
    ServerTokenCounter,
    TokenCounter,
    TransformersTokenCounter,
)

__version__ = "0.1.0"

__all__ = [
    "ApproximateTokenCounter",
    "BudgetPlan",
    "ChatVLLM",
    "PromptOptions",
    "ServerTokenCounter",
    "TokenBudget",
    "TokenCountError",
    "TokenCounter",
    "TransformersTokenCounter",
    "VLLMConnectionError",
    "VLLMContextOverflowError",
    "VLLMError",
    "VLLMFixedPromptOverflowError",
    "VLLMInvalidRequestError",
    "VLLMModelNotFoundError",
    "VLLMRequestAbortedError",
    "VLLMServerError",
    "VLLMTimeoutError",
    "__version__",
]
