"""Budget-aware LangChain chat model, server profiles and stage compression for vLLM."""

__version__ = "0.1.0"

__all__ = ["__version__"]
